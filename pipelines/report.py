"""The evaluation report files: ``report.json``, ``report.md`` and the PNG figures, from an
:class:`pipelines.evaluate.EvaluationReport`.

Figures (matplotlib, Agg backend, written atomically):

* ``distributions.png`` - per metric, box plots of the per-file values, grouped by degradation type (shards) and
  coloured by system;
* ``examples.png`` - log-mel spectrograms of the kept examples, one column per example, one row per system
  (clean / degraded / recovery / restored, or clean / degraded / estimate);
* ``iterations.png`` - with several iteration counts, each metric's mean and 95 % interval against the count,
  the degraded and recovery means as horizontal references.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training import metrics as metric_defs

if TYPE_CHECKING:
    from pipelines.evaluate import EvaluationReport

REPORT_JSON, REPORT_MD = "report.json", "report.md"
FIGURES = ("distributions.png", "examples.png", "iterations.png")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(
    report: EvaluationReport, examples: dict[str, dict[str, np.ndarray]] | None = None
) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the figures into ``report.out``; returns the paths written."""
    from pipelines.evaluate import CI_METHOD, FORMAT, FORMAT_VERSION, _json_safe

    out = report.out
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mode": report.mode,
        "settings": report.settings,
        "systems": report.systems,
        "metrics": report.metrics,
        "ci": CI_METHOD,
        "items": report.items,
        "iterations": report.iterations,
        "aggregate": report.aggregate,
        "per_type": report.per_type,
        "change_from_degraded": report.change,
        "failed": report.failed,
        "unmatched": report.unmatched,
        "files": report.rows,
    }
    written = [out / REPORT_JSON]
    _atomic_write(written[0], (json.dumps(_json_safe(doc), indent=1, sort_keys=True) + "\n").encode())
    figures = _figures(report, examples or {})
    _atomic_write(out / REPORT_MD, markdown(report, [p.name for p in figures]).encode())
    for name in FIGURES:  # a figure of an earlier run that this one does not make would mislead
        if out / name not in figures:
            (out / name).unlink(missing_ok=True)
    return [*written, out / REPORT_MD, *figures]


# ----------------------------------------------------------------------------------------------------- markdown


def _fmt(stats: dict | None, digits: int = 2) -> str:
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "-"
    half = stats.get("ci95_half")
    text = f"{stats['mean']:.{digits}f}"
    if half is not None and math.isfinite(half):
        text += f" ± {half:.{digits}f}"
    return text


def _table(stats_by_system: dict[str, dict[str, dict]], systems: list[str], names: list[str]) -> list[str]:
    arrows = {m: "↑" if metric_defs.HIGHER_IS_BETTER[m] else "↓" for m in names}
    lines = [
        "| system | n | " + " | ".join(f"{m} {arrows[m]}" for m in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for system in systems:
        stats = stats_by_system.get(system)
        if not stats:
            continue
        n = max((s["n"] for s in stats.values()), default=0)
        lines.append(f"| {system} | {n} | " + " | ".join(_fmt(stats.get(m)) for m in names) + " |")
    return lines


def markdown(report: EvaluationReport, figures: list[str]) -> str:
    from pipelines.evaluate import CI_METHOD

    names = report.metrics
    what = "samples" if report.mode == "shards" else "files"
    lines = [f"# Evaluation report ({report.mode})", ""]
    s = report.settings
    if report.mode == "shards":
        opts = s.get("options", {})
        lines += [
            f"- shards: `{s.get('shards')}`, split `{s.get('split')}`: {report.items} {what} scored",
            f"- models: `{b.get('bundle') if isinstance(b := s.get('bundle'), dict) else b}` on {s.get('device')}; steps {opts.get('steps') or 'config'}, guidance "
            f"{opts.get('guidance') if opts.get('guidance') is not None else 'config'}, seed {opts.get('seed')}"
            + (", recovery only" if opts.get("recovery_only") else ""),
        ]
        if report.iterations and report.iterations != [1]:
            lines.append(f"- iterations studied: {', '.join(map(str, report.iterations))}")
    else:
        lines += [
            f"- reference `{s.get('ref')}`, estimate `{s.get('est')}`"
            + (f", degraded `{s.get('degraded')}`" if s.get("degraded") else ""),
            f"- {report.items} {what} scored",
        ]
    lines += [
        f"- values: mean ± half-width of the 95 % interval ({CI_METHOD}); n counts finite values",
        "- `clean` is the reference itself: only the non-intrusive DNSMOS applies (a ceiling for the others)",
        "- LSD: 2048-point Hann STFT, hop 512 at 48 kHz, log10 power; `lsd_hf` over 8-24 kHz. PESQ-WB and ESTOI at "
        "16 kHz; mel SSIM on 128-band log-mel at 48 kHz; DNSMOS P.835 and P.808 at 16 kHz",
        "",
        "## All " + what,
        "",
        *_table(report.aggregate, report.systems, names),
        "",
    ]
    if report.change:
        lines += [
            "## Change from the degraded input (paired)",
            "",
            "Per file, the system's value minus the degraded input's; mean ± 95 % interval (Student t) over the "
            "files scored in both. An interval that excludes 0 is a change beyond the file-to-file spread.",
            "",
            *_table(report.change, report.systems, [m for m in names if m in metric_defs.INTRUSIVE]),
            "",
        ]
    if report.per_type:
        lines += [
            "## Per degradation type",
            "",
            "A sample counts under every type its synthesis applied.",
            "",
        ]
        for kind, stats in report.per_type.items():
            count = len({r["item"] for r in report.rows if kind in r.get("types", [])})
            lines += [f"### {kind} ({count} {what})", "", *_table(stats, report.systems, names), ""]
    if len(report.iterations) > 1:
        lines += ["## Iterations", "", "| metric | " + " | ".join(f"{k}" for k in report.iterations) + " |"]
        lines.append("|---|" + "---:|" * len(report.iterations))
        for m in names:
            cells = [_fmt(report.aggregate.get(f"restored@{k}", {}).get(m)) for k in report.iterations]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    reasons = _nan_reasons(report)
    if reasons:
        lines += ["## Values that could not be computed", "", "| system | metric | files | reason |"]
        lines.append("|---|---|---:|---|")
        for (system, metric, reason), n in sorted(reasons.items()):
            lines.append(f"| {system} | {metric} | {n} | {reason} |")
        lines.append("")
    if report.failed:
        lines += ["## Not scored", ""] + [f"- `{f['item']}`: {f['reason']}" for f in report.failed] + [""]
    for side, paths in report.unmatched.items():
        if paths:
            lines += [f"## Unmatched: {side.replace('_', ' ')} ({len(paths)})", ""]
            lines += [f"- `{p}`" for p in paths] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _nan_reasons(report: EvaluationReport) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for row in report.rows:
        for metric, reason in (row.get("reasons") or {}).items():
            key = (row["system"], metric, str(reason))
            counts[key] = counts.get(key, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------------ figures


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.png")
    try:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figures(report: EvaluationReport, examples: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for make in (_distributions, _examples, _iterations):
        fig = make(report, examples, plt)
        if fig is not None:
            name = {"_distributions": "distributions", "_examples": "examples", "_iterations": "iterations"}
            written.append(_save(fig, report.out / f"{name[make.__name__]}.png"))
            plt.close(fig)
    return written


def _grid(n: int, plt: Any, width: float, height: float) -> tuple[Any, list]:
    cols = min(n, 2 if n > 1 else 1)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _distributions(report: EvaluationReport, examples: dict, plt: Any):
    names = report.metrics
    if not report.rows or not names:
        return None
    groups = ["all", *report.per_type] if report.per_type else ["all"]
    systems = report.systems
    fig, axes = _grid(len(names), plt, 7.0, 3.0)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(systems), 1)
    for ax, metric in zip(axes, names, strict=True):
        for j, system in enumerate(systems):
            data, positions = [], []
            for g, group in enumerate(groups):
                vals = [
                    float(r["scores"][metric])
                    for r in report.rows
                    if r["system"] == system
                    and metric in r["scores"]
                    and r["scores"][metric] is not None
                    and math.isfinite(float(r["scores"][metric]))
                    and (group == "all" or group in r.get("types", []))
                ]
                if vals:
                    data.append(vals)
                    positions.append(g - 0.4 + width * (j + 0.5))
            if data:
                box = ax.boxplot(
                    data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=True
                )
                for patch in box["boxes"]:
                    patch.set_facecolor(colors[j % len(colors)])
                    patch.set_alpha(0.6)
                ax.plot([], [], color=colors[j % len(colors)], lw=6, alpha=0.6, label=system)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=20, fontsize=8)
        ax.set_title(
            f"{metric} ({'higher' if metric_defs.HIGHER_IS_BETTER[metric] else 'lower'} is better)",
            fontsize=9,
        )
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Per-file metric distributions" + (" by degradation type" if report.per_type else ""))
    fig.tight_layout()
    return fig


def _examples(report: EvaluationReport, examples: dict[str, dict[str, np.ndarray]], plt: Any):
    if not examples:
        return None
    items = list(examples)
    order = ["clean", *[s for s in report.systems if s != "clean"]]
    systems = [s for s in order if any(s in examples[i] for i in items)]
    fig, axes = plt.subplots(
        len(systems), len(items), figsize=(4.5 * len(items), 1.9 * len(systems)), squeeze=False
    )
    for c, item in enumerate(items):
        clean = examples[item].get("clean")
        ref = metric_defs.log_mel(np.asarray(clean, np.float64)) if clean is not None else None
        vmax = float(ref.max()) if ref is not None else None
        for r, system in enumerate(systems):
            ax = axes[r][c]
            x = examples[item].get(system)
            if x is None:
                ax.set_visible(False)
                continue
            spec = metric_defs.log_mel(np.asarray(x, np.float64))
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmax=vmax, vmin=None if vmax is None else vmax - 8,
                      extent=(0, len(x) / 48000, 0, spec.shape[0]))  # fmt: skip
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(system, fontsize=9)
            if r == 0:
                ax.set_title(item, fontsize=8)
            if r == len(systems) - 1:
                ax.set_xlabel("s", fontsize=8)
    fig.suptitle("Log-mel spectrograms (128 bands, 20 Hz-24 kHz)")
    fig.tight_layout()
    return fig


def _iterations(report: EvaluationReport, examples: dict, plt: Any):
    counts = report.iterations
    if len(counts) < 2:
        return None
    names = report.metrics
    fig, axes = _grid(len(names), plt, 5.0, 2.8)
    for ax, metric in zip(axes, names, strict=True):
        stats = [report.aggregate.get(f"restored@{k}", {}).get(metric, {}) for k in counts]
        means = np.array([s.get("mean", math.nan) for s in stats], dtype=float)
        low = np.array([s.get("ci95_low", math.nan) for s in stats], dtype=float)
        high = np.array([s.get("ci95_high", math.nan) for s in stats], dtype=float)
        ax.plot(counts, means, marker="o", label="restored")
        ax.fill_between(counts, low, high, alpha=0.2)
        for system, style in (("degraded", ":"), ("recovery", "--")):
            ref = report.aggregate.get(system, {}).get(metric, {}).get("mean")
            if ref is not None and math.isfinite(ref):
                ax.axhline(ref, ls=style, color="gray", label=system)
        ax.set_xticks(counts)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("iterations of the generative stage")
    fig.suptitle("Metrics against the number of refinement iterations (mean, 95 % interval)")
    fig.tight_layout()
    return fig
