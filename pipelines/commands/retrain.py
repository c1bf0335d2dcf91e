"""``hires retrain``: a new corpus version -> the configured stages trained warm from the champions -> both bundles
scored on the fixed held-out set -> the ``champion`` alias moved only when the candidate is better by the margin.

A retrain lives in ``OUTPUT/RUN-ID/`` (``output`` in the config); rerunning with the same ``--run-id`` resumes it
where it stopped, and a finished one prints its decision and does nothing. See ``docs/retrain.md``.
"""

from __future__ import annotations

import argparse
import sys

from datasets.config import dump_config
from pipelines.commands import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain",
        help="retrain on a new corpus version and promote the result only if it beats the champion",
        description="Synthesise a new corpus version (corpus section: a new seed or new clean manifests), train "
        "the stages of the train section warm-started from models:/hires-STAGE@champion (from scratch when "
        "there is none), score the candidate and the champion bundles on the fixed held-out set (evaluation "
        "section), register the new versions and move the alias champion to them only when evaluation.metric "
        "beats the champion by evaluation.margin; otherwise the champion stays and the parent MLflow run "
        "records why. Every step is a child run of one parent run. The retrain lives in OUTPUT/RUN-ID/: "
        "rerunning the same --run-id resumes it, a finished one prints its decision and does nothing.",
    )
    p.add_argument(
        "--config",
        default="configs/retrain.yaml",
        help="retrain YAML (local or s3://); a relative path not found here is taken from the shipped configs "
        "(default: configs/retrain.yaml)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--run-id",
        help="the retrain to run or resume (a folder name under output); default: a new one, "
        "retrain-<UTC time>, printed at the start",
    )
    p.add_argument(
        "--tracking-uri",
        metavar="U",
        help="MLflow tracking server or database (default: the config's tracking_uri, else "
        "sqlite:///OUTPUT/mlflow.db for a local output)",
    )
    p.add_argument("--address", help="Ray cluster to join ('auto' for the running one); default: a local Ray")
    p.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.retrain import check_run_id, load_retrain_config, new_run_id, run_retrain

    cfg = load_retrain_config(args.config)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    run_id = check_run_id(args.run_id) if args.run_id else new_run_id()
    if not args.run_id:
        print(f"retrain {run_id} (rerun with --run-id {run_id} to resume it)", file=sys.stderr)
    result = run_retrain(
        cfg,
        run_id=run_id,
        tracking_uri=args.tracking_uri,
        address=args.address,
        num_cpus=args.num_cpus,
        progress=not args.quiet,
    )
    print("\n".join(result.lines()))
    return 0
