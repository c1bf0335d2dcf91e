"""Integrity checks and inspection of synthesised shard directories (local or ``s3://``).

:func:`verify_shards` checks a run against its ``index.json``: every listed shard exists with the recorded byte
count and sha256, holds exactly ``samples`` samples of three members (``.clean.flac``, ``.degraded.flac``,
``.json``) in order, every FLAC decodes at the index's rate to exactly ``segment_samples`` frames with clean and
degraded of equal length, every JSON names its own key; no unlisted tar lies in ``shards/``, the totals add up and
the sample keys match the plan. :func:`find_sample` and :func:`write_inspection` serve ``hires shards inspect``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets import storage
from datasets.audio import decode_audio, is_uri, write_audio
from datasets.manifest import read_parquet

MEMBER_SUFFIXES = ("clean.flac", "degraded.flac", "json")


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_index(run_dir: str) -> dict:
    path = storage.join(run_dir, "index.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no index.json (not a synthesis run, or the run has not finished)")
    try:
        return json.loads(storage.read_bytes(path))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _split_member(name: str) -> tuple[str, str]:
    key, _, suffix = name.partition(".")
    return key, suffix


def verify_shard(
    run_dir: str, entry: dict, sample_rate: int, segment_samples: int
) -> tuple[list[str], list[str]]:
    """Problems found in one shard, and the keys it holds."""
    name = entry["name"]
    path = storage.join(run_dir, "shards", name)
    if not storage.exists(path):
        return [f"{name}: missing"], []
    problems: list[str] = []
    keys: list[str] = []
    members: list[tuple[str, bytes]] = []
    digest: dict = {}  # filled by the same read that decodes the members
    tar_problems: list[str] = []
    try:
        for member in storage.iter_tar_members(path, digest):
            members.append(member)
            if len(members) == 3:
                tar_problems += _check_sample(name, members, sample_rate, segment_samples, keys)
                members = []
    except Exception as e:  # a truncated or corrupt tar: report it, keep verifying the others
        tar_problems.append(f"{name}: unreadable tar: {e}")
    if digest.get("bytes") != entry["bytes"]:
        problems.append(f"{name}: {digest.get('bytes')} bytes, index says {entry['bytes']}")
    if digest.get("sha256") != entry["sha256"]:
        sha = str(digest.get("sha256"))
        problems.append(f"{name}: sha256 {sha[:12]}... differs from the index ({entry['sha256'][:12]}...)")
    problems += tar_problems
    if members:
        problems.append(f"{name}: {len(members)} trailing member(s) {[m[0] for m in members]}")
    if len(keys) != entry["samples"]:
        problems.append(f"{name}: {len(keys)} samples, index says {entry['samples']}")
    return problems, keys


def _check_sample(shard: str, members, sample_rate: int, segment_samples: int, keys: list[str]) -> list[str]:
    names = [m[0] for m in members]
    key = _split_member(names[0])[0]
    expected = [f"{key}.{s}" for s in MEMBER_SUFFIXES]
    if names != expected:
        return [f"{shard}: members {names}, expected {expected}"]
    keys.append(key)
    problems = []
    lengths = []
    for member, data in members[:2]:
        try:
            x, sr = decode_audio(data)
        except Exception as e:
            problems.append(f"{shard}: {member} does not decode: {e}")
            continue
        if sr != sample_rate or x.ndim != 1:
            problems.append(
                f"{shard}: {member} is {sr} Hz with shape {x.shape}, expected {sample_rate} Hz mono"
            )
        if not np.all(np.isfinite(x)):
            problems.append(f"{shard}: {member} has non-finite samples")
        lengths.append(len(x))
    if len(lengths) == 2 and (lengths[0] != lengths[1] or lengths[0] != segment_samples):
        problems.append(
            f"{shard}: {key} clean/degraded lengths {lengths[0]}/{lengths[1]}, expected {segment_samples}"
        )
    try:
        meta = json.loads(members[2][1])
        if meta.get("key") != key:
            problems.append(f"{shard}: {key}.json names key {meta.get('key')!r}")
        if not 0 < int(meta.get("valid", -1)) <= segment_samples:
            problems.append(f"{shard}: {key}.json valid length {meta.get('valid')!r} out of range")
    except ValueError as e:
        problems.append(f"{shard}: {key}.json is not valid JSON: {e}")
    return problems


def verify_shards(
    run_dir: str, workers: int = 4, on_shard: Callable[[dict], None] | None = None
) -> VerifyReport:
    """Check a run directory against its index (see the module docstring)."""
    run_dir = str(run_dir).rstrip("/") if is_uri(str(run_dir)) else str(run_dir)
    index = read_index(run_dir)
    report = VerifyReport(shards=len(index["shards"]))
    sample_rate, segment_samples = int(index["sample_rate"]), int(index["segment_samples"])
    listed = {e["name"] for e in index["shards"]}
    extra = [
        n for n in storage.listdir(storage.join(run_dir, "shards")) if n.endswith(".tar") and n not in listed
    ]
    report.problems += [f"{n}: in shards/ but not in index.json" for n in extra]
    all_keys: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(
            lambda e: (e, verify_shard(run_dir, e, sample_rate, segment_samples)), index["shards"]
        )
        for entry, (problems, keys) in results:
            report.problems += problems
            all_keys += keys
            if on_shard is not None:
                on_shard(entry)
    report.samples = len(all_keys)
    totals = index["totals"]
    if totals["samples"] != sum(e["samples"] for e in index["shards"]) or totals["shards"] != len(
        index["shards"]
    ):
        report.problems.append("index.json: totals do not match the per-shard entries")
    if len(set(all_keys)) != len(all_keys):
        report.problems.append("duplicate sample keys across shards")
    plan_path = storage.join(run_dir, "plan.parquet")
    if storage.exists(plan_path):
        planned = set(read_parquet(plan_path, columns=["key"]).column("key").to_pylist())
        rejected = {r["key"] for r in index.get("rejects", [])}
        if planned - rejected != set(all_keys):
            lost = sorted(planned - rejected - set(all_keys))
            unplanned = sorted(set(all_keys) - planned)
            report.problems.append(
                f"plan.parquet: {len(lost)} planned sample(s) missing {lost[:3]}, "
                f"{len(unplanned)} unplanned {unplanned[:3]}"
            )
    return report


@dataclass
class Sample:
    key: str
    shard: str
    clean: bytes
    degraded: bytes
    meta: dict


def find_sample(run_dir: str, key: str) -> Sample:
    """Read one sample; the plan tells which shard holds it (falls back to scanning every shard)."""
    index = read_index(run_dir)
    names = [e["name"] for e in index["shards"]]
    plan_path = storage.join(run_dir, "plan.parquet")
    if storage.exists(plan_path):
        import pyarrow.compute as pc

        from pipelines.synth import shard_name

        table = read_parquet(plan_path, columns=["key", "shard"])
        hit = table.filter(pc.equal(table.column("key"), key))
        if hit.num_rows:
            names = [shard_name(hit.column("shard")[0].as_py())]
    for name in names:
        found: dict[str, bytes] = {}
        for member, data in storage.iter_tar_members(storage.join(run_dir, "shards", name)):
            k, suffix = _split_member(member)
            if k == key:
                found[suffix] = data
            elif found:
                break
        if found:
            missing = [s for s in MEMBER_SUFFIXES if s not in found]
            if missing:
                raise ValueError(f"{name}: sample {key} lacks member(s) {', '.join(missing)}")
            return Sample(key, name, found["clean.flac"], found["degraded.flac"], json.loads(found["json"]))
    raise KeyError(f"{run_dir}: no sample with key {key!r}")


def write_inspection(sample: Sample, out_dir: str | Path) -> list[Path]:
    """Write ``{key}.clean.wav``, ``{key}.degraded.wav`` and ``{key}.png`` (spectrograms, same colour scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import signal

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    signals = {}
    for label, data in (("clean", sample.clean), ("degraded", sample.degraded)):
        x, sr = decode_audio(data)
        signals[label] = (x, sr)
        path = out_dir / f"{sample.key}.{label}.wav"
        write_audio(path, x, sr, format="WAV", subtype="PCM_24")
        written.append(path)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    for ax, (label, (x, sr)) in zip(axes, signals.items(), strict=True):
        f, t, s = signal.stft(x, fs=sr, nperseg=2048, noverlap=2048 - 480)
        db = 20 * np.log10(np.abs(s) + 1e-8)
        mesh = ax.pcolormesh(t, f / 1000, db, vmin=-120, vmax=0, shading="auto", cmap="magma")
        ax.set_ylabel("kHz")
        ax.set_title(f"{sample.key} {label}")
    axes[-1].set_xlabel("seconds")
    fig.colorbar(mesh, ax=axes, label="dB")
    png = out_dir / f"{sample.key}.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    written.append(png)
    return written
