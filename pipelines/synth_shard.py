"""One shard task of a synthesis run: keep the shard if it is complete and intact, else render and publish it.

A task renders its shard's plan rows (its own row group of ``plan.parquet``) into a scratch file, publishes it
as ``DIR/shards/shard-NNNNNN.tar`` (rename locally, single upload on object stores) and only then records
``DIR/state/shard-NNNNNN.json`` (name, split, samples, seconds, bytes, sha256, rejects). A shard is visible under
its final name only once complete, and a state record vouches only for a published shard, so a kill at any point
loses at most the shards in flight; a rerun keeps every shard whose record exists and whose bytes still hash to
the recorded sha256 (checked here, inside the tasks, in parallel).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from datasets import storage
from datasets.audio import is_uri
from datasets.shards import shard_path
from datasets.synth_config import SynthConfig
from datasets.synth_plan import PLAN_FILE, read_plan_shard
from datasets.synth_render import cached_banks, render_shard_bytes


@dataclass(frozen=True)
class RenderContext:
    """What every shard task needs besides its shard spec (small and picklable); ``cfg`` has a concrete
    ``shards.samples_per_shard``."""

    out: str
    noise_manifest: str
    rir_manifest: str
    cfg: SynthConfig
    seed: int
    code_version: str

    @property
    def plan_path(self) -> str:
        return storage.join(self.out, PLAN_FILE)


def state_path(out: str, name: str) -> str:
    return storage.join(out, "state", name.replace(".tar", ".json"))


def kept_entry(ctx: RenderContext, name: str) -> dict | None:
    """The recorded entry of a complete shard whose bytes still hash to what was recorded, else ``None``."""
    record, tar_path = state_path(ctx.out, name), shard_path(ctx.out, name)
    if not storage.exists(record) or not storage.exists(tar_path):
        return None
    try:
        entry = json.loads(storage.read_bytes(record))
        if storage.size(tar_path) != entry["bytes"]:
            return None
        sha, _ = storage.sha256_of(tar_path)
    except (OSError, ValueError, KeyError):
        return None
    return entry if sha == entry["sha256"] else None


def render_shard(spec: dict, ctx: RenderContext) -> dict:
    """Render (or keep, if already complete and intact) one shard; returns its index entry plus run facts.

    ``spec``: ``{shard, name, split, planned}``. The returned row: ``name, split, samples, seconds, bytes,
    sha256`` (index entry), ``rejects`` (JSON list of ``{key, reason}``), ``kept`` (bool), ``render_s`` and
    ``cpu_s`` (wall and CPU seconds of the task; run facts, not part of the index).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    name = spec["name"]
    kept = kept_entry(ctx, name)
    if kept is not None:
        return {
            **kept,
            "rejects": json.dumps(kept["rejects"]),
            "kept": True,
            "render_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start,
        }

    cfg = ctx.cfg
    banks = cached_banks(ctx.noise_manifest, ctx.rir_manifest, cfg.segment.sample_rate)
    rows = read_plan_shard(ctx.plan_path, int(spec["shard"]))
    scratch_dir = storage.join(ctx.out, "tmp") if not is_uri(ctx.out) else tempfile.gettempdir()
    os.makedirs(scratch_dir, exist_ok=True)
    scratch = Path(scratch_dir, f"{name}.{uuid.uuid4().hex}.partial")
    try:
        with open(scratch, "wb") as f:
            result = render_shard_bytes(rows, f, cfg, ctx.seed, banks, ctx.code_version)
        entry = {
            "name": name,
            "split": spec["split"],
            "samples": result.samples,
            "seconds": round(result.samples * cfg.segment.samples / cfg.segment.sample_rate, 6),
            "bytes": result.bytes,
            "sha256": result.sha256,
            "rejects": result.rejects,
        }
        storage.publish_file(scratch, shard_path(ctx.out, name))
    finally:
        scratch.unlink(missing_ok=True)
    # the state record goes last: it vouches for a shard that is already complete under its final name
    storage.write_bytes(state_path(ctx.out, name), json.dumps(entry, sort_keys=True).encode())
    return {
        **entry,
        "rejects": json.dumps(result.rejects),
        "kept": False,
        "render_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
    }
