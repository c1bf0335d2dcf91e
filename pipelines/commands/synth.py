"""``hires synth``: plan and render degraded/clean pairs into WebDataset shards on Ray (local or a cluster)."""

from __future__ import annotations

import argparse
import sys

import yaml

from datasets.config import CONFIG_ROOT, dump_config
from pipelines.commands import add_config_args

DEFAULT_CONFIG = CONFIG_ROOT / "synth" / "default.yaml"


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE (dotted key), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise (clean, degraded) pairs into WebDataset shards",
        description="Cut clean utterances into 5.12 s samples, draw a degradation chain per sample (plan.parquet), "
        "render them on Ray Data into DIR/shards/shard-NNNNNN.tar and write DIR/index.json. The output is "
        "byte-identical whatever the number of workers or nodes; rerunning the same command after a kill renders "
        "only the missing shards. OUT and the manifests may be local paths or s3:// URIs.",
    )
    p.add_argument("--clean", required=True, help="clean speech manifest (.parquet)")
    p.add_argument("--noise", required=True, help="noise bank manifest (.parquet)")
    p.add_argument("--rir", required=True, help="RIR bank manifest (.parquet)")
    p.add_argument("--out", required=True, help="output directory or s3://bucket/prefix")
    add_config_args(p, DEFAULT_CONFIG)
    p.add_argument(
        "--seed", type=int, default=0, help="corpus seed: sample parameters depend on (seed, key) only"
    )
    p.add_argument("--samples-per-shard", type=int, help="override shards.samples_per_shard")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set segment.tail=drop (repeatable)",
    )
    p.add_argument(
        "--address", help="Ray cluster to join ('auto' for the running one); default: start a local Ray"
    )
    p.add_argument("--num-cpus", type=int, help="CPUs to use (local Ray size, or a cap on a cluster)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing run made with another config, seed, input or code version",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.synth import run_synth
    from pipelines.synth_config import load_synth_config

    overrides = dict(args.overrides)
    if args.samples_per_shard is not None:
        overrides["shards.samples_per_shard"] = args.samples_per_shard
    cfg = load_synth_config(args.config, overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    summary = run_synth(
        clean=args.clean,
        noise=args.noise,
        rir=args.rir,
        out=args.out,
        cfg=cfg,
        seed=args.seed,
        address=args.address,
        num_cpus=args.num_cpus,
        force=args.force,
        progress=not args.quiet,
    )
    for line in summary.lines():
        print(line, file=sys.stderr if args.quiet else sys.stdout)
    return 0
