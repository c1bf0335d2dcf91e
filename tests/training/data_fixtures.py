"""Tiny shard sets for the training data tests, written with the shard writer (no synthesis, no Ray).

:func:`write_shard_set` writes ``index.json`` + ``shards/*.tar`` in the synthesis layout with short segments of
seeded noise (the loader does not care what the audio is), so a set of a few shards takes milliseconds. The
fixtures ``shard_set`` (3 train shards of 3, 3 and 2 samples, 1 valid shard of 2) and ``train_only_shard_set``
(3 train shards, no valid split) are session-scoped; tests that damage a set work on a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

SEGMENT = 9600  # 0.2 s at 48 kHz: crops of 4800 leave 11 possible offsets on the 480 grid
SAMPLE_RATE = 48000


def write_shard_set(
    root: Path,
    layout: list[tuple[str, int]],
    segment: int = SEGMENT,
    sample_rate: int = SAMPLE_RATE,
    seed: int = 0,
    valid: int | None = None,
) -> Path:
    """A run directory with one shard per ``(split, samples)`` of ``layout``; keys ``utt{n:03d}_0000``.

    The degraded signal is the clean one plus noise, 12 dB hotter than clean at most, so loudness normalisation
    has something to do. ``valid`` sets every sample's valid (non-padded) length.
    """
    from datasets import shards
    from datasets.audio import encode_audio

    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    n = 0
    for i, (split, count) in enumerate(layout):
        name = shards.shard_name(i)
        with open(root / "shards" / name, "wb") as f, shards.ShardWriter(f) as writer:
            for _ in range(count):
                key = f"utt{n:03d}_0000"
                level = 10 ** rng.uniform(-2.5, -1.0)
                clean = (rng.standard_normal(segment) * level).astype(np.float32)
                degraded = clean + (rng.standard_normal(segment) * level * rng.uniform(0.5, 4.0))
                degraded = np.clip(degraded, -0.99, 0.99).astype(np.float32)
                meta = {"key": key, "split": split, "valid": valid or segment, "samples": segment}
                writer.add(
                    key,
                    encode_audio(clean, sample_rate),
                    encode_audio(degraded, sample_rate),
                    meta,
                )
                n += 1
        entries.append(
            {
                "name": name,
                "split": split,
                "samples": count,
                "seconds": count * segment / sample_rate,
                "bytes": writer.bytes,
                "sha256": writer.sha256,
            }
        )
    index = {
        "format_version": shards.FORMAT_VERSION,
        "code_version": "test",
        "seed": seed,
        "config": {},
        "sample_rate": sample_rate,
        "segment_samples": segment,
        "shards": entries,
        "totals": {"shards": len(entries), "samples": n},
    }
    (root / "index.json").write_bytes(shards.index_bytes(index))
    return root


def copy_shard_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def shard_set(tmp_path_factory) -> Path:
    """3 train shards (3, 3 and 2 samples) and 1 valid shard (2 samples)."""
    root = tmp_path_factory.mktemp("shard_set")
    return write_shard_set(root, [("train", 3), ("train", 3), ("train", 2), ("valid", 2)])


@pytest.fixture(scope="session")
def train_only_shard_set(tmp_path_factory) -> Path:
    """3 train shards of 2 samples each and no valid split (like the demo corpus)."""
    root = tmp_path_factory.mktemp("train_only_shard_set")
    return write_shard_set(root, [("train", 2), ("train", 2), ("train", 2)], seed=1)
