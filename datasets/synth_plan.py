"""The synthesis plan: which samples a corpus holds, what each one's degradation chain is, and its shard.

Pure and cheap (no audio is read). Every clean utterance of the manifest is cut into samples of
``segment.seconds`` (5.12 s = 245 760 samples at 48 kHz); the last piece is zero-padded with its valid length
recorded, or dropped (``segment.tail``, ``segment.min_tail_seconds``). Each sample gets the key
``{utt_id}_{seg:04d}`` and its degradation steps ``degradations.plan(key, seed, chain, catalog)``: a pure function
of (seed, key, chain config, bank catalogue), the catalogue holding only bank files recorded at or above
``banks.min_sample_rate`` (default: the output rate). Samples are ordered by (split, key) and grouped into
shards of ``shards.samples_per_shard`` samples (a new shard starts at each split); ``auto`` derives that size
from the number of samples alone (:func:`auto_samples_per_shard`), never from the machine, so the output is the
same for any number of workers.

``plan.parquet`` stores the table with one row group per shard (a render task reads exactly its own rows) and,
in its schema metadata, the run identity (what a rerun must match to keep existing shards) and the recipe
(manifest paths, requested config, seed, planning counts) from which ``hires synth render DIR`` renders it.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasets import storage
from datasets.config import canonical_json
from datasets.errors import DataError
from datasets.synth_config import SegmentConfig, SynthConfig

PLAN_FILE = "plan.parquet"
SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}
RUN_METADATA_KEY = b"hires.run"
RECIPE_METADATA_KEY = b"hires.recipe"
# auto shard size: enough shards to keep this many workers busy, each shard within the bounds below
AUTO_TARGET_SHARDS = 64
AUTO_MIN_SAMPLES, AUTO_MAX_SAMPLES = 16, 512

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


@dataclass
class PlanStats:
    utterances: int = 0
    segments: int = 0
    dropped_tails: int = 0
    dropped_utterances: int = 0
    bank_files_below_rate: int = 0  # bank files not drawn: recorded below banks.min_sample_rate

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Plan:
    """A planned corpus: the table (rows in shard order), planning counts and the config with a concrete
    ``shards.samples_per_shard``."""

    table: pa.Table
    stats: PlanStats
    cfg: SynthConfig


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


def auto_samples_per_shard(samples: int) -> int:
    """Shard size for a corpus of ``samples`` samples: enough shards for 64 workers, 16 to 512 samples each.

    A function of the corpus size only (never of the CPU count), so the shards are the same on any cluster.
    """
    return min(AUTO_MAX_SAMPLES, max(AUTO_MIN_SAMPLES, math.ceil(samples / AUTO_TARGET_SHARDS)))


def resolve_config(cfg: SynthConfig, samples: int) -> SynthConfig:
    """``cfg`` with a concrete ``shards.samples_per_shard`` (``auto`` resolved for ``samples`` samples)."""
    if cfg.shards.samples_per_shard != "auto":
        return cfg
    resolved = cfg.model_copy(deep=True)
    resolved.shards.samples_per_shard = auto_samples_per_shard(samples)
    return resolved


def _rows_and_stats(clean, cfg: SynthConfig, seed: int, catalog) -> tuple[list[dict], PlanStats]:
    from degradations import plan as plan_chain
    from degradations.banks import rate_filtered_catalog

    stats = PlanStats()
    catalog, stats.bank_files_below_rate = rate_filtered_catalog(catalog or {}, cfg.banks.min_sample_rate)
    rows = []
    for r in clean.sort_values("id", kind="stable").itertuples(index=False):
        stats.utterances += 1
        pieces, dropped = segment_utterance(int(r.frames), int(r.sample_rate), cfg)
        stats.dropped_tails += int(dropped)
        stats.dropped_utterances += int(not pieces)
        for j, (offset, frames, valid) in enumerate(pieces):
            key = f"{r.id}_{j:04d}"
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
                    "steps": canonical_json(plan_chain(key, seed, cfg.chain, catalog)),
                }
            )
    stats.segments = len(rows)
    rows.sort(key=lambda row: (SPLIT_ORDER.get(row["split"], len(SPLIT_ORDER)), row["split"], row["key"]))
    return rows, stats


def plan_rows(clean, cfg: SynthConfig, seed: int, catalog) -> list[dict]:
    """One dict per sample of a clean manifest DataFrame, in plan order: every :data:`PLAN_SCHEMA` field but
    ``shard`` and ``position``; ``steps`` is the canonical JSON of the sample's degradation steps."""
    return _rows_and_stats(clean, cfg, seed, catalog)[0]


def make_plan(clean, cfg: SynthConfig, seed: int, catalog) -> Plan:
    """The plan of a clean manifest DataFrame (rows grouped into shards); a pure function of its inputs."""
    rows, stats = _rows_and_stats(clean, cfg, seed, catalog)
    cfg = resolve_config(cfg, len(rows))
    per_shard = int(cfg.shards.samples_per_shard)
    shard, position, previous_split = -1, per_shard, None
    for row in rows:
        new_split = cfg.shards.split_shards and row["split"] != previous_split
        if position >= per_shard or new_split:
            shard, position = shard + 1, 0
        row["shard"], row["position"] = shard, position
        position += 1
        previous_split = row["split"]
    table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA) if rows else PLAN_SCHEMA.empty_table()
    return Plan(table, stats, cfg)


# ------------------------------------------------------------------------------------------------ storage


def plan_bytes(table: pa.Table, identity: dict, recipe: dict | None = None) -> bytes:
    """Parquet bytes of the plan: one row group per shard; run identity and recipe in the schema metadata."""
    metadata = {RUN_METADATA_KEY: canonical_json(identity).encode()}
    if recipe is not None:
        metadata[RECIPE_METADATA_KEY] = canonical_json(recipe).encode()
    schema = PLAN_SCHEMA.with_metadata(metadata)
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


def read_plan_metadata(plan_path: str, data: bytes | None = None) -> tuple[dict | None, dict | None]:
    """``(identity, recipe)`` stored in a plan; ``(None, None)`` when there is no plan file. ``data``: the plan's
    bytes already read (then ``plan_path`` only names it in errors)."""
    if data is None and not storage.exists(plan_path):
        return None, None
    try:
        with pa.BufferReader(data) if data is not None else storage.open_read(plan_path) as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
        identity, recipe = (meta.get(k) for k in (RUN_METADATA_KEY, RECIPE_METADATA_KEY))
        return (json.loads(identity) if identity else None), (json.loads(recipe) if recipe else None)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{plan_path}: not a readable synthesis plan: {e}") from e


def read_plan_shard(plan_path: str, shard: int) -> list[dict]:
    """The rows of one shard (its row group only; no Arrow threads, see datasets.manifest.read_parquet)."""
    with storage.open_read(plan_path) as f:
        rows = pq.ParquetFile(f).read_row_group(int(shard), use_threads=False).to_pylist()
    if not rows or rows[0]["shard"] != shard:
        raise DataError(f"{plan_path}: row group {shard} does not hold the rows of shard {shard}")
    return rows


# ------------------------------------------------------------------------------------------------ summary


def plan_summary(table: pa.Table, segment_seconds: float = SegmentConfig().seconds) -> dict[str, Any]:
    """What a plan will render: samples, hours, shards, per split; how often each operator is drawn; the codec
    mix (codec and bit rate). Every sample is one segment long (padded tails included), hence the hours."""
    rows = table.select(["split", "shard", "steps"]).to_pylist()
    seconds = float(segment_seconds)
    splits: dict[str, dict[str, Any]] = {}
    ops: Counter[str] = Counter()
    codecs: dict[str, Counter[str]] = {}
    for row in rows:
        split = splits.setdefault(row["split"], {"samples": 0, "shards": set()})
        split["samples"] += 1
        split["shards"].add(row["shard"])
        for step in json.loads(row["steps"]):
            ops[step["op"]] += 1
            if step["op"] == "codec":
                params = step["params"]
                rate = params.get("bitrate_kbps")  # VBR codecs: a quality instead
                label = f"{float(rate):g}" if rate is not None else f"q{float(params['quality']):g}"
                codecs.setdefault(params["codec"], Counter())[label] += 1
    ordered = sorted(splits, key=lambda s: (SPLIT_ORDER.get(s, len(SPLIT_ORDER)), s))
    return {
        "samples": len(rows),
        "hours": round(len(rows) * seconds / 3600, 4),
        "shards": len({row["shard"] for row in rows}),
        "splits": {
            s: {
                "samples": splits[s]["samples"],
                "hours": round(splits[s]["samples"] * seconds / 3600, 4),
                "shards": len(splits[s]["shards"]),
            }
            for s in ordered
        },
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        # codec -> {"samples": n, "kbps": {bit rate: n}}, most drawn first
        "codecs": {
            name: {
                "samples": sum(rates.values()),
                "kbps": dict(sorted(rates.items(), key=lambda kv: float(kv[0].lstrip("q")))),
            }
            for name, rates in sorted(codecs.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        },
        "stats": planned_stats(rows),
    }


NEAR_CLEAN_SNR_DB = 20.0


def planned_stats(rows: list[dict]) -> dict[str, Any]:
    """Planned noise SNR (percentiles, share of near-clean samples: no noise or an SNR of 20 dB or more), band
    limits drawn, and the operator pairs drawn together most often (loudness and peak left out). The histograms
    of these and of what rendering measured are ``hires shards stats DIR``'s."""
    snr: list[float] = []
    limits: list[float] = []
    pairs: Counter[str] = Counter()
    for row in rows:
        steps = json.loads(row["steps"])
        for step in steps:
            params = step["params"]
            if step["op"] == "noise" and params.get("snr_db") is not None:
                snr.append(float(params["snr_db"]))
            if step["op"] == "bandwidth":
                cutoff, rate = params.get("cutoff_hz"), params.get("rate_hz")
                if cutoff is not None or rate is not None:
                    limits.append(float(cutoff) if cutoff is not None else float(rate) / 2)
        names = sorted({step["op"] for step in steps} - {"loudness", "peak"})
        pairs.update(f"{a}+{b}" for i, a in enumerate(names) for b in names[i + 1 :])
    n = len(rows)

    def pct(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        p5, p50, p95 = np.percentile(np.asarray(values), [5, 50, 95])
        return {"p5": round(float(p5), 2), "median": round(float(p50), 2), "p95": round(float(p95), 2)}

    return {
        "snr_db": pct(snr),
        "near_clean": round((sum(v >= NEAR_CLEAN_SNR_DB for v in snr) + n - len(snr)) / n, 4) if n else None,
        "band_limit_hz": pct(limits),
        "pairs": dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:5]),
    }


def format_plan_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as lines for a terminal."""
    n = summary["samples"] or 1
    lines = [f"{summary['samples']} samples, {summary['hours']:.3f} h in {summary['shards']} shards"]
    lines += [
        f"  {split:<6} {s['samples']:>7} samples {s['hours']:>9.3f} h {s['shards']:>5} shards"
        for split, s in summary["splits"].items()
    ]
    lines.append("operators (samples that draw each):")
    lines += [f"  {op:<12} {c:>7}  {100 * c / n:5.1f} %" for op, c in summary["ops"].items()]
    if summary["codecs"]:
        total = sum(c["samples"] for c in summary["codecs"].values())
        lines.append(f"codec mix ({total} samples; samples per bit rate in kbps):")
        for name, c in summary["codecs"].items():
            rates = ", ".join(f"{rate}: {k}" for rate, k in c["kbps"].items())
            lines.append(f"  {name:<12} {c['samples']:>7}  {100 * c['samples'] / total:5.1f} %  ({rates})")
    if summary.get("bank_files_below_rate"):
        lines.append(
            f"bank files not drawn: {summary['bank_files_below_rate']} recorded below the minimum rate "
            "(banks.min_sample_rate; default: the output rate)"
        )
    stats = summary.get("stats") or {}
    if stats:
        lines.append("planned values (histograms: hires shards stats DIR):")
        if stats["snr_db"]:
            q = stats["snr_db"]
            lines.append(f"  noise SNR    median {q['median']:g} dB, 5-95 %: {q['p5']:g} to {q['p95']:g} dB")
        lines.append(f"  near-clean   {100 * (stats['near_clean'] or 0):5.1f} % (no noise, or SNR >= 20 dB)")
        if stats["band_limit_hz"]:
            q = stats["band_limit_hz"]
            lines.append(
                f"  band limit   median {q['median'] / 1000:g} kHz, 5-95 %: {q['p5'] / 1000:g}-{q['p95'] / 1000:g} kHz"
            )
        if stats["pairs"]:
            lines.append(
                "  drawn together: "
                + ", ".join(f"{p} {100 * c / n:.0f} %" for p, c in stats["pairs"].items())
            )
    return lines
