"""Full training state <-> a checkpoint directory (what ``ray.train.report`` uploads and ``get_checkpoint`` returns).

A checkpoint directory holds one file, ``state.pt``, written by rank 0: a dict of tensors and plain containers
(no objects), so it is read with ``torch.load(weights_only=True)`` and can never execute code::

    {"format_version": 1, "stage": str, "step": int, "epoch": int, "batch": int,   # next data position
     "modules": {name: state_dict}, "optim": TrainOptimizers.state_dict(), "stage_state": {...},
     "rng": {rank: {"torch": ByteTensor, "cuda": [ByteTensor] | None, "numpy": {...}, "python": {...}}},
     "world": int, "metrics": {...}}

RNG states are kept per rank (gathered to rank 0): after a restart with the same world size every rank continues
its own streams exactly; a rank the checkpoint has no state for (elastic growth) reseeds from (seed, rank, step).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.errors import DataError

STATE_FILE = "state.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    # a worker restarted with another number of visible GPUs keeps its fresh CUDA streams
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global RNG and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/state.pt``; returns the file path."""
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": FORMAT_VERSION, **state}, path)
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read ``directory/state.pt`` with ``weights_only=True``; DataError naming the file when it is unusable."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise DataError(f"{directory}: checkpoint has no {STATE_FILE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unpickling refusal or a truncated file: both unusable
        raise DataError(
            f"{path}: unreadable training checkpoint ({' '.join(str(e).split())[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: unsupported checkpoint format (expected format_version {FORMAT_VERSION})")
    return state
