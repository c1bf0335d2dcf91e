"""IIR filtering whose cost does not grow on digital silence (zero-padded tails).

After the last non-zero input sample an IIR filter's state decays towards zero but never reaches it: once the
values fall below 2.2e-308 they are denormal numbers, and the rounding of denormal arithmetic keeps a small limit
cycle alive to the end of the signal. On many x86 CPUs every denormal operation costs about a hundred cycles, so
``scipy.signal.sosfilt`` becomes up to ten times slower on a zero-padded clip than on noise.

:func:`sosfilt_settled` runs ``sosfilt`` up to the last non-zero input, then over the zero tail in chunks while
the filter state is above :data:`SETTLED` (1e-200), and writes zeros from there on. Up to that point the output
is bit-identical to ``sosfilt`` (``sosfilt`` with an initial state continues exactly where a previous call
stopped). Beyond it, every output ``sosfilt`` would produce is below ``G * 1e-200`` in magnitude, ``G`` the
largest gain from the state to a later output (the tests pin it below 1e6 for the project's filters, far below
the 1e38 this argument tolerates): squares of such values are exactly 0.0 in float64 (they underflow below
2**-1075) and the values themselves are exactly 0.0 once converted to float32 (below 2**-150). Loudness sums of
squares are therefore identical to the bit, and float32 outputs equal ``sosfilt``'s; only the sign of a zero may
differ (the plain filter's tail can round to -0.0), which changes no sum, magnitude, integer conversion or FLAC
byte.

:func:`sosfiltfilt_settled` is ``scipy.signal.sosfiltfilt`` (odd padding) with both passes settled. Its
backward pass starts from the settled zeros instead of values below ``G * 1e-200``; that difference decays with
the filter and is more than 1e150 times smaller than the float64 rounding step of every float32-representable
output, so the float32 result is the same unless an output lies within that distance of a rounding boundary.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import sosfilt, sosfilt_zi

#: filter state magnitude below which the rest of a zero tail is written as zeros (see the module docstring)
SETTLED = 1e-200
SHORT_TAIL = 4096  # zero tails up to this many samples are filtered plainly (not worth a second call)


def _last_nonzero_end(x: np.ndarray) -> int:
    """One past the index of the last non-zero sample (0 for all-zero input); cost grows with the zero tail only."""
    end, step = len(x), 4096
    while end > 0:
        start = max(0, end - step)
        if x[start:end].any():
            while end - start > 4096:  # halve the block holding the last non-zero sample
                mid = (start + end) // 2
                if x[mid:end].any():
                    start = mid
                else:
                    end = mid
            return start + int(np.flatnonzero(x[start:end])[-1]) + 1
        end, step = start, step * 2
    return 0


def _first_nonzero(x: np.ndarray) -> int:
    return len(x) - _last_nonzero_end(x[::-1])


def _slowest_pole(sos: np.ndarray) -> float:
    """Largest pole radius of the cascade (how slowly its state decays on zero input)."""
    radius = 0.0
    for a1, a2 in (sos[:, 4:6] / sos[:, 3:4]).tolist():
        disc = a1 * a1 - 4.0 * a2  # roots of z**2 + a1 z + a2
        if disc < 0.0:
            r = math.sqrt(a2)
        else:
            r = max(abs(-a1 + math.sqrt(disc)), abs(-a1 - math.sqrt(disc))) / 2.0
        radius = max(radius, r)
    return radius


def _settling_samples(sos: np.ndarray, state: np.ndarray) -> int:
    """About how many zero-input samples take the state below SETTLED (exact count not needed: it is checked)."""
    top = float(np.max(np.abs(state)))
    r = _slowest_pole(sos)
    if top < SETTLED:
        return 0
    if not 0.0 < r < 1.0:
        return 0 if r == 0.0 else 1 << 62  # FIR-like sections settle at once; no decay: never settled
    # 5 % and 512 samples of margin for repeated poles (a state decaying like k * r**k)
    return int(np.log(top / SETTLED) / -np.log(r) * 1.05) + 512


def sosfilt_settled(sos: np.ndarray, x: np.ndarray, zi: np.ndarray | None = None) -> np.ndarray:
    """``scipy.signal.sosfilt(sos, x, zi=zi)`` (output only; float64) for 1-D ``x``, settled on a zero tail."""
    sos = np.asarray(sos, dtype=np.float64)
    x = np.asarray(x)
    n = len(x)
    if n == 0 or x[-1] != 0 or (end := _last_nonzero_end(x)) > n - SHORT_TAIL:
        return sosfilt(sos, x) if zi is None else sosfilt(sos, x, zi=zi)[0]
    state = np.zeros((len(sos), 2)) if zi is None else np.asarray(zi, dtype=np.float64)
    y = np.zeros(n, dtype=np.float64)
    # leading zeros into a zero state give +0.0 exactly, as sosfilt would: start at the first non-zero sample
    start = 0 if state.any() else _first_nonzero(x[:end])
    if start < end:
        y[start:end], state = sosfilt(sos, x[start:end], zi=state)
    pos = end
    while pos < n and float(np.max(np.abs(state))) >= SETTLED:
        stop = min(n, pos + max(SHORT_TAIL, _settling_samples(sos, state)))
        y[pos:stop], state = sosfilt(sos, np.zeros(stop - pos, dtype=x.dtype), zi=state)
        pos = stop
    return y


def _odd_ext(x: np.ndarray, edge: int) -> np.ndarray:
    # scipy.signal's odd extension, in x's dtype like scipy's
    if edge < 1:
        return x
    left = 2 * x[:1] - x[edge:0:-1]
    right = 2 * x[-1:] - x[-2 : -(edge + 2) : -1]
    return np.concatenate((left, x, right))


def sosfiltfilt_settled(sos: np.ndarray, x: np.ndarray, padlen: int | None = None) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos, x, padlen=padlen)`` (odd padding, 1-D) with settled zero tails."""
    sos = np.asarray(sos, dtype=np.float64)
    x = np.asarray(x)
    n_sections = len(sos)
    ntaps = 2 * n_sections + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    edge = ntaps * 3 if padlen is None else int(padlen)
    if len(x) <= edge:
        raise ValueError(f"The length of the input vector x must be greater than padlen, which is {edge}.")
    ext = _odd_ext(x, edge)
    zi = sosfilt_zi(sos)
    y = sosfilt_settled(sos, ext, zi=zi * ext[:1])
    y = sosfilt_settled(sos, y[::-1], zi=zi * y[-1:])[::-1]
    return y[edge:-edge] if edge > 0 else y
