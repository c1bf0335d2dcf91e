"""Rendering planned samples: source slice -> 48 kHz segment -> degradation chain -> the arrays in the shards.

Pure apart from reading the sources: no Ray. Synthesis renders whole shards with :func:`render_shard_bytes`;
training's online mode renders samples one at a time with :func:`render_sample` and gets exactly the arrays that
synthesis encodes as FLAC (float32 at the output rate, already clipped to the PCM-safe range), so online and
offline data agree to the last bit before encoding.

The code version of synthesis (:func:`synth_code_version`) hashes the import closure of this module and of
:mod:`datasets.synth_plan`: every project module whose code can change a planned or rendered byte.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from datasets import storage
from datasets.audio import AudioError, encode_audio, is_uri, read_audio, resample
from datasets.code_version import code_version
from datasets.shards import ShardWriter
from datasets.synth_config import SynthConfig

# the entry points of everything that decides the bytes of a plan and of its shards
CODE_ENTRY_MODULES = ("datasets.synth_plan", "datasets.synth_render")


def synth_code_version() -> str:
    """``{package version}+src.{hash}`` of the planning and rendering code (see :mod:`datasets.code_version`)."""
    return code_version(list(CODE_ENTRY_MODULES))


@dataclass
class RenderedSample:
    """One rendered sample: float32 ``clean`` (the target) and ``degraded`` at the output rate, equal length,
    PCM-safe, exactly what is FLAC-encoded; ``meta`` is the ``{key}.json`` member."""

    key: str
    clean: np.ndarray
    degraded: np.ndarray
    meta: dict


@dataclass
class ShardResult:
    """What :func:`render_shard_bytes` wrote: sample count, rejected samples, byte count and sha256."""

    samples: int
    bytes: int
    sha256: str
    rejects: list[dict] = field(default_factory=list)


@functools.lru_cache(maxsize=4)
def cached_banks(noise_manifest: str, rir_manifest: str, sr: int):
    """Banks built once per process and reused by every sample it renders (they cache decoded audio)."""
    from degradations import Banks

    return Banks.from_manifests(noise_manifest, rir_manifest, sr=sr)


def read_source(row: dict, remote: dict, attempts: int = 4) -> tuple[np.ndarray, int]:
    """The sample's slice of its source, at the source rate. I/O errors (network, object store) are retried,
    then raised as OSError so the task fails and a rerun resumes: a transient error must never turn into a
    reject, which would make the output depend on luck. Decoding errors raise :class:`AudioError` (a reject).

    A remote (URI) source is fetched once and kept in ``remote`` while consecutive samples (the segments of one
    utterance are adjacent in plan order) slice it; local sources are read slice by slice."""
    path = row["path"]
    for attempt in range(attempts):
        try:
            if is_uri(path) and remote.get("path") != path:
                remote.clear()
                remote.update(path=path, data=storage.read_bytes(path))
            data = remote["data"] if is_uri(path) else None
            return read_audio(path, start=row["offset"], frames=row["frames"], data=data)
        except (AudioError, OSError) as e:
            io_error = isinstance(e, OSError) or isinstance(e.__cause__, OSError)
            if not io_error:
                raise
            if attempt == attempts - 1:
                raise OSError(f"{path}: cannot read the source of {row['key']}: {e}") from e
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def pcm_safe(x: np.ndarray) -> np.ndarray:
    # libsndfile does not clip float -> int conversions; the chain peaks at 0.99, this only guards overflow
    return np.clip(x, -1.0, 1.0 - 2.0**-23).astype(np.float32, copy=False)


def sample_metadata(row: dict, cfg: SynthConfig, seed: int, report: dict, code_version: str) -> dict:
    """The ``{key}.json`` member: enough to re-render the sample from the plan alone."""
    sr_src = row["source_sample_rate"]
    sr = cfg.segment.sample_rate
    return {
        "key": row["key"],
        "source_id": row["source_id"],
        "speaker": row["speaker"],
        "corpus": row["corpus"],
        "split": row["split"],
        "offset": row["offset"],
        "offset_s": row["offset"] / sr_src,
        "source_sample_rate": sr_src,
        "sample_rate": sr,
        "samples": cfg.segment.samples,
        "valid": row["valid"],
        "valid_s": row["valid"] / sr,
        "seed": seed,
        "ops": json.loads(row["steps"]),
        # measured values of the report (it holds every operator's keys, None where one did not run), under
        # short names; the full report follows
        "snr_db": report["achieved_snr_db"],
        "rt60": report["rt60"],
        "codec": report["codec"],
        "bitrate_kbps": report["bitrate_kbps"],
        "report": report,
        "code_version": code_version,
    }


def render_sample(
    row: dict, x: np.ndarray, sr: int, cfg: SynthConfig, seed: int, banks: Any, code_version: str
) -> RenderedSample:
    """Render plan row ``row`` from its source slice ``x`` at ``sr`` (as :func:`read_source` returns it).

    Raises :class:`AudioError` for a source slice with non-finite samples (synthesis records a reject).
    """
    from degradations import fit_length, render
    from degradations.banks import native_rates

    out_sr = cfg.segment.sample_rate
    if sr != out_sr:
        x = resample(x, sr, out_sr)
    clean = fit_length(x, cfg.segment.samples)
    if not np.all(np.isfinite(clean)):
        raise AudioError(f"{row['path']}: non-finite samples")
    out = render(clean, out_sr, json.loads(row["steps"]), banks, valid=row["valid"])
    meta = sample_metadata(row, cfg, seed, out.report, code_version)
    meta.update(native_rates(banks, out.report))  # noise_sample_rate, rir_sample_rate of the bank files used
    return RenderedSample(row["key"], pcm_safe(out.target), pcm_safe(out.degraded), meta)


def encode_sample(sample: RenderedSample, cfg: SynthConfig) -> tuple[bytes, bytes]:
    """The FLAC bytes of a rendered sample's clean and degraded signals."""
    sr, subtype = cfg.segment.sample_rate, cfg.shards.flac_subtype
    return encode_audio(sample.clean, sr, "FLAC", subtype), encode_audio(sample.degraded, sr, "FLAC", subtype)


def render_shard_bytes(
    rows: list[dict], fileobj: IO[bytes], cfg: SynthConfig, seed: int, banks: Any, code_version: str
) -> ShardResult:
    """Render the plan rows of one shard, in order, as a shard tar streamed into ``fileobj``.

    A sample whose source does not decode (or holds non-finite values) is left out and listed in ``rejects``
    (``{key, reason}``); I/O errors propagate (see :func:`read_source`).
    """
    rejects: list[dict] = []
    remote: dict = {}  # the current remote source's bytes (see read_source)
    with ShardWriter(fileobj) as writer:
        for row in rows:
            try:
                x, sr = read_source(row, remote)
                sample = render_sample(row, x, sr, cfg, seed, banks, code_version)
            except AudioError as e:  # undecodable source: recorded, the shard goes on without it
                rejects.append({"key": row["key"], "reason": str(e)})
                continue
            clean_flac, degraded_flac = encode_sample(sample, cfg)
            writer.add(sample.key, clean_flac, degraded_flac, sample.meta)
    return ShardResult(writer.samples, writer.bytes, writer.sha256, rejects)
