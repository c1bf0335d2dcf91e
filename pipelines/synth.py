"""Synthesis of paired (clean, degraded) training data into reproducible, resumable WebDataset shards.

Two phases, as in the URGENT challenge simulation (plan, then render):

1. **plan** (driver, pure and cheap): every clean utterance of the manifest is cut into samples of
   ``segment.seconds`` (5.12 s = 245 760 samples at 48 kHz); the last piece is zero-padded with its valid length
   recorded, or dropped (``segment.tail``, ``segment.min_tail_seconds``). Each sample gets the key
   ``{utt_id}_{seg:04d}``, its degradation steps ``degradations.plan(key, seed, chain, catalog)`` and a shard.
   Samples are ordered by (split, key) and grouped into shards of ``shards.samples_per_shard`` (a new shard
   starts at each split). The table is written to ``DIR/plan.parquet`` with one row group per shard, so a
   render task reads exactly its own rows.
2. **render** (Ray Data): one row per shard, ``map`` runs :func:`render_shard` which reads only the needed
   slice of each source, renders the chain, encodes FLAC and streams a tar to a scratch file, then publishes
   it as ``DIR/shards/shard-NNNNNN.tar`` (rename locally, single upload on object stores) and finally records
   ``DIR/state/shard-NNNNNN.json`` (name, samples, seconds, bytes, sha256, rejects).

Reproducibility: tars are built with fixed member order (plan order; ``.clean.flac``, ``.degraded.flac``,
``.json`` per sample), mtime 0, uid/gid 0, empty owner names, mode 0644, GNU format; sample parameters depend on
(seed, key) only; nothing in a shard or in ``index.json`` depends on timing, worker count or host.

Resume: the run identity (output config sha256, seed, manifest sha256s, code version) is stored in the plan's
metadata. Rerunning with the same identity keeps every shard whose state record exists and whose bytes hash
to the recorded sha256 (checked inside the tasks, in parallel); everything else is rendered again. A shard is
visible under its final name only once complete, and a state record is written only after its shard, so a kill
at any point loses at most the shards in flight. A different identity is refused unless ``force``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import platform
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasets import storage
from datasets.audio import AudioError, encode_audio, is_uri, read_audio, resample
from datasets.config import canonical_json
from pipelines.synth_config import SynthConfig, output_config, output_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}
RUN_METADATA_KEY = b"hires.run"
REPO_ROOT = Path(__file__).resolve().parent.parent
# sources whose content decides the rendered bytes: a change there is a new code version
OUTPUT_SOURCES = ("degradations", "datasets/audio.py", "pipelines/synth.py", "pipelines/synth_config.py")

PLAN_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("source_sample_rate", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("frames", pa.int64(), nullable=False),
        pa.field("valid", pa.int64(), nullable=False),
        pa.field("speaker", pa.string(), nullable=False),
        pa.field("corpus", pa.string(), nullable=False),
        pa.field("steps", pa.string(), nullable=False),
    ]
)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``{package version}+src.{sha256[:12]}`` of the sources that decide the output bytes.

    A content hash rather than a git commit: it is the same in a ``ray job submit`` working directory (no
    ``.git``) and changes exactly when rendering code changes.
    """
    try:
        version = metadata.version("hires")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256()
    for entry in OUTPUT_SOURCES:
        root = REPO_ROOT / entry
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            if f.exists():
                digest.update(f.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{version}+src.{digest.hexdigest()[:12]}"


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose output enters the shards (recorded in the index, not compared)."""
    import soundfile

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }
    for name in ("scipy", "soxr", "pyarrow", "av", "fast-mp3-augment", "audiomentations", "soundfile"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------------------------------- plan


@dataclass
class PlanStats:
    utterances: int = 0
    segments: int = 0
    dropped_tails: int = 0
    dropped_utterances: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def segment_utterance(
    frames: int, source_sr: int, cfg: SynthConfig
) -> tuple[list[tuple[int, int, int]], bool]:
    """Cut ``frames`` source samples into ``[(offset, frames, valid_out)]`` (offset/frames in source samples,
    ``valid_out`` in output samples); the flag says whether a tail piece was dropped."""
    seg = cfg.segment
    seg_src = int(round(seg.seconds * source_sr))
    n_full, tail = divmod(int(frames), seg_src)
    pieces = [(i * seg_src, seg_src, seg.samples) for i in range(n_full)]
    dropped = False
    if tail > 0:
        if seg.tail == "pad" and tail / source_sr >= seg.min_tail_seconds:
            valid = min(seg.samples, int(round(tail * seg.sample_rate / source_sr)))
            pieces.append((n_full * seg_src, tail, valid))
        else:
            dropped = True
    return pieces, dropped


def make_plan(clean, cfg: SynthConfig, seed: int, catalog) -> tuple[pa.Table, PlanStats]:
    """The plan table (rows in shard order) for a clean manifest DataFrame; pure function of its inputs."""
    from degradations import plan as plan_chain

    stats = PlanStats()
    rows = []
    for r in clean.sort_values("id", kind="stable").itertuples(index=False):
        stats.utterances += 1
        pieces, dropped = segment_utterance(int(r.frames), int(r.sample_rate), cfg)
        stats.dropped_tails += int(dropped)
        stats.dropped_utterances += int(not pieces)
        for j, (offset, frames, valid) in enumerate(pieces):
            key = f"{r.id}_{j:04d}"
            steps = plan_chain(key, seed, cfg.chain, catalog)
            rows.append(
                {
                    "key": key,
                    "split": str(r.split),
                    "source_id": str(r.id),
                    "path": str(r.path),
                    "source_sample_rate": int(r.sample_rate),
                    "offset": offset,
                    "frames": frames,
                    "valid": valid,
                    "speaker": str(r.speaker),
                    "corpus": str(r.corpus),
                    "steps": canonical_json(steps),
                }
            )
    stats.segments = len(rows)
    rows.sort(key=lambda row: (SPLIT_ORDER.get(row["split"], len(SPLIT_ORDER)), row["split"], row["key"]))
    shard, position, previous_split = -1, cfg.shards.samples_per_shard, None
    for row in rows:
        new_split = cfg.shards.split_shards and row["split"] != previous_split
        if position >= cfg.shards.samples_per_shard or new_split:
            shard, position = shard + 1, 0
        row["shard"], row["position"] = shard, position
        position += 1
        previous_split = row["split"]
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA) if rows else PLAN_SCHEMA.empty_table()
    return table, stats


def plan_bytes(table: pa.Table, identity: dict) -> bytes:
    """Parquet bytes of the plan: one row group per shard, run identity in the schema metadata."""
    schema = PLAN_SCHEMA.with_metadata({RUN_METADATA_KEY: canonical_json(identity).encode()})
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="zstd") as writer:
        if table.num_rows == 0:
            writer.write_table(table.replace_schema_metadata(schema.metadata))
        shards = table.column("shard").to_numpy()
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(shards) else []
        bounds = [*map(int, starts), table.num_rows]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            part = table.slice(a, b - a).replace_schema_metadata(schema.metadata)
            writer.write_table(part, row_group_size=b - a)
    return buf.getvalue()


def read_run_identity(plan_path: str) -> dict | None:
    """The identity stored in an existing plan, or ``None`` when there is no readable plan."""
    if not storage.exists(plan_path):
        return None
    with storage.open_read(plan_path) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    raw = meta.get(RUN_METADATA_KEY)
    return json.loads(raw) if raw else None


# --------------------------------------------------------------------------------------------------- render


@dataclass(frozen=True)
class RenderContext:
    """What every shard task needs besides its shard number (small and picklable)."""

    out: str
    plan_path: str
    noise_manifest: str
    rir_manifest: str
    sample_rate: int
    segment_samples: int
    flac_subtype: str
    seed: int
    code_version: str


@functools.lru_cache(maxsize=4)
def _worker_banks(noise_manifest: str, rir_manifest: str, sr: int):
    """Banks built once per worker process and reused by every task it runs (they cache decoded audio)."""
    from degradations import Banks

    return Banks.from_manifests(noise_manifest, rir_manifest, sr=sr)


class _HashingWriter:
    """File wrapper that hashes and counts what a streamed tar writes."""

    def __init__(self, f):
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        return len(data)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return np.ascontiguousarray(x[:n], dtype=np.float32)
    return np.concatenate([x.astype(np.float32), np.zeros(n - len(x), np.float32)])


def _pcm_safe(x: np.ndarray) -> np.ndarray:
    # libsndfile does not clip float -> int conversions; the chain peaks at 0.99, this only guards overflow
    return np.clip(x, -1.0, 1.0 - 2.0**-23).astype(np.float32, copy=False)


def _report_field(report: dict, *names: str):
    for name in names:
        if name in report:
            return report[name]
    return None


def sample_metadata(row: dict, ctx: RenderContext, report: dict) -> dict:
    """The ``{key}.json`` member: enough to re-render the sample from the plan alone."""
    sr_src = row["source_sample_rate"]
    return {
        "key": row["key"],
        "source_id": row["source_id"],
        "speaker": row["speaker"],
        "corpus": row["corpus"],
        "split": row["split"],
        "offset": row["offset"],
        "offset_s": row["offset"] / sr_src,
        "source_sample_rate": sr_src,
        "sample_rate": ctx.sample_rate,
        "samples": ctx.segment_samples,
        "valid": row["valid"],
        "valid_s": row["valid"] / ctx.sample_rate,
        "seed": ctx.seed,
        "ops": json.loads(row["steps"]),
        # measured values of the report, under short names (the full report follows)
        "snr_db": _report_field(report, "achieved_snr_db", "snr_db"),
        "rt60": _report_field(report, "rt60"),
        "codec": _report_field(report, "codec"),
        "bitrate_kbps": _report_field(report, "bitrate_kbps"),
        "report": report,
        "code_version": ctx.code_version,
    }


def _state_path(out: str, name: str) -> str:
    return storage.join(out, "state", name.replace(".tar", ".json"))


def _kept_entry(ctx: RenderContext, name: str) -> dict | None:
    """The recorded entry of a complete shard whose bytes still hash to what was recorded, else ``None``."""
    state_path, tar_path = _state_path(ctx.out, name), storage.join(ctx.out, "shards", name)
    if not storage.exists(state_path) or not storage.exists(tar_path):
        return None
    try:
        entry = json.loads(storage.read_bytes(state_path))
        if storage.size(tar_path) != entry["bytes"]:
            return None
        sha, _ = storage.sha256_of(tar_path)
    except (OSError, ValueError, KeyError):
        return None
    return entry if sha == entry["sha256"] else None


def _read_source(row: dict, remote: dict, attempts: int = 4) -> tuple[np.ndarray, int]:
    """The sample's slice of its source. I/O errors (network, object store) are retried, then raised so the
    task fails and the rerun resumes: a transient error must never turn into a reject, which would make the
    output depend on luck. Decoding errors are returned to the caller as :class:`AudioError` (a reject).

    A remote (URI) source is fetched once and kept in ``remote`` while consecutive samples (the segments of one
    utterance are adjacent in plan order) slice it; local sources are read slice by slice."""
    path = row["path"]
    for attempt in range(attempts):
        try:
            if is_uri(path) and remote.get("path") != path:
                remote.clear()
                remote.update(path=path, data=storage.read_bytes(path))
            data = remote["data"] if is_uri(path) else None
            return read_audio(path, start=row["offset"], frames=row["frames"], data=data)
        except (AudioError, OSError) as e:
            io_error = isinstance(e, OSError) or isinstance(e.__cause__, OSError)
            if not io_error:
                raise
            if attempt == attempts - 1:
                raise OSError(f"{path}: cannot read the source of {row['key']}: {e}") from e
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def render_shard(spec: dict, ctx: RenderContext) -> dict:
    """Render (or keep, if already complete and intact) one shard; returns its index entry plus run facts.

    The returned row: ``name, split, samples, seconds, bytes, sha256`` (index entry), ``rejects`` (JSON list of
    ``{key, reason}``), ``kept`` (bool), ``render_s`` and ``cpu_s`` (wall and CPU seconds of the task; run
    facts, not part of the index).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    name = spec["name"]
    kept = _kept_entry(ctx, name)
    if kept is not None:
        return {
            **kept,
            "rejects": json.dumps(kept["rejects"]),
            "kept": True,
            "render_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start,
        }

    from degradations import render

    banks = _worker_banks(ctx.noise_manifest, ctx.rir_manifest, ctx.sample_rate)
    with storage.open_read(ctx.plan_path) as f:
        # only this shard's row group is read; no Arrow threads (see datasets.manifest.read_parquet)
        rows = pq.ParquetFile(f).read_row_group(int(spec["shard"]), use_threads=False).to_pylist()
    if not rows or rows[0]["shard"] != spec["shard"]:
        raise RuntimeError(f"{ctx.plan_path}: row group {spec['shard']} does not hold shard {name}")

    scratch_dir = storage.join(ctx.out, "tmp") if not is_uri(ctx.out) else tempfile.gettempdir()
    os.makedirs(scratch_dir, exist_ok=True)
    scratch = Path(scratch_dir, f"{name}.{uuid.uuid4().hex}.partial")
    rejects: list[dict] = []
    remote: dict = {}  # the current remote source's bytes (see _read_source)
    samples = 0
    try:
        with open(scratch, "wb") as raw:
            sink = _HashingWriter(raw)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for row in rows:
                    try:
                        x, sr = _read_source(row, remote)
                    except AudioError as e:  # undecodable source: recorded, the shard goes on without it
                        rejects.append({"key": row["key"], "reason": str(e)})
                        continue
                    if sr != ctx.sample_rate:
                        x = resample(x, sr, ctx.sample_rate)
                    clean = _fit(x, ctx.segment_samples)
                    if not np.all(np.isfinite(clean)):
                        rejects.append({"key": row["key"], "reason": f"{row['path']}: non-finite samples"})
                        continue
                    out = render(clean, ctx.sample_rate, json.loads(row["steps"]), banks)
                    key = row["key"]
                    _tar_add(
                        tar,
                        f"{key}.clean.flac",
                        encode_audio(_pcm_safe(out.target), ctx.sample_rate, "FLAC", ctx.flac_subtype),
                    )
                    _tar_add(
                        tar,
                        f"{key}.degraded.flac",
                        encode_audio(_pcm_safe(out.degraded), ctx.sample_rate, "FLAC", ctx.flac_subtype),
                    )
                    meta = sample_metadata(row, ctx, out.report)
                    _tar_add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
                    samples += 1
        entry = {
            "name": name,
            "split": spec["split"],
            "samples": samples,
            "seconds": round(samples * ctx.segment_samples / ctx.sample_rate, 6),
            "bytes": sink.bytes,
            "sha256": sink.sha.hexdigest(),
            "rejects": rejects,
        }
        storage.publish_file(scratch, storage.join(ctx.out, "shards", name))
    finally:
        scratch.unlink(missing_ok=True)
    # the state record goes last: it vouches for a shard that is already complete under its final name
    storage.write_bytes(_state_path(ctx.out, name), json.dumps(entry, sort_keys=True).encode())
    return {
        **entry,
        "rejects": json.dumps(rejects),
        "kept": False,
        "render_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
    }


# ------------------------------------------------------------------------------------------------------ run


@dataclass
class SynthSummary:
    out: str
    shards: int
    rendered: int
    kept: int
    samples: int
    hours: float
    rejects: int
    rendered_seconds: float
    wall_s: float
    cpus: float
    task_cpu_s: float
    index: dict = field(repr=False, default_factory=dict)

    @property
    def x_realtime(self) -> float:
        """Seconds of audio rendered (kept shards excluded) per wall second."""
        return self.rendered_seconds / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def x_realtime_per_core(self) -> float:
        return self.x_realtime / self.cpus if self.cpus else 0.0

    @property
    def x_realtime_per_cpu_second(self) -> float:
        """Audio seconds rendered per CPU second spent in the shard tasks: the per-core speed without the
        effect of idle or shared cores (start-up and scheduling are not counted)."""
        return self.rendered_seconds / self.task_cpu_s if self.task_cpu_s > 0 else 0.0

    def lines(self) -> list[str]:
        head = (
            f"wrote {self.out}: {self.samples} samples, {self.hours:.3f} h in {self.shards} shards "
            f"({self.rendered} rendered, {self.kept} kept), {self.rejects} rejects"
        )
        if not self.rendered:
            return [head, f"{self.wall_s:.1f} s wall: every shard was already complete and intact"]
        return [
            head,
            f"{self.wall_s:.1f} s wall, {self.x_realtime:.1f}x real time, {self.x_realtime_per_core:.1f}x real time "
            f"per core ({self.cpus:g} cores), {self.x_realtime_per_cpu_second:.1f}x real time per task CPU second",
        ]


def _identity(cfg: SynthConfig, seed: int, manifests: dict[str, str]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "config_sha256": output_sha256(cfg),
        "seed": seed,
        "code_version": code_version(),
        "manifests": {k: storage_sha256(v) for k, v in sorted(manifests.items())},
    }


def storage_sha256(path: str) -> str:
    return storage.sha256_of(path)[0]


def _check_existing(out: str, identity: dict, force: bool) -> None:
    """Refuse (unless ``force``) to render into a directory made with another config, seed, input or code."""
    plan_path = storage.join(out, "plan.parquet")
    index_path = storage.join(out, "index.json")
    previous = read_run_identity(plan_path)
    if previous is None and storage.exists(index_path):
        index = json.loads(storage.read_bytes(index_path))
        previous = {k: index.get(k) for k in identity}
    if previous is None:
        if storage.listdir(storage.join(out, "shards")) and not force:
            raise FileExistsError(f"{out}: has shards/ but no plan.parquet; use --force to replace it")
    else:
        diffs = [k for k in identity if previous.get(k) != identity[k]]
        if diffs and not force:
            detail = ", ".join(
                f"{k} (was {_short(previous.get(k))}, now {_short(identity[k])})" for k in diffs
            )
            raise FileExistsError(
                f"{out}: already holds a synthesis run with a different {detail}; use another --out or --force "
                "to replace it"
            )
    if force:
        for part in ("index.json", "plan.parquet", "shards", "state", "tmp"):
            storage.remove(storage.join(out, part))


def _short(value) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_reachable(address: str) -> None:
    """Fail in seconds on a ``host:port`` nobody listens on (Ray itself keeps retrying for minutes)."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ValueError(f"--address {address}: no Ray cluster answers there ({e})") from None


def _init_ray(address: str | None, num_cpus: int | None) -> tuple[bool, float]:
    """Connect to (or start) Ray; returns (whether we started it, CPUs the render may use)."""
    import ray

    started = False
    if ray.is_initialized() and address not in (None, "auto"):
        log.warning("Ray is already initialised in this process: its cluster is used, not %s", address)
    if not ray.is_initialized():
        kwargs = {}
        if address is None:
            # "local": always a fresh instance of the requested size; a bare ray.init() would attach to any
            # cluster another program started on this host (/tmp/ray/ray_current_cluster)
            address = "local"
            kwargs = {"include_dashboard": False, "num_cpus": num_cpus or os.cpu_count() or 1}
        else:
            _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        except ConnectionError as e:
            raise ValueError(f"--address {address}: cannot connect to a Ray cluster: {e}") from None
        started = True
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return started, min(float(num_cpus), total) if num_cpus else total


def run_synth(
    clean: str,
    noise: str,
    rir: str,
    out: str,
    cfg: SynthConfig,
    seed: int = 0,
    address: str | None = None,
    num_cpus: int | None = None,
    force: bool = False,
    progress: bool = True,
    on_shard: Callable[[dict], None] | None = None,
) -> SynthSummary:
    """Plan and render a synthesis run into ``out`` (local path or URI); see the module docstring."""
    import ray

    from degradations import check_backends

    check_backends(cfg.chain)  # fail before planning if this host cannot render what the chain may draw
    out = str(out).rstrip("/") if is_uri(str(out)) else str(Path(out).resolve())
    manifests = {"clean": str(clean), "noise": str(noise), "rir": str(rir)}
    identity = _identity(cfg, seed, manifests)
    _check_existing(out, identity, force)
    started, cpus = _init_ray(address, num_cpus)  # before writing anything: an unreachable cluster fails fast
    try:
        return _plan_and_render(clean, noise, rir, out, cfg, seed, identity, cpus, progress, on_shard)
    finally:
        if started:
            ray.shutdown()


def _plan_and_render(clean, noise, rir, out, cfg, seed, identity, cpus, progress, on_shard) -> SynthSummary:
    from datasets.manifest import read_manifest
    from degradations import Banks

    storage.makedirs(out)
    clean_df = read_manifest(clean, kind="speech")
    banks = Banks.from_manifests(noise, rir, sr=cfg.segment.sample_rate)
    table, plan_stats = make_plan(clean_df, cfg, seed, banks.catalog())
    if table.num_rows == 0:
        raise ValueError(
            f"{clean}: no utterance is long enough for one {cfg.segment.seconds} s sample "
            f"(min_tail_seconds {cfg.segment.min_tail_seconds}, tail {cfg.segment.tail})"
        )
    plan_path = storage.join(out, "plan.parquet")
    data = plan_bytes(table, identity)
    if not storage.exists(plan_path) or storage.read_bytes(plan_path) != data:
        storage.write_bytes(plan_path, data)
    if not is_uri(out):
        storage.remove(storage.join(out, "tmp"))  # scratch files of killed tasks

    counts = table.group_by(["shard", "split"]).aggregate([("key", "count")]).sort_by("shard").to_pylist()
    specs = [
        {"shard": c["shard"], "name": shard_name(c["shard"]), "split": c["split"], "planned": c["key_count"]}
        for c in counts
    ]
    ctx = RenderContext(
        out=out,
        plan_path=plan_path,
        noise_manifest=str(noise),
        rir_manifest=str(rir),
        sample_rate=cfg.segment.sample_rate,
        segment_samples=cfg.segment.samples,
        flac_subtype=cfg.shards.flac_subtype,
        seed=seed,
        code_version=identity["code_version"],
    )

    entries, wall = _render_all(specs, ctx, cfg, cpus, progress, on_shard)
    if not is_uri(out) and not storage.listdir(storage.join(out, "tmp")):
        storage.remove(storage.join(out, "tmp"))

    index = build_index(cfg, identity, plan_stats, data, entries)
    storage.write_bytes(
        storage.join(out, "index.json"), (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()
    )
    rendered = sum(1 for e in entries if not e["kept"])
    return SynthSummary(
        out=out,
        shards=len(entries),
        rendered=rendered,
        kept=len(entries) - rendered,
        samples=index["totals"]["samples"],
        hours=index["totals"]["hours"],
        rejects=index["totals"]["rejects"],
        rendered_seconds=sum(e["seconds"] for e in entries if not e["kept"]),
        task_cpu_s=sum(e["cpu_s"] for e in entries if not e["kept"]),
        wall_s=wall,
        cpus=cpus,
        index=index,
    )


def _render_all(specs, ctx, cfg, cpus, progress, on_shard) -> tuple[list[dict], float]:
    import ray
    from tqdm import tqdm

    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False
    data_ctx.print_on_execution_start = False
    ds = ray.data.from_items(specs, override_num_blocks=len(specs))
    ds = ds.map(
        functools.partial(render_shard, ctx=ctx),
        compute=ray.data.TaskPoolStrategy(size=max(1, min(len(specs), int(cpus // cfg.ray.cpus_per_task)))),
        num_cpus=cfg.ray.cpus_per_task,
    )
    total = sum(s["planned"] for s in specs)
    entries: list[dict] = []
    start = time.perf_counter()
    rendered_s = 0.0
    with tqdm(total=total, unit="sample", disable=not progress, dynamic_ncols=True, desc="synth") as bar:
        for row in ds.iter_rows():
            entry = dict(row)
            entry["rejects"] = json.loads(entry["rejects"])
            entries.append(entry)
            if not entry["kept"]:
                rendered_s += entry["seconds"]
            elapsed = time.perf_counter() - start
            bar.update(entry["samples"] + len(entry["rejects"]))
            bar.set_postfix_str(
                f"{rendered_s / 3600:.2f} h rendered, {rendered_s / max(elapsed, 1e-9):.0f}x RT, "
                f"{sum(e['kept'] for e in entries)} kept"
            )
            if on_shard is not None:
                on_shard(entry)
    wall = time.perf_counter() - start
    names = {e["name"] for e in entries}
    missing = [s["name"] for s in specs if s["name"] not in names]
    if missing or len(entries) != len(specs):
        raise RuntimeError(
            f"render finished without shard(s) {', '.join(missing[:5])} "
            f"({len(entries)} results for {len(specs)} shards)"
        )
    return sorted(entries, key=lambda e: e["name"]), wall


def build_index(
    cfg: SynthConfig, identity: dict, plan_stats: PlanStats, plan_data: bytes, entries: list[dict]
) -> dict:
    """``index.json``: deterministic (no timings, hosts or paths), shards sorted by name."""
    shards = [{k: e[k] for k in ("name", "split", "samples", "seconds", "bytes", "sha256")} for e in entries]
    rejects = sorted((r for e in entries for r in e["rejects"]), key=lambda r: r["key"])
    seconds = sum(s["seconds"] for s in shards)
    return {
        "format_version": FORMAT_VERSION,
        "code_version": identity["code_version"],
        "seed": identity["seed"],
        "config": output_config(cfg),
        "config_sha256": identity["config_sha256"],
        "manifests": identity["manifests"],
        "sample_rate": cfg.segment.sample_rate,
        "segment_samples": cfg.segment.samples,
        "plan": {**plan_stats.as_dict(), "sha256": hashlib.sha256(plan_data).hexdigest()},
        "libraries": library_versions(),
        "shards": shards,
        "rejects": rejects,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "seconds": round(seconds, 6),
            "hours": round(seconds / 3600, 6),
            "bytes": sum(s["bytes"] for s in shards),
            "rejects": len(rejects),
        },
    }
