"""Training data from shards: per-rank equal shares, per-epoch shuffle, random crops, threaded decoding.

The loader reads a synthesis run (``index.json`` + ``shards/*.tar``, local or ``s3://``) through the shard format
module :mod:`datasets.shards`; nothing here parses a tar.

**Shares.** The train split's shards come from ``index.json``. Each epoch a permutation drawn from
``(seed, epoch)`` orders them; the samples of the shards in that order are cut into ``world`` consecutive runs of
``total // world`` samples (the first ``total % world`` ranks one more), one per rank: the shares are disjoint and
differ by at most one sample. A shard cut between two ranks is streamed by both (the second skips the first's
samples), so at most ``world - 1`` shards are read twice per epoch; with fewer shards than ranks a shard feeds
several ranks.

**Equal batch counts.** :func:`batches_per_epoch` depends on the index and the world size only: ``total train
samples // (world * batch_size)`` (at least 1), the same on every rank, so DDP and ``ray.train.report`` never
wait on a rank that ran out. A rank whose share is short wraps around within its own share (a second pass,
shuffled anew; only when the split holds fewer than ``world * batch_size`` samples); a rank with more drops
the few samples short of a whole batch (they come back in later epochs, which reshuffle).

**Order and resume.** A rank's epoch is a fixed list of slots ``(pass, shard, position)``: its share read
``interleave`` shards side by side (one sample from each in turn, so a batch does not come from the few
utterances of one shard) through a simulated shuffle buffer seeded by ``(seed, epoch, world, rank, pass)``. The list is a pure
function of the index, so ``start_batch=k`` skips the first ``k * batch_size`` slots without decoding them
(shards holding none of the remaining slots are not even opened) and yields exactly the batches an
uninterrupted epoch would have yielded from there on.

**Decoding.** Only the crop (plus the resampling context) of each FLAC is decoded: FLAC seeks sample-accurately,
so the result equals cropping the whole decoded sample, and short crops cost a fraction (tested against
:func:`datasets.shards.decode_sample`). Damage outside the crop goes unnoticed; the crop itself is checked.

**Corrupt samples.** A sample whose audio or JSON does not decode (:class:`datasets.shards.SampleDecodeError`),
that a truncated or malformed tar no longer holds, or whose shard cannot be read, is skipped, logged and counted
in ``stats["skipped"]``. Its slot is filled with a good sample of the *same batch* (duplicated), so the batch
count, the batch size and the other slots do not move and resume stays exact. A batch with no good sample at all
takes the first decodable sample of the split (in index order) for every slot.

**Crops.** A random crop of ``crop_samples`` (a multiple of 480 at 48 kHz) starting at a multiple of 480 inside the
sample's valid (non-padded) part, drawn from ``(seed, epoch, pass, key)``. The 16 kHz streams are the 48 kHz crop
resampled with soxr (VHQ) over a 960-sample context on each side, so they equal the matching third of the whole
segment resampled and are exactly ``crop_samples // 3`` long. soxr was measured against the torch resampler of
:mod:`training.features` on one core: 0.6 ms against 7 ms per 5.12 s clip, hence soxr.

**Loudness.** With ``input_loudness_lufs`` set, the degraded crop is normalised with the gain of
:func:`degradations.input_loudness.normalize_input` (restore's function; :func:`~degradations.input_loudness.input_gain`
is its gain alone) and the clean crop is scaled by the same gain.

**Threads.** A producer thread streams the tars and hands each sample to a pool of ``num_threads`` threads that
decode, crop, normalise and resample it (soundfile, soxr and scipy release the GIL); up to ``prefetch_batches``
batches are ready ahead of the training step. Closing the iterator stops both.

Online mode (``DataSpec.online``) produces the same batches from a Ray Data stream: see :mod:`training.online`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf

from datasets import shards as shard_format
from datasets.audio import is_uri
from datasets.config import ConfigError
from datasets.errors import DataError, IncompatibleError
from datasets.manifest import stable_hash

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
LOW_RATE = 16000
CROP_ALIGN = 480  # 10 ms at 48 kHz: crops and offsets on this grid give exact 16 kHz thirds
RESAMPLE_CONTEXT = 960  # 48 kHz samples of context each side of a crop before resampling (a multiple of 3)
STREAMS = ("clean_48k", "degraded_48k", "clean_16k", "degraded_16k")
TRAIN_SPLIT, VALID_SPLIT = "train", "valid"


@dataclass(frozen=True)
class DataSpec:
    """What a training worker loads; JSON-able (travels in the Ray Train loop config via :meth:`to_dict`).

    Exactly one of ``shards`` (a run directory or URI holding ``index.json``) and ``online`` (``{"clean": M,
    "noise": M, "rir": M, "synth_config": path|None, "seed": int}``) is set.
    """

    shards: str | None = None
    online: dict | None = None
    seed: int = 0
    batch_size: int = 4
    crop_samples: int = 245760
    streams: tuple[str, ...] = ("clean_48k", "degraded_48k")
    input_loudness_lufs: float | None = -20.0
    num_threads: int = 2
    prefetch_batches: int = 2
    shuffle_buffer: int = 32  # samples held (as raw FLAC bytes) while shuffling within a share
    interleave: int = 4  # shards of a share read side by side, one sample from each in turn

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", tuple(self.streams))
        if (self.shards is None) == (self.online is None):
            raise ConfigError("data: set exactly one of shards (a run directory) and online (manifests)")
        unknown = [s for s in self.streams if s not in STREAMS]
        if unknown or not self.streams:
            raise ConfigError(
                f"data.streams: {list(self.streams)}, expected a non-empty subset of {list(STREAMS)}"
            )
        if self.crop_samples <= 0 or self.crop_samples % CROP_ALIGN:
            raise ConfigError(
                f"data.crop_samples: {self.crop_samples}, expected a positive multiple of {CROP_ALIGN}"
            )
        for name in ("batch_size", "num_threads", "interleave"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}: {getattr(self, name)}, expected at least 1")
        for name in ("prefetch_batches", "shuffle_buffer", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: {getattr(self, name)}, expected at least 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["streams"] = list(self.streams)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"data: unknown field(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def as_spec(spec: DataSpec | dict) -> DataSpec:
    return spec if isinstance(spec, DataSpec) else DataSpec.from_dict(spec)


# ----------------------------------------------------------------------------------------------------- index


@functools.lru_cache(maxsize=8)
def _cached_index(run_dir: str) -> dict:
    return shard_format.read_index(run_dir)


def _split_entries(index: dict, split: str) -> list[dict]:
    return sorted(
        (e for e in index["shards"] if e["split"] == split and int(e["samples"]) > 0), key=lambda e: e["name"]
    )


def _train_entries(spec: DataSpec) -> list[dict]:
    entries = _split_entries(_cached_index(str(spec.shards)), TRAIN_SPLIT)
    if not entries:
        raise DataError(f"{shard_format.index_path(str(spec.shards))}: no shard of split 'train'")
    return entries


def check_shards(spec: DataSpec | dict) -> dict:
    """Driver-side check before any worker starts; a one-line :class:`DataError` for a set training cannot use.

    Checks that ``index.json`` exists and parses, that the shards are 48 kHz, that a train split exists and that
    the crop fits the segments. A set without a valid split trains with a warning and evaluates on a fixed set of
    train samples (see :func:`eval_batches`). Returns facts for lineage and logging: ``index_path``,
    ``index_sha256``, ``has_valid``, ``eval_split``, ``train_shards``, ``train_samples``, ``valid_samples``,
    ``sample_rate``, ``segment_samples``.
    """
    spec = as_spec(spec)
    if spec.online is not None:
        from training.online import check_online

        return check_online(spec)
    run_dir = str(spec.shards)
    path = shard_format.index_path(run_dir)
    _cached_index.cache_clear()  # the driver must see the index as it is now
    index = _cached_index(run_dir)
    sr = index.get("sample_rate")
    if sr != SAMPLE_RATE:
        raise DataError(f"{path}: sample_rate {sr!r}, training reads {SAMPLE_RATE} Hz shards")
    splits = sorted({str(e["split"]) for e in index["shards"]})
    train = _split_entries(index, TRAIN_SPLIT)
    if not train:
        raise DataError(
            f"{path}: no shard of split 'train' with samples (splits present: {splits or 'none'})"
        )
    segment = int(index["segment_samples"])
    if spec.crop_samples > segment:
        raise IncompatibleError(
            f"{path}: segments are {segment} samples, shorter than the configured crop_samples {spec.crop_samples}"
        )
    valid = _split_entries(index, VALID_SPLIT)
    if not valid:
        log.warning(
            "%s: no valid split (splits: %s); evaluating on a fixed set of train samples instead",
            path,
            splits,
        )
    return {
        "index_path": path,
        "index_sha256": shard_format.index_sha256(run_dir),
        "has_valid": bool(valid),
        "eval_split": VALID_SPLIT if valid else TRAIN_SPLIT,
        "train_shards": len(train),
        "train_samples": sum(int(e["samples"]) for e in train),
        "valid_samples": sum(int(e["samples"]) for e in valid),
        "sample_rate": SAMPLE_RATE,
        "segment_samples": segment,
    }


def batches_per_epoch(spec: DataSpec | dict, world: int) -> int:
    """Batches every rank yields per epoch: ``train samples // (world * batch_size)``, at least 1."""
    spec = as_spec(spec)
    if spec.online is not None:
        from training.online import online_batches_per_epoch

        return online_batches_per_epoch(spec, world)
    total = sum(int(e["samples"]) for e in _train_entries(spec))
    return max(1, total // (int(world) * spec.batch_size))


# ------------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Part:
    """A shard's consecutive sample positions that belong to one rank (often the whole shard)."""

    shard: str
    positions: tuple[int, ...]


Slot = tuple[int, str, int]  # (pass, shard name, position in the shard)


def epoch_shares(spec: DataSpec | dict, world: int, epoch: int) -> list[list[Part]]:
    """The disjoint share of every rank for ``epoch`` (see the module docstring)."""
    spec = as_spec(spec)
    entries = _train_entries(spec)
    rng = np.random.default_rng([spec.seed, int(epoch), stable_hash("shares")])
    order = [entries[i] for i in rng.permutation(len(entries))]
    total = sum(int(e["samples"]) for e in order)
    sizes = [total // world + (1 if r < total % world else 0) for r in range(world)]
    shares: list[list[Part]] = [[] for _ in range(world)]
    rank, room = 0, sizes[0]
    for entry in order:
        position, count = 0, int(entry["samples"])
        while position < count:
            while room == 0:
                rank += 1
                room = sizes[rank]
            take = min(room, count - position)
            shares[rank].append(Part(entry["name"], tuple(range(position, position + take))))
            position, room = position + take, room - take
    return shares


def _shuffle_buffer(items: list[Slot], size: int, rng: np.random.Generator) -> list[Slot]:
    """The order a streaming shuffle buffer of ``size`` emits ``items`` in (pure: no data is read)."""
    if size <= 1:
        return list(items)
    out: list[Slot] = []
    buffer: list[Slot] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            out.append(buffer.pop())
    out.extend(buffer[i] for i in rng.permutation(len(buffer)))
    return out


def _interleaved(share: list[Part], p: int, width: int) -> list[Slot]:
    """Pass ``p`` over ``share`` in read order: ``width`` parts at a time, one sample from each in turn (a part
    that ends is replaced by the next), so neighbouring samples come from different shards: a shard holds the
    consecutive segments of a few utterances, and the shuffle buffer alone would fill batches with them."""
    waiting = list(reversed(share))
    active: list[tuple[Part, Iterator[int]]] = []
    out: list[Slot] = []
    while waiting or active:
        while len(active) < max(1, width) and waiting:
            part = waiting.pop()
            active.append((part, iter(part.positions)))
        still = []
        for part, positions in active:
            position = next(positions, None)
            if position is not None:
                out.append((p, part.shard, position))
                still.append((part, positions))
        active = still
    return out


def epoch_slots(spec: DataSpec | dict, rank: int, world: int, epoch: int) -> tuple[list[Slot], list[Slot]]:
    """Rank ``rank``'s slots for ``epoch`` (``batches_per_epoch * batch_size`` of them, in training order) and
    the read order of its shards (the interleaved passes the slots come from)."""
    spec = as_spec(spec)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    share = epoch_shares(spec, world, epoch)[rank]
    if not share:
        # fewer train samples than ranks: this rank reads the whole split (documented; shares overlap)
        log.warning(
            "rank %d of %d has no train sample of its own; it reads the whole train split", rank, world
        )
        share = [p for s in epoch_shares(spec, 1, epoch) for p in s]
    needed = batches_per_epoch(spec, world) * spec.batch_size
    size = sum(len(p.positions) for p in share)
    slots: list[Slot] = []
    schedule: list[Slot] = []
    for p in range(math.ceil(needed / size)):
        order = _interleaved(share, p, spec.interleave)
        rng = np.random.default_rng([spec.seed, int(epoch), int(world), int(rank), p, stable_hash("shuffle")])
        slots += _shuffle_buffer(order, spec.shuffle_buffer, rng)
        schedule += order
    return slots[:needed], schedule


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class _Item:
    slot: Slot
    raw: shard_format.RawSample | None
    error: str | None


def _read_part(run_dir: str, p: int, shard: str, wanted: list[int]) -> Iterator[_Item]:
    """The items at positions ``wanted`` (ascending) of one shard, in archive order; when the shard cannot be read
    (missing, truncated, malformed) its remaining positions come as errors. An I/O error (an object store
    connection that drops mid-shard) reads the shard again, twice at most, without repeating what was delivered."""
    path = shard_format.shard_path(run_dir, shard)
    todo = set(wanted)
    error: str | None = None
    for attempt in range(3):
        try:
            for position, raw in enumerate(shard_format.iter_raw_samples(path)):
                if position in todo:
                    todo.discard(position)
                    yield _Item((p, shard, position), raw, None)
                if not todo:
                    break
            error = None if not todo else f"{path}: holds fewer samples than index.json says"
            break
        except shard_format.ShardFormatError as e:
            error = str(e)
            break
        except OSError as e:
            error = f"{path}: cannot read: {e}"
            if isinstance(e, FileNotFoundError) or not is_uri(path) or attempt == 2:
                break  # a missing object or a local file that cannot be read will not appear by waiting
            log.warning("%s; reading it again", error)
            time.sleep(0.5 * 2**attempt)
    if todo:
        log.warning("%s: %d sample(s) of this shard skipped", error, len(todo))
        for position in sorted(todo):
            yield _Item((p, shard, position), None, error)


def _in_read_order(run_dir: str, schedule: list[Slot], needed: set[Slot]) -> Iterator[_Item]:
    """The needed items of ``schedule`` in its order, each shard read by its own stream (a few are open at
    once when the schedule interleaves them); shards holding no needed item are not opened."""
    wanted: dict[tuple[int, str], list[int]] = {}
    for slot in schedule:
        if slot in needed:
            wanted.setdefault((slot[0], slot[1]), []).append(slot[2])
    left = {key: len(positions) for key, positions in wanted.items()}
    readers: dict[tuple[int, str], Iterator[_Item]] = {}
    try:
        for slot in schedule:
            if slot not in needed:
                continue
            key = (slot[0], slot[1])
            if key not in readers:
                readers[key] = _read_part(run_dir, slot[0], slot[1], sorted(wanted[key]))
            item = next(readers[key])
            if item.slot != slot:
                raise AssertionError(f"read {item.slot}, expected {slot}")
            left[key] -= 1
            if not left[key]:
                readers.pop(key).close()  # closes the shard's stream now, not at garbage collection
            yield item
    finally:
        for reader in readers.values():
            reader.close()


def _in_slot_order(
    run_dir: str, slots: list[Slot], schedule: list[Slot], stop: threading.Event
) -> Iterator[_Item]:
    """The items of ``slots`` in slot order; read-ahead items wait in a dict (bounded by the shuffle buffer)."""
    needed = set(slots)
    source = _in_read_order(run_dir, schedule, needed)
    pending: dict[Slot, _Item] = {}
    for slot in slots:
        while slot not in pending:
            if stop.is_set():
                return
            item = next(source)
            pending[item.slot] = item
        yield pending.pop(slot)


# -------------------------------------------------------------------------------------------------- samples


def _crop_offset(length: int, valid: int, crop: int, rng: np.random.Generator | None) -> int:
    """A crop start on the 480 grid inside the valid part (0 without ``rng``: evaluation)."""
    last = min(max(valid, crop), length) - crop
    if rng is None or last <= 0:
        return 0
    return int(rng.integers(last // CROP_ALIGN + 1)) * CROP_ALIGN


def _window(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``x[start:stop]`` with zeros where the range leaves ``x``."""
    out = np.zeros(stop - start, dtype=np.float32)
    a, b = max(start, 0), min(stop, len(x))
    if b > a:
        out[a - start : b - start] = x[a:b]
    return out


def _margin(spec: DataSpec) -> int:
    return RESAMPLE_CONTEXT if any(s.endswith("_16k") for s in spec.streams) else 0


def _window_bounds(
    length: int, valid: int, spec: DataSpec, rng: np.random.Generator | None
) -> tuple[int, int]:
    """``(start, stop)`` of the crop with its resampling context; may reach outside ``0..length``."""
    offset = _crop_offset(length, valid, spec.crop_samples, rng)
    return offset - _margin(spec), offset + spec.crop_samples + _margin(spec)


def prepare_window(clean: np.ndarray, degraded: np.ndarray, spec: DataSpec) -> dict[str, np.ndarray]:
    """The arrays of ``spec.streams`` from a crop with its resampling context: ``clean``/``degraded`` hold
    ``crop_samples`` plus the context (:data:`RESAMPLE_CONTEXT` each side when a 16 kHz stream is asked for,
    zeros outside the sample), float32, and are scaled in place by the loudness gain."""
    from datasets.audio import resample
    from degradations.input_loudness import input_gain

    crop, margin = spec.crop_samples, _margin(spec)
    if spec.input_loudness_lufs is not None:
        # the gain of normalize_input (restore's function), applied here to the context and the target too
        gain = input_gain(degraded[margin : margin + crop], SAMPLE_RATE, spec.input_loudness_lufs)
        clean *= np.float32(gain)
        degraded *= np.float32(gain)
    out: dict[str, np.ndarray] = {}
    for name, x in (("clean", clean), ("degraded", degraded)):
        if f"{name}_48k" in spec.streams:
            out[f"{name}_48k"] = x[margin : margin + crop]
        if f"{name}_16k" in spec.streams:
            y = resample(x, SAMPLE_RATE, LOW_RATE)
            out[f"{name}_16k"] = y[margin // 3 : (margin + crop) // 3]
    return out


def prepare_pair(
    clean: np.ndarray, degraded: np.ndarray, valid: int, spec: DataSpec, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """Crop, loudness-normalise and resample one whole 48 kHz pair into the arrays of ``spec.streams``.

    ``rng`` draws the crop offset (``None``: offset 0, for evaluation). Online mode uses it; the shard loader
    decodes only the window (:func:`_decode_window`) and gets the same arrays.
    """
    start, stop = _window_bounds(len(clean), int(valid), spec, rng)
    return prepare_window(_window(clean, start, stop), _window(degraded, start, stop), spec)


def crop_rng(spec: DataSpec, epoch: int, key: str, pass_: int = 0) -> np.random.Generator:
    return np.random.default_rng([spec.seed, int(epoch), int(pass_), stable_hash(key), stable_hash("crop")])


def _decode_window(
    raw: shard_format.RawSample, spec: DataSpec, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode only the crop (and its resampling context) of both streams: FLAC seeks sample-accurately, so this
    equals cropping :func:`datasets.shards.decode_sample`'s arrays, at a fraction of the cost for short crops
    (a 0.32 s vocoder crop decodes 6x faster than the 5.12 s sample). The checks mirror ``decode_sample``'s:
    both streams decode, are mono, 48 kHz and of equal length, and the JSON is an object; anything else raises
    :class:`datasets.shards.SampleDecodeError`."""
    where = f"{raw.shard}: sample {raw.key}"
    try:
        meta = json.loads(raw.meta)
    except ValueError as e:
        raise shard_format.SampleDecodeError(f"{where}: json is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise shard_format.SampleDecodeError(
            f"{where}: json holds a {type(meta).__name__}, expected an object"
        )
    files = []
    try:
        for label, data in (("clean", raw.clean), ("degraded", raw.degraded)):
            try:
                f = sf.SoundFile(io.BytesIO(data))
            except Exception as e:  # libsndfile reports a bad stream as a generic error
                raise shard_format.SampleDecodeError(f"{where}: {label}.flac does not decode: {e}") from e
            files.append(f)
            if f.channels != 1 or f.samplerate != SAMPLE_RATE:
                raise shard_format.SampleDecodeError(
                    f"{where}: {label}.flac is {f.samplerate} Hz with {f.channels} channel(s), expected "
                    f"{SAMPLE_RATE} Hz mono"
                )
        length = files[0].frames
        if files[1].frames != length:
            raise shard_format.SampleDecodeError(
                f"{where}: clean is {length} samples, degraded {files[1].frames}"
            )
        valid = int(meta.get("valid") or length)
        start, stop = _window_bounds(length, valid, spec, rng)
        a, b = max(start, 0), min(stop, length)
        out = []
        for label, f in zip(("clean", "degraded"), files, strict=True):
            x = np.zeros(stop - start, dtype=np.float32)
            if b > a:
                try:
                    if a:
                        f.seek(a)
                    got = len(f.read(out=x[a - start : b - start]))  # decoded straight into the window
                except Exception as e:
                    raise shard_format.SampleDecodeError(f"{where}: {label}.flac does not decode: {e}") from e
                if got != b - a:
                    raise shard_format.SampleDecodeError(
                        f"{where}: {label}.flac ends at {a + got} of {length} samples"
                    )
            out.append(x)
    finally:
        for f in files:
            f.close()
    return out[0], out[1]


Prepared = tuple[str, dict[str, np.ndarray]]  # (key, arrays by stream)


def _prepare_item(item: _Item, spec: DataSpec, epoch: int | None) -> Prepared | str:
    """The prepared sample, or the reason it is skipped (a string)."""
    if item.raw is None:
        return item.error or f"{item.slot[1]}: position {item.slot[2]} unreadable"
    rng = None if epoch is None else crop_rng(spec, epoch, item.raw.key, item.slot[0])
    try:
        clean, degraded = _decode_window(item.raw, spec, rng)
    except shard_format.SampleDecodeError as e:
        return str(e)
    return item.raw.key, prepare_window(clean, degraded, spec)


def collate(samples: list[Prepared], streams: Iterable[str]) -> dict[str, Any]:
    """A batch: ``(B, T)`` float32 tensors per stream and ``keys``."""
    import torch

    batch: dict[str, Any] = {s: torch.from_numpy(np.stack([arr[s] for _, arr in samples])) for s in streams}
    batch["keys"] = [key for key, _ in samples]
    return batch


_END = object()


def threaded_map(
    items: Iterator[Any], fn: Callable[[Any], Any], num_threads: int, window: int
) -> Iterator[Any]:
    """``fn`` over ``items`` in a thread pool, results in input order; a producer thread pulls ``items`` (I/O)
    and keeps at most ``window`` results in flight. Closing the generator stops the producer and the pool."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="hires-data")
    pending: queue.Queue = queue.Queue(maxsize=max(1, window))

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                pending.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not put(pool.submit(fn, item)):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, which raises it in the training thread
            put(e)

    producer = threading.Thread(target=produce, name="hires-data-reader", daemon=True)
    producer.start()
    try:
        while True:
            value = pending.get()
            if value is _END:
                return
            if isinstance(value, BaseException):
                raise value
            yield value.result()
    finally:
        stop.set()  # the producer owns ``items`` and returns at its next check
        producer.join(timeout=10)
        pool.shutdown(wait=True, cancel_futures=True)


def _first_good_sample(spec: DataSpec, entries: list[dict], epoch: int | None) -> Prepared:
    """The first decodable sample in index order: the filler of a batch without any good sample."""
    run_dir = str(spec.shards)
    for entry in entries:
        try:
            for raw in shard_format.iter_raw_samples(shard_format.shard_path(run_dir, entry["name"])):
                result = _prepare_item(_Item((0, entry["name"], 0), raw, None), spec, epoch)
                if not isinstance(result, str):
                    return result
        except (shard_format.ShardFormatError, OSError):
            continue
    raise DataError(f"{shard_format.index_path(run_dir)}: no sample of the split decodes")


def _batches(
    spec: DataSpec,
    slots: list[Slot],
    schedule: list[Slot],
    epoch: int | None,
    stats: dict | None,
    filler_entries: list[dict],
    sizes: list[int],
) -> Iterator[dict[str, Any]]:
    """Batches of the given sizes from ``slots`` (their sum), skipping and counting bad samples."""
    stats = stats if stats is not None else {}
    stats.setdefault("skipped", 0)
    stats.setdefault("samples", 0)
    stop = threading.Event()
    items = _in_slot_order(str(spec.shards), slots, schedule, stop)
    window = (spec.prefetch_batches + 1) * spec.batch_size
    results = threaded_map(items, lambda it: _prepare_item(it, spec, epoch), spec.num_threads, window)
    filler: Prepared | None = None
    try:
        for size in sizes:
            group = [next(results) for _ in range(size)]
            good = [r for r in group if not isinstance(r, str)]
            for r in group:
                if isinstance(r, str):
                    log.warning("skipped a sample: %s", r)
                    stats["skipped"] += 1
            if not good:
                filler = filler or _first_good_sample(spec, filler_entries, epoch)
                good = [filler]
            it = iter(range(len(group)))
            filled = [r if not isinstance(r, str) else good[next(it) % len(good)] for r in group]
            stats["samples"] += sum(not isinstance(r, str) for r in group)
            yield collate(filled, spec.streams)
    finally:
        stop.set()
        results.close()


def train_batches(
    spec: DataSpec | dict,
    rank: int,
    world: int,
    epoch: int,
    start_batch: int = 0,
    stats: dict | None = None,
    dataset_shard: Any = None,
) -> Iterator[dict[str, Any]]:
    """Rank ``rank``'s batches of ``epoch``, from batch ``start_batch`` on (see the module docstring).

    Yields dicts of torch float32 tensors ``(batch_size, T)`` named by ``spec.streams`` (``T`` is
    ``crop_samples`` at 48 kHz, a third of it at 16 kHz) plus ``"keys"``; exactly
    ``batches_per_epoch(spec, world) - start_batch`` of them on every rank. ``stats`` (a dict) accumulates
    ``skipped`` and ``samples``. In online mode ``dataset_shard`` is ``ray.train.get_dataset_shard("train")``
    (fetched here when omitted); see :func:`training.online.online_train_batches`.
    """
    spec = as_spec(spec)
    n = batches_per_epoch(spec, world)
    if not 0 <= start_batch <= n:
        raise ValueError(
            f"start_batch {start_batch} outside 0..{n} (batches per epoch at world size {world})"
        )
    if spec.online is not None:
        from training.online import online_train_batches

        yield from online_train_batches(spec, n - start_batch, stats, dataset_shard)
        return
    slots, schedule = epoch_slots(spec, rank, world, epoch)
    slots = slots[start_batch * spec.batch_size :]
    sizes = [spec.batch_size] * (n - start_batch)
    yield from _batches(spec, slots, schedule, epoch, stats, _train_entries(spec), sizes)


def eval_entries(spec: DataSpec) -> tuple[list[dict], str]:
    """The shards evaluation reads and their split: valid, or train when the set has no valid split."""
    index = _cached_index(str(spec.shards))
    valid = _split_entries(index, VALID_SPLIT)
    return (valid, VALID_SPLIT) if valid else (_train_entries(spec), TRAIN_SPLIT)


def eval_slots(spec: DataSpec | dict, rank: int, world: int, max_samples: int) -> list[Slot]:
    """Rank ``rank``'s evaluation slots: the first ``max_samples`` samples of the eval split in index order,
    trimmed to a multiple of ``world`` and dealt round-robin, so every rank gets the same number. A set smaller
    than the world is repeated (the repeat's ``pass`` counts the copies)."""
    spec = as_spec(spec)
    entries, _ = eval_entries(spec)
    everything = [(e["name"], pos) for e in entries for pos in range(int(e["samples"]))]
    chosen = everything[: max(1, int(max_samples))]
    count = max(world, len(chosen) // world * world)
    slots = [(i // len(chosen), *chosen[i % len(chosen)]) for i in range(count)]
    return slots[rank::world]


def eval_batches(
    spec: DataSpec | dict, rank: int, world: int, max_samples: int, stats: dict | None = None
) -> Iterator[dict[str, Any]]:
    """Evaluation batches: the valid split, or without one a fixed set of train samples (a warning names them).

    Deterministic, no random crop (each sample's first ``crop_samples``), the same number of batches on every
    rank (the last one may be smaller); corrupt samples are skipped and counted like in training.
    """
    spec = as_spec(spec)
    if spec.online is not None:
        from training.online import online_eval_batches

        yield from online_eval_batches(spec, rank, world, max_samples, stats)
        return
    entries, split = eval_entries(spec)
    slots = eval_slots(spec, rank, world, max_samples)
    if split != VALID_SPLIT and rank == 0:
        shown = ", ".join(f"{s[1]}#{s[2]}" for s in slots[:8])
        log.warning(
            "%s: no valid split; evaluating on %d fixed train sample(s) per rank (rank 0: %s%s)",
            spec.shards,
            len(slots),
            shown,
            ", ..." if len(slots) > 8 else "",
        )
    sizes = [min(spec.batch_size, len(slots) - i) for i in range(0, len(slots), spec.batch_size)]
    # the slots are in index order within each copy: they are their own read order
    yield from _batches(spec, slots, slots, None, stats, entries, sizes)
