"""Integrity checks and inspection of synthesised shard directories (local or ``s3://``).

:func:`verify_shards` checks a run against its ``index.json``: every listed shard exists with the recorded byte
count and sha256 and passes the format's reader (:mod:`datasets.shards`: only ``{key}.clean.flac``,
``{key}.degraded.flac``, ``{key}.json`` members, complete samples, no duplicate key), holds exactly ``samples``
samples, every FLAC decodes at the index's rate to exactly ``segment_samples`` frames with clean and degraded of
equal length, every JSON names its own key; no unlisted tar lies in ``shards/``, the totals add up and the sample
keys match the plan. :func:`write_inspection` serves ``hires shards inspect``; :func:`list_samples` serves
``hires shards list`` (the keys ``inspect`` asks for, with their split, shard, source and operators).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets import storage
from datasets.audio import is_uri
from datasets.errors import UsageError
from datasets.manifest import read_parquet
from datasets.shards import (
    SHARDS_DIR,
    SampleDecodeError,
    ShardFormatError,
    ShardSample,
    decode_sample,
    extract_sample,
    iter_raw_samples,
    output_path,
    read_index,
    shard_name,
    shard_path,
)


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shard(
    run_dir: str, entry: dict, sample_rate: int, segment_samples: int
) -> tuple[list[str], list[str]]:
    """Problems found in one shard, and the keys it holds."""
    name = entry["name"]
    path = shard_path(run_dir, name)
    if not storage.exists(path):
        return [f"{name}: missing"], []
    problems: list[str] = []
    keys: list[str] = []
    digest: dict = {}  # filled by the same read that decodes the members
    sample_problems: list[str] = []
    try:
        for raw in iter_raw_samples(path, digest):
            keys.append(raw.key)
            try:
                sample_problems += _check_sample(name, decode_sample(raw), sample_rate, segment_samples)
            except SampleDecodeError as e:
                sample_problems.append(f"{name}: {e}")
    except ShardFormatError as e:  # a hostile, truncated or corrupt tar: report it, keep verifying the others
        sample_problems.append(f"{name}: {e}")
    if digest.get("bytes") != entry["bytes"]:
        problems.append(f"{name}: {digest.get('bytes')} bytes, index says {entry['bytes']}")
    if digest.get("sha256") != entry["sha256"]:
        sha = str(digest.get("sha256"))
        problems.append(f"{name}: sha256 {sha[:12]}... differs from the index ({entry['sha256'][:12]}...)")
    problems += sample_problems
    if len(keys) != entry["samples"]:
        problems.append(f"{name}: {len(keys)} samples, index says {entry['samples']}")
    return problems, keys


def _check_sample(shard: str, sample: ShardSample, sample_rate: int, segment_samples: int) -> list[str]:
    problems = []
    key = sample.key
    if sample.sample_rate != sample_rate:
        problems.append(f"{shard}: {key} is at {sample.sample_rate} Hz, expected {sample_rate} Hz")
    if len(sample.clean) != segment_samples:
        problems.append(
            f"{shard}: {key} clean/degraded length {len(sample.clean)}, expected {segment_samples}"
        )
    for label, x in (("clean", sample.clean), ("degraded", sample.degraded)):
        if not np.all(np.isfinite(x)):
            problems.append(f"{shard}: {key}.{label}.flac has non-finite samples")
    meta = sample.meta
    if meta.get("key") != key:
        problems.append(f"{shard}: {key}.json names key {meta.get('key')!r}")
    valid = meta.get("valid")
    if not isinstance(valid, int) or not 0 < valid <= segment_samples:
        problems.append(f"{shard}: {key}.json valid length {valid!r} out of range")
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
        n
        for n in storage.listdir(storage.join(run_dir, SHARDS_DIR))
        if n.endswith(".tar") and n not in listed
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
    totals = index.get("totals", {})
    if totals.get("samples") != sum(e["samples"] for e in index["shards"]) or totals.get("shards") != len(
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


def write_inspection(run_dir: str, key: str, out_dir: str | Path) -> tuple[ShardSample, list[Path]]:
    """Write ``{key}.clean.wav``, ``{key}.degraded.wav`` and ``{key}.png`` (spectrograms, same colour scale)
    into ``out_dir``, and nowhere else (file names come from the validated key, see
    :func:`datasets.shards.output_path`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import signal

    sample, written = extract_sample(run_dir, key, out_dir)
    signals = {"clean": sample.clean, "degraded": sample.degraded}
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    for ax, (label, x) in zip(axes, signals.items(), strict=True):
        f, t, s = signal.stft(x, fs=sample.sample_rate, nperseg=2048, noverlap=2048 - 480)
        db = 20 * np.log10(np.abs(s) + 1e-8)
        mesh = ax.pcolormesh(t, f / 1000, db, vmin=-120, vmax=0, shading="auto", cmap="magma")
        ax.set_ylabel("kHz")
        ax.set_title(f"{sample.key} {label}")
    axes[-1].set_xlabel("seconds")
    fig.colorbar(mesh, ax=axes, label="dB")
    png = output_path(out_dir, sample.key, "png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    written.append(png)
    return sample, written


LIST_COLUMNS = ("key", "split", "shard", "source", "ops")


def list_samples(run_dir: str, split: str | None = None) -> list[dict]:
    """Every sample held by a finished run, in shard order: ``{key, split, shard, source, ops}`` (``ops``: the
    operators of its chain in order). Read from ``plan.parquet`` less the index's rejects, so no shard is opened;
    a run without a plan is read from the JSON members of its shards. ``split`` keeps one split (a
    :class:`UsageError` naming the splits present when it holds none)."""
    run_dir = str(run_dir).rstrip("/") if is_uri(str(run_dir)) else str(run_dir)
    index = read_index(run_dir)
    plan_path = storage.join(run_dir, "plan.parquet")
    rows: list[dict] = []
    if storage.exists(plan_path):
        rejected = {r["key"] for r in index.get("rejects", [])}
        columns = ["key", "split", "shard", "source_id", "steps"]
        for r in read_parquet(plan_path, columns=columns).to_pylist():
            if r["key"] not in rejected:
                rows.append(_listed(r["key"], r["split"], shard_name(r["shard"]), r["source_id"], r["steps"]))
    else:
        for entry in index["shards"]:
            for raw in iter_raw_samples(shard_path(run_dir, entry["name"])):
                meta = json.loads(raw.meta)
                rows.append(
                    _listed(raw.key, meta.get("split"), entry["name"], meta.get("source_id"), meta["ops"])
                )
    if split is None:
        return rows
    kept = [r for r in rows if r["split"] == split]
    if not kept:
        present = ", ".join(sorted({str(r["split"]) for r in rows})) or "none"
        raise UsageError(f"--split {split}: no sample of that split in {run_dir} (splits: {present})")
    return kept


def _listed(key: str, split: str | None, shard: str, source: str | None, steps) -> dict:
    steps = json.loads(steps) if isinstance(steps, str) else steps
    return {"key": key, "split": split, "shard": shard, "source": source, "ops": [s["op"] for s in steps]}
