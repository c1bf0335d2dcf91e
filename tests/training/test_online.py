"""Online mode: epoch 0 reproduces the shard run of the same seed, later epochs draw fresh degradations, and the
worker side yields equal batch counts from a streaming split."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from data_fixtures import synth_shard_set, tiny_synth_inputs

from datasets import shards
from datasets.errors import DataError, IncompatibleError
from training import data, online
from training.data import DataSpec

__all__ = ["tiny_synth_inputs"]  # fixture used by name below

SYNTH_SEED = 7
PCM_24_STEP = 2.0**-23


@pytest.fixture(scope="module")
def ray_local():
    """A local 2-CPU Ray for this module (an already running one is reused and left running)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    from training.online import close_streams

    close_streams()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory, tiny_synth_inputs):
    return synth_shard_set(tmp_path_factory.mktemp("online_ref") / "run", tiny_synth_inputs, seed=SYNTH_SEED)


def online_spec(inputs: dict, **kw) -> DataSpec:
    defaults = {
        "online": {**inputs, "synth_config": None, "seed": SYNTH_SEED},
        "batch_size": 2,
        "crop_samples": 48000,
        "streams": ("clean_48k", "degraded_48k", "degraded_16k"),
    }
    return DataSpec(**{**defaults, **kw})


def decoded(run) -> dict[str, shards.ShardSample]:
    out = {}
    for entry in shards.read_index(str(run))["shards"]:
        for sample in shards.iter_samples(shards.shard_path(str(run), entry["name"])):
            out[sample.key] = sample
    return out


def test_epoch_0_equals_the_shard_run_and_epoch_1_differs(ray_local, tiny_synth_inputs, shard_run):
    spec = online_spec(tiny_synth_inputs)
    reference = decoded(shard_run)
    rows = online.rendered_dataset(spec, epochs=2, prepare=False).take_all()
    by_epoch: dict[int, dict] = {0: {}, 1: {}}
    for row in rows:
        by_epoch[int(row["epoch"])][str(row["key"])] = row
    assert set(by_epoch[0]) == set(reference) == set(by_epoch[1])
    for key, ref in reference.items():
        row = by_epoch[0][key]
        assert np.abs(row["degraded"] - ref.degraded).max() <= PCM_24_STEP + 1e-9, key
        assert np.abs(row["clean"] - ref.clean).max() <= PCM_24_STEP + 1e-9, key
        assert int(row["valid"]) == ref.meta["valid"]
    differing = [
        k for k in reference if np.abs(by_epoch[1][k]["degraded"] - reference[k].degraded).max() > 1e-3
    ]
    assert len(differing) == len(reference)


def test_prepared_rows_match_the_shard_loader(ray_local, tiny_synth_inputs, shard_run):
    spec = online_spec(tiny_synth_inputs)
    reference = decoded(shard_run)
    rows = online.trainer_datasets(spec, epochs=1)["train"].take_all()
    assert len(rows) == len(reference)
    for row in rows:
        key = str(row["key"])
        ref = reference[key]
        expected = data.prepare_pair(
            ref.clean, ref.degraded, ref.meta["valid"], spec, data.crop_rng(spec, 0, key)
        )
        for stream in spec.streams:
            np.testing.assert_allclose(row[stream], expected[stream], atol=1e-5, err_msg=f"{key} {stream}")


def test_streaming_split_gives_every_rank_the_same_batch_count(ray_local, tiny_synth_inputs):
    spec = online_spec(tiny_synth_inputs, streams=("clean_16k", "degraded_16k"))
    world, epochs = 2, 2
    per_epoch = data.batches_per_epoch(spec, world)
    assert per_epoch == online.train_samples(spec) // (world * spec.batch_size)
    splits = online.trainer_datasets(spec, epochs)["train"].streaming_split(world, equal=True)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def consume(rank: int) -> None:
        try:
            stats: dict = {}
            counts = []
            for epoch in range(epochs):
                batches = list(
                    data.train_batches(spec, rank, world, epoch, stats=stats, dataset_shard=splits[rank])
                )
                counts.append(len(batches))
                for b in batches:
                    assert b["degraded_16k"].shape == (spec.batch_size, spec.crop_samples // 3)
            results[rank] = counts
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == {r: [per_epoch] * epochs for r in range(world)}


def test_epoch_seed_is_the_synthesis_seed_at_epoch_0():
    assert online.epoch_seed(SYNTH_SEED, 0) == SYNTH_SEED
    seeds = {online.epoch_seed(SYNTH_SEED, e) for e in range(1, 50)}
    assert len(seeds) == 49 and SYNTH_SEED not in seeds and min(seeds) >= 0


def test_online_eval_is_fixed(tiny_synth_inputs):
    spec = online_spec(tiny_synth_inputs)
    first = [list(data.eval_batches(spec, r, 2, max_samples=4)) for r in range(2)]
    again = [list(data.eval_batches(spec, r, 2, max_samples=4)) for r in range(2)]
    assert [sum(len(b["keys"]) for b in rank) for rank in first] == [2, 2]
    for a, b in zip(first, again, strict=True):
        assert [x["keys"] for x in a] == [y["keys"] for y in b]
        assert np.array_equal(a[0]["degraded_48k"].numpy(), b[0]["degraded_48k"].numpy())


def test_check_online(tiny_synth_inputs):
    facts = data.check_shards(online_spec(tiny_synth_inputs))
    assert facts["train_samples"] == online.train_samples(online_spec(tiny_synth_inputs)) > 0
    assert facts["index_sha256"] is None
    with pytest.raises(DataError, match="lacks rir"):
        data.check_shards(DataSpec(online={"clean": tiny_synth_inputs["clean"], "noise": "n"}))
    with pytest.raises(IncompatibleError, match="crop_samples"):
        data.check_shards(online_spec(tiny_synth_inputs, crop_samples=245760 + 480))


def test_one_utterance_plan_equals_the_whole_epoch_plan(tiny_synth_inputs):
    spec = online_spec(tiny_synth_inputs)
    base = online.epoch_rows(spec, 0)
    for epoch in (1, 2):
        whole = {r["key"]: r for r in online.epoch_rows(spec, epoch)}
        assert [online.plan_row(spec, r, epoch) for r in base] == [whole[r["key"]] for r in base]
        assert any(whole[r["key"]]["steps"] != r["steps"] for r in base)


class FakeShard:
    """A stand-in for a Ray Data shard: ``iter_batches`` over prepared rows, once."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.calls = rows, 0

    def iter_batches(self, batch_size: int, **_):
        self.calls += 1
        for i in range(0, len(self.rows), batch_size):
            part = self.rows[i : i + batch_size]
            yield {k: np.stack([r[k] for r in part]) for k in part[0]}


def fake_rows(spec: DataSpec, count: int) -> list[dict]:
    return [
        {
            "key": np.array(f"k{i}"),
            "epoch": np.array(0),
            **{
                s: np.full(spec.crop_samples // (3 if s.endswith("_16k") else 1), i, np.float32)
                for s in spec.streams
            },
        }
        for i in range(count)
    ]


def test_worker_stream_continues_across_epochs_and_fills_a_short_end(tiny_synth_inputs):
    spec = online_spec(tiny_synth_inputs, streams=("degraded_16k",))
    per_epoch = data.batches_per_epoch(spec, 1)
    shard = FakeShard(fake_rows(spec, per_epoch * spec.batch_size + 1))  # one epoch and one row
    stats: dict = {}
    first = list(data.train_batches(spec, 0, 1, 0, stats=stats, dataset_shard=shard))
    second = list(data.train_batches(spec, 0, 1, 1, stats=stats, dataset_shard=shard))
    assert shard.calls == 1 and len(first) == len(second) == per_epoch
    assert [b["keys"] for b in first][0] == ["k0", "k1"]
    last = f"k{per_epoch * spec.batch_size}"
    assert second[0]["keys"] == [last, last]  # the short final batch is topped up with its own rows
    assert all(b["keys"] == [last, last] for b in second[1:]) and stats["repeated"] == per_epoch - 1


def test_worker_refuses_a_dataset_prepared_for_other_streams(tiny_synth_inputs):
    spec = online_spec(tiny_synth_inputs, streams=("degraded_16k",))
    shard = FakeShard(fake_rows(online_spec(tiny_synth_inputs, streams=("degraded_48k",)), 4))
    with pytest.raises(IncompatibleError, match="degraded_16k"):
        next(data.train_batches(spec, 0, 1, 0, dataset_shard=shard))
