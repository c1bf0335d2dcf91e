"""The record of a synthesis run: ``index.json`` (deterministic) and the run summary (timings, for people).

``index.json`` lists the shards sorted by name with ``{name, split, samples, seconds, bytes, sha256}`` and holds
what a reader needs to trust them: ``format_version``, ``code_version``, ``seed``, the output ``config`` (with
the concrete ``shards.samples_per_shard``), ``config_sha256`` and the manifests' sha256 (the run identity),
``sample_rate``, ``segment_samples``, planning counts with the plan's sha256, library versions, rejects and
totals. Nothing in it depends on timing, worker count, host or paths.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np

from datasets.shards import FORMAT_VERSION
from datasets.synth_config import SynthConfig, output_config
from datasets.synth_plan import PlanStats


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose output enters the shards (recorded in the index, not compared)."""
    import soundfile

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }
    for name in ("scipy", "soxr", "pyarrow", "av", "fast-mp3-augment", "audiomentations", "soundfile"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_index(
    cfg: SynthConfig, identity: dict, plan_stats: PlanStats, plan_data: bytes, entries: list[dict]
) -> dict:
    """``index.json`` of a run rendered with ``cfg`` (concrete shard size): shards sorted by name."""
    shards = [{k: e[k] for k in ("name", "split", "samples", "seconds", "bytes", "sha256")} for e in entries]
    rejects = sorted((r for e in entries for r in e["rejects"]), key=lambda r: r["key"])
    seconds = sum(s["seconds"] for s in shards)
    return {
        "format_version": FORMAT_VERSION,
        "code_version": identity["code_version"],
        "seed": identity["seed"],
        "config": output_config(cfg),
        "config_sha256": identity["config_sha256"],
        "manifests": identity["manifests"],
        "sample_rate": cfg.segment.sample_rate,
        "segment_samples": cfg.segment.samples,
        "plan": {**plan_stats.as_dict(), "sha256": hashlib.sha256(plan_data).hexdigest()},
        "libraries": library_versions(),
        "shards": shards,
        "rejects": rejects,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "seconds": round(seconds, 6),
            "hours": round(seconds / 3600, 6),
            "bytes": sum(s["bytes"] for s in shards),
            "rejects": len(rejects),
        },
    }


@dataclass
class SynthSummary:
    out: str
    shards: int
    rendered: int
    kept: int
    samples: int
    hours: float
    rejects: int
    rendered_seconds: float
    wall_s: float
    cpus: float
    task_cpu_s: float
    index: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_run(cls, out: str, index: dict, entries: list[dict], wall_s: float, cpus: float) -> SynthSummary:
        rendered = [e for e in entries if not e["kept"]]
        return cls(
            out=out,
            shards=len(entries),
            rendered=len(rendered),
            kept=len(entries) - len(rendered),
            samples=index["totals"]["samples"],
            hours=index["totals"]["hours"],
            rejects=index["totals"]["rejects"],
            rendered_seconds=sum(e["seconds"] for e in rendered),
            task_cpu_s=sum(e["cpu_s"] for e in rendered),
            wall_s=wall_s,
            cpus=cpus,
            index=index,
        )

    @property
    def x_realtime(self) -> float:
        """Seconds of audio rendered (kept shards excluded) per wall second."""
        return self.rendered_seconds / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def x_realtime_per_core(self) -> float:
        return self.x_realtime / self.cpus if self.cpus else 0.0

    @property
    def x_realtime_per_cpu_second(self) -> float:
        """Audio seconds rendered per CPU second spent in the shard tasks: the per-core speed without the
        effect of idle or shared cores (start-up and scheduling are not counted)."""
        return self.rendered_seconds / self.task_cpu_s if self.task_cpu_s > 0 else 0.0

    def lines(self) -> list[str]:
        head = (
            f"wrote {self.out}: {self.samples} samples, {self.hours:.3f} h in {self.shards} shards "
            f"({self.rendered} rendered, {self.kept} kept), {self.rejects} rejects"
        )
        if not self.rendered:
            return [head, f"{self.wall_s:.1f} s wall: every shard was already complete and intact"]
        return [
            head,
            f"{self.wall_s:.1f} s wall, {self.x_realtime:.1f}x real time, {self.x_realtime_per_core:.1f}x real time "
            f"per core ({self.cpus:g} cores), {self.x_realtime_per_cpu_second:.1f}x real time per task CPU second",
        ]
