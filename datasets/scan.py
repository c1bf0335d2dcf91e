"""Corpus scanning: walk roots, check every audio file, write the manifest and the rejects.

A file is *seen* when its extension is an audio extension (:data:`datasets.audio.AUDIO_EXTENSIONS`); every seen
file ends up either in the manifest or in its rejects file (``NAME.rejects.jsonl`` beside ``NAME.parquet``, so
several manifests share a folder) with a reason, so accepted + rejected = seen. Nothing a single file does (bad
header, truncation, NaN, permissions, symlink loop) stops the scan.

Checks, in order: readable (permissions, symlink loops), non-empty, header decodes, sample rate at least the
configured minimum for the kind, then (``verify: full``, the default) the samples are decoded in blocks to catch
truncated streams, NaN/Inf values and all-silent files. ``verify: header`` reads headers only (fast path for
trusted corpora; truncation, NaN and silence then go unnoticed until synthesis, which records them as rejects).

Known layouts get corpus and speaker right (:func:`detect_layout`): VCTK 0.92, EARS, HiFi-TTS; anything else is
a generic folder whose speaker is the parent directory's name. VCTK 0.92 holds every utterance twice (``_mic1``
and ``_mic2``): ``vctk_mic`` keeps one microphone (default ``mic1``) or both; the files of the other microphone are
not seen (counted as ``skipped_vctk_mic``), and the choice is recorded in the manifest's metadata.

RIRs (``kind: rir``) are measured while scanned: ``rt60``, ``drr`` and ``c50`` of the first channel, with the
functions that describe the generated RIR bank (:func:`datasets.banks.rir_metrics`), so rooms can be filtered in
the manifest. Scanning is parallel in threads (libsndfile
releases the GIL), so large corpora are I/O bound.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from pydantic import Field, model_validator

from datasets.audio import AUDIO_EXTENSIONS, AudioError, audio_info, is_uri
from datasets.config import StrictModel, load_config
from datasets.manifest import assign_split, make_ids, rejects_path, write_manifest, write_rejects

log = logging.getLogger(__name__)


class MinSampleRate(StrictModel):
    speech: int = Field(44100, gt=0)
    noise: int = Field(16000, gt=0)
    rir: int = Field(16000, gt=0)


class ScanConfig(StrictModel):
    """``corpus:`` section of ``configs/corpus.yaml``."""

    split_ratios: tuple[float, float, float] = (0.90, 0.05, 0.05)
    min_sample_rate: MinSampleRate = MinSampleRate()
    verify: Literal["full", "header"] = "full"
    silence_dbfs: float = Field(-80.0, le=0.0, description="peak below this level counts as all-silent")
    workers: int = Field(16, ge=1, le=256)
    block_frames: int = Field(262144, ge=1024)
    vctk_mic: Literal["mic1", "mic2", "both"] = Field(
        "mic1", description="VCTK 0.92 records each utterance with two microphones: keep one, or both"
    )

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> ScanConfig:
        if any(r < 0 for r in self.split_ratios) or not math.isclose(
            sum(self.split_ratios), 1.0, abs_tol=1e-6
        ):
            raise ValueError(
                f"split_ratios must be three non-negative numbers summing to 1, got {self.split_ratios}"
            )
        return self

    def recorded(self) -> dict:
        """The settings that decide a manifest's rows (not its speed), as stored in the manifest's metadata."""
        return self.model_dump(mode="json", exclude={"workers", "block_frames"})


class CorpusConfigFile(StrictModel):
    """The whole of ``configs/corpus.yaml``: an unknown top-level key or a misspelled section is an error."""

    scan: ScanConfig = ScanConfig()


def load_scan_config(
    path: str | Path | None, overrides: dict | None = None, flags: dict[str, str] | None = None
) -> ScanConfig:
    """The ``scan`` section of a corpus config with dotted ``overrides`` (keys relative to the section) set from
    the command line; ``flags`` names the flag of each override for errors."""
    return load_config(
        CorpusConfigFile,
        path,
        {f"scan.{k}": v for k, v in (overrides or {}).items()},
        flags={f"scan.{k}": v for k, v in (flags or {}).items()},
    ).scan


@dataclass
class ScanResult:
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    ignored: int = 0
    skipped_vctk_mic: int = 0

    @property
    def seen(self) -> int:
        return len(self.rows) + len(self.rejects)

    def summary(self) -> dict:
        hours = sum(r["duration_s"] for r in self.rows) / 3600
        splits = {s: sum(1 for r in self.rows if r["split"] == s) for s in ("train", "valid", "test")}
        return {
            "seen": self.seen,
            "accepted": len(self.rows),
            "rejected": len(self.rejects),
            "ignored_non_audio": self.ignored,
            "skipped_vctk_mic": self.skipped_vctk_mic,
            "hours": round(hours, 4),
            "speakers": len({(r["corpus"], r["speaker"]) for r in self.rows}),
            "splits": splits,
        }


# ---------------------------------------------------------------------------------------------------- layouts
_VCTK_STEM = re.compile(r"^(p\d{3}|s\d)_\d{3}(_mic[12])?$")
_VCTK_MIC = re.compile(r"_(mic[12])$")
_HIFITTS_DIR = re.compile(r"^(\d+)_(clean|other)$")
_EARS_SPEAKER = re.compile(r"^p\d{3}$")


def detect_layout(rel_path: str, root_name: str) -> tuple[str, str]:
    """``(corpus, speaker)`` for a file from its path relative to the scan root.

    - VCTK 0.92: ``wav48_silence_trimmed/p225/p225_001_mic1.flac`` -> ``("vctk", "p225")``
    - HiFi-TTS: ``audio/92_clean/9022/..._0001.flac`` -> ``("hifitts", "92")``
    - EARS: ``p001/emo_adoration_freeform.wav`` (root named like EARS) -> ``("ears", "p001")``
    - otherwise ``(root folder name, parent directory name)``.
    """
    parts = Path(rel_path).parts
    stem = Path(rel_path).stem
    parent = parts[-2] if len(parts) > 1 else root_name
    if "wav48_silence_trimmed" in parts or "wav48" in parts or _VCTK_STEM.match(stem):
        return "vctk", stem.split("_")[0]
    for part in parts[:-1]:
        m = _HIFITTS_DIR.match(part)
        if m:
            return "hifitts", m.group(1)
    if _EARS_SPEAKER.match(parent) and "ears" in root_name.lower():
        return "ears", parent
    return root_name, parent


def keeps_vctk_mic(rel_path: str, root_name: str, mic: str) -> bool:
    """False for a VCTK recording of the microphone that ``mic`` (``mic1``, ``mic2`` or ``both``) leaves out."""
    if mic == "both":
        return True
    m = _VCTK_MIC.search(Path(rel_path).stem)
    return m is None or m.group(1) == mic or detect_layout(rel_path, root_name)[0] != "vctk"


# ---------------------------------------------------------------------------------------------------- walking
def iter_candidates(root: Path) -> Iterator[tuple[Path, bool]]:
    """Yield ``(path, is_audio_extension)`` for every file under ``root``, following directory symlinks once.

    Directory cycles are broken by remembering visited (device, inode) pairs. Broken or looping file symlinks are
    yielded like files (the check reports them).
    """
    visited: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError as e:
            log.warning("%s: cannot enter directory: %s", d, e.strerror or e)
            continue
        if (st.st_dev, st.st_ino) in visited:
            continue
        visited.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            log.warning("%s: cannot list directory: %s", d, e.strerror or e)
            continue
        subdirs = []
        for entry in entries:
            p = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False  # a looping symlink: treat as a file so it is reported
            if is_dir:
                subdirs.append(p)
            else:
                yield p, p.suffix.lower() in AUDIO_EXTENSIONS
        stack.extend(reversed(subdirs))


# ---------------------------------------------------------------------------------------------------- checking
def check_file(path: str | Path, kind: str, cfg: ScanConfig) -> tuple[dict | None, str | None]:
    """Validate one file. Returns ``(info, None)`` when accepted, ``(None, reason)`` when rejected."""
    spath = str(path)
    if not is_uri(spath):
        try:
            st = os.stat(spath)
        except OSError as e:
            if e.errno == 40:  # ELOOP
                return None, "symlink loop (too many levels of symbolic links)"
            if isinstance(e, FileNotFoundError):
                return None, "broken symlink or missing file"
            return None, f"cannot stat: {e.strerror or e}"
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_mode & 0o444 == 0:
            # Root can read anything, but workers running as other users could not: reject up front.
            return None, "unreadable permissions (no read permission bits set)"
        if st.st_size == 0:
            return None, "zero-length file"
        try:
            with open(spath, "rb"):
                pass
        except PermissionError:
            return None, "unreadable permissions (permission denied)"
        except OSError as e:
            return None, f"cannot open: {e.strerror or e}"
    try:
        info = audio_info(spath)
    except AudioError as e:
        msg = str(e).split(": ", 1)[-1]
        return None, f"not decodable audio (corrupt header or not an audio file): {msg}"
    if info.frames <= 0:
        return None, "no audio frames (empty stream)"
    min_sr = getattr(cfg.min_sample_rate, kind)
    if info.sample_rate < min_sr:
        return None, f"sample rate {info.sample_rate} Hz below the minimum {min_sr} Hz for {kind}"
    result = {
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "frames": info.frames,
        "duration_s": info.frames / info.sample_rate,
    }
    if cfg.verify == "header" or is_uri(spath) or info.subtype == "ffmpeg":
        return result, None
    return _verify_samples(spath, info.frames, cfg, result)


def measure_rir(path: str, kind: str) -> dict:
    """``rt60``, ``drr``, ``c50`` of an RIR file (its first channel); ``{}`` for other kinds."""
    if kind != "rir":
        return {}
    from datasets.audio import read_audio
    from datasets.banks import rir_metrics

    x, sr = read_audio(path, mono=False)  # (frames, channels); any format or URI the scan accepts
    return rir_metrics(x[:, 0] if x.ndim == 2 else x, sr)


def _verify_samples(path: str, frames: int, cfg: ScanConfig, result: dict) -> tuple[dict | None, str | None]:
    decoded = 0
    peak = 0.0
    try:
        for block in sf.blocks(path, blocksize=cfg.block_frames, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                return None, f"NaN or Inf samples (first bad frame near {decoded + _first_bad(block)})"
            decoded += len(block)
            if len(block):
                peak = max(peak, float(np.abs(block).max()))
    except Exception as e:
        return None, f"truncated or corrupt audio data after {decoded} of {frames} frames: {_last_line(e)}"
    if decoded < frames:
        return None, f"truncated audio data: decoded {decoded} of {frames} frames"
    if peak == 0.0 or 20 * math.log10(peak) < cfg.silence_dbfs:
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.1f}"
        return None, f"all-silent (peak {level} dBFS below {cfg.silence_dbfs} dBFS)"
    return result, None


def _first_bad(block: np.ndarray) -> int:
    return int(np.argmax(~np.isfinite(block).all(axis=1)))


def _last_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


# ---------------------------------------------------------------------------------------------------- scanning
def scan(
    roots: Sequence[str | Path],
    kind: str = "speech",
    name: str | None = None,
    cfg: ScanConfig | None = None,
    progress: bool = True,
) -> ScanResult:
    """Scan roots into manifest rows and rejects (not yet written; see :func:`scan_to_manifest`)."""
    cfg = cfg or ScanConfig()
    result = ScanResult()
    todo: list[tuple[Path, Path]] = []  # (root, file)
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"{root}: scan root does not exist")
        if root.is_file():
            candidates: Iterator[tuple[Path, bool]] = iter([(root, True)])
            root = root.parent
        else:
            candidates = iter_candidates(root)
        for p, audio in candidates:
            if not audio:
                result.ignored += 1
            elif not keeps_vctk_mic(str(p.relative_to(root)), root.name, cfg.vctk_mic):
                result.skipped_vctk_mic += 1
            else:
                todo.append((root, p))

    from tqdm import tqdm

    def work(item: tuple[Path, Path]):
        root, p = item
        try:
            info, reason = check_file(p, kind, cfg)
        except Exception as e:  # a single file must never stop the scan
            return None, f"unexpected error while checking: {type(e).__name__}: {e}"
        if info is None:
            return info, reason
        try:
            return {**info, **measure_rir(str(p), kind)}, None
        except Exception as e:
            return None, f"cannot measure the impulse response: {type(e).__name__}: {e}"

    accepted: list[tuple[Path, Path, dict]] = []
    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        bar = tqdm(total=len(todo), desc=f"scan {kind}", unit="file", disable=not progress, leave=False)
        for (root, p), (info, reason) in zip(todo, pool.map(work, todo), strict=True):
            bar.update(1)
            if info is None:
                result.rejects.append({"path": str(p.absolute()), "reason": reason})
            else:
                accepted.append((root, p, info))
        bar.close()

    rel = [str(p.relative_to(root)) if p != root else p.name for root, p, _ in accepted]
    layouts = [detect_layout(r, root.name) for r, (root, _, _) in zip(rel, accepted, strict=True)]
    corpora = [name or corpus for corpus, _ in layouts]
    ids: list[str] = [""] * len(accepted)
    by_corpus: dict[str, list[int]] = {}
    for i, c in enumerate(corpora):
        by_corpus.setdefault(c, []).append(i)
    for c, idx in by_corpus.items():
        for i, id_ in zip(idx, make_ids(c, [rel[i] for i in idx]), strict=True):
            ids[i] = id_
    for i, (_root, p, info) in enumerate(accepted):
        speaker = layouts[i][1]
        result.rows.append(
            {
                "id": ids[i],
                "path": str(p.absolute()),
                **info,
                "speaker": speaker,
                "corpus": corpora[i],
                "split": assign_split(corpora[i], speaker, cfg.split_ratios),
                "kind": kind,
            }
        )
    return result


def scan_to_manifest(
    roots: Sequence[str | Path],
    out: str | Path,
    kind: str = "speech",
    name: str | None = None,
    cfg: ScanConfig | None = None,
    progress: bool = True,
    extra_columns: dict[str, dict] | None = None,
) -> ScanResult:
    """Scan, then write ``out`` (Parquet) and its rejects beside it (:func:`datasets.manifest.rejects_path`).

    ``extra_columns`` maps absolute path -> kind-specific values (``noise_type`` ... for banks we generate).
    """
    cfg = cfg or ScanConfig()
    result = scan(roots, kind=kind, name=name, cfg=cfg, progress=progress)
    if extra_columns:
        for row in result.rows:
            row.update(extra_columns.get(row["path"], {}))
    out = Path(out)
    write_manifest(result.rows, out, kind, metadata={"scan": {"kind": kind, "name": name, **cfg.recorded()}})
    write_rejects(result.rejects, rejects_path(out))
    return result
