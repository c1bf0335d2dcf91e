"""Banks: manifests, catalogue, lazy per-process cache, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from degradations import Banks
from degradations.banks import audio_cache


def test_catalog_is_sorted_small_and_json(file_banks):
    import json

    ctx = file_banks.catalog()
    json.dumps(ctx)
    assert [e["id"] for e in ctx["noise"]] == ["babble", "fan", "hum"]
    assert [e["id"] for e in ctx["rir"]] == ["room_a", "room_b", "shoebox"]
    hum = next(e for e in ctx["noise"] if e["id"] == "hum")
    assert hum["frames"] == 2.5 * 48000 and hum["noise_type"] == "stationary"
    room = next(e for e in ctx["rir"] if e["id"] == "room_a")
    assert room["rt60"] == 0.4 and room["drr"] == 3.0
    assert "path" not in room


def test_audio_is_resampled_and_cached_once(bank_files):
    audio_cache().clear()
    banks = Banks.from_manifests(bank_files["noise"], bank_files["rir"], sr=48000)
    misses = audio_cache().misses
    hum = banks.noise("hum")
    assert hum.dtype == np.float32 and len(hum) == 2.5 * 48000
    assert banks.noise("hum") is hum
    clone = pickle.loads(pickle.dumps(banks))  # what a Ray task receives
    assert clone.noise("hum") is hum  # same process: served from the shared cache
    assert audio_cache().misses == misses + 1
    with pytest.raises(ValueError, match="read-only"):
        hum[0] = 1.0


def test_cache_is_bounded_in_bytes(bank_files):
    cache = audio_cache()
    old = cache.max_bytes
    try:
        cache.clear()
        cache.max_bytes = 600_000  # room for one decoded noise file (~480-576 kB), not two
        banks = Banks.from_manifests(bank_files["noise"], None, sr=48000)
        banks.noise("fan")
        banks.noise("hum")
        assert cache.nbytes <= cache.max_bytes and len(cache.items) == 1
    finally:
        cache.max_bytes = old
        cache.clear()


def test_split_filter_and_missing_banks(bank_files):
    banks = Banks.from_manifests(bank_files["noise"], None, sr=48000, split="train")
    ctx = banks.catalog()
    assert [e["id"] for e in ctx["noise"]] == ["fan", "hum"] and ctx["rir"] == []
    with pytest.raises(KeyError, match="noise bank has no id 'babble'"):
        banks.noise("babble")


def test_manifest_errors_name_the_file(tmp_path, bank_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["/x.flac"]}), bad)
    with pytest.raises(ValueError, match="bad.parquet"):
        Banks.from_manifests(bad, None)


def test_memory_banks_pickle_with_their_audio(memory_banks):
    clone = pickle.loads(pickle.dumps(memory_banks))
    np.testing.assert_array_equal(clone.noise("white"), memory_banks.noise("white"))
    assert clone.catalog() == memory_banks.catalog()
