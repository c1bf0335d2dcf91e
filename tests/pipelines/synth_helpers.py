"""Shared helpers of the pipeline tests (argv of the synth CLI, comparing runs, child processes)."""

from __future__ import annotations

import shutil
from pathlib import Path

# the child-process helpers the pipeline tests import from here
from ray_helpers import REPO as REPO
from ray_helpers import VENV_BIN
from ray_helpers import free_port as free_port
from ray_helpers import subprocess_env as subprocess_env
from ray_helpers import wait_for as wait_for

# tiny but with many shards per run (~20 samples of 5.12 s in shards of 2): a kill lands mid-job
SAMPLES_PER_SHARD = 2
SEED = 7


def synth_argv(inputs: dict[str, str], out: str, *extra: str) -> list[str]:
    """``python -m pipelines synth`` with the reference settings."""
    return [
        str(VENV_BIN / "python"),
        "-m",
        "pipelines",
        "-q",
        "synth",
        "--clean",
        inputs["clean"],
        "--noise",
        inputs["noise"],
        "--rir",
        inputs["rir"],
        "--out",
        out,
        "--seed",
        str(SEED),
        "--samples-per-shard",
        str(SAMPLES_PER_SHARD),
        *extra,
    ]


def tree_bytes(run_dir: Path | str) -> dict[str, bytes]:
    """Every published file of a run (index, plan, shards) by relative path; state/ and scratch excluded."""
    run_dir = Path(run_dir)
    files = {"index.json": run_dir / "index.json", "plan.parquet": run_dir / "plan.parquet"}
    files.update({f"shards/{p.name}": p for p in sorted((run_dir / "shards").iterdir())})
    return {k: p.read_bytes() for k, p in files.items()}


def assert_same_run(a: Path | str, b: Path | str) -> None:
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert sorted(ta) == sorted(tb)
    differing = [k for k in ta if ta[k] != tb[k]]
    assert not differing, f"files differ between {a} and {b}: {differing}"


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
