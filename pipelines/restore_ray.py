"""Restore on a Ray cluster: ``hires restore IN... --out DIR --address A`` as a Ray Data batch job.

The same inputs, outputs and rules as the local mode (:mod:`pipelines.restore`), at cluster scale:

* **Inputs**: local files and folders (searched recursively), manifests (``*.parquet`` with a ``path`` column; a
  relative path is taken from the manifest's folder; outputs mirror the paths below their common folder), and
  ``s3://`` (any fsspec URI) files or prefixes. ``DIR`` is a local folder or an ``s3://`` prefix. Workers read the
  inputs themselves: local inputs must be visible to every node (one host or a shared file system); URIs are read
  through fsspec with seeking, a window at a time, never copied whole.
* **Plan** (plain Ray tasks, one per file, no models): the restorer's streaming first pass (header, empty, too
  short, non-finite samples, loudness -> gain, :meth:`training.restorer.Restorer.plan`). A file that fails it is a
  reject with its one-line reason.
* **Restore** (an actor pool): each file's windows (5.12 s, cross-faded, :mod:`training.windows`) become rows of
  their own, so the windows of one long file spread over every actor. Each actor holds the models (shipped from the
  driver through the object store, so a cluster needs no shared model folder) on one GPU when the cluster has
  GPUs, else on CPUs; it reads its window's samples (plus a resampling context) and restores them with the window's
  own seed (:func:`training.restorer.window_seed`): the result does not depend on which actor ran it.
* **Reassembly** (driver): windows come back in order (Ray Data's ``preserve_order``), are cross-faded by
  :class:`training.windows.OverlapAdd` and streamed to :class:`training.restorer.OutputWriter` (48 kHz, 24-bit),
  one file at a time; a file appears only when complete (temp name + rename; ``s3://``: one upload of the finished
  file). Memory: a window is about 1 MB per stage; Ray Data bounds how many are in flight, and the driver holds one
  overlap of the file being written.
* **Rerun**: outputs that exist are skipped (they are only ever published complete); ``DIR/rejects.jsonl`` is
  rewritten with this run's rejects. With the same seed the outputs are the local mode's (see the tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from datasets import storage
from datasets.audio import AUDIO_EXTENSIONS, FFMPEG_EXTENSIONS, AudioError, downmix, is_uri, short_error
from datasets.errors import DataError, HiresError, UsageError
from pipelines.restore import EXIT_SOME_FAILED, REJECTS, check_writable, reject_reason
from training.restorer import (
    FORMATS,
    SAMPLE_RATE,
    Bundle,
    FilePlan,
    OutputWriter,
    RestoreOptions,
    Restorer,
    stage_path,
)
from training.windows import OverlapAdd, Window, WindowPlan

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".parquet"
PLAN_CPUS = 1.0  # a plan task streams one file through the loudness meter
EXPAND_CPUS = 0.1  # turning a file's plan into window rows is bookkeeping; it must never wait for the actors


@dataclass(frozen=True)
class RayJob:
    """One input file and where its output goes (both local paths or URIs)."""

    source: str
    output: str


@dataclass
class RayRestoreSummary:
    out: str
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # outputs already there (finished by an earlier run)
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    seconds: float = 0.0  # input audio restored in this run
    windows: int = 0
    actors: int = 0
    device: str = "cpu"
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.rejected

    def line(self) -> str:
        text = (
            f"restored {len(self.restored)} file(s) ({self.seconds / 3600:.3f} h, {self.windows} windows on "
            f"{self.actors} {self.device} actor(s)), {len(self.skipped)} already done, "
            f"{len(self.rejected)} rejected"
        )
        if self.rejected:
            text += f" (reasons in {storage.join(self.out, REJECTS)})"
        return text


# ------------------------------------------------------------------------------------------------------ inputs


def _is_audio_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in AUDIO_EXTENSIONS and not PurePosixPath(name).name.startswith(
        "."
    )


def _normalize(path: str) -> str:
    return path.rstrip("/") if is_uri(path) else str(Path(path).expanduser().absolute())


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (both normalised, both local or both URIs)."""
    sep = "/" if is_uri(folder) else os.sep
    return path == folder or path.startswith(folder.rstrip(sep) + sep)


def _manifest_candidates(manifest: str) -> list[tuple[str, str]]:
    """``(source, relative output path)`` of each row of a manifest's ``path`` column."""
    from datasets.manifest import read_parquet

    try:
        table = read_parquet(manifest)
    except FileNotFoundError:
        raise UsageError(f"{manifest}: manifest not found") from None
    except Exception as e:
        raise DataError(f"{manifest}: not a readable Parquet manifest: {' '.join(str(e).split())}") from None
    if "path" not in table.column_names:
        raise DataError(f"{manifest}: manifest lacks the 'path' column")
    base = manifest.rsplit("/", 1)[0] if is_uri(manifest) else str(Path(manifest).parent)
    paths = []
    for p in table.column("path").to_pylist():
        if not p:
            continue
        p = str(p)
        paths.append(p if is_uri(p) or os.path.isabs(p) else storage.join(base, p))
    paths = [_normalize(p) for p in paths]
    if not paths:
        return []
    # mirror below the deepest folder that holds them all
    parents = [p.rsplit("/", 1)[0] for p in paths]
    root = os.path.commonprefix(parents)
    if not all(_inside(p, root) for p in paths):
        root = root.rsplit("/", 1)[0]
    return [(p, p[len(root) :].lstrip("/") if root else PurePosixPath(p).name) for p in paths]


def _uri_candidates(uri: str, out: str) -> list[tuple[str, str]]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    if fs.isfile(path):
        return [(uri, PurePosixPath(path).name)]
    if not fs.isdir(path):
        raise UsageError(f"{uri}: no such file or prefix")
    protocol = uri.split("://", 1)[0]
    found = []
    for key in sorted(fs.find(path)):
        full = f"{protocol}://{key}"
        rel = key[len(path.rstrip("/")) :].lstrip("/")
        if _is_audio_name(rel) and not _inside(full, out):
            found.append((full, rel))
    return found


def _local_candidates(item: str, out: str) -> list[tuple[str, str]]:
    path = Path(item).expanduser()
    if not path.exists():
        raise UsageError(f"{item}: no such file or folder")
    if not path.is_dir():
        return [(str(path.absolute()), path.name)]
    root = path.absolute()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # never descend into the output folder: a rerun must not restore its own outputs
        dirnames[:] = sorted(d for d in dirnames if is_uri(out) or not _inside(str(here / d), out))
        for name in sorted(filenames):
            if _is_audio_name(name):
                found.append((str(here / name), (here / name).relative_to(root).as_posix()))
    return found


def collect_ray_jobs(inputs: Sequence[str], out: str, fmt: str = "flac") -> tuple[list[RayJob], list[dict]]:
    """Pair each input file with its output under ``out``; returns ``(jobs, rejects)``.

    The rules of :func:`pipelines.restore.collect_jobs` (mirroring, the output folder skipped, collisions and an
    output that is an input rejected), for local paths, manifests and URIs alike.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = _normalize(out)
    suffix = FORMATS[fmt][1]
    candidates: list[tuple[str, str]] = []
    for item in inputs:
        if str(item).lower().endswith(MANIFEST_SUFFIX):
            candidates.extend(_manifest_candidates(_normalize(str(item))))
        elif is_uri(item):
            candidates.extend(_uri_candidates(_normalize(str(item)), out))
        else:
            candidates.extend(_local_candidates(str(item), out))
    sources = {src if is_uri(src) else str(Path(src).resolve()) for src, _ in candidates}
    jobs: list[RayJob] = []
    rejects: list[dict] = []
    taken: dict[str, str] = {}
    for src, rel in candidates:
        dst = storage.join(out, str(PurePosixPath(rel).with_suffix(suffix)))
        resolved = dst if is_uri(dst) else str(Path(dst).resolve())
        if resolved in sources:
            rejects.append(
                {"path": src, "reason": f"output {dst} would overwrite an input; choose another --out"}
            )
        elif dst in taken:
            if taken[dst] != src:
                rejects.append({"path": src, "reason": f"same output {dst} as {taken[dst]}; not restored"})
        else:
            taken[dst] = src
            jobs.append(RayJob(src, dst))
    return jobs, rejects


def _existing_outputs(out: str, jobs: list[RayJob]) -> set[str]:
    """The jobs' outputs that exist (one listing for an object store instead of a request per file)."""
    if not is_uri(out):
        return {j.output for j in jobs if os.path.exists(j.output)}
    import fsspec

    fs, path = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    if not fs.exists(path):
        return set()
    protocol = out.split("://", 1)[0]
    present = {f"{protocol}://{key}" for key in fs.find(path)}
    return {j.output for j in jobs if j.output in present}


def write_ray_rejects(out: str, rejects: list[dict]) -> None:
    """``out/rejects.jsonl`` (local or URI) written atomically, as the local mode writes it."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode()
    storage.write_bytes(storage.join(out, REJECTS), data)


# ------------------------------------------------------------------------------------------------------ sources


class _RemoteSource:
    """An audio object behind a URI read in slices through fsspec (libsndfile seeks in the remote file), mono."""

    def __init__(self, uri: str) -> None:
        import soundfile as sf

        from datasets.audio import open_binary

        self.name = self.path = uri
        try:
            self._file = open_binary(uri)
        except FileNotFoundError:
            raise DataError(f"{uri}: file not found") from None
        try:
            self._sf = sf.SoundFile(self._file)
        except Exception as e:
            self._file.close()
            raise AudioError(f"{uri}: not readable audio ({short_error(e)})") from None
        self.sample_rate = int(self._sf.samplerate)
        self.frames = int(self._sf.frames)
        self.channels = int(self._sf.channels)

    def blocks(self, block: int) -> Iterator[np.ndarray]:
        self._sf.seek(0)
        try:
            for x in self._sf.blocks(blocksize=block, dtype="float32", always_2d=True):
                yield downmix(x)
        except (RuntimeError, OSError) as e:
            raise AudioError(f"{self.name}: cannot decode audio ({short_error(e)})") from None

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(start, 0), min(max(stop, 0), self.frames)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        try:
            self._sf.seek(start)
            return downmix(self._sf.read(stop - start, dtype="float32", always_2d=True))
        except (RuntimeError, OSError) as e:
            raise AudioError(f"{self.name}: cannot decode audio ({short_error(e)})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sf.close()
        with contextlib.suppress(Exception):
            self._file.close()


def _needs_ffmpeg(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in FFMPEG_EXTENSIONS


class _OpenSource:
    """A readable source for one input: local files through the restorer's reader, URIs through fsspec, and
    ffmpeg-only containers decoded once to a temporary WAV (a local copy first for URIs)."""

    def __init__(self, path: str) -> None:
        from training.restorer import FileSource, decode_with_ffmpeg

        self.path = path
        self.scratch: str | None = None
        self.source: Any
        if _needs_ffmpeg(path):
            self.scratch = tempfile.mkdtemp(prefix="hires-restore-ray-")
            # an actor keeps its last source open until it leaves the pool: removed then, or at the latest when its
            # process exits
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.scratch, True)
            local = path
            if is_uri(path):
                local = os.path.join(self.scratch, "input" + PurePosixPath(path).suffix)
                try:
                    with storage.open_read(path) as src, open(local, "wb") as dst:
                        shutil.copyfileobj(src, dst, storage.CHUNK)
                except FileNotFoundError:
                    self.close()
                    raise DataError(f"{path}: file not found") from None
            try:
                self.source = FileSource(decode_with_ffmpeg(local, self.scratch), name=path)
            except BaseException:
                self.close()
                raise
        elif is_uri(path):
            self.source = _RemoteSource(path)
        else:
            p = Path(path)
            if not p.exists():
                raise DataError(f"{path}: file not found")
            if not p.is_file():
                raise DataError(f"{path}: not a file")
            if p.stat().st_size == 0:
                raise DataError(f"{path}: empty file (0 bytes)")
            self.source = FileSource(path, name=path)

    def close(self) -> None:
        if isinstance(getattr(self, "source", None), _RemoteSource):
            self.source.close()
        if self.scratch is not None:
            self._cleanup()
            self.scratch = None


# ------------------------------------------------------------------------------------------------- plan step


class _Planner(Restorer):
    """The restorer's planning without its networks: :meth:`Restorer.plan` needs only the recovery's loudness
    target and the window alignment, so plan tasks run the exact local code without loading any model."""

    def __init__(self, target_lufs: float | None, align: int) -> None:  # deliberately not Restorer.__init__
        self.target_lufs = target_lufs
        self.align = align

    def _check_options(self, options: RestoreOptions) -> None:
        """The driver checked the options against the loaded bundle before any task started."""


def _plan_file(row: dict[str, Any], planner: _Planner, options: RestoreOptions) -> dict[str, Any]:
    """Plan one input (a Ray Data ``map``): the plan's numbers, or ``error`` with the one-line reason."""
    out = {
        "file": row["file"],
        "error": "",
        "sample_rate": 0,
        "channels": 0,
        "frames": 0,
        "length": 0,
        "loudness": 0.0,
        "gain": 1.0,
    }
    try:
        src = _OpenSource(row["source"])
        try:
            plan = planner.plan_source(src.source, src.source.channels, options, None)
        finally:
            src.close()
    except Exception as e:
        out["error"] = reject_reason(e)
        return out
    out.update(
        sample_rate=plan.sample_rate,
        channels=plan.channels,
        frames=plan.frames,
        length=plan.length,
        loudness=plan.loudness_lufs,
        gain=plan.gain,
    )
    return out


def _window_rows(row: dict[str, Any], planner: _Planner, options: RestoreOptions) -> list[dict[str, Any]]:
    """A planned file's windows as rows of their own (a Ray Data ``flat_map``): each carries what reading it
    needs, so any actor can restore it."""
    wplan = planner.window_plan(int(row["length"]), options)
    return [
        {
            "file": row["file"],
            "index": w.index,
            "source": row["source"],
            "sample_rate": row["sample_rate"],
            "channels": row["channels"],
            "frames": row["frames"],
            "length": row["length"],
            "gain": row["gain"],
            "start": w.start,
            "window": w.length,
        }
        for w in wplan.windows
    ]


# ------------------------------------------------------------------------------------------------ the actors


def pack_bundle(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """The bundle as plain data for the object store: per stage its ``model.json`` and its weights as safetensors
    bytes (networks themselves do not pickle: weight-normalised layers refuse it, and pickles are not a format we
    load models from). :func:`unpack_bundle` rebuilds it the way :func:`training.model_dir.load_model` does."""
    from safetensors.torch import save

    packed = {}
    for stage in ("recovery", "autoencoder", "vocoder", "ldm"):
        loaded = getattr(bundle, stage)
        if loaded is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in loaded.network.state_dict().items()}
            packed[stage] = {"meta": loaded.meta, "weights": save(state), "source": loaded.source}
    return packed


def unpack_bundle(packed: dict[str, dict[str, Any]]) -> Bundle:
    from safetensors.torch import load

    from training.model_dir import META, LoadedModel, stage_config_of
    from training.models import registry

    loaded = {}
    for stage, entry in packed.items():
        cfg = stage_config_of(entry["meta"].get("config"), f"{entry['source']}/{META}: config")
        network = registry.build(cfg)
        network.load_state_dict(load(entry["weights"]), strict=True)
        network.eval().requires_grad_(False)
        loaded[stage] = LoadedModel(stage, cfg, network, entry["meta"], entry["source"])
    return Bundle(**loaded, sources={s: e["source"] for s, e in packed.items()})  # checked on construction


class WindowRestorer:
    """An actor of the pool: holds a :class:`Restorer` and restores batches of window rows.

    A window that cannot be read or restored comes back with ``error`` set (and zeros) instead of failing the
    dataset, so the driver rejects that one file and the others go on.
    """

    def __init__(self, bundle: Any, device: str, threads: int, options: RestoreOptions, stages: list[str]):
        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        self.restorer = Restorer(unpack_bundle(ray.get(bundle)), device=device)
        self.options = options
        self.stages = stages
        self._open: tuple[str, _OpenSource] | None = (
            None  # the source last read (consecutive windows share it)
        )

    def _source(self, path: str) -> Any:
        if self._open is not None and self._open[0] != path:
            self._open[1].close()
            self._open = None
        if self._open is None:
            self._open = (path, _OpenSource(path))
        return self._open[1].source

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["file"])
        errors = [""] * n
        inputs: dict[int, np.ndarray] = {}
        for i in range(n):
            plan = FilePlan(
                source=str(batch["source"][i]),
                sample_rate=int(batch["sample_rate"][i]),
                channels=int(batch["channels"][i]),
                frames=int(batch["frames"][i]),
                length=int(batch["length"][i]),
                loudness_lufs=0.0,
                gain=float(batch["gain"][i]),
                windows=WindowPlan(int(batch["length"][i]), int(batch["window"][i]), 0, ()),
            )
            window = Window(int(batch["index"][i]), int(batch["start"][i]), int(batch["window"][i]), 0, 0)
            try:
                inputs[i] = self.restorer.read_source_window(self._source(plan.source), plan, window)
            except Exception as e:
                errors[i] = reject_reason(e)
        size = int(batch["window"][0]) if n else 0
        result = {stage: np.zeros((n, size), dtype=np.float32) for stage in self.stages}
        good = sorted(inputs)
        if good:
            try:
                outs = self.restorer.restore_windows(
                    [inputs[i] for i in good], [int(batch["index"][i]) for i in good], self.options
                )
                for i, out in zip(good, outs, strict=True):
                    for stage in self.stages:
                        result[stage][i] = out[stage]
            except Exception as e:
                reason = reject_reason(e)
                for i in good:
                    errors[i] = reason
        return {
            "file": np.asarray(batch["file"]),
            "index": np.asarray(batch["index"]),
            "error": np.asarray(errors, dtype=object),
            **result,
        }


# ---------------------------------------------------------------------------------------------- reassembly


def _stage_target(output: str, stage: str) -> str:
    """:func:`training.restorer.stage_path` for a local path or a URI (``Path`` would fold its ``//``)."""
    if not is_uri(output):
        return str(stage_path(output, stage))
    protocol, rest = output.split("://", 1)
    return f"{protocol}://{stage_path(PurePosixPath(rest), stage).as_posix()}"


class _FileOutput:
    """The streamed outputs of one file: an :class:`OverlapAdd` and an :class:`OutputWriter` per stage; for an
    object store the writers write to a local scratch folder and :meth:`commit` uploads the finished files."""

    def __init__(
        self, job: RayJob, plan: FilePlan, stages: list[str], final: str, fmt: str, scratch: str | None
    ):
        self.job, self.plan, self.final = job, plan, final
        targets = {
            stage: job.output if stage == final else _stage_target(job.output, stage) for stage in stages
        }
        if scratch is not None:  # object store: write locally, upload when complete
            self.uploads = dict(targets)
            local = {s: os.path.join(scratch, t.split("://", 1)[1]) for s, t in targets.items()}
        else:
            self.uploads = {}
            local = targets
        self.local = local
        self.assemblers = {s: OverlapAdd(plan.windows) for s in stages}
        self.writers: dict[str, OutputWriter] = {}
        try:
            for s in stages:
                self.writers[s] = OutputWriter(local[s], fmt)
        except BaseException:
            self.abort()
            raise

    def add(self, index: int, outputs: dict[str, np.ndarray]) -> None:
        for stage, ola in self.assemblers.items():
            for chunk in ola.add(index, outputs[stage]):
                self.writers[stage].write(self.plan.finish(chunk))

    @property
    def done(self) -> bool:
        return all(ola.done for ola in self.assemblers.values())

    def commit(self) -> None:
        for stage, w in self.writers.items():
            if w.frames != self.plan.length:
                raise RuntimeError(
                    f"{self.job.source}: wrote {w.frames} samples of {stage}, expected {self.plan.length}"
                )
        # the final output last: its presence marks the whole file as done
        for stage in sorted(self.writers, key=lambda s: s == self.final):
            path = self.writers[stage].commit()
            if stage in self.uploads:
                storage.publish_file(path, self.uploads[stage])

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        for path in self.local.values():
            if self.uploads:
                Path(path).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- the job


def _resources(device: str, actors: int | None, cpus_per_actor: float | None) -> tuple[str, int, float, int]:
    """``(device, actors, CPUs per actor, GPUs per actor)`` from the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1.0))
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device.startswith("cuda"):
        if not gpus:
            raise UsageError(f"--device {device}: the Ray cluster has no GPU")
        device = "cuda"  # Ray gives each actor its own GPU as cuda:0
        per = cpus_per_actor or 1.0
        return device, actors or gpus, per, 1
    if device != "cpu":
        raise UsageError(f"--device {device}: expected cpu, cuda or cuda:N")
    per = cpus_per_actor or 1.0
    # leave room for the tasks that feed the actors (window rows): a pool holding every CPU starves them
    auto = max(1, int((cpus - EXPAND_CPUS) // per))
    return device, actors or auto, per, 0


@contextlib.contextmanager
def _ray(address: str | None, progress: bool) -> Iterator[None]:
    import ray

    from pipelines.ray_setup import init_ray

    started, _ = init_ray(address, None, quiet=not progress)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _progress_bar(total_s: float, progress: bool):
    from tqdm import tqdm

    return tqdm(
        total=total_s / 3600,
        unit="h",
        desc="restore",
        disable=not progress,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}]",
    )


def restore_on_ray(
    inputs: Sequence[str],
    out: str,
    bundle: Bundle | str | Callable[[], Bundle],
    options: RestoreOptions | None = None,
    *,
    address: str | None = "auto",
    fmt: str = "flac",
    device: str = "auto",
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> RayRestoreSummary:
    """Restore every input into ``out`` as a Ray Data job on the cluster at ``address`` (see the module docstring).

    ``bundle``: a loaded :class:`Bundle`, a bundle folder, or a factory called only when some file is left to
    restore (a rerun with everything done loads no model). ``device``: ``auto`` (a GPU per actor when the cluster
    has GPUs), ``cpu`` or ``cuda``. ``actors``: the pool size (default: one per GPU, or one per ``cpus_per_actor``
    CPUs, leaving a little for the feeding tasks). ``batch_size``: windows per network call.
    """
    began = time.perf_counter()
    options = options or RestoreOptions()
    out = _normalize(out)
    jobs, rejects = collect_ray_jobs(inputs, out, fmt)
    if not is_uri(out):
        check_writable(Path(out))
    summary = RayRestoreSummary(out=out, rejected=list(rejects))
    done = _existing_outputs(out, jobs)
    summary.skipped = [j.output for j in jobs if j.output in done]
    todo = [j for j in jobs if j.output not in done]
    try:
        if todo:
            if isinstance(bundle, str):
                bundle = Bundle.load(bundle, need_generative=not options.recovery_only)
            elif not isinstance(bundle, Bundle):
                bundle = bundle()
            if not options.recovery_only and not bundle.generative:
                raise UsageError(
                    "the generative stage needs autoencoder, vocoder and ldm models (or --recovery-only)"
                )
            with _ray(address, progress):
                _run(
                    todo,
                    out,
                    bundle,
                    options,
                    fmt,
                    device,
                    actors,
                    cpus_per_actor,
                    batch_size,
                    progress,
                    summary,
                )
    finally:
        summary.wall_seconds = time.perf_counter() - began
        write_ray_rejects(out, summary.rejected)
    return summary


def _data_context():
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ctx


def _run(
    todo: list[RayJob],
    out: str,
    bundle: Bundle,
    options: RestoreOptions,
    fmt: str,
    device: str,
    actors: int | None,
    cpus_per_actor: float | None,
    batch_size: int,
    progress: bool,
    summary: RayRestoreSummary,
) -> None:
    import ray

    device, pool, per_actor, gpus = _resources(device, actors, cpus_per_actor)
    summary.actors, summary.device = pool, device
    bundle_ref = ray.put(pack_bundle(bundle))  # once in the object store, read by every actor
    mel = bundle.ldm.config.features.mel if bundle.ldm is not None else None
    hop = mel.hop_length if mel is not None else 480
    planner = _Planner(bundle.recovery.config.train.input_loudness_lufs, hop * 3 // math.gcd(hop, 3))

    ctx = _data_context()
    # 1. plan: one task per file (no models); bad inputs become rejects with their reason
    items = [{"file": i, "source": j.source} for i, j in enumerate(todo)]
    planned = ray.data.from_items(items, override_num_blocks=min(len(items), 1000)).map(
        _plan_file, fn_kwargs={"planner": planner, "options": options}, num_cpus=PLAN_CPUS
    )
    # the plans' numbers only: a file's FilePlan (with its windows) is built when its first window comes back
    rows: dict[int, dict] = {}
    for row in planned.iter_rows():
        i = int(row["file"])
        if row["error"]:
            summary.rejected.append({"path": todo[i].source, "reason": str(row["error"])})
        else:
            rows[i] = {**row, "source": todo[i].source}
    order = sorted(rows)
    if not order:
        return

    # 2. restore: window rows spread over the actor pool, results back in order for the streamed reassembly
    stages = [options.final_stage]
    if options.keep_stages and not options.recovery_only:
        stages = ["recovery", "restored"]
    previous_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        files = ray.data.from_items([rows[i] for i in order], override_num_blocks=min(len(order), 1000))
        windows = files.flat_map(
            _window_rows, fn_kwargs={"planner": planner, "options": options}, num_cpus=EXPAND_CPUS
        ).repartition(target_num_rows_per_block=batch_size)
        restored = windows.map_batches(
            WindowRestorer,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            fn_constructor_kwargs={
                "bundle": bundle_ref,
                "device": device,
                "threads": max(1, int(per_actor)),
                "options": options,
                "stages": stages,
            },
            num_cpus=per_actor,
            num_gpus=gpus,
        )
        _assemble(restored, todo, rows, planner, stages, options, fmt, out, progress, summary)
    finally:
        ctx.execution_options.preserve_order = previous_order


def _file_plan(row: dict, options: RestoreOptions, planner: _Planner) -> FilePlan:
    """A planned file's :class:`FilePlan` from the numbers its plan task returned."""
    return FilePlan(
        source=str(row["source"]),
        sample_rate=int(row["sample_rate"]),
        channels=int(row["channels"]),
        frames=int(row["frames"]),
        length=int(row["length"]),
        loudness_lufs=float(row["loudness"]),
        gain=float(row["gain"]),
        windows=planner.window_plan(int(row["length"]), options),
        final_stage=options.final_stage,
    )


def _assemble(
    restored: Any,
    todo: list[RayJob],
    rows: dict[int, dict],
    planner: _Planner,
    stages: list[str],
    options: RestoreOptions,
    fmt: str,
    out: str,
    progress: bool,
    summary: RayRestoreSummary,
) -> None:
    """Stream the ordered window results into the output files, one file at a time."""
    scratch = tempfile.mkdtemp(prefix="hires-restore-out-") if is_uri(out) else None
    bar = _progress_bar(sum(r["frames"] / r["sample_rate"] for r in rows.values()), progress)
    current: _FileOutput | None = None
    planned: tuple[int, FilePlan] | None = None  # the file whose windows are coming in
    failed: set[int] = set()
    written: set[int] = set()
    try:
        for row in restored.iter_rows():
            i, k = int(row["file"]), int(row["index"])
            if i in failed:
                continue
            if planned is None or planned[0] != i:
                planned = (i, _file_plan(rows[i], options, planner))
            plan = planned[1]
            w = plan.windows.windows[k]
            covered = (
                plan.length - w.start
                if k == len(plan.windows) - 1
                else min(plan.windows.hop, plan.length - w.start)
            )
            bar.update(covered / SAMPLE_RATE / 3600)
            summary.windows += 1
            if current is not None and current.job is not todo[i]:
                current.abort()  # a file whose last window never came (cannot happen with ordered results)
                raise RuntimeError(f"{current.job.source}: windows out of order")
            try:
                if row["error"]:
                    raise _WindowError(str(row["error"]))
                if current is None:
                    current = _FileOutput(todo[i], plan, stages, options.final_stage, fmt, scratch)
                current.add(k, {s: row[s] for s in stages})
                if current.done:
                    current.commit()
                    summary.restored.append(todo[i].output)
                    written.add(i)
                    summary.seconds += plan.seconds
                    current = None
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:
                if current is not None:
                    current.abort()
                    current = None
                failed.add(i)
                summary.rejected.append(
                    {
                        "path": todo[i].source,
                        "reason": str(e) if isinstance(e, _WindowError) else reject_reason(e),
                    }
                )
                if not isinstance(e, HiresError | OSError | _WindowError):
                    log.exception("writing %s failed", todo[i].output)
        missing = [todo[i].source for i in rows if i not in failed and i not in written]
        if missing:
            raise RuntimeError(
                f"the job finished without the windows of {len(missing)} file(s), e.g. {missing[0]}"
            )
    finally:
        if current is not None:
            current.abort()
        bar.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class _WindowError(Exception):
    """A window's read or restore failed on an actor (the message is the actor's one-line reason)."""


# ------------------------------------------------------------------------------------------------------- CLI


def run(args: Any, options: RestoreOptions, load: Callable[[], Bundle]) -> int:
    """``hires restore ... --address A`` (called by :mod:`pipelines.commands.restore` with its bundle loader);
    returns the exit code."""
    import sys

    # --device cpu is the command's default: on a cluster it means "a GPU per actor when there are GPUs"
    device = "auto" if args.device == "cpu" else args.device
    summary = restore_on_ray(
        args.inputs,
        args.out,
        load,
        options,
        address=args.address,
        fmt=args.format,
        device=device,
        cpus_per_actor=float(args.threads) if args.threads else None,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(summary.line(), file=sys.stderr if args.quiet else sys.stdout)
    for reject in summary.rejected:
        print(f"rejected: {reject['reason']}", file=sys.stderr)
    return 0 if summary.ok else EXIT_SOME_FAILED
