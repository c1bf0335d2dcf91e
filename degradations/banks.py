"""Noise and RIR banks: audio by id, read lazily and cached per process.

A :class:`Banks` holds only small tables (id -> path, frames, rt60 ...) and is cheap to pickle, so a Ray task can
receive it; decoded audio lives in a per-process LRU cache bounded in bytes (shared by every ``Banks`` object in
the process), so each worker decodes a bank file once however many samples use it. Audio is returned as float32
mono at the bank sample rate (noise files are downmixed; RIRs keep their first channel, since averaging
microphones would smear the direct path). The cache holds 384 MB by default; ``HIRES_BANK_CACHE_MB`` overrides it.
What operators compute from an entry alone (a prepared RIR, its spectrum) is kept the same way, once per process,
in a second cache of the same size (:meth:`Banks.derived`).

:meth:`Banks.catalog` is what :func:`degradations.plan` sees: ids sorted, frames, native sample rate and RIR
acoustics, no paths, so a plan does not depend on where the files live or in which order a manifest lists them.
:func:`rate_filtered_catalog` drops the files recorded below a rate: planning draws by default only bank files at or
above the output rate, since a 16 kHz RIR or noise, upsampled, low-passes the whole degraded input at 8 kHz
while the sample is labelled only "reverb" or "noise" (``banks.min_sample_rate`` in the synthesis config lowers
the bar; each sample's metadata then tells the native rates it used, :func:`native_rates`).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.config import ConfigError
from datasets.errors import DataError
from datasets.manifest import read_manifest

DEFAULT_CACHE_BYTES = 384 * 1024 * 1024
CACHE_ENV = "HIRES_BANK_CACHE_MB"  # per-process cache size override, e.g. set through a Ray runtime_env


@dataclass(frozen=True)
class BankEntry:
    """One bank file: where it is, its native rate and length, and optional acoustic metadata."""

    id: str
    path: str | None
    sample_rate: int
    frames: int
    meta: dict[str, Any] = field(default_factory=dict)


def _nbytes(value: Any) -> int:
    """Bytes held by a cached value: an array, or a tuple of arrays and small scalars."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return 64


class _ByteLRU:
    """Thread-safe LRU of numpy arrays (or tuples of them) bounded by their total ``nbytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.items: OrderedDict[tuple, Any] = OrderedDict()
        self.lock = threading.Lock()
        self.misses = 0

    def get(self, key: tuple) -> Any:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        with self.lock:
            self.misses += 1
            size = _nbytes(value)
            if size > self.max_bytes or key in self.items:
                return
            self.items[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.nbytes -= _nbytes(old)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.nbytes = 0


def _cache_limit() -> int:
    value = os.environ.get(CACHE_ENV)
    if not value:
        return DEFAULT_CACHE_BYTES
    try:
        mb = float(value)
    except ValueError:
        raise ConfigError(f"{CACHE_ENV}={value!r}: expected a number of megabytes") from None
    return int(mb * 1024 * 1024)


_CACHE = _ByteLRU(_cache_limit())
# what operators derive from bank audio (prepared RIRs, their spectra): its own budget, so that it never evicts
# decoded audio (decoding is the expensive part)
_DERIVED = _ByteLRU(_cache_limit())
_RIR_METRICS: dict[
    tuple, dict[str, float | None]
] = {}  # measured once per RIR and process (a few floats each)
ROOM_KEYS = ("rt60", "drr", "c50")
BANK_KINDS = ("noise", "rir")


def audio_cache() -> _ByteLRU:
    """The process-wide decoded-audio cache (exposed for tests and for sizing)."""
    return _CACHE


def derived_cache() -> _ByteLRU:
    """The process-wide cache of values derived from bank audio (see :meth:`Banks.derived`)."""
    return _DERIVED


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, tuple):
        for v in value:
            _read_only(v)
    return value


def _finite_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _entries_from_manifest(path: str | Path, kind: str, split: str | None) -> dict[str, BankEntry]:
    df = read_manifest(path)
    for column in ("id", "path", "sample_rate", "frames"):
        if column not in df.columns:
            raise DataError(f"{path}: {kind} manifest has no column {column!r}")
    if split is not None:
        if "split" not in df.columns:
            raise DataError(f"{path}: {kind} manifest has no column 'split' to select {split!r}")
        df = df[df["split"] == split]
    meta_columns = ("rt60", "drr", "c50", "rt60_mid", "rt60_8k") if kind == "rir" else ("noise_type",)
    entries: dict[str, BankEntry] = {}
    for row in df.itertuples(index=False):
        rid = str(row.id)
        if rid in entries:
            raise DataError(f"{path}: duplicate {kind} id {rid!r}")
        meta: dict[str, Any] = {}
        for column in meta_columns:
            if column in df.columns:
                value = getattr(row, column)
                meta[column] = (
                    _finite_or_none(value) if kind == "rir" else (None if value is None else str(value))
                )
        entries[rid] = BankEntry(rid, str(row.path), int(row.sample_rate), int(row.frames), meta)
    if not entries:
        raise DataError(f"{path}: {kind} manifest has no rows" + (f" in split {split!r}" if split else ""))
    return entries


class Banks:
    """Noise and RIR audio by id at one sample rate, decoded lazily and cached per process."""

    def __init__(
        self,
        sr: int = 48000,
        noise: Mapping[str, BankEntry] | None = None,
        rir: Mapping[str, BankEntry] | None = None,
        arrays: Mapping[tuple[str, str], np.ndarray] | None = None,
    ) -> None:
        self.sr = int(sr)
        self._entries = {"noise": dict(noise or {}), "rir": dict(rir or {})}
        # in-memory banks (tests, benchmarks) travel with the object instead of living in the process cache
        self._arrays = dict(arrays or {})
        self._held_derived: dict[tuple, Any] = {}  # derived values of in-memory entries (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_held_derived"] = {}
        return state

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_manifests(
        cls,
        noise_manifest: str | Path | None,
        rir_manifest: str | Path | None,
        sr: int = 48000,
        split: str | None = None,
    ) -> Banks:
        """Banks described by Parquet manifests (either may be None: the operator needing it is not planned).

        ``split`` keeps only rows of that split (e.g. ``"train"``).
        """
        noise = _entries_from_manifest(noise_manifest, "noise", split) if noise_manifest is not None else {}
        rir = _entries_from_manifest(rir_manifest, "rir", split) if rir_manifest is not None else {}
        return cls(sr=sr, noise=noise, rir=rir)

    @classmethod
    def from_arrays(
        cls,
        sr: int = 48000,
        noise: Mapping[str, np.ndarray] | None = None,
        rir: Mapping[str, np.ndarray] | None = None,
        rir_meta: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Banks:
        """Banks held in memory (already at ``sr``): for tests, benchmarks and notebooks."""
        entries: dict[str, dict[str, BankEntry]] = {"noise": {}, "rir": {}}
        arrays: dict[tuple[str, str], np.ndarray] = {}
        for kind, table in (("noise", noise or {}), ("rir", rir or {})):
            for bid, arr in table.items():
                a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).reshape(-1))
                meta = dict((rir_meta or {}).get(bid, {})) if kind == "rir" else {}
                entries[kind][bid] = BankEntry(str(bid), None, int(sr), len(a), meta)
                arrays[(kind, str(bid))] = a
        return cls(sr=sr, noise=entries["noise"], rir=entries["rir"], arrays=arrays)

    # ---------------------------------------------------------------------------------------------- access

    def entry(self, kind: str, bank_id: str) -> BankEntry:
        try:
            return self._entries[kind][bank_id]
        except KeyError:
            known = len(self._entries.get(kind, {}))
            raise KeyError(f"{kind} bank has no id {bank_id!r} ({known} ids loaded)") from None

    def noise(self, bank_id: str) -> np.ndarray:
        """Noise ``bank_id`` as float32 mono at ``self.sr`` (read-only array, shared through the cache)."""
        return self._audio("noise", bank_id)

    def rir(self, bank_id: str) -> np.ndarray:
        """RIR ``bank_id`` as float32 at ``self.sr`` (first channel; read-only, shared through the cache)."""
        return self._audio("rir", bank_id)

    def rir_info(self, bank_id: str) -> dict[str, float | None]:
        """``rt60`` / ``drr`` / ``c50`` of RIR ``bank_id``: the manifest's values, measured on the RIR where missing.

        Measurements (:func:`datasets.banks.rir_metrics`, NaN -> None) are made once per RIR and process.
        """
        entry = self.entry("rir", bank_id)
        info = {k: entry.meta.get(k) for k in ROOM_KEYS}
        if any(v is None for v in info.values()):
            if entry.path is not None:
                key = ("rir", entry.path, self.sr)
            else:  # in-memory RIRs have no path: key them by content
                key = (
                    "rir",
                    hashlib.blake2b(self.rir(bank_id).tobytes(), digest_size=16).hexdigest(),
                    self.sr,
                )
            measured = _RIR_METRICS.get(key)
            if measured is None:
                from datasets.banks import rir_metrics

                raw = rir_metrics(self.rir(bank_id), self.sr)
                measured = {k: (float(raw[k]) if math.isfinite(raw[k]) else None) for k in ROOM_KEYS}
                _RIR_METRICS[key] = measured
            info = {k: (v if v is not None else measured[k]) for k, v in info.items()}
        return info

    def derived(self, kind: str, bank_id: str, what: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, a value derived from entry ``bank_id`` alone and named by ``what`` (e.g. a RIR's spectrum at
        one FFT size), computed once per process and entry and then shared, read-only.

        File entries keep derived values in a process-wide LRU bounded like the audio cache (by the same
        ``HIRES_BANK_CACHE_MB``, separately from it); in-memory entries keep them on this object. ``what`` must
        name everything besides the entry's audio and ``self.sr`` that the value depends on.
        """
        entry = self.entry(kind, bank_id)
        if (kind, bank_id) in self._arrays:
            key = (kind, bank_id, *what)
            value = self._held_derived.get(key)
            if value is None:
                value = self._held_derived[key] = _read_only(make())
            return value
        key = (kind, entry.path, self.sr, *what)
        value = _DERIVED.get(key)
        if value is None:
            value = _read_only(make())
            _DERIVED.put(key, value)
        return value

    def _audio(self, kind: str, bank_id: str) -> np.ndarray:
        entry = self.entry(kind, bank_id)
        held = self._arrays.get((kind, bank_id))
        if held is not None:
            return held
        key = (kind, entry.path, self.sr)
        arr = _CACHE.get(key)
        if arr is None:
            arr = self._decode(kind, entry)
            arr.setflags(write=False)
            _CACHE.put(key, arr)
        return arr

    def _decode(self, kind: str, entry: BankEntry) -> np.ndarray:
        from datasets.audio import read_audio, resample

        if kind == "rir":
            x, file_sr = read_audio(entry.path, mono=False)
            x = x[:, 0] if x.ndim == 2 else x
            x = resample(x, file_sr, self.sr)
        else:
            x, _ = read_audio(entry.path, sr=self.sr, mono=True)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            raise DataError(f"{entry.path}: {kind} file {entry.id!r} has no samples")
        return x

    # --------------------------------------------------------------------------------------------- catalogue

    def catalog(self) -> dict[str, Any]:
        """Small JSON-able description for planning: per kind, entries sorted by id with frames at ``sr`` and the
        file's native ``sample_rate`` (every entry; :func:`rate_filtered_catalog` selects by rate)."""

        def frames_at_sr(e: BankEntry) -> int:
            return int(round(e.frames * self.sr / e.sample_rate)) if e.sample_rate else e.frames

        out: dict[str, Any] = {"sample_rate": self.sr}
        for kind, table in self._entries.items():
            out[kind] = [
                {"id": e.id, "frames": frames_at_sr(e), "sample_rate": e.sample_rate, **e.meta}
                for _, e in sorted(table.items())
            ]
        return out

    def __repr__(self) -> str:
        return f"Banks(sr={self.sr}, noise={len(self._entries['noise'])}, rir={len(self._entries['rir'])})"


def rate_filtered_catalog(catalog: Mapping[str, Any], min_sample_rate: int | None = None) -> tuple[dict, int]:
    """``(catalog without the bank files recorded below min_sample_rate, number of files left out)``.

    ``min_sample_rate`` None means the catalogue's own rate (the output rate): only files at or above it are
    drawn. A bank whose every file is below the bar is a :class:`DataError` naming the rates, rather than a
    chain that silently never plans reverb (or noise). Entries without a ``sample_rate`` are kept.
    """
    bar = int(catalog.get("sample_rate", 0) if min_sample_rate is None else min_sample_rate)
    out = dict(catalog)
    dropped = 0
    for kind in BANK_KINDS:
        entries = list(catalog.get(kind) or [])
        kept = [e for e in entries if int(e.get("sample_rate") or bar) >= bar]
        if entries and not kept:
            rates = sorted({int(e["sample_rate"]) for e in entries})
            raise DataError(
                f"{kind} bank: all {len(entries)} files are below {bar} Hz (native rates "
                f"{', '.join(map(str, rates))} Hz); set banks.min_sample_rate to {rates[-1]} to draw them anyway"
            )
        dropped += len(entries) - len(kept)
        out[kind] = kept
    return out, dropped


def native_rates(banks: Banks | None, report: Mapping[str, Any]) -> dict[str, int | None]:
    """``noise_sample_rate`` and ``rir_sample_rate``: the native rates of the bank files a rendered sample used
    (from its report's ``noise_id`` / ``rir_id``; None where that step did not run)."""
    out: dict[str, int | None] = {}
    for kind in BANK_KINDS:
        bank_id = report.get(f"{kind}_id")
        entry = banks.entry(kind, bank_id) if banks is not None and bank_id is not None else None
        out[f"{kind}_sample_rate"] = entry.sample_rate if entry is not None else None
    return out
