"""The noise operator and the active speech level give the bytes of their former, plainer code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from degradations import ChainConfig, sample_rng
from degradations.levels import SpeechLevel, active_speech_level
from degradations.noise import _achieved, noise_excerpt
from degradations.synthetic import speech_like

SR = 48000


def _process_plain(x: np.ndarray, params: dict, banks) -> tuple[np.ndarray, dict]:
    # Noise.process as it was (float64 copy of the excerpt, masks built twice, an extra float32 copy)
    report: dict = {"achieved_snr_db": None}
    seg, offset = noise_excerpt(banks.noise(params["noise_id"]), len(x), float(params["offset_fraction"]))
    seg64 = seg.astype(np.float64)
    report["noise_offset"] = offset
    level = active_speech_level(x, SR)
    report["speech_activity"] = level.activity
    if level.silent:
        p_speech = 10.0 ** (float(params["reference_level_db"]) / 10.0)
        p_noise = float(np.mean(np.square(seg64)))
    else:
        p_speech = level.power
        p_noise = float(np.mean(np.square(seg64[level.mask()])))
        if p_noise <= 0.0:
            p_noise = float(np.mean(np.square(seg64)))
    if p_noise <= 0.0:
        return x.copy(), report
    gain = math.sqrt(p_speech / (p_noise * 10.0 ** (float(params["snr_db"]) / 10.0)))
    added = (seg64 * gain).astype(np.float32)
    y = (x + added).astype(np.float32)
    if not level.silent:
        report["achieved_snr_db"] = _achieved(level.power, (y - x)[level.mask()])
    return y, report


def _inputs() -> dict[str, np.ndarray]:
    speech = speech_like(5.12, SR, seed=11)
    padded = speech.copy()
    padded[int(0.4 * len(padded)) :] = 0.0
    odd = speech_like(1.2345, SR, seed=12)  # not a whole number of 1 ms blocks
    return {"speech": speech, "padded": padded, "odd": odd, "silent": np.zeros(SR, np.float32)}


@pytest.mark.parametrize(("name", "x"), sorted(_inputs().items()))
def test_noise_output_is_bit_identical(name: str, x: np.ndarray, memory_banks) -> None:
    op = ChainConfig().operator("noise")
    for i in range(8):
        params = op.sample(sample_rng(0, f"{name}{i}", "noise"), memory_banks.catalog())
        out = op.process(x, SR, params, memory_banks)
        y, report = _process_plain(x, params, memory_banks)
        assert out.audio.dtype == np.float32 and out.audio.tobytes() == y.tobytes()
        assert {k: out.report[k] for k in report} == report


def _level_plain(x: np.ndarray, sr: int) -> tuple[float, np.ndarray]:
    # the block signal as it was: always a zero-padded float64 copy
    n = len(x)
    block = max(1, int(round(sr / 1000.0)))
    n_blocks = max(1, -(-n // block))
    x64 = np.zeros(n_blocks * block, dtype=np.float64)
    x64[:n] = x
    return float(np.sum(np.square(x64))), np.abs(x64.reshape(n_blocks, block)).mean(axis=1)


@pytest.mark.parametrize(("name", "x"), sorted(_inputs().items()))
def test_active_level_block_signal_is_unchanged(name: str, x: np.ndarray, monkeypatch) -> None:
    import degradations.levels as levels

    seen = {}
    real_smooth = levels._smooth

    def spy(values, time_constant_s, rate):
        seen["env_in"] = values
        return real_smooth(values, time_constant_s, rate)

    monkeypatch.setattr(levels, "_smooth", spy)
    level: SpeechLevel = active_speech_level(x, SR)
    energy, env_in = _level_plain(x, SR)
    if energy > 0:
        assert seen["env_in"].tobytes() == env_in.tobytes()
    if len(x) % 48 == 0:  # the unpadded float64 view sums to the same energy
        assert float(np.sum(np.square(np.asarray(x, np.float64)))) == energy
    for x64 in (x, x.astype(np.float64)):
        again = active_speech_level(x64, SR)
        assert (again.level_db, again.activity) == (level.level_db, level.activity)
