"""Online mode: training pairs rendered on Ray Data while the model trains, no shards on disk.

The driver builds one dataset for the whole run (:func:`trainer_datasets`) and hands it to
``TorchTrainer(datasets={"train": ds})``; Ray Train splits it with ``streaming_split(world, equal=True)``, so every
worker receives the same number of rows, and each worker reads its part with
``ray.train.get_dataset_shard("train")``, which :func:`training.data.train_batches` accepts as ``dataset_shard``.

**Same samples as synthesis.** The clean manifest is segmented and planned by the synthesis code itself
(:func:`datasets.synth_plan.plan_rows`) and each sample rendered by :func:`datasets.synth_render.render_sample`:
the arrays synthesis FLAC-encodes. Training renders the train split; evaluation (:func:`online_eval_batches`) the
valid split, or fixed train samples without one. Epoch ``e`` plans with the seed
:func:`epoch_seed` ``(seed, e)``, which is the synthesis seed itself for ``e = 0``: epoch 0 reproduces a shard run
of that seed to within PCM_24 quantisation, and every later epoch draws fresh degradations. Each epoch visits the
samples in a permutation drawn from ``(DataSpec.seed, e)``.

**Rows.** ``ray.data.range`` numbers the rows of epochs ``start_epoch .. epochs-1`` back to back; a render task
maps row ``i`` to (epoch, sample), renders it, then crops, loudness-normalises and resamples it exactly like the
shard loader (:func:`training.data.prepare_pair`, crop drawn from ``(DataSpec.seed, epoch, key)``). Workers get
finished streams and only collate. Ray Data does not keep row order, so which worker sees which sample, and the
order within an epoch, are not reproducible (the samples and their crops are).

**Epochs on the worker.** ``train_batches(spec, rank, world, epoch, dataset_shard=shard)`` takes the next
``batches_per_epoch(spec, world)`` batches from one iterator kept per dataset shard across calls, so consecutive
epochs continue the same stream; rows of neighbouring epochs may mix at an epoch boundary. ``start_batch`` only
shortens the epoch: after a restart the dataset is executed anew, so the launcher should build it from the
checkpoint's epoch (``start_epoch``) to avoid rendering epochs again. If the stream ends early (sources that do
not decode are left out), the last batch repeats so every rank still yields the same count.

**CPU budget (launcher).** Ray Data runs the render tasks on the CPUs the training workers leave free (Ray Train
excludes the workers' resources from the data budget); with none left, ``iter_batches`` waits forever. Give the
workers fractional CPUs and the render tasks a small share: on a 2-core machine with 2 workers,
``ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5})`` leaves 1 CPU for data, and render tasks of
``cpus_per_task`` 0.5 (the default; ``DataSpec.online["cpus_per_task"]`` changes it) run two at a time. On a
cluster: workers at their real CPU count and ``cpus_per_task`` 1; keep at least one free CPU per worker for
rendering (one 5.12 s sample takes about 35 ms of CPU, a step of the paper's batch several times that).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from datasets.errors import DataError, IncompatibleError
from datasets.manifest import stable_hash
from training.data import TRAIN_SPLIT, VALID_SPLIT, DataSpec, as_spec, collate, crop_rng, prepare_pair

log = logging.getLogger(__name__)

ROWS_PER_BLOCK = 8  # rows per render task: ~0.3 s of work, small enough to spread over the free CPUs
MAX_BLOCKS = 10000  # long runs get bigger blocks rather than millions of read tasks planned up front
DEFAULT_CPUS_PER_TASK = 0.5


def epoch_seed(seed: int, epoch: int) -> int:
    """The planning seed of ``epoch``: ``seed`` itself for epoch 0 (= the shard run), a derived one after."""
    if epoch == 0:
        return int(seed)
    return stable_hash(f"hires-online-epoch:{int(seed)}:{int(epoch)}") >> 1  # non-negative 63-bit


def _online(spec: DataSpec) -> dict:
    online = dict(spec.online or {})
    missing = [k for k in ("clean", "noise", "rir") if not online.get(k)]
    if missing:
        raise DataError(
            f"data.online: lacks {', '.join(missing)} (manifests of clean speech, noise and rooms)"
        )
    online.setdefault("synth_config", None)
    online.setdefault("seed", 0)
    return online


@functools.lru_cache(maxsize=4)
def _synth(clean: str, noise: str, rir: str, synth_config: str | None):
    """(config, banks, clean manifest) once per process."""
    from datasets.manifest import read_manifest
    from datasets.synth_config import load_synth_config
    from datasets.synth_render import cached_banks

    cfg = load_synth_config(synth_config)
    banks = cached_banks(noise, rir, cfg.segment.sample_rate)
    return cfg, banks, read_manifest(clean, kind="speech")


def _synth_for(spec: DataSpec):
    o = _online(spec)
    return _synth(str(o["clean"]), str(o["noise"]), str(o["rir"]), o["synth_config"])


@functools.lru_cache(maxsize=4)
def _split_rows(
    clean: str, noise: str, rir: str, synth_config: str | None, seed: int, split: str
) -> list[dict]:
    from datasets.synth_plan import plan_rows

    cfg, banks, df = _synth(clean, noise, rir, synth_config)
    part = df[df["split"] == split].reset_index(drop=True)
    return plan_rows(part, cfg, seed, banks.catalog()) if len(part) else []


def split_rows(spec: DataSpec, split: str, epoch: int = 0) -> list[dict]:
    """The planned samples of ``split`` under ``epoch``'s seed (synthesis plan rows, in plan order)."""
    o = _online(spec)
    seed = epoch_seed(int(o["seed"]), epoch)
    return _split_rows(str(o["clean"]), str(o["noise"]), str(o["rir"]), o["synth_config"], seed, split)


def epoch_rows(spec: DataSpec, epoch: int) -> list[dict]:
    """All planned train samples of ``epoch`` (used for epoch 0, which fixes the sample list and its order)."""
    return split_rows(spec, TRAIN_SPLIT, epoch)


@functools.lru_cache(maxsize=4)
def _utterance_index(clean: str, noise: str, rir: str, synth_config: str | None) -> dict[str, int]:
    df = _synth(clean, noise, rir, synth_config)[2]
    return {str(u): i for i, u in enumerate(df["id"])}


def plan_row(spec: DataSpec, row: dict, epoch: int) -> dict:
    """Epoch ``epoch``'s plan of the sample that ``row`` (an epoch-0 plan row) describes: the synthesis plan of
    its one utterance under the epoch's seed (segmentation does not depend on the seed, so the sample is the
    same; its degradation steps are drawn anew). Planning one utterance keeps the cost per rendered sample."""
    if epoch == 0:
        return row
    from datasets.synth_plan import plan_rows

    o = _online(spec)
    cfg, banks, df = _synth_for(spec)
    i = _utterance_index(str(o["clean"]), str(o["noise"]), str(o["rir"]), o["synth_config"])[row["source_id"]]
    rows = plan_rows(df.iloc[[i]], cfg, epoch_seed(int(o["seed"]), epoch), banks.catalog())
    return next(r for r in rows if r["key"] == row["key"])


def train_samples(spec: DataSpec) -> int:
    """Samples per epoch: the segments of the train split (seed-independent, so planned once)."""
    return len(epoch_rows(spec, 0))


def online_batches_per_epoch(spec: DataSpec, world: int) -> int:
    return max(1, train_samples(spec) // (int(world) * spec.batch_size))


def check_online(spec: DataSpec) -> dict:
    """Driver-side check: the manifests read, the chain can be rendered here, and the train split has samples."""
    from degradations import check_backends

    o = _online(spec)
    cfg, _, _ = _synth_for(spec)
    check_backends(cfg.chain)
    n = train_samples(spec)
    if n == 0:
        raise DataError(
            f"{o['clean']}: no train utterance is long enough for one {cfg.segment.seconds} s sample"
        )
    if cfg.segment.sample_rate != 48000:
        raise DataError(
            f"synth config: segment.sample_rate {cfg.segment.sample_rate}, training reads 48000 Hz"
        )
    if spec.crop_samples > cfg.segment.samples:
        raise IncompatibleError(
            f"synth config: segments are {cfg.segment.samples} samples, shorter than crop_samples {spec.crop_samples}"
        )
    return {
        "index_path": None,
        "index_sha256": None,
        "has_valid": bool(split_rows(spec, VALID_SPLIT)),
        "eval_split": VALID_SPLIT if split_rows(spec, VALID_SPLIT) else TRAIN_SPLIT,
        "train_samples": n,
        "sample_rate": 48000,
        "segment_samples": cfg.segment.samples,
    }


@functools.lru_cache(maxsize=4)
def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, int(epoch), stable_hash("online-order")]).permutation(n)


def render_row(spec: DataSpec, row: dict, epoch: int) -> dict | None:
    """Render plan row ``row`` with ``epoch``'s seed: ``{key, epoch, valid, clean, degraded}`` (full 48 kHz
    segments, the arrays synthesis encodes) or ``None`` when its source does not decode."""
    from datasets.audio import AudioError
    from datasets.synth_render import read_source, render_sample, synth_code_version

    cfg, banks, _ = _synth_for(spec)
    seed = epoch_seed(int(_online(spec)["seed"]), epoch)
    try:
        x, sr = read_source(row, {})
        sample = render_sample(row, x, sr, cfg, seed, banks, synth_code_version())
    except AudioError as e:
        log.warning("online: %s left out: %s", row["key"], e)
        return None
    return {
        "key": sample.key,
        "epoch": int(epoch),
        "valid": int(row["valid"]),
        "clean": sample.clean,
        "degraded": sample.degraded,
    }


def _stream_lengths(spec: DataSpec) -> dict[str, int]:
    """Samples per prepared stream: the crop at 48 kHz, a third of it at 16 kHz."""
    return {s: spec.crop_samples // (3 if s.endswith("_16k") else 1) for s in spec.streams}


def _render_batch(batch: dict[str, np.ndarray], spec: DataSpec, start_epoch: int, prepare: bool) -> dict:
    n = train_samples(spec)
    out: dict[str, list] = {}
    for i in batch["id"]:
        epoch, index = start_epoch + int(i) // n, int(i) % n
        base = epoch_rows(spec, 0)[int(_cached_permutation(spec.seed, epoch, n)[index])]
        row = render_row(spec, plan_row(spec, base, epoch), epoch)
        if row is None:
            continue
        if prepare:
            streams = prepare_pair(
                row["clean"], row["degraded"], row["valid"], spec, crop_rng(spec, epoch, row["key"])
            )
            row = {"key": row["key"], "epoch": epoch, **streams}
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    if not out:  # every source of the block failed: no rows, but the columns of a full batch
        if prepare:
            cols = {s: np.zeros((0, t), np.float32) for s, t in _stream_lengths(spec).items()}
        else:
            samples = _synth_for(spec)[0].segment.samples
            cols = {
                "valid": np.zeros(0, np.int64),
                **{s: np.zeros((0, samples), np.float32) for s in ("clean", "degraded")},
            }
        return {"key": np.array([], dtype=str), "epoch": np.zeros(0, np.int64), **cols}
    return {k: np.stack(v) if isinstance(v[0], np.ndarray) else np.array(v) for k, v in out.items()}


def rendered_dataset(spec: DataSpec | dict, epochs: int, start_epoch: int = 0, prepare: bool = True):
    """The Ray dataset of epochs ``start_epoch .. epochs-1``: prepared streams (``prepare``) or, for checks,
    the full rendered segments."""
    import ray

    spec = as_spec(spec)
    n = train_samples(spec)
    total = max(0, int(epochs) - int(start_epoch)) * n
    if total == 0:
        raise DataError(f"online: nothing to render for epochs {start_epoch}..{epochs - 1}")
    cpus = float(_online(spec).get("cpus_per_task", DEFAULT_CPUS_PER_TASK))
    ds = ray.data.range(total, override_num_blocks=min(MAX_BLOCKS, max(1, -(-total // ROWS_PER_BLOCK))))
    return ds.map_batches(
        _render_batch,
        fn_kwargs={"spec": spec, "start_epoch": int(start_epoch), "prepare": prepare},
        batch_size=ROWS_PER_BLOCK,
        num_cpus=cpus,
    )


def trainer_datasets(spec: DataSpec | dict, epochs: int, start_epoch: int = 0) -> dict[str, Any]:
    """``{"train": dataset}`` for ``TorchTrainer(datasets=...)``: epochs ``start_epoch .. epochs-1`` rendered and
    prepared (see the module docstring for the CPU budget the trainer must leave to it)."""
    return {"train": rendered_dataset(spec, epochs, start_epoch, prepare=True)}


class _ShardStream:
    """Rows of one dataset shard, consumed across epochs (one ``iter_batches`` for the whole run)."""

    def __init__(self, shard: Any, spec: DataSpec) -> None:
        self.batches = iter(
            shard.iter_batches(
                batch_size=spec.batch_size,
                batch_format="numpy",
                prefetch_batches=max(1, spec.prefetch_batches),
            )
        )
        self.last: dict | None = None
        self.lock = threading.Lock()

    def next_batch(self, spec: DataSpec, stats: dict) -> dict:
        with self.lock:
            try:
                batch = next(self.batches)
            except StopIteration:
                batch = None
            if batch is not None and len(batch["key"]) < spec.batch_size:
                batch = self._top_up(batch, spec)
            if batch is None:
                if self.last is None:
                    raise DataError("online: the dataset shard delivered no rows") from None
                log.warning("online: the dataset shard ran out; repeating its last batch")
                stats["repeated"] = stats.get("repeated", 0) + 1
                batch = self.last
            self.last = batch
            return batch

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()

    def _top_up(self, batch: dict, spec: DataSpec) -> dict:
        # a short final batch: repeat its rows so every batch has batch_size rows
        idx = np.arange(spec.batch_size) % len(batch["key"])
        return {k: v[idx] for k, v in batch.items()}


_STREAMS: dict[int, tuple[Any, _ShardStream]] = {}
_MAX_STREAMS = 8  # a worker process holds one shard; tests and notebooks may hold a few


def close_streams() -> None:
    """Close the held shard streams (before ``ray.shutdown()``: a stream closed after it would try to reach Ray
    from the garbage collector at interpreter exit)."""
    while _STREAMS:
        _STREAMS.popitem()[1][1].close()


def _stream(shard: Any, spec: DataSpec) -> _ShardStream:
    held = _STREAMS.get(id(shard))
    if held is None or held[0] is not shard:  # the shard is kept alive with its stream, so ids stay unique
        while len(_STREAMS) >= _MAX_STREAMS:
            _STREAMS.pop(next(iter(_STREAMS)))[1].close()
        held = (shard, _ShardStream(shard, spec))
        _STREAMS[id(shard)] = held
    return held[1]


def online_train_batches(
    spec: DataSpec, count: int, stats: dict | None = None, dataset_shard: Any = None
) -> Iterator[dict[str, Any]]:
    """The next ``count`` batches of the dataset shard: :func:`training.data.train_batches` in online mode,
    which checks ``start_batch`` and passes the batches left in the epoch (see the module docstring)."""
    if dataset_shard is None:
        import ray.train

        dataset_shard = ray.train.get_dataset_shard("train")
        if dataset_shard is None:
            raise DataError("online: no dataset named 'train' is attached to this trainer")
    stats = stats if stats is not None else {}
    stats.setdefault("skipped", 0)
    stats.setdefault("samples", 0)
    stream = _stream(dataset_shard, spec)
    lengths = _stream_lengths(spec)
    for _ in range(count):
        batch = stream.next_batch(spec, stats)
        if any(s not in batch or batch[s].shape[-1] != t for s, t in lengths.items()):
            raise IncompatibleError(
                "online: the attached dataset holds "
                f"{ {k: v.shape[-1] for k, v in batch.items() if k not in ('key', 'epoch')} }, this worker needs "
                f"{lengths} (stream: samples): build it with the workers' DataSpec"
            )
        stats["samples"] += len(batch["key"])
        keys = [str(k) for k in batch["key"]]
        yield collate([(k, {s: batch[s][i] for s in spec.streams}) for i, k in enumerate(keys)], spec.streams)


def online_eval_batches(
    spec: DataSpec, rank: int, world: int, max_samples: int, stats: dict | None = None
) -> Iterator[dict[str, Any]]:
    """Evaluation in online mode: the first ``max_samples`` samples of the manifest's valid split (or, without
    one, of its train split; a warning names them) rendered with the synthesis seed in this worker and dealt
    round-robin to the ranks, the same number to each; no random crop."""
    rows = split_rows(spec, VALID_SPLIT) or epoch_rows(spec, 0)
    chosen = rows[: max(1, int(max_samples))]
    count = max(world, len(chosen) // world * world)
    mine = [chosen[i % len(chosen)] for i in range(count)][rank::world]
    if rank == 0 and not split_rows(spec, VALID_SPLIT):
        log.warning(
            "online: no valid split in %s; evaluating on %d fixed train sample(s) per rank (%s)",
            _online(spec)["clean"],
            len(mine),
            ", ".join(r["key"] for r in mine[:8]),
        )
    prepared = []
    for row in mine:
        rendered = render_row(spec, row, 0)
        if rendered is None:
            if stats is not None:
                stats["skipped"] = stats.get("skipped", 0) + 1
            continue
        arrays = prepare_pair(rendered["clean"], rendered["degraded"], rendered["valid"], spec, None)
        prepared.append((rendered["key"], arrays))
    if not prepared:
        raise DataError("online: no evaluation sample renders")
    while len(prepared) < len(mine):
        prepared.append(prepared[len(prepared) % len(prepared)])
    for i in range(0, len(prepared), spec.batch_size):
        yield collate(prepared[i : i + spec.batch_size], spec.streams)
