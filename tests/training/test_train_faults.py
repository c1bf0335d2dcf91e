"""Faults during ``hires train`` (tiny recovery, 2 workers, checkpoints every 2 steps):

* one training worker process SIGKILLed mid-run with ``--max-failures 1``: the worker group restarts from the
  latest checkpoint, reaches the target step, and logs into the same MLflow run (restarts counted);
* the driver (with its local Ray) SIGKILLed mid-run, then the same command rerun: it resumes, and the first step
  it trains is the checkpoint's step + 1.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from data_fixtures import write_shard_set
from train_run_helpers import (
    REPO,
    checkpoints,
    kill_tree,
    loss_history,
    request,
    subprocess_env,
    train_argv,
    train_workers,
    wait_for,
)

from training import launcher, tracking

STEPS = 10
EVERY = 2  # train.checkpoint_every in the fast settings


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault_shards")
    return write_shard_set(root, [("train", 3), ("train", 3), ("train", 2), ("train", 2), ("valid", 2)])


def _first_steps_of_each_attempt(history: list[tuple[int, int]]) -> list[int]:
    """Steps at which each attempt started logging: the first step, and every step not above its predecessor."""
    steps = [s for _, s in history]
    return [steps[0]] + [b for a, b in zip(steps, steps[1:], strict=False) if b <= a]


@pytest.mark.slow
def test_killed_worker_resumes_from_latest_checkpoint_in_the_same_run(shards, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "recovery-tiny"
    killed: dict = {}

    def kill_a_worker() -> None:
        try:
            # registered, not merely being written: a checkpoint folder appears before every rank has reported
            wait_for(
                lambda: launcher.latest_checkpoint(str(run_dir)) is not None,
                timeout_s=240,
                what="the first registered checkpoint",
                interval_s=0.2,
            )
            victims = train_workers()
            killed["checkpoints"] = len(checkpoints(run_dir))
            killed["pid"] = victims[-1].pid
            victims[-1].kill()
        except Exception as e:  # reported by the test body
            killed["error"] = e

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    summary = launcher.run_training(request(str(shards), str(out), STEPS, max_failures=1))
    killer.join(timeout=10)
    assert "error" not in killed, killed.get("error")
    assert killed["checkpoints"] < STEPS // EVERY  # the kill landed mid-run
    assert (
        not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    )

    assert summary.status == "trained" and summary.final_step == STEPS
    assert launcher.finished_step(str(run_dir)) == STEPS
    # one MLflow run for the whole training, two worker-group starts
    uri = summary.tracking_uri
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [summary.run_id]
    assert runs[0].data.tags[tracking.RESTARTS_TAG] == "1"
    # the second worker group starts right after a checkpoint, and every step up to the target was trained
    history = loss_history(uri, summary.run_id)
    starts = _first_steps_of_each_attempt(history)
    assert len(starts) == 2 and starts[0] == 1
    assert (starts[1] - 1) % EVERY == 0 and starts[1] > 1
    assert {s for _, s in history} == set(range(1, STEPS + 1))


@pytest.mark.slow
def test_killed_driver_rerun_resumes_at_checkpoint_step_plus_one(shards, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "recovery-tiny"
    argv = train_argv(str(shards), str(out), STEPS)
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or launcher.latest_checkpoint(str(run_dir)) is not None,
            timeout_s=240,
            what="the first registered checkpoint",
            interval_s=0.2,
        )
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        kill_tree(proc, psutil.Process(proc.pid).children(recursive=True))
    finally:
        if proc.poll() is None:
            kill_tree(proc, psutil.Process(proc.pid).children(recursive=True))
    assert launcher.finished_step(str(run_dir)) is None  # killed before the end
    before = launcher.latest_checkpoint(str(run_dir))
    assert before is not None and before["step"] % EVERY == 0 and before["step"] < STEPS
    uri = tracking.default_tracking_uri(str(out))
    run_id = tracking.find_or_create_run(uri, tracking.DEFAULT_EXPERIMENT, "recovery-tiny", str(run_dir))[0]

    rerun_started_ms = time.time() * 1000
    rerun = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300)
    stdout = rerun.stdout.decode()
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    assert f"trained recovery to step {STEPS} (resumed from step {before['step']})" in stdout
    assert run_id in stdout  # the same MLflow run
    resumed = [s for ts, s in loss_history(uri, run_id) if ts >= rerun_started_ms]
    assert resumed[0] == before["step"] + 1
    assert resumed == list(range(before["step"] + 1, STEPS + 1))
