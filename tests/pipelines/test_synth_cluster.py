"""Synthesis on a multi-node Ray cluster (head + two worker nodes on this host), one worker node killed mid-job:
the job still finishes and its output is byte-identical to the single-node reference run."""

from __future__ import annotations

import subprocess

import pytest
from ray_helpers import REPO, local_cluster, subprocess_env, wait_for
from synth_helpers import assert_same_run, synth_argv


@pytest.mark.slow
def test_worker_node_killed_mid_job_output_identical_to_single_node(reference_run, demo_inputs, tmp_path):
    # a process holds one Ray at a time: the cluster test runs without the shared local one
    with local_cluster("hrc") as (cluster, workers):
        out = tmp_path / "cluster"
        argv = synth_argv(demo_inputs, str(out), "--address", cluster.address)
        proc = subprocess.Popen(
            argv, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            state = out / "state"
            wait_for(
                lambda: proc.poll() is not None or (state.is_dir() and any(state.iterdir())),
                timeout_s=180,
                what="the first finished shard",
            )
            assert proc.poll() is None, (
                f"job ended before the node kill: {proc.stderr.read().decode()[-2000:]}"
            )
            finished_before_kill = len(list(state.iterdir()))
            cluster.remove_node(workers[1], allow_graceful=False)
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-3000:]
            total = len(list((reference_run / "shards").iterdir()))
            assert finished_before_kill < total  # the kill really happened mid-job
            assert_same_run(reference_run, out)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
