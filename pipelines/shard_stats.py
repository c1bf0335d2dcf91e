"""A picture of a corpus: histograms of what its degradations did, as PNG plots and JSON (``hires shards stats``).

:func:`corpus_stats` reads a synthesis run (through :mod:`datasets.shards`, the only shard reader) and writes a
report folder: ``stats.json`` (definitions, headline numbers, every histogram's edges and counts, summaries of
every numeric report key, operator counts and co-occurrence), ``samples.jsonl`` (one line of measured values per
sample) and PNGs: ``snr.png``, ``bandwidth.png``, ``codec.png``, ``room.png``, ``clipping.png``, ``loudness.png``,
``operators.png`` and ``overview.png`` (all panels on one page). A directory holding only ``plan.parquet``
(``hires synth plan``) gets the planned values: target SNR, drawn band limit, codec and bit rate, operators.

Measured on the audio (valid samples only, the zero-padded tail left out):

* effective bandwidth (:func:`effective_bandwidth`): the highest frequency whose 187.5 Hz band of the long-term
  spectrum (Welch, Hann window of 2048 samples, 50 % overlap) lies within :data:`BANDWIDTH_DROP_DB` (50 dB) of
  the loudest band, for the degraded signal and for the target. It shows what a drawn rate, a codec or additive
  full-band noise actually left, rather than the rate drawn for the bandwidth operator;
* loudness (ITU-R BS.1770 integrated, LUFS) of target and degraded;
* peak plateau: the fraction of samples within 0.1 % of the degraded signal's peak (clipping leaves plateaus at
  the clip level, which the final peak scaling moves but does not remove).

Taken from each sample's JSON: target and achieved SNR, codec and bit rate, RT60 and DRR of the RIR, the clipping
operator's clipped fraction, the drawn band limit (half the drawn rate, or a drawn cut-off), noise type, bank
native rates, and the operators in order. Values a sample does not have (no reverb, no codec) are left out of
that histogram and counted as ``missing``. Keys of the report the code does not know yet still get a numeric
summary in ``stats.json`` (``report_keys``), so a new operator shows up without a change here.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets import storage
from datasets.errors import DataError

STATS_FILE = "stats.json"
SAMPLES_FILE = "samples.jsonl"
BANDWIDTH_DROP_DB = 50.0
BANDWIDTH_NPERSEG = 2048
BANDWIDTH_BAND_BINS = 8  # 8 Welch bins of 23.4 Hz at 48 kHz: 187.5 Hz bands
PLATEAU_TOLERANCE = 1e-3
FIXED_OPS = ("loudness", "peak")  # in every chain: left out of the co-occurrence matrix

# name -> (axis label, bin edges); fixed edges so two corpora's histograms compare bin by bin
HISTOGRAMS: dict[str, tuple[str, np.ndarray]] = {
    "snr_target_db": ("target SNR (dB)", np.arange(-15.0, 50.1, 2.5)),
    "snr_achieved_db": ("achieved SNR (dB)", np.arange(-15.0, 50.1, 2.5)),
    "bandwidth_degraded_hz": ("effective bandwidth, degraded (kHz)", np.arange(0.0, 24001.0, 1000.0)),
    "bandwidth_target_hz": ("effective bandwidth, target (kHz)", np.arange(0.0, 24001.0, 1000.0)),
    "bandwidth_drawn_hz": ("drawn band limit (kHz)", np.arange(0.0, 24001.0, 1000.0)),
    "bitrate_kbps": (
        "codec bit rate (kbps)",
        np.array([0, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 320.0]),
    ),
    "rt60_s": ("RT60, broadband (s)", np.arange(0.0, 2.01, 0.05)),
    "rt60_mid_s": ("RT60, 500 Hz-1 kHz octaves (s)", np.arange(0.0, 2.01, 0.05)),
    "rt60_8k_s": ("RT60, 8 kHz octave (s)", np.arange(0.0, 2.01, 0.05)),
    "drr_db": ("DRR (dB)", np.arange(-20.0, 25.1, 1.0)),
    "clipped_fraction": ("clipped fraction (clipping operator)", np.arange(0.0, 0.2001, 0.005)),
    "plateau_fraction": ("samples at the peak level (measured)", np.arange(0.0, 0.1001, 0.0025)),
    "loudness_target_lufs": ("loudness, target (LUFS)", np.arange(-60.0, 0.1, 1.0)),
    "loudness_degraded_lufs": ("loudness, degraded (LUFS)", np.arange(-60.0, 0.1, 1.0)),
    "degradation_ops": ("operators per sample (besides loudness and peak)", np.arange(-0.5, 10.5, 1.0)),
}
MEASURED = ("bandwidth_degraded_hz", "bandwidth_target_hz", "plateau_fraction", "loudness_target_lufs",
            "loudness_degraded_lufs")  # fmt: skip


# ------------------------------------------------------------------------------------------ measurements


def effective_bandwidth(x: np.ndarray, sr: int, drop_db: float = BANDWIDTH_DROP_DB) -> float | None:
    """Highest frequency (Hz, the band's upper edge) whose 187.5 Hz band of the Welch spectrum lies within
    ``drop_db`` of the loudest band; None for silence or a signal shorter than one window."""
    from scipy import signal

    x = np.asarray(x, dtype=np.float64)
    if len(x) < BANDWIDTH_NPERSEG or not np.any(x):
        return None
    f, p = signal.welch(x, sr, window="hann", nperseg=BANDWIDTH_NPERSEG, noverlap=BANDWIDTH_NPERSEG // 2)
    nb = (len(p) - 1) // BANDWIDTH_BAND_BINS
    bands = p[1 : 1 + nb * BANDWIDTH_BAND_BINS].reshape(nb, BANDWIDTH_BAND_BINS).mean(axis=1)
    edges = f[1 : 1 + nb * BANDWIDTH_BAND_BINS].reshape(nb, BANDWIDTH_BAND_BINS)[:, -1]
    top = float(bands.max())
    if not top > 0.0:
        return None
    within = np.flatnonzero(bands >= top * 10.0 ** (-drop_db / 10.0))
    return float(edges[within[-1]])


def plateau_fraction(x: np.ndarray, tolerance: float = PLATEAU_TOLERANCE) -> float | None:
    """Fraction of samples whose magnitude is within ``tolerance`` (relative) of the peak; None for silence."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    top = float(a.max()) if len(a) else 0.0
    if not top > 0.0:
        return None
    return float(np.mean(a >= top * (1.0 - tolerance)))


def _loudness(x: np.ndarray, sr: int) -> float | None:
    from degradations.levels import integrated_loudness

    value = integrated_loudness(x, sr)
    return float(value) if math.isfinite(value) and value > -70.0 else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def planned_values(steps: list[dict]) -> dict[str, Any]:
    """What a sample's steps drew: operators in order, target SNR, band limit, codec and bit rate."""
    ops = [str(s.get("op")) for s in steps]
    params = {str(s.get("op")): s.get("params") or {} for s in steps}
    out: dict[str, Any] = {"ops": ops, "degradation_ops": sum(op not in FIXED_OPS for op in ops)}
    if "noise" in params:
        out["snr_target_db"] = _number(params["noise"].get("snr_db"))
    band = params.get("bandwidth")
    if band is not None:
        cutoff = _number(band.get("cutoff_hz"))
        rate = _number(band.get("rate_hz"))
        out["bandwidth_drawn_hz"] = cutoff if cutoff is not None else (rate / 2 if rate is not None else None)
    codec = params.get("codec")
    if codec is not None:
        out["codec"] = codec.get("codec")
        out["bitrate_kbps"] = _number(codec.get("bitrate_kbps"))
        out["codec_quality"] = _number(codec.get("quality"))  # VBR codecs draw a quality, not a bit rate
    return out


def measure_sample(sample: Any) -> dict[str, Any]:
    """One sample's row of ``samples.jsonl``: planned values, values from its report, and measurements."""
    meta = sample.meta
    report = meta.get("report") or {}
    sr = int(sample.sample_rate)
    valid = int(meta.get("valid") or len(sample.degraded))
    target, degraded = sample.clean[:valid], sample.degraded[:valid]
    row: dict[str, Any] = {"key": sample.key, "split": meta.get("split"), "shard": sample.shard}
    row.update(planned_values(meta.get("ops") or []))
    row["snr_achieved_db"] = _number(report.get("achieved_snr_db", meta.get("snr_db")))
    if report.get("snr_db") is not None:
        row["snr_target_db"] = _number(report["snr_db"])
    if report.get("bandwidth_cutoff_hz") is not None or report.get("bandwidth_rate_hz") is not None:
        cutoff = _number(report.get("bandwidth_cutoff_hz"))
        rate = _number(report.get("bandwidth_rate_hz"))
        row["bandwidth_drawn_hz"] = cutoff if cutoff is not None else (rate / 2 if rate is not None else None)
    row["codec"] = report.get("codec", meta.get("codec")) or row.get("codec")
    planned_rate = row.get("bitrate_kbps")
    row["bitrate_kbps"] = _number(report.get("bitrate_kbps", meta.get("bitrate_kbps"))) or planned_rate
    row["codec_quality"] = _number(report.get("codec_quality")) or row.get("codec_quality")
    row["rt60_s"] = _number(report.get("rt60", meta.get("rt60")))
    row["drr_db"] = _number(report.get("drr"))
    row["clipped_fraction"] = _number(report.get("clipped_fraction"))
    row["noise_type"] = report.get("noise_type")
    row["rir_id"] = report.get("rir_id")
    for kind in ("noise", "rir"):
        row[f"{kind}_sample_rate"] = meta.get(f"{kind}_sample_rate")
    row["bandwidth_degraded_hz"] = effective_bandwidth(degraded, sr)
    row["bandwidth_target_hz"] = effective_bandwidth(target, sr)
    row["plateau_fraction"] = plateau_fraction(degraded)
    row["loudness_target_lufs"] = _loudness(target, sr)
    row["loudness_degraded_lufs"] = _loudness(degraded, sr)
    row["report"] = {k: v for k, v in report.items() if _number(v) is not None}
    return row


# ------------------------------------------------------------------------------------------ collection


def _shard_rows(run_dir: str, name: str, split: str | None) -> list[dict]:
    from datasets.shards import iter_samples, shard_path

    rows = []
    for sample in iter_samples(shard_path(run_dir, name)):
        if split is None or sample.meta.get("split") == split:
            rows.append(measure_sample(sample))
    return rows


def collect_shard_rows(
    run_dir: str,
    workers: int = 4,
    split: str | None = None,
    limit: int | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> tuple[dict, list[dict]]:
    """``(index, rows)``: one measured row per sample of the run's shards, in shard order. ``limit`` reads only
    the first shards, enough for that many samples."""
    from datasets.shards import read_index

    index = read_index(run_dir)
    entries = [e for e in index["shards"] if split is None or e.get("split") in (None, split)]
    if limit is not None:
        kept, total = [], 0
        for e in entries:
            if total >= limit:
                break
            kept.append(e)
            total += int(e["samples"])
        entries = kept
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for shard_rows in pool.map(lambda e: _shard_rows(run_dir, e["name"], split), entries):
            rows.extend(shard_rows)
            if on_shard is not None:
                on_shard(len(shard_rows))
    return index, rows[:limit] if limit is not None else rows


def collect_plan_rows(run_dir: str, split: str | None = None, limit: int | None = None) -> list[dict]:
    """One row of planned values per sample of ``run_dir/plan.parquet`` (nothing rendered yet)."""
    from datasets.manifest import read_parquet
    from datasets.synth_plan import PLAN_FILE

    path = storage.join(run_dir, PLAN_FILE)
    if not storage.exists(path):
        raise DataError(f"{run_dir}: neither index.json nor {PLAN_FILE} (not a synthesis run)")
    rows = []
    for r in read_parquet(path, columns=["key", "split", "shard", "steps"]).to_pylist():
        if split is None or r["split"] == split:
            rows.append({"key": r["key"], "split": r["split"], **planned_values(json.loads(r["steps"]))})
    return rows[:limit] if limit is not None else rows


def rir_rooms(run_dir: str) -> dict[str, dict[str, Any]]:
    """RIR id -> ``rt60_mid_s``, ``rt60_8k_s`` (octave-band RT60s) and ``room_type`` for the RIR bank named in the
    run's plan: from the manifest's columns where it has them (generated banks), otherwise measured on the RIR
    files (:func:`datasets.banks.room_rt60s`). Empty when the plan, its manifest or the files cannot be read."""
    from datasets.audio import read_audio
    from datasets.banks import room_rt60s
    from datasets.manifest import read_parquet
    from datasets.synth_plan import PLAN_FILE, read_plan_metadata

    try:
        _, recipe = read_plan_metadata(storage.join(run_dir, PLAN_FILE))
        table = read_parquet((recipe or {})["manifests"]["rir"]).to_pylist()
    except (DataError, KeyError, OSError, TypeError, ValueError):
        return {}
    rooms: dict[str, dict[str, Any]] = {}
    for row in table:
        mid, high = _number(row.get("rt60_mid")), _number(row.get("rt60_8k"))
        if mid is None:
            try:
                x, sr = read_audio(row["path"], mono=False)
                measured = room_rt60s(x[:, 0] if x.ndim == 2 else x, sr)
                mid, high = _number(measured["rt60_mid"]), _number(measured["rt60_8k"])
            except (OSError, ValueError, RuntimeError):
                pass
        rooms[str(row["id"])] = {"rt60_mid_s": mid, "rt60_8k_s": high, "room_type": row.get("room_type")}
    return rooms


# ------------------------------------------------------------------------------------------ summaries


def _values(rows: Iterable[dict], name: str) -> list[float]:
    return [v for v in (_number(r.get(name)) for r in rows) if v is not None]


def histogram(values: list[float], edges: np.ndarray) -> dict[str, Any]:
    """Counts per bin; values outside the edges are counted in the first/last bin and reported as such."""
    v = np.asarray(values, dtype=np.float64)
    below, above = int(np.sum(v < edges[0])), int(np.sum(v > edges[-1]))
    counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": counts.tolist(),
        "below": below,
        "above": above,
    }


def describe(values: list[float]) -> dict[str, float | int | None]:
    """n, mean, min, 5th/50th/95th percentile and max (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "min": None, "p5": None, "median": None, "p95": None, "max": None}
    v = np.asarray(values, dtype=np.float64)
    q = np.percentile(v, [5, 50, 95])
    return {
        "n": int(len(v)),
        "mean": round(float(v.mean()), 4),
        "min": round(float(v.min()), 4),
        "p5": round(float(q[0]), 4),
        "median": round(float(q[1]), 4),
        "p95": round(float(q[2]), 4),
        "max": round(float(v.max()), 4),
    }


def _fraction(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def summarize(rows: list[dict], source: str) -> dict[str, Any]:
    """Histograms, summaries, operator counts / co-occurrence, codec mix and headline numbers of ``rows``."""
    n = len(rows)
    names = [k for k in HISTOGRAMS if source == "shards" or k not in MEASURED]
    if source == "plan":
        names = [k for k in names if k not in ("snr_achieved_db", "drr_db", "clipped_fraction")]
        names = [k for k in names if not k.startswith("rt60")]
    hists, summaries = {}, {}
    for name in names:
        values = _values(rows, name)
        hists[name] = {**histogram(values, HISTOGRAMS[name][1]), "n": len(values), "missing": n - len(values)}
        summaries[name] = describe(values)

    ops = Counter(op for r in rows for op in set(r.get("ops") or []))
    order = sorted(ops, key=lambda op: (-ops[op], op))
    extras = [op for op in order if op not in FIXED_OPS]
    co = {a: dict.fromkeys(extras, 0) for a in extras}
    for r in rows:
        present = [op for op in set(r.get("ops") or []) if op in co]
        for a in present:
            for b in present:
                co[a][b] += 1

    codecs: dict[str, Counter] = {}
    for r in rows:
        if r.get("codec"):
            rate, quality = _number(r.get("bitrate_kbps")), _number(r.get("codec_quality"))
            if rate is not None and quality is not None:  # VBR: the bit rate measured, to the nearest 8 kbps
                rate = 8.0 * round(rate / 8.0)
            label = f"{rate:g}" if rate is not None else f"q{quality:g}" if quality is not None else "?"
            codecs.setdefault(str(r["codec"]), Counter())[label] += 1
    noise_types = Counter(str(r["noise_type"]) for r in rows if r.get("noise_type"))
    room_types = Counter(str(r["room_type"]) for r in rows if r.get("room_type"))
    native = {
        kind: dict(Counter(str(r[f"{kind}_sample_rate"]) for r in rows if r.get(f"{kind}_sample_rate")))
        for kind in ("noise", "rir")
    }

    report_keys: dict[str, dict] = {}
    for key in sorted({k for r in rows for k in (r.get("report") or {})}):
        report_keys[key] = describe(
            [v for r in rows if (v := _number((r.get("report") or {}).get(key))) is not None]
        )

    def median(name: str) -> float | None:
        return summaries.get(name, {}).get("median")

    snr = _values(rows, "snr_target_db")
    rooms_measured = [
        r for r in rows if _number(r.get("rt60_8k_s")) is not None and _number(r.get("rt60_mid_s"))
    ]
    headline: dict[str, Any] = {
        "samples": n,
        "snr_target_db_median": median("snr_target_db"),
        "snr_target_db_p5_p95": [summaries["snr_target_db"]["p5"], summaries["snr_target_db"]["p95"]],
        "noise_fraction": _fraction(len(snr), n),
        "near_clean_fraction": _fraction(sum(v >= 20.0 for v in snr) + (n - len(snr)), n),
        "band_limited_fraction": _fraction(sum(r.get("bandwidth_drawn_hz") is not None for r in rows), n),
        "codec_fraction": _fraction(sum(bool(r.get("codec")) for r in rows), n),
        "reverb_fraction": _fraction(sum("reverb" in (r.get("ops") or []) for r in rows), n),
        "clipping_fraction": _fraction(sum("clipping" in (r.get("ops") or []) for r in rows), n),
        "degradation_ops_mean": summaries["degradation_ops"]["mean"],
    }
    if source == "shards":
        bw = _values(rows, "bandwidth_degraded_hz")
        headline.update(
            {
                "snr_achieved_db_median": median("snr_achieved_db"),
                "bandwidth_degraded_hz_median": median("bandwidth_degraded_hz"),
                "bandwidth_target_hz_median": median("bandwidth_target_hz"),
                "bandwidth_degraded_below_8k_fraction": _fraction(sum(v < 8000 for v in bw), n),
                "bandwidth_degraded_from_20k_fraction": _fraction(sum(v >= 20000 for v in bw), n),
                "rt60_s_median": median("rt60_s"),
                "rt60_s_min_max": [summaries["rt60_s"]["min"], summaries["rt60_s"]["max"]],
                "rt60_mid_s_min_max": [summaries["rt60_mid_s"]["min"], summaries["rt60_mid_s"]["max"]],
                "rt60_8k_to_mid_ratio_median": describe(
                    [r["rt60_8k_s"] / r["rt60_mid_s"] for r in rooms_measured]
                )["median"],
                "drr_db_median": median("drr_db"),
                "clipped_fraction_median": median("clipped_fraction"),
                "loudness_target_lufs_median": median("loudness_target_lufs"),
                "loudness_degraded_lufs_median": median("loudness_degraded_lufs"),
            }
        )
    return {
        "source": source,
        "samples": n,
        "splits": dict(Counter(str(r.get("split")) for r in rows)),
        "headline": headline,
        "histograms": hists,
        "summaries": summaries,
        "operators": {"samples": {op: ops[op] for op in order}, "cooccurrence": co},
        "codecs": {
            name: {
                "samples": sum(c.values()),
                "kbps": dict(
                    sorted(c.items(), key=lambda kv: (kv[0][0] == "q", _number(kv[0].lstrip("q")) or 0))
                ),
            }
            for name, c in sorted(codecs.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        },
        "noise_types": dict(sorted(noise_types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "room_types": dict(sorted(room_types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "bank_native_rates": native,
        "report_keys": report_keys,
    }


# ------------------------------------------------------------------------------------------ plots


def _bar(ax, hist: dict, label: str, color: str, scale: float = 1.0, alpha: float = 1.0, name=None) -> None:
    edges = np.asarray(hist["edges"]) * scale
    ax.stairs(hist["counts"], edges, fill=True, color=color, alpha=alpha, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("samples")


def _panels(stats: dict) -> dict[str, Callable]:
    """PNG name -> function drawing its panels on a list of axes (number of axes = len of the tuple)."""
    h = stats["histograms"]

    def overlay(ax, names: list[tuple[str, str]], label: str, scale: float = 1.0) -> None:
        drawn = False
        for (name, legend), color in zip(names, ("tab:blue", "tab:orange", "tab:green"), strict=False):
            if name in h and h[name]["n"]:
                _bar(ax, h[name], label, color, scale, alpha=0.55, name=f"{legend} (n={h[name]['n']})")
                drawn = True
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)

    def snr(axes):
        overlay(axes[0], [("snr_target_db", "target"), ("snr_achieved_db", "achieved")], "SNR (dB)")

    def bandwidth(axes):
        overlay(
            axes[0],
            [("bandwidth_degraded_hz", "degraded, measured"), ("bandwidth_target_hz", "target, measured"),
             ("bandwidth_drawn_hz", "drawn limit")],
            f"effective bandwidth (kHz; bands within {BANDWIDTH_DROP_DB:g} dB of the loudest)",
            scale=1e-3,
        )  # fmt: skip

    def codec(axes):
        names = list(stats["codecs"])
        axes[0].bar(names, [stats["codecs"][c]["samples"] for c in names], color="tab:purple")
        axes[0].set_ylabel("samples")
        axes[0].set_title(f"codecs ({stats['headline']['codec_fraction'] or 0:.0%} of samples)", fontsize=9)
        axes[0].tick_params(axis="x", labelrotation=45, labelsize=7)
        rates = Counter()
        for c in stats["codecs"].values():
            rates.update(c["kbps"])
        labels = sorted(rates, key=lambda r: _number(r) or 0.0)
        axes[1].bar(labels, [rates[r] for r in labels], color="tab:blue")
        axes[1].set_xlabel("bit rate (kbps)")
        axes[1].set_ylabel("samples")
        axes[1].tick_params(axis="x", labelrotation=45, labelsize=7)

    def room(axes):
        overlay(
            axes[0],
            [("rt60_s", "broadband"), ("rt60_mid_s", "500 Hz-1 kHz"), ("rt60_8k_s", "8 kHz octave")],
            "RT60 of the drawn RIRs (s)",
        )
        overlay(axes[1], [("drr_db", "DRR")], "DRR (dB)")

    def clipping(axes):
        overlay(axes[0], [("clipped_fraction", "clipping operator")], "clipped fraction")
        overlay(axes[1], [("plateau_fraction", "degraded")], "fraction of samples at the peak level")

    def loudness(axes):
        overlay(axes[0], [("loudness_target_lufs", "target"), ("loudness_degraded_lufs", "degraded")], "LUFS")

    def operators(axes):
        ops = stats["operators"]["samples"]
        axes[0].barh(list(ops)[::-1], list(ops.values())[::-1], color="tab:gray")
        axes[0].set_xlabel(f"samples (of {stats['samples']})")
        axes[0].tick_params(axis="y", labelsize=7)
        co = stats["operators"]["cooccurrence"]
        names = list(co)
        if names:
            m = np.array([[co[a][b] for b in names] for a in names])
            image = axes[1].imshow(m, cmap="viridis")
            axes[1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
            axes[1].set_yticks(range(len(names)), names, fontsize=7)
            axes[1].figure.colorbar(image, ax=axes[1], shrink=0.8)
        axes[1].set_title("samples drawing both", fontsize=9)

    panels = {"snr.png": (1, snr), "bandwidth.png": (1, bandwidth), "codec.png": (2, codec)}
    if stats["source"] == "shards":
        panels.update({"room.png": (2, room), "clipping.png": (2, clipping), "loudness.png": (1, loudness)})
    panels["operators.png"] = (2, operators)
    return panels


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def write_plots(stats: dict, out: Path, title: str) -> list[Path]:
    """One PNG per panel group plus ``overview.png`` with every panel (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    panels = _panels(stats)
    for name, (count, draw) in panels.items():
        fig, axes = plt.subplots(1, count, figsize=(5.5 * count, 3.6), squeeze=False)
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.25, top=0.88, wspace=0.35)
        draw(list(axes[0]))
        fig.suptitle(f"{title}: {name[:-4]}", fontsize=10)
        _save(fig, out / name)
        plt.close(fig)
        written.append(out / name)
    total = sum(count for count, _ in panels.values())
    cols = 4
    rows = math.ceil(total / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    # fixed margins: a layout engine measures every tick label twice per figure and triples the cost
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1, top=0.93, wspace=0.3, hspace=0.55)
    flat = list(axes.flat)
    i = 0
    for count, draw in panels.values():
        draw(flat[i : i + count])
        i += count
    for ax in flat[i:]:
        ax.axis("off")
    fig.suptitle(f"{title}: {stats['samples']} samples ({stats['source']})", fontsize=11)
    _save(fig, out / "overview.png")
    plt.close(fig)
    written.append(out / "overview.png")
    return written


# ------------------------------------------------------------------------------------------ the report


@dataclass
class StatsReport:
    """What :func:`corpus_stats` wrote and the headline numbers."""

    out: Path
    source: str  # "shards" (rendered corpus) or "plan" (planned values only)
    samples: int
    headline: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"{self.samples} samples ({self.source}); report in {self.out}"]
        for key, value in self.headline.items():
            lines.append(f"  {key:<38} {value}")
        lines += [f"wrote {p}" for p in self.files]
        return lines


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def corpus_stats(
    run_dir: str,
    out: str | Path,
    workers: int = 4,
    split: str | None = None,
    limit: int | None = None,
    on_shard: Callable[[int], None] | None = None,
    source: str = "auto",
) -> StatsReport:
    """Measure the run in ``run_dir`` and write the report into ``out`` (created; each file written atomically).
    ``source``: ``shards`` (the rendered samples), ``plan`` (planned values only) or ``auto`` (the shards when the
    run is rendered, else its plan). ``split`` keeps one split; ``limit`` the first samples."""
    from datasets.shards import INDEX_FILE

    run_dir = str(run_dir)
    out = Path(out)
    if source not in ("auto", "shards", "plan"):
        raise ValueError(f"source must be auto, shards or plan, got {source!r}")
    rendered = storage.exists(storage.join(run_dir, INDEX_FILE))
    if source == "shards" and not rendered:
        raise DataError(f"{run_dir}: no {INDEX_FILE} (not rendered yet: hires synth render {run_dir})")
    if source == "shards" or (source == "auto" and rendered):
        index, rows = collect_shard_rows(
            run_dir, workers=workers, split=split, limit=limit, on_shard=on_shard
        )
        rooms = rir_rooms(run_dir)
        for row in rows:
            row.update(rooms.get(str(row.get("rir_id")), {}))
        source, identity = "shards", {k: index.get(k) for k in ("code_version", "seed", "config_sha256")}
    else:
        rows, source, identity = collect_plan_rows(run_dir, split=split, limit=limit), "plan", {}
    if not rows:
        raise DataError(f"{run_dir}: no samples" + (f" in split {split!r}" if split else ""))
    stats = summarize(rows, source)
    stats = {
        "run": run_dir,
        **identity,
        "definitions": {
            "effective_bandwidth": f"highest frequency whose 187.5 Hz band of the Welch spectrum (Hann "
            f"{BANDWIDTH_NPERSEG}, 50 % overlap, valid samples) lies within {BANDWIDTH_DROP_DB:g} dB of the "
            "loudest band",
            "plateau_fraction": f"fraction of degraded samples within {PLATEAU_TOLERANCE:g} (relative) of its peak",
            "loudness": "ITU-R BS.1770 integrated loudness of the valid samples (LUFS)",
            "near_clean_fraction": "samples without noise or with a target SNR of 20 dB or more",
        },
        **stats,
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / STATS_FILE, json.dumps(stats, indent=1, sort_keys=False) + "\n")
    _write_text(out / SAMPLES_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    files = [out / STATS_FILE, out / SAMPLES_FILE]
    files += write_plots(stats, out, run_dir)
    return StatsReport(out, source, len(rows), stats["headline"], files)
