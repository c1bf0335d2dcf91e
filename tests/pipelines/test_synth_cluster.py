"""Synthesis on a multi-node Ray cluster (head + two worker nodes on this host), one worker node killed mid-job:
the job still finishes and its output is byte-identical to the single-node reference run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from synth_helpers import REPO, assert_same_run, subprocess_env, synth_argv, wait_for


@pytest.mark.slow
def test_worker_node_killed_mid_job_output_identical_to_single_node(reference_run, demo_inputs, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    # a process holds one Ray at a time: the cluster test runs without the shared local one
    if ray.is_initialized():
        ray.shutdown()
    # own temp dir (short: it holds unix sockets): the head records itself there, not in
    # /tmp/ray/ray_current_cluster where any bare ray.init() on this host would find and join it
    temp_dir = tempfile.mkdtemp(prefix="hrc", dir="/tmp")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": 150 * 2**20,
            "temp_dir": temp_dir,
        },
    )
    proc = None
    try:
        workers = [cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "cluster"
        argv = synth_argv(demo_inputs, str(out), "--address", cluster.address)
        proc = subprocess.Popen(
            argv, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        state = out / "state"
        wait_for(
            lambda: proc.poll() is not None or (state.is_dir() and any(state.iterdir())),
            timeout_s=180,
            what="the first finished shard",
        )
        assert proc.poll() is None, f"job ended before the node kill: {proc.stderr.read().decode()[-2000:]}"
        finished_before_kill = len(list(state.iterdir()))
        cluster.remove_node(workers[1], allow_graceful=False)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        total = len(list((reference_run / "shards").iterdir()))
        assert finished_before_kill < total  # the kill really happened mid-job
        assert_same_run(reference_run, out)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
