"""``hires synth [plan|render]``: plan and render degraded/clean pairs into WebDataset shards on Ray.

``hires synth --clean M --noise M --rir M --out DIR`` plans and renders in one go. The two phases also run
apart, so the recipe can be reviewed before the render is paid for: ``hires synth plan ... --out DIR`` writes
only ``DIR/plan.parquet`` and prints what it holds; ``hires synth render DIR`` renders that plan (its manifests,
config and seed are stored in it). Both ways give the same bytes.
"""

from __future__ import annotations

import argparse
import sys

from datasets.config import dump_config
from datasets.errors import UsageError
from datasets.synth_config import DEFAULT_CONFIG
from pipelines.commands import (
    add_config_args,
    add_override_arg,
    non_negative_int,
    positive_float,
    positive_int,
)

INPUT_FLAGS = ("clean", "noise", "rir", "out")


def _add_recipe_args(p: argparse.ArgumentParser, required: bool) -> None:
    """Inputs, output and config: what decides the corpus (``plan`` and the one-go form)."""
    p.add_argument("--clean", required=required, help="clean speech manifest (.parquet)")
    p.add_argument("--noise", required=required, help="noise bank manifest (.parquet)")
    p.add_argument("--rir", required=required, help="RIR bank manifest (.parquet)")
    p.add_argument("--out", required=required, help="output directory or s3://bucket/prefix")
    add_config_args(p, DEFAULT_CONFIG)
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="corpus seed: sample parameters depend on (seed, key) only",
    )
    p.add_argument(
        "--samples-per-shard",
        type=positive_int,
        help="override shards.samples_per_shard (default 'auto': from the corpus size, 16-512 per shard)",
    )
    add_override_arg(p, "override any config field, e.g. --set segment.tail=drop (repeatable)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing run made with another config, seed, input or code version",
    )


def _add_lease_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease-stale-after",
        type=positive_float,
        metavar="SECONDS",
        help="take over the output's lease when its holder has not renewed it for this long (default 300)",
    )


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    _add_lease_arg(p)
    p.add_argument(
        "--address", help="Ray cluster to join ('auto' for the running one); default: start a local Ray"
    )
    p.add_argument(
        "--num-cpus", type=positive_int, help="CPUs to use (local Ray size, or a cap on a cluster)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise (clean, degraded) pairs into WebDataset shards",
        usage="hires synth [-h] --clean M --noise M --rir M --out DIR [options]\n"
        "       hires synth plan --clean M --noise M --rir M --out DIR [options]\n"
        "       hires synth render DIR [--address A] [--num-cpus N]",
        description="Cut clean utterances into 5.12 s samples, draw a degradation chain per sample (plan.parquet), "
        "render them on Ray Data into DIR/shards/shard-NNNNNN.tar and write DIR/index.json. The output is "
        "byte-identical whatever the number of workers or nodes; rerunning the same command after a kill renders "
        "only the missing shards. OUT and the manifests may be local paths or s3:// URIs. `synth plan` and "
        "`synth render` run the two phases apart.",
    )
    # required flags are checked in run(): with `plan`/`render` they belong to the sub-command's own parser
    _add_recipe_args(p, required=False)
    _add_ray_args(p)
    p.set_defaults(func=run, _parser=p)
    phases = p.add_subparsers(dest="synth_phase", metavar="[plan|render]")

    plan = phases.add_parser(
        "plan",
        usage="hires synth plan [-h] --clean M --noise M --rir M --out DIR [options]",
        help="write only DIR/plan.parquet and print what it holds",
        description="Plan a corpus without rendering it: write DIR/plan.parquet (every sample with its source "
        "slice and degradation steps, the recipe in its metadata) and print the samples, hours, shards per split, "
        "how many samples draw each operator and the codec mix. Render it with `hires synth render DIR`.",
    )
    _add_recipe_args(plan, required=False)  # checked in run_plan(), so --print-config needs none of them
    _add_lease_arg(plan)
    plan.add_argument(
        "--stats",
        metavar="REPORT_DIR",
        help="also write histograms of the planned values there (PNG + JSON, as `hires shards stats`)",
    )
    plan.set_defaults(func=run_plan)

    render = phases.add_parser(
        "render",
        help="render the plan in DIR into shards",
        description="Render DIR/plan.parquet into DIR/shards and DIR/index.json. Manifests, config and seed come "
        "from the plan; it is refused when the manifests or the code changed since planning. Resumable: "
        "complete, intact shards are kept.",
    )
    render.add_argument("dir", help="directory or s3:// prefix holding plan.parquet")
    _add_ray_args(render)
    render.set_defaults(func=run_render)


def _config(args: argparse.Namespace):
    from datasets.synth_config import load_synth_config

    overrides = dict(args.overrides)
    flags = {}
    if args.samples_per_shard is not None:
        overrides["shards.samples_per_shard"] = args.samples_per_shard
        flags["shards.samples_per_shard"] = f"--samples-per-shard {args.samples_per_shard}"
    return load_synth_config(args.config, overrides, flags)


def _print_lines(lines: list[str], quiet: bool) -> None:
    for line in lines:
        print(line, file=sys.stderr if quiet else sys.stdout)


def _require_inputs(args: argparse.Namespace, command: str) -> None:
    missing = [f"--{name}" for name in INPUT_FLAGS if getattr(args, name) is None]
    if missing:
        raise UsageError(f"{command}: the following arguments are required: {', '.join(missing)}")


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    _require_inputs(args, "synth")
    from pipelines.synth_run import run_synth

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
        lease_stale_after_s=args.lease_stale_after,
    )
    _print_lines(summary.lines(), args.quiet)
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from datasets.synth_plan import format_plan_summary
    from pipelines.synth_run import plan_synth

    cfg = _config(args)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    _require_inputs(args, "synth plan")
    result = plan_synth(
        args.clean,
        args.noise,
        args.rir,
        args.out,
        cfg,
        seed=args.seed,
        force=args.force,
        lease_stale_after_s=args.lease_stale_after,
    )
    print(f"wrote {result.plan_path} ({result.summary['samples_per_shard']} samples per shard)")
    for line in format_plan_summary(result.summary):
        print(line)
    if args.stats:
        from pipelines.shard_stats import corpus_stats

        print("\n".join(corpus_stats(result.out, args.stats, source="plan").lines()))
    print(f"render it with: hires synth render {result.out}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    from pipelines.synth_run import render_synth

    summary = render_synth(
        args.dir,
        address=args.address,
        num_cpus=args.num_cpus,
        progress=not args.quiet,
        lease_stale_after_s=args.lease_stale_after,
    )
    _print_lines(summary.lines(), args.quiet)
    return 0
