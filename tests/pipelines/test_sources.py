"""Reading sample slices: a remote source is fetched once for all its consecutive segments."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from datasets import storage, synth_render
from datasets.audio import encode_audio


def test_remote_source_is_fetched_once_per_run_of_segments(monkeypatch):
    sr = 48000
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * sr).astype(np.float32)
    with fsspec.open("memory://bucket/long.flac", "wb") as f:
        f.write(encode_audio(x, sr))
    fetched = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda p: fetched.append(p) or real(p))

    remote: dict = {}
    rows = [
        {"path": "memory://bucket/long.flac", "key": f"long_{i:04d}", "offset": i * sr, "frames": sr}
        for i in range(3)
    ]
    for i, row in enumerate(rows):
        y, got_sr = synth_render.read_source(row, remote)
        assert got_sr == sr
        np.testing.assert_allclose(y, x[i * sr : (i + 1) * sr], atol=2**-22)
    assert fetched == ["memory://bucket/long.flac"]


def test_missing_remote_source_fails_the_task_instead_of_becoming_a_reject(monkeypatch):
    monkeypatch.setattr(synth_render.time, "sleep", lambda s: None)
    row = {"path": "memory://bucket/missing.flac", "key": "missing_0000", "offset": 0, "frames": 10}
    with pytest.raises(OSError, match="cannot read the source of missing_0000"):
        synth_render.read_source(row, {})
