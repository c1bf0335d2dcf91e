"""Manifests: one Parquet row per audio file, the single description of a corpus that later stages read.

Columns (see the README, "Corpora and manifests"): ``id`` (stable, ``[A-Za-z0-9_-]``), ``path`` (absolute
path or URI), ``sample_rate``, ``channels``, ``frames``, ``duration_s``, ``speaker``, ``corpus``, ``split``,
``kind``; RIR manifests add ``rt60``, ``drr``, ``c50`` (generated rooms also ``rt60_mid``, ``rt60_8k``,
``target_rt60``, ``room_type``); noise manifests add ``noise_type``. Rows are sorted by
``id`` and written with a fixed schema, so the same corpus gives the same bytes. How the manifest was made (the
scan settings that decide its rows, e.g. which VCTK microphone) is stored as JSON in the Parquet metadata under
``hires`` (:func:`manifest_metadata`).

Rejected files go to ``NAME.rejects.jsonl`` beside ``NAME.parquet`` (:func:`rejects_path`): one
``{"path", "reason"}`` object per line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datasets.errors import DataError

KINDS = ("speech", "noise", "rir")
SPLITS = ("train", "valid", "test")

BASE_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("sample_rate", pa.int32(), nullable=False),
    pa.field("channels", pa.int16(), nullable=False),
    pa.field("frames", pa.int64(), nullable=False),
    pa.field("duration_s", pa.float64(), nullable=False),
    pa.field("speaker", pa.string(), nullable=False),
    pa.field("corpus", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
]
KIND_FIELDS = {
    "speech": [],
    "noise": [pa.field("noise_type", pa.string())],
    "rir": [pa.field("rt60", pa.float64()), pa.field("drr", pa.float64()), pa.field("c50", pa.float64())]
    # generated rooms (datasets.banks.make_rir_bank) also record octave-band RT60s and their class and target
    + [pa.field(name, pa.float64()) for name in ("rt60_mid", "rt60_8k", "target_rt60")]
    + [pa.field("room_type", pa.string())],
}

_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")
METADATA_KEY = b"hires"


def rejects_path(manifest: str | Path) -> Path:
    """Where a manifest's rejects go: ``vctk.parquet`` -> ``vctk.rejects.jsonl`` in the same folder."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.rejects.jsonl")


def schema_for(kind: str) -> pa.Schema:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return pa.schema(BASE_FIELDS + KIND_FIELDS[kind])


def stable_hash(text: str) -> int:
    """64-bit hash that is the same in every process and on every machine (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def sanitize_id(text: str) -> str:
    """Map any string to the id alphabet ``[A-Za-z0-9_-]`` (runs of other characters become one ``_``)."""
    return _ID_BAD.sub("_", text).strip("_") or "x"


def make_ids(corpus: str, rel_paths: list[str]) -> list[str]:
    """Stable, unique ids from relative paths: ``{corpus}_{path without extension}``.

    Two paths that sanitise to the same id (``a/b.wav`` and ``a_b.flac``) both get a short hash of their path
    appended, so an id never depends on which other files exist beyond its collision group.
    """
    bases = [sanitize_id(f"{corpus}_{str(Path(p).with_suffix(''))}") for p in rel_paths]
    counts: dict[str, int] = {}
    for b in bases:
        counts[b] = counts.get(b, 0) + 1
    return [
        b if counts[b] == 1 else f"{b}-{hashlib.blake2b(p.encode(), digest_size=4).hexdigest()}"
        for b, p in zip(bases, rel_paths, strict=True)
    ]


def assign_split(corpus: str, speaker: str, ratios: tuple[float, float, float]) -> str:
    """Deterministic split from a hash of ``corpus/speaker``: all files of a speaker land in one split."""
    u = stable_hash(f"{corpus}/{speaker}") / 2**64
    train, valid, _ = ratios
    if u < train:
        return "train"
    if u < train + valid:
        return "valid"
    return "test"


def write_manifest(
    rows: Iterable[dict], path: str | Path, kind: str, metadata: dict | None = None
) -> pa.Table:
    """Write rows (dicts with the manifest columns) sorted by id; duplicate ids are an error. ``metadata`` (JSON
    data) is stored in the file (:func:`manifest_metadata` reads it back)."""
    schema = schema_for(kind)
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    rows = sorted(rows, key=lambda r: r["id"])
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate manifest id {dup!r}")
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return table


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A whole (small) Parquet table from a local path or URI.

    Read from an in-memory buffer without Arrow's thread pool: pyarrow 25 can abort the interpreter at exit
    ("terminate called without an active exception") after a threaded read from a Python file object.
    """
    from datasets.audio import read_bytes

    return pq.read_table(pa.BufferReader(read_bytes(path)), columns=columns, use_threads=False)


def manifest_metadata(path: str | Path) -> dict:
    """What :func:`write_manifest` stored with the manifest (``{}`` for a manifest without it)."""
    import pyarrow.parquet as pq

    from datasets.audio import read_bytes

    meta = pq.read_schema(pa.BufferReader(read_bytes(path))).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def read_manifest(path: str | Path, kind: str | None = None, what: str | None = None):
    """Read a manifest as a pandas DataFrame, checking the required columns (and the kind, when given).

    ``what`` (e.g. the flag ``--noise``) starts every error message, so it names where the path came from.
    """
    where = f"{what} {path}" if what else str(path)
    try:
        table = read_parquet(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: manifest not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: is a directory, expected a manifest (.parquet file)") from None
    except Exception as e:
        raise DataError(f"{where}: not a readable Parquet manifest: {e}") from e
    missing = [f.name for f in BASE_FIELDS if f.name not in table.column_names]
    if missing:
        raise DataError(f"{where}: manifest lacks column(s) {', '.join(missing)}")
    df = table.to_pandas()
    if kind is not None and len(df) and set(df["kind"]) != {kind}:
        found = ", ".join(sorted(set(df["kind"])))
        raise DataError(f"{where}: expected a {kind} manifest, found kind(s) {found}")
    return df


def write_rejects(rejects: Iterable[dict], path: str | Path) -> int:
    """Write ``{path, reason}`` lines sorted by path (atomically: temp name, then rename); returns the count."""
    rejects = sorted(rejects, key=lambda r: r["path"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rejects:
            f.write(json.dumps({"path": r["path"], "reason": r["reason"]}) + "\n")
    tmp.replace(path)
    return len(rejects)
