"""Window planning and cross-fade overlap-add (training.windows)."""

from __future__ import annotations

import numpy as np
import pytest

from training.windows import OverlapAdd, assemble, plan_windows, stream, window_weights

W, OV, ALIGN = 4800, 960, 480


@pytest.mark.parametrize("length", [1, 479, W - 1, W, W + 1, 3 * W + 17, 20 * W])
def test_plan_covers_the_signal_with_equal_aligned_windows(length):
    plan = plan_windows(length, W, OV, ALIGN)
    assert plan.hop == W - OV
    starts = [w.start for w in plan.windows]
    assert starts[0] == 0 and all(s % ALIGN == 0 for s in starts)
    assert all(w.length == W for w in plan.windows)
    assert plan.windows[-1].stop >= length  # the last window reaches the end
    assert len(plan) == 1 or plan.windows[-2].stop < length  # and no window is wasted
    assert plan.windows[0].fade_in == 0 and plan.windows[-1].fade_out == 0


def test_empty_plan_and_bad_overlap():
    assert len(plan_windows(0, W, OV, ALIGN)) == 0
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(10 * W, W, W // 2 + ALIGN, ALIGN)


@pytest.mark.parametrize("length", [W // 2, 5 * W + 333])
def test_weights_sum_to_one_everywhere(length):
    plan = plan_windows(length, W, OV, ALIGN)
    total = np.zeros(plan.windows[-1].stop)
    for w in plan.windows:
        total[w.start : w.stop] += window_weights(w)
    np.testing.assert_allclose(total[:length], 1.0, atol=1e-6)


def test_exact_windows_reassemble_the_signal_in_any_order():
    rng = np.random.default_rng(0)
    length = 7 * W + 123
    x = rng.standard_normal(length).astype(np.float32)
    plan = plan_windows(length, W, OV, ALIGN)
    padded = np.concatenate([x, np.zeros(W, np.float32)])
    pieces = [(w.index, padded[w.start : w.stop]) for w in plan.windows]
    in_order = assemble(plan, pieces)
    assert in_order.shape == (length,)
    np.testing.assert_allclose(in_order, x, atol=1e-6)
    shuffled = [pieces[i] for i in rng.permutation(len(pieces))]
    np.testing.assert_array_equal(assemble(plan, shuffled), in_order)


def test_overlap_add_streams_finished_chunks_and_holds_only_waiting_windows():
    length = 5 * W
    plan = plan_windows(length, W, OV, ALIGN)
    ola = OverlapAdd(plan)
    ones = np.ones(W, np.float32)
    first = ola.add(0, ones)
    assert sum(len(c) for c in first) == plan.windows[1].start  # final up to the next window's start
    assert ola.add(2, ones) == [] and ola.pending == 1  # window 1 missing: nothing final yet
    later = ola.add(1, ones)
    assert sum(len(c) for c in later) == plan.windows[3].start - plan.windows[1].start and ola.pending == 0
    with pytest.raises(ValueError, match="already"):
        ola.add(1, ones)
    with pytest.raises(ValueError, match="samples"):
        ola.add(3, ones[:-1])
    rest = [c for w in plan.windows[3:] for c in ola.add(w.index, ones)]
    assert ola.done and ola.emitted == length
    np.testing.assert_allclose(np.concatenate(first + later + rest), 1.0, atol=1e-6)


def test_missing_window_is_an_error():
    plan = plan_windows(3 * W, W, OV, ALIGN)
    with pytest.raises(ValueError, match="missing"):
        list(stream(plan, [(0, np.zeros(W, np.float32))]))
