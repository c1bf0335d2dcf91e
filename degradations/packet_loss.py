"""Packet loss: the signal is cut into fixed-length packets and lost packets are zero-filled.

Two loss models (``burst_model``; plans without one use ``gilbert``):

* ``gilbert``: a two-state model: a loss starts with probability ``p`` after a received packet and continues with
  probability ``1 - 1/mean_burst``, so the long-run loss rate is ``loss_rate`` and bursts average ``mean_burst``
  packets; a burst never exceeds ``max_burst`` packets.
* ``uniform``: URGENT 2025's model: ``round(loss_rate * packets)`` packets are lost in bursts whose lengths are
  uniform in 1..``max_burst`` (the last one cut to the total), each starting at a distinct random packet;
  overlapping bursts merge, so the lost fraction can fall a little under ``loss_rate``.

The pattern depends on the signal length, which the plan does not know, so the plan records the model parameters
and a ``pattern_seed`` and the render derives the pattern from them; the report lists the lost packet indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register

BurstModel = Literal["gilbert", "uniform"]
BURST_MODELS: tuple[str, ...] = ("gilbert", "uniform")


class PacketLossConfig(StrictModel):
    # URGENT 2025: packet_duration_ms 20, packet_loss_rate [0.05, 0.25], burst lengths randint(1, 10) = 1-9
    packet_ms: float = Field(20.0, gt=0.0)
    loss_rate: tuple[float, float] = (0.05, 0.25)
    mean_burst: tuple[float, float] = (1.0, 3.0)
    max_burst: int = Field(9, ge=1)
    burst_models: list[BurstModel] = Field(default_factory=lambda: list(BURST_MODELS), min_length=1)

    @field_validator("loss_rate")
    @classmethod
    def _rate(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= v[1] < 1.0:
            raise ValueError(f"need 0 <= low <= high < 1, got {list(v)}")
        return v

    @field_validator("mean_burst")
    @classmethod
    def _burst(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 1.0 <= v[0] <= v[1]:
            raise ValueError(f"need 1 <= low <= high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _burst_cap(self) -> PacketLossConfig:
        if self.mean_burst[1] > self.max_burst:
            raise ValueError(
                f"mean_burst: upper bound {self.mean_burst[1]} exceeds max_burst {self.max_burst}"
            )
        return self


def loss_pattern(
    n_packets: int, loss_rate: float, mean_burst: float, max_burst: int, seed: int
) -> np.ndarray:
    """Boolean array, True where a packet is lost (Gilbert model, bursts capped at ``max_burst``)."""
    lost = np.zeros(n_packets, dtype=bool)
    if n_packets == 0 or loss_rate <= 0.0:
        return lost
    q = 1.0 / max(mean_burst, 1.0)  # P(bad -> good)
    p = min(1.0, loss_rate * q / (1.0 - loss_rate))  # P(good -> bad) for a stationary loss rate of loss_rate
    u = np.random.default_rng(seed).random(n_packets)
    bad = False
    run = 0
    for i in range(n_packets):
        if bad:
            bad = run < max_burst and u[i] >= q
        else:
            bad = u[i] < p
        run = run + 1 if bad else 0
        lost[i] = bad
    return lost


def uniform_burst_pattern(n_packets: int, loss_rate: float, max_burst: int, seed: int) -> np.ndarray:
    """Boolean array, True where a packet is lost (URGENT 2025's bursts, see the module docstring)."""
    lost = np.zeros(n_packets, dtype=bool)
    n_loss = int(round(loss_rate * n_packets))
    if n_packets == 0 or n_loss <= 0:
        return lost
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max(1, max_burst) + 1, size=n_loss)
    total = np.cumsum(lengths)
    k = int(np.searchsorted(total, n_loss))  # first burst that reaches the total
    lengths = lengths[: k + 1].copy()
    lengths[-1] -= int(total[k]) - n_loss
    starts = rng.choice(n_packets, size=len(lengths), replace=False)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    idx = np.repeat(starts, lengths) + offsets
    lost[idx[idx < n_packets]] = True
    return lost


@register
class PacketLoss(Degradation):
    """Zero the packets a Gilbert loss model drops (``packet_ms`` packets, bursts <= ``max_burst``)."""

    name = "packet_loss"
    Config = PacketLossConfig
    report_keys = ("lost_packets", "packet_samples", "loss_fraction", "burst_model")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        params = {
            "packet_ms": float(c.packet_ms),
            "loss_rate": float(rng.uniform(*c.loss_rate)),
            "mean_burst": float(rng.uniform(*c.mean_burst)),
            "max_burst": int(c.max_burst),
            "pattern_seed": int(rng.integers(2**63 - 1)),
        }
        # drawn last, so the draws above are those of plans made before there was a choice
        params["burst_model"] = str(c.burst_models[int(rng.integers(len(c.burst_models)))])
        return params

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        packet = max(1, int(round(float(params["packet_ms"]) * 1e-3 * sr)))
        n_packets = -(-len(x) // packet)
        model = str(params.get("burst_model", "gilbert"))
        if model == "gilbert":
            lost = loss_pattern(
                n_packets,
                float(params["loss_rate"]),
                float(params["mean_burst"]),
                int(params["max_burst"]),
                int(params["pattern_seed"]),
            )
        elif model == "uniform":
            lost = uniform_burst_pattern(
                n_packets, float(params["loss_rate"]), int(params["max_burst"]), int(params["pattern_seed"])
            )
        else:
            raise ValueError(
                f"packet_loss: unknown burst_model {model!r}; expected one of {', '.join(BURST_MODELS)}"
            )
        y = x.copy()
        if lost.any():
            sample_lost = np.repeat(lost, packet)[: len(x)]
            y[sample_lost] = 0.0
        indices = np.nonzero(lost)[0].tolist()
        report = {
            "lost_packets": indices,
            "packet_samples": packet,
            "loss_fraction": (len(indices) / n_packets) if n_packets else 0.0,
            "burst_model": model,
        }
        return Applied(y, report)
