"""Helpers shared by the training tests (imported by module name; pytest puts this folder on sys.path)."""

from __future__ import annotations

import math

import torch

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tone(freqs: list[float], sr: int, samples: int) -> torch.Tensor:
    """Equal-amplitude sum of sines; float64 phase (float32 would add ~1e-4 error itself)."""
    t = torch.arange(samples, dtype=torch.float64) / sr
    return (sum(torch.sin(2 * math.pi * f * t) for f in freqs) / len(freqs)).float()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
