"""``hires evaluate``: score restored speech against clean references (folders), or restore a held-out shard
split and score it (shards); writes report.json, report.md and PNG figures. See ``docs/evaluate.md``."""

from __future__ import annotations

import argparse
import sys

from datasets.errors import UsageError
from pipelines.commands import non_negative_int, positive_int
from training.metrics import METRICS


def iteration_counts(text: str) -> list[int]:
    """argparse ``type=`` of ``--iterations 1,3,5,10``: distinct counts >= 1, sorted."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected counts >= 1, got {text!r}")
    return sorted(set(counts))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score restored speech: folders against references, or a held-out shard split through a model",
        description="Folders: --ref DIR --est DIR [--degraded DIR] scores each file of --est against the --ref "
        "file of the same relative path (extension aside; any rate, read at 48 kHz); unmatched files are listed. "
        "Shards: --shards DIR --split test --model BUNDLE restores the split and scores degraded, recovery and "
        "restored against clean, overall and per degradation type; --iterations 1,3,5,10 scores each count of "
        "generative passes. Metrics: SI-SDR, LSD (full band, 8-24 kHz), PESQ-WB, ESTOI, mel SSIM, DNSMOS. "
        "Writes OUT/report.json, OUT/report.md and PNG figures; per-file scores are cached in OUT, so a rerun "
        "resumes.",
    )
    folders = p.add_argument_group("folders")
    folders.add_argument("--ref", metavar="DIR", help="clean reference files")
    folders.add_argument("--est", metavar="DIR", help="files to score (same relative paths as --ref)")
    folders.add_argument("--degraded", metavar="DIR", help="the degraded inputs, scored too (optional)")
    shards = p.add_argument_group("shards")
    shards.add_argument("--shards", metavar="DIR", help="synthesis run (index.json + shards/)")
    shards.add_argument("--split", default="test", help="split to restore and score (default: test)")
    shards.add_argument("--model", metavar="BUNDLE", help="bundle folder (hires models bundle)")
    shards.add_argument("--steps", type=positive_int, help="DDIM steps (default: the ldm config's)")
    shards.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: config)")
    shards.add_argument(
        "--iterations",
        type=iteration_counts,
        default=[1],
        metavar="K[,K...]",
        help="generative passes; several counts give the iteration study (default 1)",
    )
    shards.add_argument("--seed", type=non_negative_int, default=0, help="restore seed (default 0)")
    shards.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    shards.add_argument("--recovery-only", action="store_true", help="score the recovery stage only")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (created)")
    p.add_argument("--limit", type=positive_int, help="score the first N files or samples only")
    p.add_argument(
        "--metrics",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        metavar="M[,M...]",
        help="metrics to compute (default all: " + ", ".join(METRICS) + ")",
    )
    p.add_argument("--examples", type=non_negative_int, default=3, help="spectrogram examples (default 3)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI; with --run-name, logs metrics and report")
    p.add_argument("--run-name", help="MLflow run name (with --tracking-uri)")
    p.add_argument("--experiment", default="hires", help="MLflow experiment (default: hires)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder_flags = [f for f in ("ref", "est", "degraded") if getattr(args, f)]
    shard_flags = [f for f in ("shards", "model") if getattr(args, f)]
    if folder_flags and shard_flags:
        raise UsageError(
            f"{' '.join('--' + f for f in folder_flags)} and {' '.join('--' + f for f in shard_flags)} exclude "
            "each other: score folders or shards"
        )
    common = {
        "tracking_uri": args.tracking_uri,
        "run_name": args.run_name,
        "experiment": args.experiment,
        "limit": args.limit,
        "examples": args.examples,
        "metrics": args.metrics,
        "progress": not args.quiet,
    }
    if folder_flags:
        if not (args.ref and args.est):
            raise UsageError("scoring folders needs both --ref DIR and --est DIR")
        from pipelines.evaluate import evaluate_folders

        report = evaluate_folders(args.ref, args.est, args.out, args.degraded, **common)
    else:
        if not (args.shards and args.model):
            raise UsageError("pass --ref DIR --est DIR (folders) or --shards DIR --model BUNDLE (shards)")
        from pipelines.evaluate import evaluate_shards
        from training.restorer import RestoreOptions

        options = RestoreOptions(
            steps=args.steps, guidance=args.guidance, seed=args.seed, recovery_only=args.recovery_only
        )
        report = evaluate_shards(
            args.shards,
            args.split,
            args.model,
            args.out,
            iterations=args.iterations,
            options=options,
            device=args.device,
            **common,
        )
    for line in report.lines():
        print(line, file=sys.stderr if args.quiet else sys.stdout)
    return 0
