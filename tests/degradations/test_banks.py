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


# ------------------------------------------------------------------------------ native rates of bank files


def test_catalog_records_each_files_native_rate(file_banks):
    ctx = file_banks.catalog()
    rates = {e["id"]: e["sample_rate"] for kind in ("noise", "rir") for e in ctx[kind]}
    assert rates == {
        "babble": 48000,
        "fan": 48000,
        "hum": 16000,
        "room_a": 48000,
        "room_b": 48000,
        "shoebox": 16000,
    }


def test_only_files_at_or_above_the_output_rate_are_drawable_by_default(file_banks):
    from degradations.banks import rate_filtered_catalog

    ctx, dropped = rate_filtered_catalog(file_banks.catalog())
    assert [e["id"] for e in ctx["rir"]] == ["room_a", "room_b"] and dropped == 2
    assert [e["id"] for e in ctx["noise"]] == ["babble", "fan"]
    everything, none_dropped = rate_filtered_catalog(file_banks.catalog(), 16000)
    assert everything == file_banks.catalog() and none_dropped == 0


def test_a_bank_entirely_below_the_rate_is_an_error_naming_the_rates(file_banks):
    from datasets.errors import DataError
    from degradations.banks import rate_filtered_catalog

    ctx = file_banks.catalog()
    ctx["rir"] = [e for e in ctx["rir"] if e["id"] == "shoebox"]
    with pytest.raises(
        DataError, match=r"rir bank: all 1 files are below 48000 Hz \(native rates 16000 Hz\)"
    ):
        rate_filtered_catalog(ctx)


def _plan_rows(banks, n: int, min_sample_rate: int | None):
    import pandas as pd

    from datasets.synth_config import load_synth_config
    from datasets.synth_plan import plan_rows

    cfg = load_synth_config(
        overrides={
            "segment.seconds": 0.5,
            "segment.min_tail_seconds": 0.5,
            "banks.min_sample_rate": min_sample_rate,
            "chain.reverb.probability": 1.0,
            "chain.noise.probability": 1.0,
            "chain.extras.count_probabilities": [1.0],
        }
    )
    clean = pd.DataFrame(
        {
            "id": [f"utt{i:03d}" for i in range(n)],
            "path": [f"/nowhere/utt{i:03d}.flac" for i in range(n)],
            "sample_rate": 48000,
            "frames": 24000,
            "speaker": "spk",
            "corpus": "test",
            "split": "train",
        }
    )
    return cfg, plan_rows(clean, cfg, 0, banks.catalog())


def _drawn(rows, op: str, key: str) -> set[str]:
    import json

    return {s["params"][key] for r in rows for s in json.loads(r["steps"]) if s["op"] == op}


def test_a_16k_rir_is_not_drawn_by_default_and_is_recorded_when_allowed(file_banks):
    from datasets.synth_render import render_sample

    _, rows = _plan_rows(file_banks, 60, None)
    assert _drawn(rows, "reverb", "rir_id") == {"room_a", "room_b"}
    assert _drawn(rows, "noise", "noise_id") == {"babble", "fan"}

    cfg, rows = _plan_rows(file_banks, 60, 16000)
    assert "shoebox" in _drawn(rows, "reverb", "rir_id") and "hum" in _drawn(rows, "noise", "noise_id")
    row = next(r for r in rows if '"rir_id":"shoebox"' in r["steps"])
    x = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    meta = render_sample(row, x, 48000, cfg, 0, file_banks, "test").meta
    noise_id = next(s["params"]["noise_id"] for s in meta["ops"] if s["op"] == "noise")
    assert meta["rir_sample_rate"] == 16000
    assert meta["noise_sample_rate"] == {"hum": 16000}.get(noise_id, 48000)
