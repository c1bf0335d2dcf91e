"""``hires train`` on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two worker
nodes of one CPU each, all on this host): the two training workers run on different nodes (each is a child of
another node's raylet), DDP over gloo between them works, and training completes with its model directory.
(Training as a submitted job is tested in tests/pipelines/test_job_submit.py.)
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest
from data_fixtures import write_shard_set
from ray_helpers import local_cluster
from train_run_helpers import request, train_workers

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
