"""``hires models summary|list|lineage|bundle``: check a network config (parameters, shapes) before launching a
job; trace what produced a registered model; collect trained stages into a restore bundle."""

from __future__ import annotations

import argparse
import json

from datasets.errors import UsageError
from pipelines.commands import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser(
        "models", help="inspect stage networks, bundle trained stages, trace a model's lineage"
    )
    models.set_defaults(_parser=models)
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND")

    summary = msub.add_parser(
        "summary",
        help="parameters and input/output shapes of a stage's network (JSON)",
        description="Build the network named by a stage config on the meta device (no weights are allocated, "
        "so paper configs need no memory; importing torch and tracing the shapes takes a few seconds) and print "
        "its parameter counts and the tensor shapes for one clip.",
    )
    summary.add_argument("stage", choices=["recovery", "autoencoder", "vocoder", "ldm"])
    summary.add_argument(
        "--config", default="paper", help="YAML path, or a shipped name: paper, tiny (default: paper)"
    )
    summary.add_argument(
        "--seconds", type=positive_float, default=5.12, help="clip length for the shapes (default 5.12)"
    )
    summary.add_argument(
        "--batch", type=positive_int, default=1, help="batch size for the shapes (default 1)"
    )
    summary.set_defaults(func=run_summary)

    listing = msub.add_parser("list", help="registered networks and shipped configs per stage (JSON)")
    listing.set_defaults(func=run_list)

    lineage = msub.add_parser(
        "lineage",
        help="what produced a registered model: its run, config, code, data and parent models",
        description="Print the chain that produced a registered model version: its training run (and the Ray "
        "job that ran it), config, code version, shard index and the sha256 of the manifests the shards were "
        "synthesised from, then the same for its parent models (ldm -> recovery and autoencoder).",
    )
    lineage.add_argument(
        "model", metavar="MODEL", help="models:/hires-STAGE/VERSION or models:/hires-STAGE@ALIAS"
    )
    lineage.add_argument(
        "--tracking-uri",
        metavar="U",
        help="MLflow tracking server or database (default: $MLFLOW_TRACKING_URI)",
    )
    lineage.add_argument("--json", action="store_true", help="print the lineage as JSON")
    lineage.set_defaults(func=run_lineage)

    bundle = msub.add_parser(
        "bundle",
        help="collect the four trained stages into one bundle folder for hires restore",
        description="Copy the recovery, autoencoder, vocoder and ldm models (each a model directory, s3:// "
        "directory or models:/ URI) into OUT/<stage>/ with OUT/bundle.json naming them and their sources. The "
        "stages are checked compatible first (mel and latent layouts, 16 kHz recovery, the ldm's scale_factor).",
    )
    for stage in ("recovery", "autoencoder", "vocoder", "ldm"):
        bundle.add_argument(f"--{stage}", required=True, metavar="M", help=f"{stage} model")
    bundle.add_argument(
        "--out", required=True, metavar="DIR", help="new bundle folder (must not exist or be empty)"
    )
    bundle.add_argument("--tracking-uri", metavar="U", help="MLflow registry of models:/ URIs")
    bundle.set_defaults(func=run_bundle)


def run_summary(args: argparse.Namespace) -> int:
    from training.config import load_stage_config
    from training.models.summary import summarize

    cfg = load_stage_config(args.stage, args.config)
    print(json.dumps(summarize(cfg, seconds=args.seconds, batch=args.batch), indent=2))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from training.config import TRAIN_CONFIG_ROOT
    from training.models.registry import STAGES, names

    print(
        json.dumps(
            {
                stage: {
                    "networks": names(stage),
                    "configs": sorted(p.stem for p in (TRAIN_CONFIG_ROOT / stage).glob("*.yaml")),
                }
                for stage in STAGES
            },
            indent=2,
        )
    )
    return 0


def run_bundle(args: argparse.Namespace) -> int:
    from training.restorer import write_bundle

    out = write_bundle(
        args.out,
        recovery=args.recovery,
        autoencoder=args.autoencoder,
        vocoder=args.vocoder,
        ldm=args.ldm,
        tracking_uri=args.tracking_uri,
    )
    print(f"bundle written to {out}")
    return 0


def run_lineage(args: argparse.Namespace) -> int:
    from training.lineage import model_lineage

    if not args.model.startswith("models:/"):
        raise UsageError(f"{args.model}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    lineage = model_lineage(args.model, args.tracking_uri)
    print(json.dumps(lineage.to_dict(), indent=2) if args.json else "\n".join(lineage.lines()))
    return 0
