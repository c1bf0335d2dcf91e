"""``hires train`` on clusters:

* a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two worker nodes of one CPU
  each, all on this host): the two training workers run on different nodes (each is a child of another node's
  raylet), DDP over gloo between them works, and training completes with its model directory;
* the job entrypoint: ``ray job submit --working-dir . -- python -m pipelines train ... --address auto`` against a
  local head with the job server; the job succeeds and its MLflow run carries the Ray job ids.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest
from data_fixtures import write_shard_set
from ray_helpers import local_cluster, ray_head, submit_job, subprocess_env
from train_run_helpers import request, train_argv, train_workers

from training import launcher


@pytest.mark.slow
def test_two_workers_on_two_nodes_train_to_the_end(tmp_path):
    import ray

    shards = write_shard_set(tmp_path / "shards", [("train", 3), ("train", 3), ("train", 2), ("valid", 2)])
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
    with local_cluster("hrt") as (cluster, nodes):
        node_raylets = {n.all_processes["raylet"][0].process.pid for n in nodes}

        def connect(address):
            ray.init(address=cluster.address, log_to_driver=False)
            return True

        watcher.start()
        try:
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


@pytest.mark.slow
def test_ray_job_submit_trains_and_tags_the_mlflow_run(tmp_path):
    """The cluster entrypoint: a local head with the job server, ``ray job submit --working-dir .`` running
    ``python -m pipelines train ... --address auto``; the job succeeds and its MLflow run carries the job ids."""
    import ray
    from mlflow import MlflowClient

    from training import tracking

    if ray.is_initialized():  # the job runs on its own cluster
        ray.shutdown()
    shards = write_shard_set(tmp_path / "shards", [("train", 3), ("train", 3), ("train", 2), ("valid", 2)])
    env = subprocess_env(HOME=str(tmp_path / "home"), RAY_AUTH_MODE="disabled")
    with ray_head(env, "hrj") as url:
        out = tmp_path / "out"
        entrypoint = train_argv(str(shards), str(out), 2, "--address", "auto")
        job_id = "hires-train-test"
        submit, logs = submit_job(url, job_id, entrypoint, env)
        assert submit.returncode == 0, logs
        assert "trained recovery to step 2" in logs
        uri = tracking.default_tracking_uri(str(out))
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("hires").experiment_id])
        assert run.data.tags["ray.job_submission_id"] == job_id
        assert run.data.tags["ray.job_id"]
