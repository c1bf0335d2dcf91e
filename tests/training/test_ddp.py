"""DDP on CPU: two gloo processes train the tiny recovery stage; every rank ends with the same parameters.

Two micro-batches per step: the first backward runs under ``no_sync``, the second all-reduces the accumulated
gradients, so agreement also shows that accumulation and synchronisation fit together.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from ray_helpers import free_port

from training.model_dir import load_model

HERE = Path(__file__).resolve().parent


def test_two_rank_gloo_parameters_agree(tmp_path):
    steps, port = 3, free_port()
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); from loop_helpers import ddp_worker; "
        f"ddp_worker(int(sys.argv[1]), 2, {port}, {str(tmp_path)!r}, {steps}, grad_accum=2)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank)], env=env) for rank in range(2)]
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # ranks saw different batches, yet DDP keeps their parameters identical
    assert torch.equal(r0["flat"], r1["flat"])
    assert r0["reports"] == r1["reports"] == 2  # step 2 checkpoint + final, on both ranks (barriers)
    assert r0["logged"] > 0 and r1["logged"] == 0  # only rank 0 logs
    loaded = load_model(tmp_path / "run" / "model")
    assert loaded.meta["world_size"] == 2 and loaded.meta["step"] == steps
