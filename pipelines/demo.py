"""The main job on embedded defaults: demo corpus -> noise and RIR banks -> manifests -> synthesis.

Every step writes under one output folder and is deterministic for the seed, so running the demo twice gives the
same bytes and a second run resumes (synthesis keeps complete shards). Later stages (training, restore,
evaluation) join this chain as they land.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from datasets.config import CONFIG_ROOT, StrictModel, load_config

log = logging.getLogger(__name__)
DEFAULT_CONFIG = CONFIG_ROOT / "demo.yaml"


class DemoCorpus(StrictModel):
    minutes: float = Field(3.0, gt=0)
    speakers: int = Field(8, ge=1)


class DemoNoise(StrictModel):
    minutes: float = Field(1.0, gt=0)


class DemoRir(StrictModel):
    count: int = Field(12, ge=1)


class DemoSynth(StrictModel):
    config: str = "synth/default.yaml"
    samples_per_shard: int = Field(8, ge=1)


class DemoConfig(StrictModel):
    seed: int = 0
    corpus: DemoCorpus = DemoCorpus()
    noise: DemoNoise = DemoNoise()
    rir: DemoRir = DemoRir()
    synth: DemoSynth = DemoSynth()


@dataclass
class DemoResult:
    out: Path
    steps: dict[str, dict] = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [f"hires demo: outputs in {self.out}"]
        for name, info in self.steps.items():
            details = ", ".join(f"{k} {v}" for k, v in info.items() if k != "path")
            lines.append(f"  {name:<8} {info.get('path', '')}  ({details})")
        return lines


def run_demo(
    out: str | Path, cfg: DemoConfig, num_cpus: int | None = None, progress: bool = True
) -> DemoResult:
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus
    from datasets.manifest import read_manifest
    from datasets.synth_config import load_synth_config
    from pipelines.synth_run import run_synth

    out = Path(out).resolve()
    result = DemoResult(out=out)

    t = time.perf_counter()
    clean = make_demo_corpus(
        out / "corpus",
        minutes=cfg.corpus.minutes,
        seed=cfg.seed,
        speakers=cfg.corpus.speakers,
        progress=progress,
    )
    df = read_manifest(clean)
    result.steps["corpus"] = {
        "path": str(clean),
        "files": len(df),
        "speakers": int(df.speaker.nunique()),
        "minutes": round(float(df.duration_s.sum()) / 60, 2),
        "seconds_taken": round(time.perf_counter() - t, 1),
    }

    t = time.perf_counter()
    noise = make_noise_bank(
        out / "banks" / "noise", minutes=cfg.noise.minutes, seed=cfg.seed, progress=progress
    )
    df = read_manifest(noise)
    result.steps["noise"] = {
        "path": str(noise),
        "files": len(df),
        "types": int(df.noise_type.nunique()),
        "seconds_taken": round(time.perf_counter() - t, 1),
    }

    t = time.perf_counter()
    rir = make_rir_bank(out / "banks" / "rir", count=cfg.rir.count, seed=cfg.seed, progress=progress)
    df = read_manifest(rir)
    result.steps["rir"] = {
        "path": str(rir),
        "rooms": len(df),
        "rt60_s": f"{df.rt60.min():.2f}-{df.rt60.max():.2f}",
        "seconds_taken": round(time.perf_counter() - t, 1),
    }

    synth_cfg = load_synth_config(
        CONFIG_ROOT / cfg.synth.config, {"shards.samples_per_shard": cfg.synth.samples_per_shard}
    )
    args = (str(clean), str(noise), str(rir), str(out / "shards"), synth_cfg)
    try:
        summary = run_synth(*args, seed=cfg.seed, num_cpus=num_cpus, progress=progress)
    except FileExistsError as e:
        # the demo folder is disposable: after a code or config change, render it anew instead of failing
        log.warning("%s; rendering the demo shards again", str(e).split(";")[0])
        summary = run_synth(*args, seed=cfg.seed, num_cpus=num_cpus, progress=progress, force=True)
    result.steps["synth"] = {
        "path": str(out / "shards" / "index.json"),
        "shards": summary.shards,
        "samples": summary.samples,
        "hours": round(summary.hours, 4),
        "x_realtime_per_core": round(summary.x_realtime_per_core, 1),
    }
    return result


def load_demo_config(path: str | Path | None = None, overrides: dict | None = None) -> DemoConfig:
    return load_config(DemoConfig, path or DEFAULT_CONFIG, overrides)
