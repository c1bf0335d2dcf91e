"""The main job on embedded defaults: demo corpus -> noise and RIR banks -> synthesis -> training -> bundle ->
evaluation on held-out speakers -> one restored file.

Every step writes under one output folder and is deterministic for the seed, and a rerun resumes: the corpus
and banks are reused when generated with the same parameters and code, synthesis keeps complete shards, a
finished training run trains nothing, and the evaluation keeps the scores it already has. Training runs the four
tiny stages on Ray Train with two workers (recovery, autoencoder and vocoder from the shards, then the latent
diffusion model on the frozen recovery and autoencoder), tracked in one MLflow store (``OUT/train/mlflow.db``).
The demo corpus holds one validation speaker (the training runs' evaluation) and one test speaker, on whose
samples the bundled models are scored: degraded input, recovery stage and full restoration against clean.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from datasets.config import CONFIG_ROOT, StrictModel, load_config

log = logging.getLogger(__name__)
DEFAULT_CONFIG = CONFIG_ROOT / "demo.yaml"
STAGES = ("recovery", "autoencoder", "vocoder", "ldm")


class DemoCorpus(StrictModel):
    minutes: float = Field(3.0, gt=0)
    speakers: int = Field(8, ge=1)
    valid_speakers: int = Field(1, ge=0)  # held out for the training runs' evaluation
    test_speakers: int = Field(1, ge=0)  # held out for the final evaluation of the restorer

    @model_validator(mode="after")
    def _some_speakers_train(self) -> DemoCorpus:
        if self.valid_speakers + self.test_speakers >= self.speakers:
            raise ValueError(
                f"valid_speakers + test_speakers ({self.valid_speakers} + {self.test_speakers}) must leave at "
                f"least one of the {self.speakers} speakers for training"
            )
        return self


class DemoNoise(StrictModel):
    minutes: float = Field(1.0, gt=0)


class DemoRir(StrictModel):
    count: int = Field(12, ge=1)


class DemoSynth(StrictModel):
    config: str = "synth/default.yaml"
    samples_per_shard: int = Field(8, ge=1)
    overrides: dict[str, Any] = {}  # dotted synth-config fields, e.g. {"chain.noise.probability": 1.0}


class DemoTrain(StrictModel):
    """The tiny training runs of the demo (stage configs ``configs/train/<stage>/<config>.yaml``)."""

    enabled: bool = True
    stages: list[Literal["recovery", "autoencoder", "vocoder", "ldm"]] = [
        "recovery",
        "autoencoder",
        "vocoder",
        "ldm",
    ]
    config: str = "tiny"
    workers: int = Field(2, ge=1)
    steps: int = Field(20, ge=1)
    crop_seconds: float = Field(0.5, gt=0)
    # per stage: steps and config overrides that replace the defaults above for that stage
    stage_steps: dict[Literal["recovery", "autoencoder", "vocoder", "ldm"], int] = {}
    stage_overrides: dict[Literal["recovery", "autoencoder", "vocoder", "ldm"], dict[str, Any]] = {}

    @field_validator("stages")
    @classmethod
    def _ldm_needs_its_frozen_models(cls, stages: list[str]) -> list[str]:
        if "ldm" in stages and not {"recovery", "autoencoder"} <= set(stages):
            raise ValueError("ldm needs recovery and autoencoder before it")
        return stages


class DemoEvaluate(StrictModel):
    """After training: bundle the four models, score them on the held-out split, restore one held-out sample."""

    enabled: bool = True
    split: Literal["valid", "test"] = "test"
    steps: int | None = Field(None, ge=1)  # DDIM steps (None: the ldm config's sampler)
    limit: int | None = Field(None, ge=1)  # at most this many samples of the split


class DemoConfig(StrictModel):
    seed: int = 0
    corpus: DemoCorpus = DemoCorpus()
    noise: DemoNoise = DemoNoise()
    rir: DemoRir = DemoRir()
    synth: DemoSynth = DemoSynth()
    train: DemoTrain = DemoTrain()
    evaluate: DemoEvaluate = DemoEvaluate()


@dataclass
class DemoResult:
    out: Path
    steps: dict[str, dict] = field(default_factory=dict)
    tracking_uri: str | None = None
    report: Any = None  # pipelines.evaluate.EvaluationReport of the held-out split

    def lines(self) -> list[str]:
        lines = [f"hires demo: outputs in {self.out}"]
        for name, info in self.steps.items():
            details = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("path", "input"))
            lines.append(f"  {name:<17} {info.get('path', '')}  ({details})")
        if self.report is not None:
            lines += ["", *self.report.lines()]
            lines.append(
                "The demo models are tiny and trained for seconds on synthetic speech: they show that the "
                "pipeline works end to end, not restoration quality. Do not use them on real audio."
            )
        if "restore" in self.steps:
            step = self.steps["restore"]
            lines.append(f"listen: {step['input']} -> {step['path']}")
        if self.tracking_uri and self.tracking_uri.startswith(("http://", "https://")):
            lines.append(f"browse the runs: {self.tracking_uri}")  # a tracking server has its own UI
        elif self.tracking_uri:
            lines.append(f"browse the runs: mlflow ui --backend-store-uri {self.tracking_uri}")
        return lines


def run_demo(
    out: str | Path,
    cfg: DemoConfig,
    num_cpus: int | None = None,
    progress: bool = True,
    tracking_uri: str | None = None,
) -> DemoResult:
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus
    from datasets.manifest import read_manifest
    from pipelines.synth_run import check_synth_config, run_synth

    out = Path(out).resolve()
    result = DemoResult(out=out, tracking_uri=tracking_uri)  # None: sqlite beside the training runs
    # a misspelled synth config is reported before minutes of corpus and bank generation
    synth_cfg = check_synth_config(
        CONFIG_ROOT / cfg.synth.config,
        {"shards.samples_per_shard": cfg.synth.samples_per_shard, **cfg.synth.overrides},
        what="demo config synth.config",
    )

    t = time.perf_counter()
    corpus_params = {
        "minutes": cfg.corpus.minutes,
        "seed": cfg.seed,
        "speakers": cfg.corpus.speakers,
        "valid_speakers": cfg.corpus.valid_speakers,
        "test_speakers": cfg.corpus.test_speakers,
    }
    clean, reused = generated(
        out / "corpus",
        "datasets.demo",
        corpus_params,
        lambda folder: make_demo_corpus(folder, progress=progress, **corpus_params),
    )
    df = read_manifest(clean)
    result.steps["corpus"] = {
        "path": str(clean),
        "files": len(df),
        "speakers": ", ".join(f"{split} {n}" for split, n in df.groupby("split").speaker.nunique().items()),
        "minutes": round(float(df.duration_s.sum()) / 60, 2),
        "seconds_taken": "reused" if reused else round(time.perf_counter() - t, 1),
    }

    t = time.perf_counter()
    noise_params = {"minutes": cfg.noise.minutes, "seed": cfg.seed}
    noise, reused = generated(
        out / "banks" / "noise",
        "datasets.banks",
        noise_params,
        lambda folder: make_noise_bank(folder, progress=progress, **noise_params),
    )
    df = read_manifest(noise)
    result.steps["noise"] = {
        "path": str(noise),
        "files": len(df),
        "types": int(df.noise_type.nunique()),
        "seconds_taken": "reused" if reused else round(time.perf_counter() - t, 1),
    }

    t = time.perf_counter()
    rir_params = {"count": cfg.rir.count, "seed": cfg.seed}
    rir, reused = generated(
        out / "banks" / "rir",
        "datasets.banks",
        rir_params,
        lambda folder: make_rir_bank(folder, progress=progress, **rir_params),
    )
    df = read_manifest(rir)
    result.steps["rir"] = {
        "path": str(rir),
        "rooms": len(df),
        "rt60_s": f"{df.rt60.min():.2f}-{df.rt60.max():.2f}",
        "seconds_taken": "reused" if reused else round(time.perf_counter() - t, 1),
    }

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
        # a rerun keeps every complete shard: there is no rendering speed to report then
        "x_realtime_per_core": round(summary.x_realtime_per_core, 1) if summary.rendered else "all kept",
    }
    if cfg.train.enabled and cfg.train.stages:
        models = train_demo_stages(
            out / "shards", out / "train", cfg, result, num_cpus=num_cpus, progress=progress
        )
        if cfg.evaluate.enabled and set(models) >= set(STAGES) and all(models.values()):
            evaluate_demo(out, models, cfg, result, progress=progress)  # type: ignore[arg-type]
    return result


STAMP = "demo-stamp.json"


def generated(
    folder: Path, generator_module: str, params: dict[str, Any], make: Callable[[Path], Path]
) -> tuple[Path, bool]:
    """The manifest ``make(folder)`` writes, reused when ``folder`` already holds one generated with the same
    parameters by the same generator code (``STAMP`` records both); otherwise the folder is generated anew.

    Returns ``(manifest, reused)``. The folder belongs to the demo: a stale one is removed before regenerating,
    so files of an earlier, larger run never leak into the new manifest.
    """
    from datasets.code_version import code_version

    stamp = {"params": params, "code_version": code_version([generator_module])}
    stamp_path = folder / STAMP
    manifest = folder / "manifest.parquet"
    try:
        if manifest.is_file() and json.loads(stamp_path.read_text()) == stamp:
            return manifest, True
    except (OSError, ValueError):
        pass
    if folder.exists():
        shutil.rmtree(folder)
    manifest = make(folder)
    stamp_path.write_text(json.dumps(stamp, sort_keys=True) + "\n")
    return manifest, False


def train_demo_stages(
    shards: Path, out: Path, cfg: DemoConfig, result: DemoResult, num_cpus: int | None, progress: bool
) -> dict[str, str | None]:
    """Train the demo's tiny stages in order on one local Ray; ldm uses the recovery and autoencoder models.

    Returns each stage's model directory.
    """
    import ray

    from datasets.errors import IncompatibleError
    from pipelines.ray_setup import init_ray
    from training import tracking
    from training.launcher import TrainRequest, default_run_name, run_training

    t = cfg.train
    started, _ = init_ray(None, num_cpus, quiet=not progress)
    models: dict[str, str | None] = {}
    try:
        for stage in t.stages:
            begin = time.perf_counter()
            request = TrainRequest(
                stage=stage,
                out=str(out),
                shards=str(shards),
                config=t.config,
                overrides={"train.crop_seconds": t.crop_seconds, **t.stage_overrides.get(stage, {})},
                workers=t.workers,
                steps=t.stage_steps.get(stage, t.steps),
                seed=cfg.seed,
                models={"recovery": models.get("recovery"), "autoencoder": models.get("autoencoder")}
                if stage == "ldm"
                else {},
                command=f"hires demo (train {stage})",
                tracking_uri=result.tracking_uri,
            )
            try:
                summary = run_training(request, connect=lambda _address: False)
            except IncompatibleError as e:
                # the demo folder is disposable: shards re-rendered after a code or config change (or new
                # training settings) make the earlier run stale; train it anew instead of failing
                log.warning("%s; training %s anew", str(e).split(";")[0], stage)
                shutil.rmtree(out / default_run_name(stage, t.config))
                summary = run_training(request, connect=lambda _address: False)
            models[stage] = summary.model_dir
            result.tracking_uri = summary.tracking_uri or tracking.default_tracking_uri(str(out))
            loss = summary.metrics.get("loss")
            result.steps[f"train {stage}"] = {
                "path": summary.model_dir or summary.run_dir,
                "steps": summary.final_step,
                "final_loss": f"{loss:.4g}" if loss is not None else summary.status,
                "seconds_taken": round(time.perf_counter() - begin, 1),
            }
            log.info("trained %s: %s", stage, "; ".join(summary.lines()))
    finally:
        if started:
            ray.shutdown()
    return models


def evaluate_demo(
    out: Path, models: dict[str, str], cfg: DemoConfig, result: DemoResult, progress: bool
) -> None:
    """Bundle the trained models, evaluate them on the held-out split, and restore one held-out sample."""
    from datasets.shards import extract_sample, iter_raw_samples, read_index, shard_path
    from pipelines.evaluate import evaluate_shards
    from training.restorer import RestoreOptions, Restorer, write_bundle

    begin = time.perf_counter()
    bundle = out / "bundle"
    if bundle.exists():  # the models may have been retrained since: a bundle is a cheap copy
        shutil.rmtree(bundle)
    write_bundle(bundle, **{stage: models[stage] for stage in STAGES})
    result.steps["bundle"] = {"path": str(bundle), "seconds_taken": round(time.perf_counter() - begin, 1)}

    begin = time.perf_counter()
    options = RestoreOptions(steps=cfg.evaluate.steps, seed=cfg.seed)
    report = evaluate_shards(
        str(out / "shards"),
        cfg.evaluate.split,
        str(bundle),
        str(out / "evaluation"),
        options=options,
        tracking_uri=result.tracking_uri,
        run_name="demo-evaluation",
        limit=cfg.evaluate.limit,
        progress=progress,
    )
    result.report = report
    result.steps["evaluate"] = {
        "path": str(report.out / "report.md"),
        "split": cfg.evaluate.split,
        "seconds_taken": round(time.perf_counter() - begin, 1),
    }

    begin = time.perf_counter()
    index = read_index(str(out / "shards"))
    held_out = [e["name"] for e in index["shards"] if e["split"] == cfg.evaluate.split and e["samples"]]
    key = next(iter_raw_samples(shard_path(str(out / "shards"), held_out[0]))).key
    inputs = out / "restore" / "input"
    _, written = extract_sample(str(out / "shards"), key, inputs)
    degraded = next(p for p in written if p.name.endswith(".degraded.wav"))
    restored = out / "restore" / "output" / f"{key}.restored.flac"
    if not restored.exists():
        restored.parent.mkdir(parents=True, exist_ok=True)
        Restorer.from_bundle(str(bundle)).restore_file(
            str(degraded),
            str(restored),
            RestoreOptions(steps=cfg.evaluate.steps, seed=cfg.seed, keep_stages=True),
        )
    result.steps["restore"] = {
        "path": str(restored),
        "input": str(degraded),
        "seconds_taken": round(time.perf_counter() - begin, 1),
    }


def load_demo_config(path: str | Path | None = None, overrides: dict | None = None) -> DemoConfig:
    return load_config(DemoConfig, path or DEFAULT_CONFIG, overrides)
