"""Tiny shard sets for the training data tests, written with the shard writer (no synthesis, no Ray).

:func:`write_shard_set` writes ``index.json`` + ``shards/*.tar`` in the synthesis layout with short segments of
seeded noise (the loader does not care what the audio is), so a set of a few shards takes milliseconds. The
fixtures ``shard_set`` (3 train shards of 3, 3 and 2 samples, 1 valid shard of 2) and ``train_only_shard_set``
(3 train shards, no valid split) are session-scoped; tests that damage a set work on a copy.

:func:`synth_shard_set` renders real synthesis shards of a clean manifest in this process, with the functions
synthesis itself uses (:func:`datasets.synth_plan.make_plan`, :func:`datasets.synth_render.render_shard_bytes`):
what online mode must reproduce. ``tiny_synth_inputs`` is a small demo corpus with banks for it.
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


def synth_shard_set(root: Path, inputs: dict[str, str], seed: int, samples_per_shard: int = 4) -> Path:
    """Plan and render every shard of ``inputs["clean"]`` in-process (no Ray) into ``root``; a minimal index."""
    from datasets import shards
    from datasets.manifest import read_manifest
    from datasets.synth_config import load_synth_config
    from datasets.synth_plan import make_plan
    from datasets.synth_render import cached_banks, render_shard_bytes, synth_code_version

    cfg = load_synth_config(overrides={"shards.samples_per_shard": samples_per_shard})
    banks = cached_banks(inputs["noise"], inputs["rir"], cfg.segment.sample_rate)
    plan = make_plan(read_manifest(inputs["clean"], kind="speech"), cfg, seed, banks.catalog())
    rows = plan.table.to_pylist()
    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    entries = []
    for shard in sorted({r["shard"] for r in rows}):
        mine = [r for r in rows if r["shard"] == shard]
        name = shards.shard_name(shard)
        with open(root / "shards" / name, "wb") as f:
            result = render_shard_bytes(mine, f, plan.cfg, seed, banks, synth_code_version())
        entries.append(
            {
                "name": name,
                "split": mine[0]["split"],
                "samples": result.samples,
                "seconds": result.samples * cfg.segment.seconds,
                "bytes": result.bytes,
                "sha256": result.sha256,
            }
        )
    index = {
        "format_version": shards.FORMAT_VERSION,
        "code_version": synth_code_version(),
        "seed": seed,
        "config": {},
        "sample_rate": cfg.segment.sample_rate,
        "segment_samples": cfg.segment.samples,
        "shards": entries,
    }
    (root / "index.json").write_bytes(shards.index_bytes(index))
    return root


@pytest.fixture(scope="session")
def tiny_synth_inputs(tmp_path_factory) -> dict[str, str]:
    """Manifests of 0.5 min of demo speech (2 speakers), 0.5 min of noise and 2 simulated rooms."""
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("tiny_synth_inputs")
    return {
        "clean": str(make_demo_corpus(root / "clean", minutes=0.5, seed=0, speakers=2, progress=False)),
        "noise": str(make_noise_bank(root / "noise", minutes=0.5, seed=0, progress=False)),
        "rir": str(make_rir_bank(root / "rir", count=2, seed=0, progress=False)),
    }
