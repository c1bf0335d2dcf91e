"""Audio I/O: formats, URIs, ffmpeg containers (or a clear error without ffmpeg), resampling."""

from __future__ import annotations

import subprocess

import fsspec
import numpy as np
import pytest
import soundfile as sf

from datasets import audio
from datasets.audio import AudioError, audio_info, decode_audio, encode_audio, read_audio, resample

SR = 48000


def sine(freq=1000.0, seconds=0.5, sr=SR):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype"),
    [
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_24"),
        ("ogg", "OGG", "VORBIS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_soundfile_formats_round_trip(tmp_path, ext, fmt, subtype):
    path = tmp_path / f"a.{ext}"
    sf.write(path, sine(), SR, format=fmt, subtype=subtype)
    x, sr = read_audio(path)
    assert sr == SR and x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SR // 2) < 2048  # lossy codecs may pad a frame
    assert audio_info(path).sample_rate == SR


def test_uri_paths_read_through_fsspec():
    data = encode_audio(sine(), SR)
    with fsspec.open("memory://bucket/a.flac", "wb") as f:
        f.write(data)
    x, sr = read_audio("memory://bucket/a.flac", start=100, frames=1000)
    np.testing.assert_allclose(x, sine()[100:1100], atol=1e-5)
    assert audio_info("memory://bucket/a.flac").frames == SR // 2


def test_flac_encoding_is_deterministic_and_exact_at_24_bit():
    a, b = encode_audio(sine(), SR), encode_audio(sine(), SR)
    assert a == b
    y, _ = decode_audio(a)
    np.testing.assert_allclose(y, sine(), atol=2**-22)


def test_resample_preserves_band_and_length():
    x = sine(1000.0, 1.0)
    y = resample(x, SR, 16000)
    assert len(y) == 16000
    ref = sine(1000.0, 1.0, 16000)
    assert np.sqrt(np.mean((y[200:-200] - ref[200:-200]) ** 2)) < 1e-3
    assert resample(x, SR, SR) is not None and len(resample(x, SR, SR)) == len(x)


def test_ffmpeg_containers(tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    sf.write(wav, sine(), SR)
    m4a = tmp_path / "a.m4a"
    if audio.ffmpeg_available():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "128k", str(m4a)], check=True
        )
        x, sr = read_audio(m4a)
        assert sr == SR and abs(len(x) - SR // 2) < 4096
    else:
        m4a.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(audio, "ffmpeg_available", lambda: False)
    with pytest.raises(AudioError, match="needs the ffmpeg binary"):
        read_audio(m4a)
