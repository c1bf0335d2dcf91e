"""Codecs: every codec of the default list runs here, stays aligned, and unavailable ones fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from degradation_helpers import xcorr_lag

from degradations import ChainConfig, check_backends
from degradations import codec as codec_module
from degradations.codec import CODECS, CodecUnavailableError, available_codecs, codec_roundtrip

DEFAULT = ChainConfig().codec.codecs
CASES = [
    (c.name, b) for c in DEFAULT if c.bitrates_kbps for b in sorted({c.bitrates_kbps[0], c.bitrates_kbps[-1]})
]
VBR_CASES = [(c.name, q) for c in DEFAULT if c.qualities for q in sorted({c.qualities[0], c.qualities[-1]})]


def test_default_codecs_are_available_from_the_wheels():
    missing = {c.name for c in DEFAULT} - available_codecs()
    assert not missing, f"default codecs missing on this machine: {missing}"
    check_backends(ChainConfig())


@pytest.fixture(scope="module")
def tone_bursts(sr) -> np.ndarray:
    """Short windowed tone bursts (200-3400 Hz) at random times: a waveform every codec here reproduces."""
    rng = np.random.default_rng(4)
    x = np.zeros(2 * sr, np.float32)
    i = int(0.05 * sr)
    while i < len(x) - sr // 10:
        n = int(rng.uniform(0.01, 0.04) * sr)
        t = np.arange(n) / sr
        x[i : i + n] += (
            0.3 * np.sin(2 * np.pi * rng.uniform(200, 3400) * t + rng.uniform(0, 6)) * np.hanning(n)
        )
        i += n + int(rng.uniform(0.02, 0.1) * sr)
    return x


def _envelope(x: np.ndarray, sr: int) -> np.ndarray:
    w = int(0.002 * sr)
    e = np.convolve(x.astype(np.float64) ** 2, np.ones(w) / w, mode="same")
    return e - e.mean()


@pytest.mark.parametrize(("name", "bitrate"), CASES)
def test_codec_output_is_aligned_within_1ms(speech, tone_bursts, sr, name, bitrate):
    one_ms = int(0.001 * sr)
    y = codec_roundtrip(tone_bursts, sr, name, bitrate)
    assert y.dtype == np.float32 and y.shape == tone_bursts.shape and np.isfinite(y).all()
    assert abs(xcorr_lag(tone_bursts, y, int(0.05 * sr))) <= one_ms
    # on speech, CELP codecs keep the envelope but not the waveform: compare 2 ms energy envelopes
    y = codec_roundtrip(speech, sr, name, bitrate)
    assert abs(xcorr_lag(_envelope(speech, sr), _envelope(y, sr), int(0.05 * sr))) <= one_ms
    # a codec changes the signal but keeps it recognisable
    assert not np.array_equal(y, speech)
    assert np.corrcoef(_envelope(speech, sr), _envelope(y, sr))[0, 1] > 0.6


@pytest.mark.parametrize(("name", "quality"), VBR_CASES)
def test_vbr_codec_output_is_aligned_and_reports_its_bit_rate(speech, tone_bursts, sr, name, quality):
    y = codec_roundtrip(tone_bursts, sr, name, quality=quality)
    assert y.dtype == np.float32 and y.shape == tone_bursts.shape and np.isfinite(y).all()
    assert abs(xcorr_lag(tone_bursts, y, int(0.05 * sr))) <= int(0.001 * sr)
    op = ChainConfig().operator("codec")
    out = op.process(speech, sr, {"codec": name, "quality": quality}, None)
    assert out.report["codec_quality"] == quality and 4 < out.report["bitrate_kbps"] < 400
    np.testing.assert_array_equal(out.audio, op.apply(speech, sr, {"codec": name, "quality": quality}))
    assert np.corrcoef(_envelope(speech, sr), _envelope(out.audio, sr))[0, 1] > 0.6


def test_vbr_codecs_take_qualities_not_bit_rates(speech, sr):
    from datasets.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="mp3_vbr is a VBR codec"):
        load_config(
            ChainConfig, overrides={"codec": {"codecs": [{"name": "mp3_vbr", "bitrates_kbps": [64]}]}}
        )
    with pytest.raises(ConfigError, match="vorbis_vbr takes 0-10"):
        load_config(ChainConfig, overrides={"codec": {"codecs": [{"name": "vorbis_vbr", "qualities": [11]}]}})
    with pytest.raises(ValueError, match="mp3_vbr takes a quality"):
        codec_roundtrip(speech, sr, "mp3_vbr", 64)


@pytest.mark.parametrize("name", sorted(n for n, s in CODECS.items() if s.backend == "ffmpeg"))
def test_ffmpeg_codecs_when_the_binary_exists(tone_bursts, sr, name):
    if name not in available_codecs():
        pytest.skip(f"{name}: ffmpeg binary or encoder not present")
    bitrate = {"gsm": 13.0, "speex": 16.0, "vorbis": 64.0}[name]
    y = codec_roundtrip(tone_bursts, sr, name, bitrate)
    assert y.shape == tone_bursts.shape
    assert abs(xcorr_lag(tone_bursts, y, int(0.05 * sr))) <= int(0.001 * sr)


def test_codec_is_deterministic(speech, sr):
    for name in ("mp3", "opus", "aac", "amr_nb"):
        a = codec_roundtrip(speech, sr, name, 24 if name != "amr_nb" else 12.2)
        b = codec_roundtrip(speech, sr, name, 24 if name != "amr_nb" else 12.2)
        np.testing.assert_array_equal(a, b)


def test_loud_input_is_not_clipped_by_integer_conversion(speech, sr):
    loud = (speech * 20).astype(np.float32)  # peaks far above 1
    y = codec_roundtrip(loud, sr, "g711_ulaw", 64)
    assert np.max(np.abs(y)) > 1.5
    assert np.corrcoef(loud, y)[0, 1] > 0.95


def test_unavailable_codec_raises_naming_it(speech, sr, monkeypatch):
    monkeypatch.setattr(codec_module, "available_codecs", lambda: frozenset({"mp3"}))
    with pytest.raises(CodecUnavailableError, match="opus"):
        codec_roundtrip(speech, sr, "opus", 16)
    with pytest.raises(CodecUnavailableError, match="aac"):
        check_backends(ChainConfig())


def test_unknown_codec_in_config_is_a_config_error():
    from datasets.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="codec.codecs.0.name"):
        load_config(ChainConfig, overrides={"codec": {"codecs": [{"name": "flac", "bitrates_kbps": [1]}]}})


def test_unsupported_bit_rate_is_a_config_error():
    from datasets.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="mp3 does not support .20"):
        load_config(ChainConfig, overrides={"codec": {"codecs": [{"name": "mp3", "bitrates_kbps": [20]}]}})
