"""Evaluation: score restored speech against clean references, per file, aggregated and per degradation type.

Two entry points, one report (see :mod:`pipelines.report` for ``report.json``, ``report.md`` and the plots):

* :func:`evaluate_folders` scores the files of an estimate folder against the reference folder's files of the
  same relative path (extension aside), optionally a degraded folder too. Any rate: every signal is read as mono
  at 48 kHz and :mod:`training.metrics` resamples further where a metric needs it. Files on one side only are
  listed (``unmatched``), files that cannot be scored are listed with the reason (``failed``).
* :func:`evaluate_shards` restores a held-out split of a synthesis run (``index.json`` split, in index order,
  the first ``limit`` samples) and scores ``degraded``, ``recovery`` and ``restored`` against ``clean``. With
  several iteration counts the restored system becomes ``restored@K`` per count, all from one restore of the
  largest count (the restorer returns each pass's output as ``restored@k`` with ``keep_stages``; a restorer that
  does not is run once per count). A sample belongs to every degradation type among
  its metadata ``ops`` (``loudness`` and ``peak`` are applied to every sample and are no type).

Systems: ``clean`` (the reference itself: only the non-intrusive DNSMOS, the ceiling a system can reach),
``degraded``, then ``estimate`` (folders) or ``recovery`` / ``restored`` (shards). Shard samples are scored on
their valid (non-padded) part.

Aggregates are the mean and its 95 % confidence interval from Student's t distribution (``mean +- t(0.975,
n-1) * s / sqrt(n)``), over the files whose value is finite (``n``; ``nan`` counts the others, their reasons are
in the per-file rows).

**Resume.** Each (file, system) score is appended to ``OUT/cache/scores-<settings digest>.jsonl`` as soon as it
is computed, so a rerun with the same settings skips what is done (and a run with other settings uses another
cache file). A few example files keep their audio in ``OUT/examples/<item>/<system>.flac`` for the
spectrogram figure. Nothing is written outside ``OUT``; every file is written under a temporary name then renamed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.audio import AUDIO_EXTENSIONS, read_audio, write_audio
from datasets.errors import DataError, HiresError, UsageError
from training import metrics as metric_defs

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
FORMAT = "hires-evaluation"
FORMAT_VERSION = 1
CI_METHOD = "Student t 95 % interval of the mean: mean +- t(0.975, n-1) * std / sqrt(n), over finite values"
NO_TYPE_OPS = ("loudness", "peak")  # applied to every sample: not a degradation type
REFERENCE_SYSTEM = "clean"
CACHE_DIR = "cache"
EXAMPLES_DIR = "examples"
DEFAULT_EXAMPLES = 3


# --------------------------------------------------------------------------------------------------- report


@dataclass
class EvaluationReport:
    """What an evaluation produced; ``report.json`` holds the same plus the per-file rows."""

    out: Path  # report folder: report.json, report.md, *.png
    systems: list[str]  # e.g. ["clean", "degraded", "recovery", "restored"] or "restored@3"
    aggregate: dict[str, dict[str, dict]]  # system -> metric -> {"mean", "ci95_low", "ci95_high", "n", ...}
    per_type: dict[str, dict[str, dict[str, dict]]]  # degradation op -> system -> metric -> stats
    mode: str = "folders"  # "folders" or "shards"
    items: int = 0  # files (or samples) scored
    iterations: list[int] = field(default_factory=list)  # shards: the counts studied
    failed: list[dict] = field(default_factory=list)  # {"item", "reason"}
    unmatched: dict[str, list[str]] = field(default_factory=dict)  # folders: side -> relative paths
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # {"item", "system", "types", "scores", "reasons"}
    # system -> metric -> stats of the per-file difference from "degraded" (paired: files scored in both)
    change: dict[str, dict[str, dict]] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    @property
    def metrics(self) -> list[str]:
        return [m for m in metric_defs.METRICS if any(m in self.aggregate.get(s, {}) for s in self.systems)]

    def lines(self) -> list[str]:
        """A summary table for the terminal: one row per system, the mean and the CI half-width per metric."""
        names = self.metrics
        width = max([len(s) for s in self.systems] + [6])
        head = f"{'system':<{width}}  {'n':>4}  " + "  ".join(f"{_short_name(m):>12}" for m in names)
        out = [
            f"evaluation of {self.items} {'sample' if self.mode == 'shards' else 'file'}(s): {self.out}",
            head,
        ]
        for system in self.systems:
            stats = self.aggregate.get(system, {})
            n = max((s["n"] for s in stats.values()), default=0)
            cells = [_cell(stats.get(m)) for m in names]
            out.append(f"{system:<{width}}  {n:>4}  " + "  ".join(f"{c:>12}" for c in cells))
        if self.failed:
            out.append(f"{len(self.failed)} item(s) could not be scored (see report.md)")
        if any(self.unmatched.values()):
            counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in self.unmatched.items() if v)
            out.append(f"unmatched files: {counts} (listed in report.md)")
        out.append(f"report: {self.out / 'report.md'}")
        return out


def _short_name(metric: str) -> str:
    return metric.replace("dnsmos_", "mos_")


def _cell(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "-"
    half = stats.get("ci95_half")
    return f"{stats['mean']:.2f}" + (f"±{half:.2f}" if half is not None and math.isfinite(half) else "")


def mean_ci(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "ci95_low", "ci95_high", "ci95_half", "std", "n", "nan"}`` of the finite values (Student t;
    one value has no interval: its bounds are NaN)."""
    vals = [float(v) for v in values if v is not None]
    finite = np.array([v for v in vals if math.isfinite(v)], dtype=np.float64)
    n = int(finite.size)
    stats: dict[str, Any] = {"n": n, "nan": len(vals) - n}
    if n == 0:
        return {**stats, "mean": math.nan, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan,
                "ci95_half": math.nan}  # fmt: skip
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1) * std / math.sqrt(n))
    else:
        half = math.nan
    return {
        **stats,
        "mean": mean,
        "std": std,
        "ci95_low": mean - half,
        "ci95_high": mean + half,
        "ci95_half": half,
    }


def aggregate_rows(
    rows: Sequence[dict], systems: Sequence[str], names: Sequence[str]
) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, dict[str, dict]]]]:
    """``(aggregate, per_type)`` statistics of per-file rows."""

    def stats_of(selected: list[dict]) -> dict[str, dict[str, dict]]:
        out: dict[str, dict[str, dict]] = {}
        for system in systems:
            mine = [r for r in selected if r["system"] == system]
            if not mine:
                continue
            present = [m for m in names if any(m in r["scores"] for r in mine)]
            out[system] = {
                m: mean_ci(_value(r["scores"].get(m)) for r in mine if m in r["scores"]) for m in present
            }
        return out

    aggregate = stats_of(list(rows))
    types = sorted({t for r in rows for t in r.get("types", [])})
    per_type = {t: stats_of([r for r in rows if t in r.get("types", [])]) for t in types}
    return aggregate, per_type


def paired_change(
    rows: Sequence[dict], systems: Sequence[str], baseline: str = "degraded"
) -> dict[str, dict[str, dict]]:
    """Per system, per intrusive metric: :func:`mean_ci` of ``value(system) - value(baseline)`` over the files
    scored in both (a paired interval: narrower than comparing the two means when files vary a lot)."""
    base = {r["item"]: r["scores"] for r in rows if r["system"] == baseline}
    out: dict[str, dict[str, dict]] = {}
    for system in systems:
        if system in (baseline, REFERENCE_SYSTEM) or not base:
            continue
        mine = [r for r in rows if r["system"] == system and r["item"] in base]
        stats = {}
        for metric in metric_defs.INTRUSIVE:
            diffs = [
                _value(r["scores"].get(metric)) - _value(base[r["item"]].get(metric))
                for r in mine
                if metric in r["scores"] and metric in base[r["item"]]
            ]
            if diffs:
                stats[metric] = mean_ci(diffs)
        if stats:
            out[system] = stats
    return out


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


# ---------------------------------------------------------------------------------------------------- cache


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become ``None`` (JSON has no such numbers); numpy scalars become Python ones."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


class ScoreCache:
    """Per-(item, system) rows of one settings digest, appended line by line to a JSONL file under ``out``.

    A torn last line (a killed run) is ignored on reading; its row is simply computed again.
    """

    def __init__(self, out: Path, settings: dict) -> None:
        self.path = out / CACHE_DIR / f"scores-{_digest(settings)}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[(row["item"], row["system"])] = row
                except (ValueError, KeyError, TypeError):
                    continue
        else:
            (self.path.parent / f"{self.path.stem}.settings.json").write_text(
                json.dumps(_json_safe(settings), indent=1, sort_keys=True) + "\n"
            )

    def has(self, item: str, systems: Iterable[str]) -> bool:
        return all((item, s) in self.rows for s in systems)

    def add(self, row: dict) -> None:
        row = _json_safe(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[(row["item"], row["system"])] = row


def _metric_names(metrics: Sequence[str] | None) -> list[str]:
    names = list(metric_defs.METRICS if metrics is None else metrics)
    unknown = [m for m in names if m not in metric_defs.METRICS]
    if unknown or not names:
        raise UsageError(
            f"--metrics: unknown {', '.join(unknown) or 'none given'}; known: {', '.join(metric_defs.METRICS)}"
        )
    return [m for m in metric_defs.METRICS if m in names]


def _systems_with_reference(names: Sequence[str], others: list[str]) -> list[str]:
    """The reference itself is scored only when a non-intrusive metric is asked for."""
    return ([REFERENCE_SYSTEM] if any(m in metric_defs.NON_INTRUSIVE for m in names) else []) + others


def _score_row(
    item: str, system: str, types: list[str], est: np.ndarray, ref: np.ndarray | None, metrics: Sequence[str]
) -> dict:
    names = [m for m in metrics if ref is not None or m in metric_defs.NON_INTRUSIVE]
    try:
        s = metric_defs.score(est, SAMPLE_RATE, ref, metrics=names)
        return {"item": item, "system": system, "types": types, "scores": dict(s), "reasons": s.reasons}
    except DataError as e:
        nan = {m: math.nan for m in names}
        return {"item": item, "system": system, "types": types, "scores": nan, "reasons": {"error": str(e)}}


def _example_path(out: Path, item: str, system: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in item)
    return out / EXAMPLES_DIR / safe / f"{system.replace('@', '_at')}.flac"


def _keep_example(out: Path, item: str, signals: dict[str, np.ndarray]) -> None:
    for system, x in signals.items():
        path = _example_path(out, item, system)
        if not path.exists():
            write_audio(path, np.clip(x, -1, 1), SAMPLE_RATE)


def load_examples(
    out: Path, items: Sequence[str], systems: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """The example signals kept under ``OUT/examples`` (item -> system -> 48 kHz audio), those that exist."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for item in items:
        for system in systems:
            path = _example_path(out, item, system)
            if path.exists():
                found.setdefault(item, {})[system] = read_audio(path, sr=SAMPLE_RATE)[0]
    return found


# -------------------------------------------------------------------------------------------------- folders


def _audio_files(root: Path) -> dict[str, list[str]]:
    """Relative path without extension -> relative paths of the audio files under ``root`` having it."""
    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                rel = path.relative_to(root)
                found.setdefault(str(rel.with_suffix("")), []).append(str(rel))
    return found


def _check_folder(path: str, flag: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"{flag} {path}: not a folder")
    return root


def _progress(total: int, desc: str, enabled: bool, unit: str = "file"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def evaluate_folders(
    ref: str,
    est: str,
    out: str,
    degraded: str | None = None,
    *,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    experiment: str = "hires",
    limit: int | None = None,
    examples: int = DEFAULT_EXAMPLES,
    metrics: Sequence[str] | None = None,
    progress: bool = True,
) -> EvaluationReport:
    """Score each file of ``est`` against the file of ``ref`` with the same relative path (extension aside);
    ``degraded`` files, when given, are scored too. Writes the report into ``out`` and returns it."""
    _check_tracking(tracking_uri, run_name)
    names = _metric_names(metrics)
    roots = {"ref": _check_folder(ref, "--ref"), "est": _check_folder(est, "--est")}
    if degraded is not None:
        roots["degraded"] = _check_folder(degraded, "--degraded")
    files = {side: _audio_files(root) for side, root in roots.items()}
    unmatched: dict[str, list[str]] = {
        "reference_only": sorted(
            p for k in files["ref"].keys() - files["est"].keys() for p in files["ref"][k]
        ),
        "estimate_only": sorted(
            p for k in files["est"].keys() - files["ref"].keys() for p in files["est"][k]
        ),
    }
    if degraded is not None:
        unmatched["no_degraded"] = sorted(
            k for k in files["ref"].keys() & files["est"].keys() if k not in files["degraded"]
        )
    failed: list[dict] = []
    items = sorted(files["ref"].keys() & files["est"].keys())
    for key in list(items):
        ambiguous = [side for side in files if len(files[side].get(key, [])) > 1]
        if ambiguous:
            items.remove(key)
            listed = "; ".join(", ".join(files[s][key]) for s in ambiguous)
            failed.append({"item": key, "reason": f"several files share this path: {listed}"})
    if not items:
        raise DataError(f"--est {est}: no file matches a file of --ref {ref} by relative path")
    if limit is not None:
        items = items[:limit]
    systems = _systems_with_reference(names, [*(["degraded"] if degraded is not None else []), "estimate"])
    settings = {"mode": "folders", "ref": str(roots["ref"].resolve()), "est": str(roots["est"].resolve()),
                "degraded": str(roots["degraded"].resolve()) if degraded is not None else None, "metrics": names}  # fmt: skip
    out_dir = Path(out).expanduser()
    _check_out(out_dir, [p for p in roots.values()])
    cache = ScoreCache(out_dir, settings)
    with _progress(len(items), "evaluate", progress) as bar:
        for i, key in enumerate(items):
            if not cache.has(key, systems):
                try:
                    signals = {
                        side: read_audio(roots[side] / files[side][key][0], sr=SAMPLE_RATE)[0]
                        for side in roots
                        if key in files[side]
                    }
                except DataError as e:
                    failed.append({"item": key, "reason": str(e)})
                    bar.update(1)
                    continue
                named = {"clean": signals["ref"], "estimate": signals["est"]}
                if "degraded" in signals:
                    named["degraded"] = signals["degraded"]
                for system in systems:
                    if system in named and (key, system) not in cache.rows:
                        ref_sig = None if system == REFERENCE_SYSTEM else named["clean"]
                        cache.add(_score_row(key, system, [], named[system], ref_sig, names))
                if i < examples:
                    _keep_example(out_dir, key, named)
            bar.update(1)
    rows = [cache.rows[(k, s)] for k in items for s in systems if (k, s) in cache.rows]
    return _finish(
        out_dir, "folders", systems, rows, items, failed, unmatched, settings, [], tracking_uri, run_name,
        experiment, items[:examples], progress,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- shards


@dataclass
class Unreadable:
    """A sample (or the rest of a shard) that does not decode: listed as not scored, the evaluation goes on."""

    item: str
    reason: str


def split_samples(shards: str, split: str, limit: int | None = None) -> Iterator:
    """The decoded samples of ``split`` in index order (at most ``limit``), an :class:`Unreadable` in place of a
    sample that does not decode or of a shard's unreadable rest; a one-line :class:`UsageError` naming the
    splits present when the split has none."""
    from datasets import shards as shard_format

    index = shard_format.read_index(shards)
    counts: dict[str, int] = {}
    for entry in index["shards"]:
        counts[str(entry["split"])] = counts.get(str(entry["split"]), 0) + int(entry["samples"])
    if not counts.get(split):
        present = ", ".join(f"{k} ({v} samples)" for k, v in sorted(counts.items()) if v) or "none"
        raise UsageError(f"{shards}: split {split!r} has no samples (splits present: {present})")
    entries = sorted(
        (e for e in index["shards"] if e["split"] == split and int(e["samples"]) > 0), key=lambda e: e["name"]
    )

    def generate() -> Iterator:
        n = 0
        for entry in entries:
            path = shard_format.shard_path(shards, entry["name"])
            try:
                for raw in shard_format.iter_raw_samples(path):
                    if limit is not None and n >= limit:
                        return
                    n += 1
                    try:
                        yield shard_format.decode_sample(raw)
                    except DataError as e:
                        yield Unreadable(raw.key, str(e))
            except (DataError, OSError) as e:  # a truncated or missing tar: its remaining samples are lost
                yield Unreadable(entry["name"], str(e))

    return generate()


def split_size(shards: str, split: str) -> int:
    from datasets import shards as shard_format

    return sum(int(e["samples"]) for e in shard_format.read_index(shards)["shards"] if e["split"] == split)


def degradation_types(meta: dict) -> list[str]:
    """The degradation types of a sample: its metadata ``ops`` other than loudness and peak, in order, once."""
    ops = meta.get("ops") or []
    names = [op.get("op") if isinstance(op, dict) else op for op in ops]
    out: list[str] = []
    for name in names:
        if isinstance(name, str) and name not in NO_TYPE_OPS and name not in out:
            out.append(name)
    return out or ["none"]


def restored_systems(iterations: Sequence[int]) -> list[str]:
    """``["restored"]`` for the single default count 1, else ``["restored@K", ...]``."""
    counts = list(iterations)
    return ["restored"] if counts == [1] else [f"restored@{k}" for k in counts]


def _parse_iterations(iterations: Sequence[int]) -> list[int]:
    counts = sorted({int(k) for k in iterations})
    if not counts or counts[0] < 1:
        raise UsageError(f"--iterations {','.join(map(str, iterations))}: expected counts >= 1")
    return counts


def evaluate_shards(
    shards: str,
    split: str,
    bundle: Any,
    out: str,
    iterations: Sequence[int] = (1,),
    options: Any = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    *,
    device: str = "cpu",
    experiment: str = "hires",
    examples: int = DEFAULT_EXAMPLES,
    bundle_tracking_uri: str | None = None,
    metrics: Sequence[str] | None = None,
) -> EvaluationReport:
    """Restore the ``split`` samples of the synthesis run ``shards`` and score them against their clean signal.

    ``bundle`` is a bundle folder, a :class:`training.restorer.Bundle` or a ready
    :class:`training.restorer.Restorer` (anything with its ``restore(audio, sample_rate, options)``).
    ``options`` (a :class:`training.restorer.RestoreOptions`) gives steps, guidance and seed; its
    ``iterations`` is replaced by each count of ``iterations``; with ``recovery_only`` only ``degraded`` and
    ``recovery`` are scored. ``bundle_tracking_uri`` resolves ``models:/`` URIs inside the bundle. ``metrics``
    (default :data:`training.metrics.METRICS`) picks the metrics; ``examples`` samples keep their audio for the
    spectrogram figure; ``device`` runs the restorer there.
    """
    from training.restorer import Bundle, RestoreOptions, Restorer

    _check_tracking(tracking_uri, run_name)
    names = _metric_names(metrics)
    options = options if options is not None else RestoreOptions()
    counts = [1] if options.recovery_only else _parse_iterations(iterations)
    total = split_size(shards, split)
    samples = split_samples(shards, split, limit)  # checks the split before any model loads
    if hasattr(bundle, "restore"):
        restorer, bundle_name = bundle, type(bundle).__name__
    elif isinstance(bundle, Bundle):
        restorer, bundle_name = Restorer(bundle, device=device), json.dumps(bundle.sources, sort_keys=True)
    else:
        loaded = Bundle.load(
            str(bundle), tracking_uri=bundle_tracking_uri, need_generative=not options.recovery_only
        )
        restorer, bundle_name = Restorer(loaded, device=device), str(Path(str(bundle)).expanduser().resolve())
    models = getattr(restorer, "bundle", None)
    if models is not None:  # a model retrained in place must not reuse the scores of its predecessor
        bundle_name = {"bundle": bundle_name, "models": _model_identity(models)}
    final = [] if options.recovery_only else restored_systems(counts)
    systems = _systems_with_reference(names, ["degraded", "recovery", *final])
    from datasets import shards as shard_format

    settings = {
        "mode": "shards",
        "shards": str(shards),
        "index_sha256": shard_format.index_sha256(shards),
        "split": split,
        "bundle": bundle_name,
        "options": {
            k: v for k, v in dataclasses.asdict(options).items() if k not in ("iterations", "keep_stages")
        },
        "iterations": counts,
        "device": str(device),
        "metrics": names,
    }
    out_dir = Path(out).expanduser()
    _check_out(out_dir, [Path(str(shards))])
    cache = ScoreCache(out_dir, settings)
    items: list[str] = []
    failed: list[dict] = []
    n = total if limit is None else min(limit, total)
    with _progress(n, f"evaluate {split}", progress, unit="clip") as bar:
        for sample in samples:
            if isinstance(sample, Unreadable):
                failed.append({"item": sample.item, "reason": sample.reason})
                bar.update(1)
                continue
            key = sample.key
            items.append(key)
            if cache.has(key, systems):
                bar.update(1)
                continue
            valid = int(sample.meta.get("valid") or len(sample.clean))
            clean, degraded = sample.clean[:valid], sample.degraded[:valid]
            types = degradation_types(sample.meta)
            try:
                signals = _restore_sample(restorer, degraded, sample.sample_rate, options, counts, final)
            except (
                HiresError
            ) as e:  # an input the restorer refuses (too short, ...): listed, the rest goes on
                failed.append({"item": key, "reason": str(e)})
                bar.update(1)
                continue
            signals = {REFERENCE_SYSTEM: clean, "degraded": degraded, **signals}
            for system in systems:
                if (key, system) not in cache.rows:
                    ref = None if system == REFERENCE_SYSTEM else clean
                    cache.add(_score_row(key, system, types, signals[system], ref, names))
            if len(items) <= examples:
                _keep_example(out_dir, key, signals)
            bar.update(1)
    rows = [cache.rows[(k, s)] for k in items for s in systems if (k, s) in cache.rows]
    return _finish(
        out_dir, "shards", systems, rows, items, failed, {}, settings, counts if final else [], tracking_uri,
        run_name, experiment, items[:examples], progress,
    )  # fmt: skip


def _model_identity(bundle: Any) -> dict[str, str]:
    """Stage -> sha256 of its ``model.json`` content as loaded (step, config, lineage, metrics)."""
    out = {}
    for stage in ("recovery", "autoencoder", "vocoder", "ldm"):
        loaded = getattr(bundle, stage, None)
        if loaded is not None:
            meta = json.dumps(_json_safe(loaded.meta), sort_keys=True, default=str)
            out[stage] = hashlib.sha256(meta.encode()).hexdigest()[:16]
    return out


def _restore_sample(
    restorer: Any, degraded: np.ndarray, sr: int, options: Any, counts: list[int], final: list[str]
) -> dict[str, np.ndarray]:
    """``{"recovery": ..., <restored system>: ...}`` at 48 kHz, the length of ``degraded`` at 48 kHz."""
    signals: dict[str, np.ndarray] = {}
    if not final:
        result = restorer.restore(degraded, sr, dataclasses.replace(options, keep_stages=True))
        signals["recovery"] = result.audio
        return signals
    done: dict[int, Any] = {}
    if len(counts) > 1:
        # one run of max(counts) passes gives every pass's output (restored@k) when the restorer keeps them
        options_max = dataclasses.replace(options, iterations=counts[-1], keep_stages=True)
        done[counts[-1]] = result = restorer.restore(degraded, sr, options_max)
        passes = {k: result.stages.get(f"restored@{k}") for k in counts}
        if all(x is not None for x in passes.values()):
            signals["recovery"] = result.stages.get("recovery", result.audio)
            signals.update({system: passes[k] for k, system in zip(counts, final, strict=True)})
            return signals
    for k, system in zip(counts, final, strict=True):  # a restorer that returns its last pass only
        result = done.get(k) or restorer.restore(
            degraded, sr, dataclasses.replace(options, iterations=k, keep_stages=True)
        )
        signals.setdefault("recovery", result.stages.get("recovery", result.audio))
        signals[system] = result.audio
    return signals


# ---------------------------------------------------------------------------------------------- shared tail


def _check_tracking(tracking_uri: str | None, run_name: str | None) -> None:
    if (tracking_uri is None) != (run_name is None):
        raise UsageError(
            "--tracking-uri and --run-name go together: pass both to log the evaluation to MLflow"
        )


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    resolved = out.resolve()
    for root in inputs:
        r = Path(root).expanduser().resolve()
        if resolved == r or r in resolved.parents:
            raise UsageError(f"--out {out}: inside the input folder {root}; pick a folder outside it")
    out.mkdir(parents=True, exist_ok=True)


def _finish(
    out: Path,
    mode: str,
    systems: list[str],
    rows: list[dict],
    items: list[str],
    failed: list[dict],
    unmatched: dict[str, list[str]],
    settings: dict,
    counts: list[int],
    tracking_uri: str | None,
    run_name: str | None,
    experiment: str,
    example_items: list[str],
    progress: bool,
) -> EvaluationReport:
    from pipelines.report import write_report

    aggregate, per_type = aggregate_rows(rows, systems, metric_defs.METRICS)
    scored = sorted({r["item"] for r in rows})
    report = EvaluationReport(
        out=out,
        systems=systems,
        aggregate=aggregate,
        per_type=per_type,
        mode=mode,
        items=len(scored),
        iterations=counts,
        failed=failed,
        unmatched=unmatched,
        settings=settings,
        rows=rows,
        change=paired_change(rows, systems),
    )
    shown = list(dict.fromkeys([REFERENCE_SYSTEM, *systems]))  # the clean spectrogram even when not scored
    write_report(report, load_examples(out, example_items, shown))
    if tracking_uri is not None and run_name is not None:
        report.mlflow_run_id = log_to_mlflow(report, tracking_uri, run_name, experiment)
    return report


def log_to_mlflow(
    report: EvaluationReport, tracking_uri: str, run_name: str, experiment: str = "hires"
) -> str:
    """Log the aggregate means (``<system>.<metric>``; ``restored@K`` as ``restored.<metric>`` at step K), the
    settings and the report files into the MLflow run of this report folder (found again on a rerun)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from training.tracking import end_run, find_or_create_run, flatten

    run_id, _ = find_or_create_run(
        tracking_uri, experiment, run_name, str(report.out.resolve()), tags={"hires.kind": "evaluation"}
    )
    client = MlflowClient(tracking_uri=tracking_uri)
    entries: list = []
    for system, stats in report.aggregate.items():
        name, step = (system.split("@")[0], int(system.split("@")[1])) if "@" in system else (system, 0)
        for metric, s in stats.items():
            for field_name in ("mean", "ci95_low", "ci95_high"):
                value = s.get(field_name)
                if value is not None and math.isfinite(value):
                    key = f"{name}.{metric}" + ("" if field_name == "mean" else f".{field_name}")
                    entries.append(Metric(key, float(value), 0, step))
    params = [Param(k, str(v)[:6000]) for k, v in flatten(_json_safe(report.settings)).items()]
    params.append(Param("items", str(report.items)))
    for i in range(0, len(entries), 500):
        client.log_batch(run_id, metrics=entries[i : i + 500])
    existing = client.get_run(run_id).data.params
    fresh = [p for p in params if p.key not in existing]
    for i in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[i : i + 100])
    for path in sorted(report.out.iterdir()):
        if path.is_file() and path.suffix in (".json", ".md", ".png"):
            client.log_artifact(run_id, str(path), artifact_path="evaluation")
    end_run(tracking_uri, run_id)
    return run_id
