"""The shard format: names, members, the tar writer, the index and the reader (local paths and ``s3://``).

A synthesis run directory holds ``index.json`` and ``shards/shard-NNNNNN.tar``. Each shard is a WebDataset tar:
per sample, in this order, ``{key}.clean.flac``, ``{key}.degraded.flac`` (48 kHz mono FLAC of equal length) and
``{key}.json`` (the sample's metadata, keys sorted). Keys are ``{utterance id}_{segment:04d}`` and hold no ``.``,
``/`` or ``\\``, so WebDataset, Ray Data and this reader group the members the same way.

Everything that writes or parses that layout lives here: synthesis writes with :class:`ShardWriter`,
``hires shards verify|inspect`` and the training loader read with :func:`iter_raw_samples` /
:func:`iter_samples`; no other module opens a tar. The reader trusts nothing: a member outside the three
suffixes, an absolute or ``..`` name, a directory, link or device member, a duplicate key or an incomplete
sample is a :class:`ShardFormatError` naming the shard and the member.

The writer's bytes depend only on what is added: fixed headers (mtime 0, uid/gid 0, empty owner names, mode
0644, GNU format), members in insertion order. ``FORMAT_VERSION`` changes only when these bytes or the index
schema change.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from datasets import storage
from datasets.audio import decode_audio, write_audio
from datasets.errors import DataError

FORMAT_VERSION = 1
MEMBER_SUFFIXES = ("clean.flac", "degraded.flac", "json")
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
# index.json fields every reader may rely on (the per-shard entries are INDEX_SHARD_FIELDS)
INDEX_FIELDS = (
    "format_version",
    "code_version",
    "seed",
    "config",
    "sample_rate",
    "segment_samples",
    "shards",
)
INDEX_SHARD_FIELDS = ("name", "split", "samples", "seconds", "bytes", "sha256")
_KEY = re.compile(r"[^./\\\x00]+")
_CHUNK = 1 << 20


class ShardFormatError(DataError):
    """A shard whose tar structure is not the format's (hostile or corrupt); names the shard and the member."""


class SampleDecodeError(DataError):
    """One sample whose audio or JSON does not decode, or whose streams disagree; names the shard and the key."""


def shard_name(index: int) -> str:
    """``shard-000012.tar`` for shard 12."""
    return f"shard-{int(index):06d}.tar"


def shard_path(run_dir: str, name: str) -> str:
    """``run_dir/shards/name`` (local path or URI)."""
    return storage.join(str(run_dir), SHARDS_DIR, name)


def index_path(run_dir: str) -> str:
    return storage.join(str(run_dir), INDEX_FILE)


def member_names(key: str) -> list[str]:
    """The three member names of sample ``key``, in archive order."""
    return [f"{key}.{suffix}" for suffix in MEMBER_SUFFIXES]


def is_valid_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key))


# ------------------------------------------------------------------------------------------------- index


def index_bytes(index: dict) -> bytes:
    """The bytes of ``index.json`` (sorted keys, one space indent, trailing newline): deterministic."""
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()


def read_index(run_dir: str) -> dict:
    """``run_dir/index.json``; a :class:`DataError` naming the path if missing, invalid or of another format."""
    path = index_path(run_dir)
    if not storage.exists(path):
        raise DataError(f"{path}: no index.json (not a synthesis run, or the run has not finished)")
    try:
        index = json.loads(storage.read_bytes(path))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(index, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(index).__name__}")
    missing = [k for k in INDEX_FIELDS if k not in index]
    if missing:
        raise DataError(f"{path}: lacks field(s) {', '.join(missing)}")
    if index["format_version"] != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {index['format_version']!r}, this version of hires reads {FORMAT_VERSION}"
        )
    for i, entry in enumerate(index["shards"]):
        lacking = [k for k in INDEX_SHARD_FIELDS if k not in entry] if isinstance(entry, dict) else ["all"]
        if lacking:
            raise DataError(f"{path}: shards[{i}] lacks field(s) {', '.join(lacking)}")
    return index


def index_sha256(run_dir: str) -> str:
    """sha256 of the ``index.json`` bytes (the lineage of whatever is trained on the run)."""
    return hashlib.sha256(storage.read_bytes(index_path(run_dir))).hexdigest()


# ------------------------------------------------------------------------------------------------ writer


class _HashingWriter:
    """Write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        return len(data)


class ShardWriter:
    """Streams one shard tar into ``fileobj`` (a binary file open for writing; the caller closes it).

    ``add`` writes the three members of a sample; ``close`` (or leaving the ``with`` block) writes the end
    blocks. ``sha256`` and ``bytes`` describe exactly what was written once closed.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._sink = _HashingWriter(fileobj)
        self._tar = tarfile.open(fileobj=self._sink, mode="w|", format=tarfile.GNU_FORMAT)
        self._keys: set[str] = set()
        self.samples = 0

    def add(self, key: str, clean_flac: bytes, degraded_flac: bytes, meta: dict) -> None:
        if not is_valid_key(key):
            raise ValueError(f"sample key {key!r} contains '.', '/', '\\\\' or is empty")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} added twice to one shard")
        self._keys.add(key)
        data = (clean_flac, degraded_flac, json.dumps(meta, sort_keys=True).encode())
        for name, payload in zip(member_names(key), data, strict=True):
            self._add_member(name, payload)
        self.samples += 1

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if not self._tar.closed:
            self._tar.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def sha256(self) -> str:
        return self._sink.sha.hexdigest()

    @property
    def bytes(self) -> int:
        return self._sink.bytes


# ------------------------------------------------------------------------------------------------ reader


@dataclass
class RawSample:
    """One sample's member bytes as stored."""

    key: str
    clean: bytes
    degraded: bytes
    meta: bytes
    shard: str


@dataclass
class ShardSample:
    """One decoded sample: float32 mono ``clean`` and ``degraded`` of equal length at ``sample_rate``."""

    key: str
    clean: np.ndarray
    degraded: np.ndarray
    sample_rate: int
    meta: dict
    shard: str


class _HashingReader:
    """Read-only file wrapper that hashes and counts every byte read through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.bytes = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data


def _member_key(path: str, member: tarfile.TarInfo) -> tuple[str, str]:
    """``(key, suffix)`` of a member, or a ShardFormatError for anything the format does not allow."""
    name = member.name
    if not member.isreg():
        kind = "directory" if member.isdir() else "link" if (member.issym() or member.islnk()) else "special"
        raise ShardFormatError(f"{path}: member {name!r} is a {kind} entry; a shard holds regular files only")
    if name.startswith("/") or "/" in name or "\\" in name or name in (".", ".."):
        raise ShardFormatError(
            f"{path}: member {name!r} has a path; members are flat {{key}}.{{suffix}} names"
        )
    for suffix in MEMBER_SUFFIXES:
        if name.endswith("." + suffix):
            key = name[: -len(suffix) - 1]
            if is_valid_key(key):
                return key, suffix
    raise ShardFormatError(
        f"{path}: member {name!r} is not {{key}}.{{{','.join(MEMBER_SUFFIXES)}}} with a key free of '.', '/'"
    )


def iter_raw_samples(path: str, digest: dict | None = None) -> Iterator[RawSample]:
    """Stream the samples of one shard (local path or URI) in archive order, reading it once.

    With ``digest`` (a dict), the same read fills ``digest["sha256"]`` and ``digest["bytes"]`` of the whole file,
    also when the tar turns out to be corrupt, so checking a shard downloads it once. Structure errors raise
    :class:`ShardFormatError`; a truncated or unreadable tar raises it too (the tar error as its cause).
    """
    path = str(path)
    name = Path(path).name
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}
    with storage.open_read(path) as raw:
        f = _HashingReader(raw) if digest is not None else raw
        try:
            try:
                with tarfile.open(fileobj=f, mode="r|") as tar:
                    for member in tar:
                        k, suffix = _member_key(path, member)
                        expected = MEMBER_SUFFIXES[len(members)] if k == key else MEMBER_SUFFIXES[0]
                        if k != key:
                            if members:
                                raise ShardFormatError(
                                    f"{path}: member {member.name!r}: sample {key!r} before it is incomplete "
                                    f"(has {sorted(members)})"
                                )
                            if k in seen:
                                raise ShardFormatError(f"{path}: member {member.name!r}: duplicate key {k!r}")
                            seen.add(k)
                            key, members = k, {}
                        if suffix != expected:
                            raise ShardFormatError(
                                f"{path}: member {member.name!r}: sample {k!r} is incomplete or out of order "
                                f"(has {sorted(members)}, expected {k}.{expected} next)"
                            )
                        data = tar.extractfile(member)
                        members[suffix] = data.read() if data is not None else b""
                        if len(members) == len(MEMBER_SUFFIXES):
                            yield RawSample(
                                k, members["clean.flac"], members["degraded.flac"], members["json"], name
                            )
                            key, members = None, {}  # a later member with this key is a duplicate
            except tarfile.TarError as e:
                raise ShardFormatError(f"{path}: unreadable tar: {e}") from e
            if members:
                raise ShardFormatError(
                    f"{path}: sample {key!r} is incomplete at the end of the tar (has {sorted(members)})"
                )
        finally:
            if digest is not None:
                for _ in iter(lambda: f.read(_CHUNK), b""):  # the tail the tar reader left (end blocks)
                    pass
                digest.update(sha256=f.sha.hexdigest(), bytes=f.bytes)


def decode_sample(raw: RawSample) -> ShardSample:
    """Decode one raw sample; :class:`SampleDecodeError` when its FLAC or JSON is bad or the streams disagree."""
    where = f"{raw.shard}: sample {raw.key}"
    audio = []
    for label, data in (("clean", raw.clean), ("degraded", raw.degraded)):
        try:
            x, sr = decode_audio(data)
        except Exception as e:
            raise SampleDecodeError(f"{where}: {label}.flac does not decode: {e}") from e
        if x.ndim != 1:
            raise SampleDecodeError(f"{where}: {label}.flac has shape {x.shape}, expected mono")
        audio.append((x, sr))
    (clean, sr_c), (degraded, sr_d) = audio
    if sr_c != sr_d or len(clean) != len(degraded):
        raise SampleDecodeError(
            f"{where}: clean is {len(clean)} samples at {sr_c} Hz, degraded {len(degraded)} at {sr_d} Hz"
        )
    try:
        meta = json.loads(raw.meta)
    except ValueError as e:
        raise SampleDecodeError(f"{where}: json is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise SampleDecodeError(f"{where}: json holds a {type(meta).__name__}, expected an object")
    return ShardSample(raw.key, clean, degraded, sr_c, meta, raw.shard)


def iter_samples(path: str) -> Iterator[ShardSample]:
    """Decoded samples of one shard (see :func:`iter_raw_samples` and :func:`decode_sample`)."""
    for raw in iter_raw_samples(path):
        yield decode_sample(raw)


def find_raw_sample(run_dir: str, key: str) -> RawSample:
    """Sample ``key`` of a run; the plan (when present) tells which shard holds it, else every shard is read.

    KeyError when no shard holds it.
    """
    index = read_index(run_dir)
    names = [e["name"] for e in index["shards"]]
    if not is_valid_key(key):
        raise KeyError(f"{run_dir}: {key!r} is not a sample key")
    plan = storage.join(str(run_dir), "plan.parquet")
    if storage.exists(plan):
        import pyarrow.compute as pc

        from datasets.manifest import read_parquet

        table = read_parquet(plan, columns=["key", "shard"])
        hit = table.filter(pc.equal(table.column("key"), key))
        if hit.num_rows:
            names = [shard_name(hit.column("shard")[0].as_py())]
    for name in names:
        for raw in iter_raw_samples(shard_path(run_dir, name)):
            if raw.key == key:
                return raw
    raise KeyError(f"{run_dir}: no sample with key {key!r}")


def output_path(dest_dir: str | Path, key: str, suffix: str) -> Path:
    """``dest_dir/{key}.{suffix}``, refusing any name that would land outside ``dest_dir``."""
    dest = Path(dest_dir).resolve()
    if not is_valid_key(key) or "/" in suffix or "\\" in suffix or suffix.startswith("."):
        raise DataError(f"{key!r}.{suffix}: not a safe file name for {dest}")
    path = (dest / f"{key}.{suffix}").resolve()
    if path.parent != dest:
        raise DataError(f"{key!r}.{suffix}: would be written outside {dest}")
    return path


def extract_sample(run_dir: str, key: str, dest_dir: str | Path) -> tuple[ShardSample, list[Path]]:
    """Decode sample ``key`` and write ``{key}.clean.wav`` and ``{key}.degraded.wav`` (24-bit) into ``dest_dir``.

    Names are built from the validated key only, and checked to resolve inside ``dest_dir``: nothing in a shard
    can make this write elsewhere.
    """
    sample = decode_sample(find_raw_sample(run_dir, key))
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for label, x in (("clean", sample.clean), ("degraded", sample.degraded)):
        path = output_path(dest_dir, sample.key, f"{label}.wav")
        write_audio(path, x, sample.sample_rate, format="WAV", subtype="PCM_24")
        written.append(path)
    return sample, written
