"""Shard loader: equal shares, shuffling, resume, corrupt samples, checks, eval fallback, loudness."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import SEGMENT, copy_shard_set, shard_set, train_only_shard_set, write_shard_set

from datasets import shards
from datasets.config import ConfigError
from datasets.errors import DataError, IncompatibleError
from degradations.input_loudness import normalize_input
from degradations.levels import integrated_loudness
from training import data
from training.data import DataSpec

__all__ = ["shard_set", "train_only_shard_set"]  # fixtures used by name below

CROP = 4800


def spec_for(run: Path, **kw) -> DataSpec:
    defaults = {
        "shards": str(run),
        "batch_size": 1,
        "crop_samples": CROP,
        "num_threads": 2,
        "shuffle_buffer": 4,
    }
    return DataSpec(**{**defaults, **kw})


def epoch_keys(spec: DataSpec, world: int, epoch: int, **kw) -> list[list[str]]:
    return [
        [k for b in data.train_batches(spec, r, world, epoch, **kw) for k in b["keys"]] for r in range(world)
    ]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_equal_batch_counts_and_disjoint_shares(train_only_shard_set, world, batch_size):
    spec = spec_for(train_only_shard_set, batch_size=batch_size)
    expected = max(1, 6 // (world * batch_size))
    assert data.batches_per_epoch(spec, world) == expected
    for epoch in (0, 1):
        per_rank = [list(data.train_batches(spec, r, world, epoch)) for r in range(world)]
        assert [len(b) for b in per_rank] == [expected] * world
        for batches in per_rank:
            for b in batches:
                assert (
                    b["degraded_48k"].shape == (batch_size, CROP) and b["degraded_48k"].dtype == torch.float32
                )
                assert b["clean_48k"].shape == (batch_size, CROP)
        keys = [{k for b in batches for k in b["keys"]} for batches in per_rank]
        for i in range(world):
            for j in range(i + 1, world):
                assert not keys[i] & keys[j], f"ranks {i} and {j} share samples in epoch {epoch}"


def test_uneven_shards_give_even_disjoint_shares(shard_set):
    # 8 train samples in shards of 3, 3, 2; world 3 with batch 2: 1 batch each; world 2 with batch 3: 1 batch
    for world, batch in ((3, 2), (2, 3), (4, 1)):
        spec = spec_for(shard_set, batch_size=batch)
        shares = data.epoch_shares(spec, world, 0)
        own = [{(p.shard, pos) for p in share for pos in p.positions} for share in shares]
        assert sum(len(o) for o in own) == 8 and len(set().union(*own)) == 8
        assert max(map(len, own)) - min(map(len, own)) <= 1
        for rank in range(world):
            slots, _ = data.epoch_slots(spec, rank, world, 0)
            assert len(slots) == data.batches_per_epoch(spec, world) * batch
            assert {(s, pos) for _, s, pos in slots} <= own[rank]


def test_a_big_shard_is_cut_between_ranks(tmp_path):
    # shards of 5 and 1 at world 2: 3 samples each, disjoint, whichever order the epoch draws
    run = write_shard_set(tmp_path / "run", [("train", 5), ("train", 1)])
    spec = spec_for(run, batch_size=1)
    for epoch in range(4):
        per_rank = epoch_keys(spec, 2, epoch)
        assert [len(set(k)) for k in per_rank] == [3, 3]
        assert not set(per_rank[0]) & set(per_rank[1])


def test_short_share_wraps_within_itself(tmp_path):
    # 3 samples, world 2, batch 2: one batch each; the rank with one sample repeats it
    run = write_shard_set(tmp_path / "run", [("train", 2), ("train", 1)])
    spec = spec_for(run, batch_size=2)
    per_rank = epoch_keys(spec, 2, 0)
    assert [len(k) for k in per_rank] == [2, 2]
    assert sorted(len(set(k)) for k in per_rank) == [1, 2]
    assert not set(per_rank[0]) & set(per_rank[1])


def test_reshuffle_per_epoch_and_reproducible(shard_set):
    spec = spec_for(shard_set, shuffle_buffer=8)
    a0, b0, a1 = epoch_keys(spec, 2, 0), epoch_keys(spec, 2, 0), epoch_keys(spec, 2, 1)
    assert a0 == b0
    assert a0 != a1
    first = next(data.train_batches(spec, 0, 2, 0))
    again = next(data.train_batches(spec, 0, 2, 0))
    assert torch.equal(first["clean_48k"], again["clean_48k"])  # crops are seeded too
    other_seed = epoch_keys(spec_for(shard_set, shuffle_buffer=8, seed=5), 2, 0)
    assert other_seed != a0


def test_crops_differ_between_epochs_and_stay_on_the_grid(train_only_shard_set):
    spec = spec_for(train_only_shard_set, batch_size=2, streams=("clean_48k",), input_loudness_lufs=None)
    key_to_clean = {}
    for raw in shards.iter_raw_samples(shards.shard_path(str(train_only_shard_set), "shard-000000.tar")):
        key_to_clean[raw.key] = shards.decode_sample(raw).clean
    offsets = {}
    for epoch in range(4):
        for batch in data.train_batches(spec, 0, 1, epoch):
            for key, crop in zip(batch["keys"], batch["clean_48k"].numpy(), strict=True):
                if key in key_to_clean:
                    x = key_to_clean[key]
                    hits = [o for o in range(0, SEGMENT - CROP + 1) if np.array_equal(x[o : o + CROP], crop)]
                    assert hits and hits[0] % 480 == 0
                    offsets.setdefault(key, set()).add(hits[0])
    assert any(len(v) > 1 for v in offsets.values())


def test_resume_mid_epoch_gives_the_remaining_batches(shard_set):
    spec = spec_for(shard_set, batch_size=2, streams=("clean_48k", "degraded_16k"))
    full = list(data.train_batches(spec, 0, 1, 3))
    assert len(full) == 4
    for start in (1, 3, 4):
        resumed = list(data.train_batches(spec, 0, 1, 3, start_batch=start))
        assert len(resumed) == len(full) - start
        for a, b in zip(full[start:], resumed, strict=True):
            assert a["keys"] == b["keys"]
            assert torch.equal(a["clean_48k"], b["clean_48k"])
            assert torch.equal(a["degraded_16k"], b["degraded_16k"])
    with pytest.raises(ValueError, match="start_batch"):
        next(data.train_batches(spec, 0, 1, 3, start_batch=5))


def _rewrite_shard(path: Path, damage) -> None:
    """Rewrite a shard with the writer, passing each raw sample through ``damage`` (index sha256 left stale: the
    loader does not check it)."""
    raws = list(shards.iter_raw_samples(str(path)))
    with open(path, "wb") as f, shards.ShardWriter(f) as writer:
        for i, raw in enumerate(raws):
            raw = damage(i, raw)
            writer.add(raw.key, raw.clean, raw.degraded, json.loads(raw.meta))


def test_corrupt_flac_is_skipped_and_counted(shard_set, tmp_path):
    run = copy_shard_set(shard_set, tmp_path / "run")

    def damage(i, raw):
        if i == 1:
            raw.degraded = raw.degraded[:40] + b"\x00" * 64  # a FLAC header with garbage after it
        return raw

    _rewrite_shard(run / "shards" / "shard-000000.tar", damage)
    spec = spec_for(run, batch_size=2)
    stats: dict = {}
    batches = [b for r in range(2) for b in data.train_batches(spec, r, 2, 0, stats=stats)]
    assert len(batches) == 2 * data.batches_per_epoch(spec, 2)
    assert stats["skipped"] == 1
    assert "utt001_0000" not in {k for b in batches for k in b["keys"]}
    assert all(b["clean_48k"].shape == (2, CROP) for b in batches)


def test_truncated_tar_is_skipped_and_counted(shard_set, tmp_path):
    run = copy_shard_set(shard_set, tmp_path / "run")
    tar = run / "shards" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    spec = spec_for(run, batch_size=1)
    stats: dict = {}
    counts = [len(list(data.train_batches(spec, r, 2, 0, stats=stats))) for r in range(2)]
    assert counts == [4, 4]
    assert 1 <= stats["skipped"] <= 3
    assert stats["samples"] == 8 - stats["skipped"]


def test_batch_without_any_good_sample_takes_the_first_good_one(tmp_path):
    run = write_shard_set(tmp_path / "run", [("train", 2), ("train", 2)])

    def damage(i, raw):
        raw.clean = b"not flac"
        return raw

    _rewrite_shard(run / "shards" / "shard-000001.tar", damage)
    spec = spec_for(run, batch_size=2)
    stats: dict = {}
    batches = list(data.train_batches(spec, 0, 1, 0, stats=stats))
    assert len(batches) == 2 and stats["skipped"] == 2
    assert {k for b in batches for k in b["keys"]} <= {"utt000_0000", "utt001_0000"}


def test_check_shards_accepts_a_good_set(shard_set):
    facts = data.check_shards(spec_for(shard_set))
    assert facts["has_valid"] and facts["eval_split"] == "valid"
    assert facts["train_samples"] == 8 and facts["train_shards"] == 3 and facts["valid_samples"] == 2
    assert facts["index_sha256"] == shards.index_sha256(str(shard_set))


def test_check_shards_rejects_bad_sets(shard_set, tmp_path):
    with pytest.raises(DataError, match=r"index\.json"):
        data.check_shards(spec_for(tmp_path / "nothing"))
    other_rate = write_shard_set(tmp_path / "rate", [("train", 1)], sample_rate=44100)
    with pytest.raises(DataError, match="sample_rate 44100") as e:
        data.check_shards(spec_for(other_rate))
    assert str(other_rate) in str(e.value) and "\n" not in str(e.value)
    no_train = write_shard_set(tmp_path / "valid_only", [("valid", 2)])
    with pytest.raises(DataError, match="no shard of split 'train'"):
        data.check_shards(spec_for(no_train))
    with pytest.raises(IncompatibleError, match="crop_samples"):
        data.check_shards(spec_for(shard_set, crop_samples=SEGMENT + 480))


def test_no_valid_split_warns_and_evaluates_on_fixed_train_samples(train_only_shard_set, caplog):
    spec = spec_for(train_only_shard_set, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        facts = data.check_shards(spec)
    assert not facts["has_valid"] and facts["eval_split"] == "train"
    assert "no valid split" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.data"):
        runs = [[list(data.eval_batches(spec, r, 2, max_samples=5)) for r in range(2)] for _ in range(2)]
    assert "shard-000000.tar#0" in caplog.text
    first, second = runs
    assert [len(b) for b in first] == [1, 1]  # 5 samples trimmed to 4, 2 per rank
    keys = [[k for b in rank for k in b["keys"]] for rank in first]
    assert keys == [["utt000_0000", "utt002_0000"], ["utt001_0000", "utt003_0000"]]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a[0]["clean_48k"], b[0]["clean_48k"])


def test_eval_reads_the_valid_split_without_random_crop(shard_set):
    spec = spec_for(shard_set, batch_size=4, input_loudness_lufs=None, streams=("clean_48k",))
    (batch,) = list(data.eval_batches(spec, 0, 1, max_samples=10))
    assert batch["keys"] == ["utt008_0000", "utt009_0000"]
    raw = next(shards.iter_raw_samples(shards.shard_path(str(shard_set), "shard-000003.tar")))
    assert np.array_equal(batch["clean_48k"][0].numpy(), shards.decode_sample(raw).clean[:CROP])
    # more ranks than samples: every rank still gets one batch
    assert [len(list(data.eval_batches(spec, r, 3, max_samples=10))) for r in range(3)] == [1, 1, 1]


def test_loudness_gain_is_applied_to_both_streams(shard_set):
    spec = spec_for(shard_set, crop_samples=SEGMENT, streams=("clean_48k", "degraded_48k"))
    batch = next(data.eval_batches(spec, 0, 1, max_samples=1))
    raw = next(shards.iter_raw_samples(shards.shard_path(str(shard_set), "shard-000003.tar")))
    sample = shards.decode_sample(raw)
    expected, gain = normalize_input(sample.degraded, 48000, -20.0)
    assert gain != pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(batch["degraded_48k"][0].numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        batch["clean_48k"][0].numpy(), sample.clean * np.float32(gain), rtol=1e-6, atol=1e-7
    )
    assert integrated_loudness(batch["degraded_48k"][0].numpy(), 48000) == pytest.approx(-20.0, abs=0.01)


def test_16k_streams_are_exact_thirds_of_the_whole_segment(shard_set):
    from datasets.audio import resample

    spec = spec_for(shard_set, input_loudness_lufs=None, streams=("clean_16k", "degraded_16k", "clean_48k"))
    batch = next(data.train_batches(spec, 0, 1, 0))
    assert batch["clean_16k"].shape == (1, CROP // 3) and batch["degraded_16k"].shape == (1, CROP // 3)
    key = batch["keys"][0]
    for entry in shards.read_index(str(shard_set))["shards"]:
        for raw in shards.iter_raw_samples(shards.shard_path(str(shard_set), entry["name"])):
            if raw.key == key:
                sample = shards.decode_sample(raw)
    crop = batch["clean_48k"][0].numpy()
    offset = next(o for o in range(0, SEGMENT, 480) if np.array_equal(sample.clean[o : o + CROP], crop))
    whole = resample(sample.clean, 48000, 16000)
    np.testing.assert_allclose(
        batch["clean_16k"][0].numpy(), whole[offset // 3 : (offset + CROP) // 3], atol=1e-6
    )


def test_normalize_input_bounds_the_gain():
    rng = np.random.default_rng(0)
    silence = np.zeros(48000, np.float32)
    y, gain = normalize_input(silence, 48000, -20.0)
    assert gain == 1.0 and not y.any()
    whisper = (rng.standard_normal(48000) * 1e-4).astype(np.float32)  # about -80 LUFS: under the gate
    assert normalize_input(whisper, 48000, -20.0)[1] == 1.0
    quiet = (rng.standard_normal(48000) * 3e-3).astype(np.float32)  # about -50 LUFS
    _, gain = normalize_input(quiet, 48000, -10.0)
    assert gain == pytest.approx(10 ** (30 / 20))  # capped at +30 dB
    loud = (rng.standard_normal(48000) * 0.3).astype(np.float32)
    y, gain = normalize_input(loud, 48000, -20.0, max_peak=0.5)
    assert np.abs(y).max() <= 0.5 + 1e-6
    y, gain = normalize_input(loud, 48000, -20.0)
    assert integrated_loudness(y, 48000) == pytest.approx(-20.0, abs=0.01)


def test_spec_round_trip_and_validation(shard_set):
    spec = spec_for(shard_set, streams=["clean_16k", "degraded_16k"])
    assert spec.streams == ("clean_16k", "degraded_16k")
    again = DataSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    with pytest.raises(ConfigError, match="streams"):
        spec_for(shard_set, streams=("clean_8k",))
    with pytest.raises(ConfigError, match="crop_samples"):
        spec_for(shard_set, crop_samples=1000)
    with pytest.raises(ConfigError, match="exactly one"):
        DataSpec()
    with pytest.raises(ConfigError, match="unknown"):
        DataSpec.from_dict({"shards": "x", "bogus": 1})


def test_reads_shards_behind_a_uri(shard_set):
    import fsspec

    fs = fsspec.filesystem("memory")
    uri = "memory://hires-loader-test/run"
    for path in sorted(Path(shard_set).rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{uri}/{path.relative_to(shard_set).as_posix()}", path.read_bytes())
    try:
        local, remote = spec_for(shard_set, batch_size=2), spec_for(uri, batch_size=2)
        assert data.check_shards(remote)["index_sha256"] == data.check_shards(local)["index_sha256"]
        for a, b in zip(data.train_batches(local, 1, 2, 0), data.train_batches(remote, 1, 2, 0), strict=True):
            assert a["keys"] == b["keys"] and torch.equal(a["degraded_48k"], b["degraded_48k"])
        stats: dict = {}
        fs.rm(f"{uri}/shards/shard-000002.tar")
        counts = [len(list(data.train_batches(remote, r, 2, 0, stats=stats))) for r in range(2)]
        assert counts == [2, 2] and 1 <= stats["skipped"] <= 2  # a missing shard: its planned samples skipped
    finally:
        fs.rm(uri, recursive=True)


@pytest.mark.parametrize(
    "streams", [("clean_48k", "degraded_48k"), ("clean_16k", "degraded_16k", "degraded_48k")]
)
def test_window_decoding_equals_cropping_the_whole_sample(shard_set, streams):
    spec = spec_for(shard_set, streams=streams)
    for entry in shards.read_index(str(shard_set))["shards"]:
        for raw in shards.iter_raw_samples(shards.shard_path(str(shard_set), entry["name"])):
            sample = shards.decode_sample(raw)
            for epoch in range(3):
                item = data._Item((0, entry["name"], 0), raw, None)
                key, got = data._prepare_item(item, spec, epoch)
                rng = data.crop_rng(spec, epoch, raw.key)
                want = data.prepare_pair(sample.clean, sample.degraded, sample.meta["valid"], spec, rng)
                assert key == raw.key
                for s in streams:
                    np.testing.assert_array_equal(got[s], want[s], err_msg=f"{raw.key} {s}")


def test_corruption_inside_a_flac_is_skipped(shard_set, tmp_path):
    run = copy_shard_set(shard_set, tmp_path / "run")

    def damage(i, raw):
        if i == 0:
            middle = len(raw.clean) // 2
            raw.clean = raw.clean[:middle] + b"\x55" * 2000 + raw.clean[middle + 2000 :]
        return raw

    _rewrite_shard(run / "shards" / "shard-000002.tar", damage)
    spec = spec_for(run, batch_size=1, crop_samples=SEGMENT)  # the crop covers the damage
    stats: dict = {}
    keys = [k for b in data.train_batches(spec, 0, 1, 0, stats=stats) for k in b["keys"]]
    assert stats["skipped"] == 1 and "utt006_0000" not in keys and len(keys) == 8


def test_a_dropped_connection_reads_the_shard_again(shard_set, monkeypatch):
    import fsspec

    fs = fsspec.filesystem("memory")
    uri = "memory://hires-loader-retry/run"
    for path in sorted(Path(shard_set).rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{uri}/{path.relative_to(shard_set).as_posix()}", path.read_bytes())
    try:
        spec = spec_for(uri, batch_size=2)
        expected = [b["keys"] for b in data.train_batches(spec, 0, 1, 0)]
        real = shards.iter_raw_samples
        failed: set[str] = set()

        def flaky(path, digest=None):
            for i, raw in enumerate(real(path, digest)):
                if i == 1 and path not in failed:
                    failed.add(path)
                    raise ConnectionResetError("connection reset by peer")
                yield raw

        monkeypatch.setattr(shards, "iter_raw_samples", flaky)
        monkeypatch.setattr(data.time, "sleep", lambda s: None)
        stats: dict = {}
        assert [b["keys"] for b in data.train_batches(spec, 0, 1, 0, stats=stats)] == expected
        assert stats["skipped"] == 0 and len(failed) == 3
    finally:
        fs.rm(uri, recursive=True)


def test_closing_mid_epoch_stops_the_loader_threads(shard_set):
    import threading
    import time

    spec = spec_for(shard_set, batch_size=1, prefetch_batches=1)
    before = {t.name for t in threading.enumerate()}
    batches = data.train_batches(spec, 0, 1, 0)
    next(batches)
    time.sleep(0.2)  # the reader and the pool run ahead of the consumer
    assert any(t.name.startswith("hires-data") for t in threading.enumerate())
    batches.close()
    deadline = time.monotonic() + 10
    while any(t.name.startswith("hires-data") and t.name not in before for t in threading.enumerate()):
        assert time.monotonic() < deadline, "loader threads still running after close"
        time.sleep(0.05)


def test_shards_are_read_side_by_side(shard_set):
    shard_of = {f"utt{n:03d}_0000": n // 3 for n in range(8)}  # the fixture's 3, 3, 2 train samples
    spec = spec_for(shard_set, shuffle_buffer=1, interleave=3)
    keys = epoch_keys(spec, 1, 0)[0]
    assert sorted(keys) == sorted(shard_of)
    assert len({shard_of[k] for k in keys[:3]}) == 3 and len({shard_of[k] for k in keys[3:6]}) == 3
    sequential = epoch_keys(spec_for(shard_set, shuffle_buffer=1, interleave=1), 1, 0)[0]
    assert len({shard_of[k] for k in sequential[:3]}) == 1
