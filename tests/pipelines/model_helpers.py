"""Random-init tiny model directories of the four stages, for the restore, evaluate and retrain tests."""

from __future__ import annotations

from pathlib import Path

import torch

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")


def write_tiny_models(root: Path, random_outputs: bool = False) -> dict[str, str]:
    """``root/<stage>`` model directories of the tiny configs (seeded per stage); ``random_outputs`` replaces the
    zero-initialised output layers by small random weights, so outputs depend on inputs."""
    from training.config import load_stage_config
    from training.model_dir import save_model_dir
    from training.models import build

    dirs = {}
    for i, stage in enumerate(STAGES):
        torch.manual_seed(i)
        cfg = load_stage_config(stage, "tiny")
        net = build(cfg)
        if random_outputs:
            with torch.no_grad():
                for p in net.parameters():
                    if not p.abs().sum():
                        p.normal_(0.0, 0.05)
        meta = {"step": 0, **({"scale_factor": 0.5} if stage == "ldm" else {})}
        dirs[stage] = save_model_dir(str(root / stage), stage, cfg, net.state_dict(), meta)
    return dirs
