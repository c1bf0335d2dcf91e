"""Restore files and folders on this machine: ``hires restore IN... --out DIR`` without ``--address``.

* Inputs are files and folders; folders are searched recursively for audio files (the extensions
  :mod:`datasets.audio` reads), skipping the output folder when it lies inside one. A file's output is
  ``DIR/<path relative to the folder given>`` (a file given by itself: ``DIR/<name>``) with the extension of the
  output format; two inputs that would land on one output, or an output that is an input, are rejected.
* Each output is written under a temporary name and renamed when complete, so a rerun skips the outputs that
  exist and redoes the rest; ``--keep-stages`` writes ``name.recovery.<ext>`` beside it (before the final file).
* An input that cannot be restored (unreadable, empty, too short, non-finite samples, gone missing, ...) is listed
  with its one-line reason in ``DIR/rejects.jsonl`` (``{"path", "reason"}``, rewritten by each run) and the
  others go on; the run then exits with :data:`EXIT_SOME_FAILED`.
* The progress bar counts hours of input audio.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets.audio import AUDIO_EXTENSIONS, FFMPEG_EXTENSIONS, audio_info
from datasets.errors import HiresError, UsageError
from training.restorer import FORMATS, RestoreOptions, Restorer

log = logging.getLogger(__name__)

REJECTS = "rejects.jsonl"
EXIT_SOME_FAILED = 3


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass
class RestoreSummary:
    out: Path
    restored: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # outputs already there (finished by an earlier run)
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    seconds: float = 0.0  # input audio restored in this run

    @property
    def ok(self) -> bool:
        return not self.rejected

    def line(self) -> str:
        text = (
            f"restored {len(self.restored)} file(s) ({self.seconds / 3600:.3f} h), "
            f"{len(self.skipped)} already done, {len(self.rejected)} rejected"
        )
        if self.rejected:
            text += f" (reasons in {self.out / REJECTS})"
        return text


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def collect_jobs(inputs: Sequence[str], out: str | Path, fmt: str = "flac") -> tuple[list[Job], list[dict]]:
    """Pair each input file with its output path; returns ``(jobs, rejects)`` (rejects: ``{"path", "reason"}``).

    A missing input path is a :class:`UsageError` (nothing starts), not a reject.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out).expanduser().absolute()
    suffix = FORMATS[fmt][1]
    candidates: list[tuple[Path, Path]] = []  # (source, path relative to the output folder)
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise UsageError(f"{item}: no such file or folder")
        if path.is_dir():
            root = path.absolute()
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                # never descend into the output folder: a rerun must not restore its own outputs
                dirnames[:] = sorted(d for d in dirnames if not _inside((here / d).absolute(), out))
                for name in sorted(filenames):
                    f = here / name
                    if f.suffix.lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                        candidates.append((f, f.relative_to(root)))
        else:
            candidates.append((path.absolute(), Path(path.name)))
    sources = {c[0].resolve() for c in candidates}
    jobs: list[Job] = []
    rejects: list[dict] = []
    taken: dict[Path, Path] = {}
    for src, rel in candidates:
        dst = out / rel.with_suffix(suffix)
        if dst.resolve() in sources:
            rejects.append(
                {"path": str(src), "reason": f"output {dst} would overwrite an input; choose another --out"}
            )
        elif dst in taken:
            if taken[dst] != src:
                rejects.append(
                    {"path": str(src), "reason": f"same output {dst} as {taken[dst]}; not restored"}
                )
        else:
            taken[dst] = src
            jobs.append(Job(src, dst))
    return jobs, rejects


def check_writable(out: Path) -> None:
    """Make ``out`` and prove a file can be created there (a :class:`UsageError` naming it otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hires-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def write_rejects(out: Path, rejects: list[dict]) -> None:
    """``out/rejects.jsonl`` written atomically (an empty file when nothing was rejected)."""
    tmp = out / f".{REJECTS}.{os.getpid()}.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    tmp.replace(out / REJECTS)


def reject_reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, HiresError | OSError):
        return text or type(e).__name__
    return f"internal error: {type(e).__name__}: {text}"


def _duration(path: Path) -> float:
    """Seconds of audio from the header (ffprobe for ffmpeg-only containers: no decoding); 0 when unreadable,
    which the restore itself then reports."""
    try:
        if path.suffix.lower() in FFMPEG_EXTENSIONS:
            probe = subprocess.run(
                ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            return float(probe.stdout.strip() or 0.0)
        return audio_info(path).duration_s
    except (HiresError, OSError, ValueError):
        return 0.0


def restore_paths(
    inputs: Sequence[str],
    out: str | Path,
    restorer: Restorer | Callable[[], Restorer],
    options: RestoreOptions | None = None,
    fmt: str = "flac",
    progress: bool = True,
    batch_size: int = 1,
) -> RestoreSummary:
    """Restore every input file into ``out`` (see the module docstring); ``restorer`` may be a factory, called
    only when some file is left to restore (a rerun with everything done loads no model)."""
    options = options or RestoreOptions()
    out = Path(out).expanduser().absolute()
    jobs, rejects = collect_jobs(inputs, out, fmt)
    check_writable(out)
    summary = RestoreSummary(out=out, rejected=list(rejects))
    todo = []
    for job in jobs:
        if job.output.exists():
            summary.skipped.append(job.output)
        else:
            todo.append(job)
    # models load before any file: a bad bundle stops the run with one line instead of rejecting every file
    engine = None if not todo else restorer if isinstance(restorer, Restorer) else restorer()
    durations = {job.source: _duration(job.source) for job in todo}
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(
            total=sum(durations.values()) / 3600,
            unit="h",
            desc="restore",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}]",
        )
    try:
        for job in todo:
            done = 0.0

            def advance(seconds: float) -> None:
                nonlocal done
                done += seconds
                if bar is not None:
                    bar.update(seconds / 3600)

            try:
                assert engine is not None
                info = engine.restore_file(
                    str(job.source), str(job.output), options, fmt, batch_size=batch_size, progress=advance
                )
                summary.restored.append(job.output)
                summary.seconds += info.seconds
            except KeyboardInterrupt:
                raise
            except (UsageError, MemoryError):
                raise  # the command, not this file, is wrong: stop
            except Exception as e:
                if not isinstance(e, HiresError | OSError):  # a bug: its traceback for --debug logging
                    log.debug("restoring %s failed", job.source, exc_info=True)
                summary.rejected.append({"path": str(job.source), "reason": reject_reason(e)})
            if bar is not None:
                bar.update((durations.get(job.source, 0.0) - done) / 3600)  # the rest of a failed file
    finally:
        if bar is not None:
            bar.close()
        write_rejects(out, summary.rejected)
    return summary
