"""Reverb with prepared RIRs and spectra cached per bank entry: the bytes of plain scipy.signal.oaconvolve."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.signal import oaconvolve

from degradations import Banks, ChainConfig
from degradations.banks import derived_cache
from degradations.reverb import convolve_aligned, prepare_rir, rir_spectrum, single_fft_size
from degradations.synthetic import speech_like, synthetic_rir

SR = 48000


def _plain(x: np.ndarray, h: np.ndarray, delay: int) -> np.ndarray:
    # convolve_aligned as it was: one oaconvolve per call
    if len(h) == 1:
        return (x * h[0]).astype(np.float32)
    y = oaconvolve(x, h, mode="full")
    return np.ascontiguousarray(y[delay : delay + len(x)], dtype=np.float32)


@pytest.mark.parametrize(
    ("n", "m"),
    [
        (245760, 48241),
        (245760, 20000),
        (245760, 2400),
        (48000, 48241),
        (30000, 48241),
        (5, 3),
        (2, 2),
        (1000, 1),
    ],
)
def test_cached_spectrum_gives_the_oaconvolve_bytes(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    x = rng.standard_normal(n).astype(np.float32)
    x[n // 3 :] = 0.0  # padded, too
    h = (rng.standard_normal(m) * np.exp(-np.arange(m) / 5000)).astype(np.float32)
    asked: list[int] = []

    def spectrum(nfft: int) -> np.ndarray:
        asked.append(nfft)
        return rir_spectrum(h, nfft)

    for delay in (0, min(m - 1, 240)):
        assert convolve_aligned(x, h, delay, spectrum).tobytes() == _plain(x, h, delay).tobytes()
    # the synthesis case (5.12 s segment, RIR up to 1 s after its direct path) takes the cached path
    if (n, m) == (245760, 48241):
        assert asked and set(asked) == {single_fft_size(n, m)}


def test_reverb_renders_the_same_bytes_with_cached_rirs() -> None:
    rirs = {f"r{i}": synthetic_rir(rt, SR, seed=i) for i, rt in enumerate((0.3, 0.8, 1.4))}
    banks = Banks.from_arrays(SR, rir=rirs)
    op = ChainConfig().operator("reverb")
    speech = speech_like(5.12, SR, seed=2)
    padded = speech.copy()
    padded[SR * 2 :] = 0.0
    for rid, raw in rirs.items():
        for early in (False, True):
            params = {"rir_id": rid, "early_target": early, "early_ms": 50.0, "max_rir_s": 1.0}
            for x in (speech, padded):
                for _ in range(2):  # computed, then from the cache
                    target, degraded, _ = op.step(x.copy(), x.copy(), SR, params, banks)
                    h, d = prepare_rir(raw, SR, 1.0)
                    assert degraded.tobytes() == _plain(x, h, d).tobytes()
                    expected_target = _plain(x, h[: d + 2401], d) if early else x
                    assert target.tobytes() == expected_target.tobytes()


def test_derived_values_are_computed_once_and_not_pickled(bank_files) -> None:
    banks = Banks.from_manifests(bank_files["noise"], bank_files["rir"], sr=SR)
    rid = banks.catalog()["rir"][0]["id"]
    calls: list[int] = []

    def make():
        calls.append(1)
        return np.arange(4.0)

    first = banks.derived("rir", rid, ("test", 1), make)
    assert banks.derived("rir", rid, ("test", 1), make) is first and len(calls) == 1
    assert not first.flags.writeable
    assert derived_cache().get(("rir", banks.entry("rir", rid).path, SR, "test", 1)) is first

    memory = Banks.from_arrays(SR, rir={"a": np.ones(10, np.float32)})
    held = memory.derived("rir", "a", ("test",), lambda: np.zeros(1000))
    assert memory.derived("rir", "a", ("test",), make) is held
    again = pickle.loads(pickle.dumps(memory))
    assert again._held_derived == {} and len(pickle.dumps(memory)) < 2000
    with pytest.raises(KeyError, match="no id"):
        memory.derived("rir", "missing", ("test",), make)
