"""``hires train`` on clusters:

* a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of one CPU
  each, all on this host): the two training workers run on different nodes (each is a child of another node's
  raylet), DDP over gloo between them works, and training completes with its model directory;
* the job entrypoint: ``ray job submit --working-dir . -- python -m pipelines train ... --address auto`` against a
  local head with the job server; the job succeeds and its MLflow run carries the Ray job ids.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import psutil
import pytest
from data_fixtures import write_shard_set
from train_run_helpers import request, train_workers

from training import launcher


@pytest.mark.slow
def test_two_workers_on_two_nodes_train_to_the_end(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    shards = write_shard_set(tmp_path / "shards", [("train", 3), ("train", 3), ("train", 2), ("valid", 2)])
    if ray.is_initialized():  # one Ray per process: this test joins its own cluster
        ray.shutdown()
    # own short temp dir (it holds unix sockets): a bare ray.init() elsewhere on this host must not find it
    temp_dir = tempfile.mkdtemp(prefix="hrt", dir="/tmp")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": 150 * 2**20,
            "temp_dir": temp_dir,
        },
    )
    placements: list[set[int]] = []
    stop = threading.Event()

    def watch() -> None:
        # which raylet (node) each training worker process belongs to, sampled while training runs
        while not stop.is_set():
            parents = set()
            for w in train_workers():
                try:
                    parents.add(w.ppid())
                except psutil.Error:
                    continue
            if len(parents) == 2:
                placements.append(parents)
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        nodes = [cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(2)]
        cluster.wait_for_nodes()
        node_raylets = {n.all_processes["raylet"][0].process.pid for n in nodes}

        def connect(address):
            ray.init(address=cluster.address, log_to_driver=False)
            return True

        watcher.start()
        out = tmp_path / "out"
        summary = launcher.run_training(
            request(str(shards), str(out), 4, tracking_uri="none"), connect=connect
        )
        stop.set()
        watcher.join(timeout=10)
        assert summary.final_step == 4 and summary.cpus_per_worker == 1.0
        assert launcher.finished_step(str(out / "recovery-tiny")) == 4
        assert Path(summary.model_dir, "weights.safetensors").is_file()
        assert placements, "never saw both training workers running"
        assert all(p == node_raylets for p in placements)  # one worker under each worker node's raylet
    finally:
        stop.set()
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
        return True
    except urllib.error.HTTPError:  # 401 without a token: up
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_ray_job_submit_trains_and_tags_the_mlflow_run(tmp_path):
    """The cluster entrypoint: a local head with the job server, ``ray job submit --working-dir .`` running
    ``python -m pipelines train ... --address auto``; the job succeeds and its MLflow run carries the job ids."""
    import os
    import signal
    import subprocess
    import time

    import ray
    from mlflow import MlflowClient
    from train_run_helpers import REPO, VENV_BIN, subprocess_env, train_argv, wait_for

    from training import tracking

    if ray.is_initialized():  # the job runs on its own cluster
        ray.shutdown()
    shards = write_shard_set(tmp_path / "shards", [("train", 3), ("train", 3), ("train", 2), ("valid", 2)])
    temp_dir = tempfile.mkdtemp(prefix="hrj", dir="/tmp")
    dashboard_port = _free_port()
    env = subprocess_env(HOME=str(tmp_path / "home"), RAY_AUTH_MODE="disabled")
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={_free_port()}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for(
            lambda: head.poll() is not None or _answers(url),
            timeout_s=120,
            what="the Ray head",
            interval_s=0.5,
        )
        assert head.poll() is None, head.stderr.read().decode()[-2000:]
        out = tmp_path / "out"
        entrypoint = train_argv(str(shards), str(out), 2, "--address", "auto")
        entrypoint[0] = "python"  # resolved on the cluster, as a user would write it
        job_id = "hires-train-test"
        deadline = time.monotonic() + 120
        while True:  # the job agent registers a few seconds after the dashboard answers
            submit = subprocess.run(
                [
                    str(VENV_BIN / "ray"),
                    "job",
                    "submit",
                    "--address",
                    url,
                    "--submission-id",
                    job_id,
                    "--working-dir",
                    ".",
                    "--runtime-env",
                    "infra/runtime_env.yaml",
                    "--",
                    *entrypoint,
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=400,
            )
            logs = submit.stdout.decode()[-3000:] + submit.stderr.decode()[-3000:]
            if "No available agent" not in logs or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert submit.returncode == 0, logs
        assert "trained recovery to step 2" in logs
        uri = tracking.default_tracking_uri(str(out))
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("hires").experiment_id])
        assert run.data.tags["ray.job_submission_id"] == job_id
        assert run.data.tags["ray.job_id"]
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
