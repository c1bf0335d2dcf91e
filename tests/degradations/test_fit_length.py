"""fit_length: the one cut-or-zero-pad helper of synthesis and the codecs."""

from __future__ import annotations

import numpy as np
import pytest

from degradations import fit_length


def _reference(x: np.ndarray, n: int) -> np.ndarray:
    # the two former private copies (synthesis and codec) written out, to pin identical output
    if len(x) >= n:
        return np.ascontiguousarray(x[:n], dtype=np.float32)
    return np.concatenate([x, np.zeros(n - len(x), dtype=np.float32)]).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("length", "n"), [(100, 40), (40, 100), (0, 10), (10, 0), (64, 64)])
def test_fit_length_cuts_or_pads_as_float32(dtype, length: int, n: int) -> None:
    x = np.random.default_rng(0).standard_normal(length).astype(dtype)
    y = fit_length(x, n)
    assert y.dtype == np.float32 and y.shape == (n,) and y.flags.c_contiguous
    assert y.tobytes() == _reference(x, n).tobytes()
    assert not y[min(length, n) :].any()


def test_fit_length_of_a_strided_view() -> None:
    x = np.arange(20, dtype=np.float32)[::2]
    assert fit_length(x, 4).tolist() == [0, 2, 4, 6]
    assert fit_length(x, 12).tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 0, 0]
