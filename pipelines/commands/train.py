"""``hires train STAGE``: train a stage on Ray Train from shards (or online from manifests), tracked in MLflow.

The run lives in ``OUT/<run-name>/`` (default name ``<stage>-<config>``): Ray Train's checkpoints, and at the end
the model directory ``OUT/<run-name>/model/``. Rerunning the same command resumes from the latest checkpoint; a
finished run says so and does nothing. See ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pipelines.commands import add_override_arg, non_negative_int, positive_float, positive_int

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")


def _workers(text: str):
    from training.launcher import parse_workers

    try:
        return parse_workers(text)
    except Exception as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--workers {text}: ")) from None


def _max_failures(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (no limit) or >= 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        usage="hires train [-h] STAGE (--shards DIR | --online --clean M --noise M --rir M) --out DIR [options]",
        help="train a stage (recovery, autoencoder, vocoder, ldm) on Ray Train",
        description="Train one stage with data-parallel workers on Ray Train (locally, or on the cluster at "
        "--address). Data comes from a shard set (--shards, local or s3://) or is rendered while training "
        "(--online with the synthesis manifests). The run lives in OUT/RUN-NAME/: rerunning the same command "
        "resumes from its latest checkpoint, a finished run does nothing. The final model is OUT/RUN-NAME/model/ "
        "and a new version of the MLflow model hires-STAGE. MODEL arguments are model directories (local or "
        "s3://) or MLflow URIs models:/hires-STAGE/VERSION or models:/hires-STAGE@ALIAS.",
    )
    p.add_argument("stage", choices=STAGES, help="the stage to train")
    src = p.add_argument_group("data (one of)")
    src.add_argument(
        "--shards", metavar="DIR", help="shard set (a synthesis output with index.json), or a URI"
    )
    src.add_argument("--online", action="store_true", help="render training pairs on Ray Data while training")
    src.add_argument("--clean", metavar="M", help="--online: clean speech manifest")
    src.add_argument("--noise", metavar="M", help="--online: noise bank manifest")
    src.add_argument("--rir", metavar="M", help="--online: RIR bank manifest")
    src.add_argument(
        "--synth-config", metavar="F", help="--online: synthesis config (default: the shipped one)"
    )
    src.add_argument(
        "--seed", type=non_negative_int, default=0, help="data seed (online: the synthesis seed); default 0"
    )
    p.add_argument(
        "--out", metavar="DIR", help="storage for runs: directory or s3://bucket/prefix (required to train)"
    )
    p.add_argument(
        "--config",
        default="paper",
        help="stage config: a shipped name (paper, tiny) or a YAML file (default: paper)",
    )
    add_override_arg(p, "override a config field, e.g. --set train.checkpoint_every=100 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved stage config and exit")
    p.add_argument(
        "--steps", type=positive_int, help="optimisation steps (default: the config's train.steps)"
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|MIN-MAX",
        help="training workers; MIN-MAX scales elastically between the two (default 1)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl, bf16 autocast)")
    p.add_argument(
        "--cpus-per-worker",
        type=positive_float,
        help="CPUs each worker reserves (default: 1 on CPU, train.num_threads with --gpu, less when the "
        "cluster is smaller; online mode keeps 1 CPU free for rendering)",
    )
    p.add_argument("--run-name", help="run folder under OUT (default: STAGE-CONFIG, -online appended online)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///OUT/mlflow.db; required for an s3:// OUT); 'none' disables",
    )
    p.add_argument("--experiment", default="hires", help="MLflow experiment (default: hires)")
    p.add_argument(
        "--max-failures",
        type=_max_failures,
        default=0,
        help="worker-group restarts from the latest checkpoint after a failure (-1: no limit; default 0)",
    )
    for role, what in (
        ("recovery", "frozen recovery model (ldm)"),
        ("autoencoder", "frozen VAE (ldm)"),
        ("vocoder", "vocoder for evaluation audio (ldm, optional)"),
        ("init", "start a fresh run from this model of the same stage"),
    ):
        p.add_argument(f"--{role}", metavar="MODEL", help=what)
    p.add_argument("--address", help="Ray cluster to join ('auto' for the running one); default: a local Ray")
    p.set_defaults(func=run)


def request_from_args(args: argparse.Namespace, argv: list[str] | None = None):
    """The :class:`training.launcher.TrainRequest` of parsed flags (UsageError for a bad combination)."""
    from datasets.errors import UsageError
    from training.launcher import TrainRequest

    online_flags = [
        f"--{k.replace('_', '-')}" for k in ("clean", "noise", "rir", "synth_config") if getattr(args, k)
    ]
    if args.online:
        if args.shards:
            raise UsageError("--shards and --online exclude each other")
        missing = [f"--{k}" for k in ("clean", "noise", "rir") if not getattr(args, k)]
        if missing:
            raise UsageError(f"--online needs {' '.join(missing)}")
        online = {
            "clean": args.clean,
            "noise": args.noise,
            "rir": args.rir,
            "synth_config": args.synth_config,
            "seed": args.seed,
        }
    else:
        if online_flags:
            raise UsageError(f"{' '.join(online_flags)} only go with --online")
        if not args.shards:
            raise UsageError("pass --shards DIR, or --online --clean M --noise M --rir M")
        online = None
    return TrainRequest(
        stage=args.stage,
        out=args.out,
        shards=args.shards,
        online=online,
        config=args.config,
        overrides=dict(args.overrides),
        workers=args.workers,
        gpu=args.gpu,
        steps=args.steps,
        run_name=args.run_name,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        max_failures=args.max_failures,
        models={role: getattr(args, role) for role in ("recovery", "autoencoder", "vocoder", "init")},
        address=args.address,
        seed=args.seed,
        cpus_per_worker=args.cpus_per_worker,
        command="hires " + shlex.join(argv if argv is not None else sys.argv[1:]),
    )


def print_config(args: argparse.Namespace) -> None:
    """The resolved stage config (``--config``, ``--set``, ``--steps``): needs no data, output or models."""
    from datasets.config import dump_config
    from training.launcher import TrainRequest, load_config

    req = TrainRequest(
        stage=args.stage,
        out=args.out or "",
        config=args.config,
        overrides=dict(args.overrides),
        steps=args.steps,
    )
    print(dump_config(load_config(req)), end="")


def run(args: argparse.Namespace) -> int:
    from datasets.errors import UsageError
    from training.launcher import run_training, validate

    if args.print_config:
        print_config(args)
        return 0
    if args.out is None:
        raise UsageError("train: the following arguments are required: --out")
    req = request_from_args(args)
    validate(req)

    def connect(address: str | None) -> bool:
        from pipelines.ray_setup import init_ray

        started, _ = init_ray(address, None, quiet=args.quiet)
        return started

    summary = run_training(req, connect=connect, progress=not args.quiet)
    for line in summary.lines():
        print(line, file=sys.stderr if args.quiet else sys.stdout)
    return 0
