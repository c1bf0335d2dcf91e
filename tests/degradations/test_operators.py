"""Contract of every registered operator: JSON params, explicit RNG, length, finiteness, alignment, purity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from degradation_helpers import xcorr_lag

from degradations import REGISTRY, ChainConfig, sample_rng
from degradations.codec import available_codecs

OPS = sorted(REGISTRY)
CFG = ChainConfig()


@pytest.fixture(scope="module")
def memory_banks(wind_banks):
    """The shared in-memory banks with wind files too, so that every operator (wind included) can be drawn."""
    return wind_banks


def _draws(name: str, ctx, n: int = 4) -> list[dict]:
    op = CFG.operator(name)
    return [op.sample(sample_rng(123, f"k{i}", name), ctx) for i in range(n)]


def _runnable(name: str, params: dict) -> bool:
    return name != "codec" or params["codec"] in available_codecs()


@pytest.mark.parametrize("name", OPS)
def test_params_are_plain_json_and_deterministic(name, memory_banks):
    ctx = memory_banks.catalog()
    first = _draws(name, ctx)
    assert first == _draws(name, ctx)
    for params in first:
        assert json.loads(json.dumps(params)) == params
    # the draw depends on the generator only, not on global RNG state
    np.random.seed(1)
    import random

    random.seed(1)
    assert _draws(name, ctx) == first


@pytest.mark.parametrize("name", OPS)
def test_length_dtype_finite_and_pure(name, speech, memory_banks, sr):
    op = CFG.operator(name)
    for params in _draws(name, memory_banks.catalog(), n=3):
        if not _runnable(name, params):
            continue
        before = speech.copy()
        y = op.apply(speech, sr, params, memory_banks)
        assert y.dtype == np.float32 and y.shape == speech.shape
        assert np.isfinite(y).all()
        np.testing.assert_array_equal(speech, before)  # input untouched
        np.testing.assert_array_equal(y, op.apply(speech, sr, params, memory_banks))  # deterministic


TIMING_OPS = [n for n in OPS if n != "codec"]  # codecs: test_codec.py (they need speech-like probes)


@pytest.mark.parametrize("name", TIMING_OPS)
def test_output_is_time_aligned(name, memory_banks, sr):
    """Cross-correlation with a broadband probe peaks at lag 0.

    With white noise the cross-correlation is the operator's (linearised) impulse response, so lag 0 means the
    strongest path through the operator has no delay; a speech probe's low-pitched harmonics make the peak too
    broad to resolve one sample.
    """
    probe = (np.random.default_rng(9).standard_normal(sr) * 0.05).astype(np.float32)
    op = CFG.operator(name)
    for params in _draws(name, memory_banks.catalog(), n=4):
        if name == "noise":
            params = {**params, "snr_db": 20.0}
        y = op.apply(probe, sr, params, memory_banks)
        if name == "packet_loss":
            # zero-filled packets keep the timing of everything else
            keep = y != 0
            np.testing.assert_array_equal(y[keep], probe[keep])
            continue
        assert xcorr_lag(probe, y, max_lag=int(0.05 * sr)) == 0, (name, params)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("kind", ["silent", "one_sample", "empty", "very_loud"])
def test_edge_inputs(name, kind, memory_banks, sr, speech):
    x = {
        "silent": np.zeros(4800, np.float32),
        "one_sample": np.array([0.25], np.float32),
        "empty": np.zeros(0, np.float32),
        "very_loud": np.clip(speech[:9600] * 200.0, -40.0, 40.0).astype(np.float32),
    }[kind]
    op = CFG.operator(name)
    for params in _draws(name, memory_banks.catalog(), n=2):
        if not _runnable(name, params):
            continue
        y = op.apply(x, sr, params, memory_banks)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
        if kind == "silent" and name not in ("noise", "wind", "reverb", "codec"):
            assert not y.any(), f"{name} made sound out of silence"


def test_apply_rejects_multichannel(memory_banks, sr):
    with pytest.raises(ValueError, match="1-D mono"):
        CFG.operator("clipping").apply(np.zeros((2, 100), np.float32), sr, {"mode": "hard", "quantile": 0.9})
