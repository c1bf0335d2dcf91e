"""``hires train`` on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two worker
nodes of one CPU each, all on this host): the two training workers run on different nodes (each is a child of
another node's raylet), DDP over gloo between them works, and training completes with its model directory."""

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
