"""``hires demo``: the main job end to end on embedded defaults (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets.config import dump_config
from pipelines.commands import non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on generated data (embedded defaults)",
        description="Demo corpus -> noise and RIR banks -> synthesis into WebDataset shards -> training of "
        "the four tiny stages on Ray Train -> model bundle -> evaluation on the held-out test speaker -> one "
        "restored sample, all under --out, then a summary table. Deterministic for the seed; a rerun resumes.",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--config", type=Path, help="demo YAML (default: configs/demo.yaml)")
    p.add_argument("--seed", type=non_negative_int, help="override seed")
    p.add_argument("--minutes", type=positive_float, help="override corpus.minutes")
    p.add_argument("--num-cpus", type=positive_int, help="CPUs for the local Ray (default: all)")
    p.add_argument(
        "--tracking-uri",
        metavar="U",
        help="MLflow tracking server or database (default: sqlite in OUT/train)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.demo import load_demo_config, run_demo

    cfg = load_demo_config(args.config, {"seed": args.seed, "corpus.minutes": args.minutes})
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    result = run_demo(
        args.out, cfg, num_cpus=args.num_cpus, progress=not args.quiet, tracking_uri=args.tracking_uri
    )
    print("\n".join(result.lines()))
    return 0
