"""Shared helpers of the pipeline tests (argv of the synth CLI, comparing runs, child processes)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the venv first on PATH, the repo importable."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group this test started, SIGKILL it if it lingers."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
