"""Operator interface, registry and the deterministic RNG every degradation draws from.

An operator is one class in one module, registered by name with :func:`register`:

* ``sample(rng, ctx) -> params`` draws concrete parameters (a JSON-able dict of plain Python scalars, lists and
  dicts) from an explicit :class:`numpy.random.Generator` and the bank catalogue ``ctx``
  (:meth:`degradations.banks.Banks.catalog`); it never touches a global RNG and never looks at audio;
* ``apply(x, sr, params, banks) -> y`` is a pure function of its arguments: float32 mono in, float32 mono out,
  same length, time-aligned with the input. Everything ``apply`` needs is in ``params`` (ranges and options from
  the config are resolved by ``sample``), so a recorded plan re-renders without the config.

:meth:`Degradation.process` is ``apply`` plus a small JSON-able report of what was measured while applying
(achieved SNR, clipped fraction, ...); :meth:`Degradation.step` is what the chain calls and lets an operator act on
the clean target too (loudness gain, early-reverb target, joint peak scaling).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from datasets.config import StrictModel
from datasets.manifest import stable_hash  # blake2b-64 of the key: identical in every process and machine

if TYPE_CHECKING:
    from degradations.banks import Banks

REGISTRY: dict[str, type[Degradation]] = {}


def register(cls: type[Degradation]) -> type[Degradation]:
    """Class decorator: make an operator available to configs and plans under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__qualname__}: a registered degradation needs a class attribute `name`")
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise ValueError(f"degradation {name!r} is already registered by {REGISTRY[name].__qualname__}")
    REGISTRY[name] = cls
    return cls


def get_operator(name: str) -> type[Degradation]:
    """The registered operator class called ``name``; a KeyError lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown degradation {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def sample_rng(seed: int, key: str, *labels: str) -> np.random.Generator:
    """The generator for sample ``key`` under global ``seed``, optionally narrowed to a named sub-stream.

    ``sample_rng(seed, key)`` is ``default_rng([seed, stable_hash(key)])``; each label appends its stable hash,
    so an operator drawing from ``sample_rng(seed, key, "noise")`` gets parameters that do not move when another
    operator's configuration (and hence its number of draws) changes.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    entropy = [int(seed), stable_hash(key), *(stable_hash(label) for label in labels)]
    return np.random.default_rng(entropy)


def as_mono_float32(x: Any, what: str = "audio") -> np.ndarray:
    """``x`` as a contiguous 1-D float32 array; anything else than one channel is a ValueError."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D mono samples, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be floating point samples in [-1, 1], got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` as float32, cut to its first ``n`` samples or zero-padded at the end to ``n`` samples."""
    if len(x) >= n:
        return np.ascontiguousarray(x[:n], dtype=np.float32)
    return np.concatenate([np.asarray(x, dtype=np.float32), np.zeros(n - len(x), dtype=np.float32)])


@dataclass
class Applied:
    """The output of one operator on one signal plus what it measured (JSON-able, merged into the report)."""

    audio: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


class Degradation(ABC):
    """Base class of every operator; subclasses set ``name`` and ``Config`` and implement sample/process."""

    name: ClassVar[str]
    Config: ClassVar[type[StrictModel]]
    #: report keys this operator fills; the chain reports them as None when the operator is not applied
    report_keys: ClassVar[tuple[str, ...]] = ()
    #: render passes the sample's valid (non-padded) length as ``params["valid_samples"]`` when it knows it
    uses_valid: ClassVar[bool] = False

    def __init__(self, config: StrictModel | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def available(self, ctx: Mapping[str, Any]) -> bool:
        """Whether the operator can be planned with this bank catalogue (e.g. reverb needs RIRs)."""
        return True

    @abstractmethod
    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        """Draw concrete parameters (plain JSON types only) from ``rng`` and the config ranges."""

    @abstractmethod
    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Banks | None) -> Applied:
        """Apply with ``params`` and return the output with a report of measured quantities."""

    def apply(
        self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Banks | None = None
    ) -> np.ndarray:
        """The degraded signal: float32 mono, ``len(x)`` samples, time-aligned with ``x``."""
        return self.process(as_mono_float32(x), int(sr), params, banks).audio

    def step(
        self,
        target: np.ndarray,
        degraded: np.ndarray,
        sr: int,
        params: Mapping[str, Any],
        banks: Banks | None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One chain step on the (target, degraded) pair; by default only the degraded signal changes."""
        out = self.process(degraded, sr, params, banks)
        return target, out.audio, out.report
