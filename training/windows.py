"""Window planning and cross-fade overlap-add for restoring signals of any length (pure numpy).

A signal of ``length`` output samples (48 kHz) is cut into equal windows of ``window`` samples whose starts are
``hop = window - overlap`` apart; the last window may reach past the end (the restorer zero-pads its input there
and the assembler drops what lies beyond ``length``). Every window has the same length, so windows batch
together and each one's result depends on its own samples only.

Adjacent windows share ``overlap`` samples, where the earlier window fades out and the later one fades in with
complementary raised-cosine ramps (``cos^2`` / ``sin^2``: the weights sum to one at every sample, so a signal
that every window reproduces exactly is reproduced exactly). The first window has no fade-in and the last none
out.

:class:`OverlapAdd` assembles window outputs into the final signal in bounded memory: it accepts windows in any
order, keeps only those that cannot be finished yet (plus one overlap of tail), and hands back finished chunks in
order as soon as they are final, so a writer can stream them to disk. :func:`assemble` is the same for a whole
in-memory list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One window: output samples ``[start, start + length)``; ``fade_in``/``fade_out`` ramp lengths."""

    index: int
    start: int
    length: int
    fade_in: int
    fade_out: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class WindowPlan:
    """The windows covering ``length`` samples (``length`` may be 0: no windows)."""

    length: int
    window: int
    hop: int
    windows: tuple[Window, ...]

    @property
    def overlap(self) -> int:
        return self.window - self.hop

    def __len__(self) -> int:
        return len(self.windows)


def plan_windows(length: int, window: int, overlap: int, align: int = 1) -> WindowPlan:
    """Windows of ``window`` samples, ``window - overlap`` apart, covering ``[0, length)``.

    ``window`` and ``overlap`` are rounded to multiples of ``align`` (the restorer uses the mel hop, so window
    starts fall on mel frame boundaries and a third of them on 16 kHz samples). ``overlap`` must stay under half
    a window so that a window's fade-in and fade-out never meet.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    align = max(int(align), 1)
    window = int(round(window / align)) * align
    overlap = int(round(overlap / align)) * align
    if window <= 0:
        raise ValueError(f"window must be at least {align} samples")
    if not 0 <= 2 * overlap <= window:
        raise ValueError(f"overlap {overlap} must be in [0, window / 2] (window {window})")
    hop = window - overlap
    count = 0 if length == 0 else 1 + max(0, math.ceil((length - window) / hop))
    windows = tuple(
        Window(
            index=k,
            start=k * hop,
            length=window,
            fade_in=overlap if k > 0 else 0,
            fade_out=overlap if k < count - 1 else 0,
        )
        for k in range(count)
    )
    return WindowPlan(length=int(length), window=window, hop=hop, windows=windows)


def fade_in_ramp(n: int) -> np.ndarray:
    """``sin^2`` ramp of ``n`` samples rising from near 0 to near 1 (sample centres); ``1 - ramp`` fades out."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return np.sin(0.5 * np.pi * t) ** 2


def window_weights(w: Window) -> np.ndarray:
    """The cross-fade weight of each of the window's samples (float32, ``w.length``)."""
    weights = np.ones(w.length, dtype=np.float64)
    if w.fade_in:
        weights[: w.fade_in] = fade_in_ramp(w.fade_in)
    if w.fade_out:
        weights[w.length - w.fade_out :] = 1.0 - fade_in_ramp(w.fade_out)
    return weights.astype(np.float32)


class OverlapAdd:
    """Streams the cross-faded sum of window outputs: :meth:`add` returns the chunks that became final.

    Windows may come in any order; memory holds the windows waiting for an earlier one plus one overlap. The
    chunks returned, concatenated, are exactly ``plan.length`` samples once every window was added.
    """

    def __init__(self, plan: WindowPlan) -> None:
        self.plan = plan
        self.emitted = 0  # output samples handed back so far
        self._next = 0  # index of the next window to fold in
        self._waiting: dict[int, np.ndarray] = {}
        self._tail = np.zeros(0, dtype=np.float32)  # weighted sum over [emitted, emitted + len(tail))

    @property
    def done(self) -> bool:
        return self._next >= len(self.plan.windows)

    @property
    def pending(self) -> int:
        """Windows received but not folded in yet (waiting for an earlier one)."""
        return len(self._waiting)

    def add(self, index: int, samples: np.ndarray) -> list[np.ndarray]:
        if not 0 <= index < len(self.plan.windows):
            raise IndexError(f"window {index} is not in a plan of {len(self.plan.windows)} windows")
        if index < self._next or index in self._waiting:
            raise ValueError(f"window {index} was already added")
        w = self.plan.windows[index]
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(x) != w.length:
            raise ValueError(f"window {index} has {len(x)} samples, expected {w.length}")
        self._waiting[index] = x
        chunks: list[np.ndarray] = []
        while self._next in self._waiting:
            chunks.extend(self._fold(self.plan.windows[self._next], self._waiting.pop(self._next)))
            self._next += 1
        return [c for c in chunks if len(c)]

    def _fold(self, w: Window, x: np.ndarray) -> list[np.ndarray]:
        weighted = x * window_weights(w)
        offset = w.start - self.emitted  # where the window begins inside the tail buffer
        buf = np.zeros(max(len(self._tail), offset + w.length), dtype=np.float32)
        buf[: len(self._tail)] = self._tail
        buf[offset : offset + w.length] += weighted
        # final: everything before the next window's start (the whole signal after the last window)
        last = w.index == len(self.plan.windows) - 1
        final_until = self.plan.length if last else self.plan.windows[w.index + 1].start
        cut = max(0, min(final_until, self.plan.length) - self.emitted)
        out, self._tail = buf[:cut].copy(), buf[cut:].copy()
        self.emitted += cut
        if last:
            self._tail = np.zeros(0, dtype=np.float32)
        return [out]


def assemble(plan: WindowPlan, outputs: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """The whole cross-faded signal from ``(index, samples)`` pairs (any order), ``plan.length`` samples."""
    return np.concatenate([np.zeros(0, dtype=np.float32), *stream(plan, outputs)])


def stream(plan: WindowPlan, outputs: Iterable[tuple[int, np.ndarray]]) -> Iterator[np.ndarray]:
    """Finished chunks in order from ``(index, samples)`` pairs (any order); raises if a window is missing."""
    ola = OverlapAdd(plan)
    for index, samples in outputs:
        yield from ola.add(index, samples)
    if not ola.done:
        raise ValueError(f"windows missing: assembled {ola._next} of {len(plan.windows)}")
