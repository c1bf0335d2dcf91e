"""Shared settings of the ``hires train`` tests: a tiny recovery run (0.1 s crops, checkpoints every 2 steps) on a
generated shard set, as CLI arguments or as a :class:`training.launcher.TrainRequest`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

# the child-process helpers the training tests import from here
from ray_helpers import REPO as REPO
from ray_helpers import VENV_BIN
from ray_helpers import subprocess_env as subprocess_env
from ray_helpers import wait_for as wait_for

# recovery tiny is the cheapest stage; 0.1 s crops keep a step near 0.1 s on one core
FAST = {
    "train.crop_seconds": 0.1,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.eval_every": 1000,
    "train.eval_samples": 2,
    "train.schedule.warmup_steps": 0,
}


def set_args(overrides: dict | None = None) -> list[str]:
    args = []
    for k, v in {**FAST, **(overrides or {})}.items():
        args += ["--set", f"{k}={v}"]
    return args


def train_argv(shards: str, out: str, steps: int, *extra: str, stage: str = "recovery") -> list[str]:
    """``python -m pipelines train`` with the fast settings."""
    return [
        str(VENV_BIN / "python"),
        "-m",
        "pipelines",
        "train",
        stage,
        "--shards",
        shards,
        "--out",
        out,
        "--config",
        "tiny",
        "--workers",
        "2",
        "--steps",
        str(steps),
        *set_args(),
        *extra,
    ]


def request(shards: str, out: str, steps: int, **kw):
    from training.launcher import TrainRequest

    return TrainRequest(
        stage=kw.pop("stage", "recovery"),
        out=out,
        shards=shards,
        config="tiny",
        overrides=dict(FAST, **kw.pop("overrides", {})),
        workers=kw.pop("workers", 2),
        steps=steps,
        **kw,
    )


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*")) if run_dir.is_dir() else []


def train_workers(root: psutil.Process | None = None) -> list[psutil.Process]:
    """The Ray Train worker processes (``ray::RayTrainWorker``) among ``root``'s descendants (default: this
    process's)."""
    root = root or psutil.Process()
    found = []
    for p in root.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def kill_tree(proc: subprocess.Popen, descendants: list[psutil.Process]) -> None:
    """SIGKILL a driver started in its own session and every process it started (Ray's included: its workers
    run in process groups of their own, so a group kill alone would leave them behind)."""
    for p in [psutil.Process(proc.pid), *descendants]:
        try:
            p.kill()
        except psutil.Error:
            continue
    proc.wait(timeout=30)
    psutil.wait_procs(descendants, timeout=30)


def loss_history(tracking_uri: str, run_id: str) -> list[tuple[int, int]]:
    """``(timestamp, step)`` of every logged ``loss`` value, in logging order."""
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, "loss")
    return sorted((m.timestamp, m.step) for m in history)
