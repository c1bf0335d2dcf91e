"""Scheduled retraining with a promotion gate (``hires retrain``): a new corpus version, the configured stages
trained warm from the champions, both bundles scored on one fixed held-out set, and the MLflow alias
``champion`` moved only when the candidate beats the champion by the configured margin.

One retrain is identified by its run id ``R`` and lives in ``OUTPUT/R/``:

* ``state.json``: the source of truth for resuming: the config it was started with, the champion versions it
  pinned, and one entry per finished step (a rerun skips those; training itself resumes from its checkpoints);
* ``corpus/``: the corpus version, a synthesis run (:func:`pipelines.synth_run.run_synth`) with the config's
  manifests and a seed of its own (``corpus.seed: auto`` derives it from ``R``);
* ``train/<stage>-<config>/``: one training run per trained stage (:func:`training.launcher.run_training`),
  ``init`` = the stage's champion (``models:/hires-<stage>/<pinned version>``), registered as a new version;
* ``evaluation/{candidate,champion}/``: the evaluation reports (:func:`pipelines.evaluate.evaluate_shards`) of the
  candidate bundle (the trained stages' new versions, the champions for the rest) and of the champion bundle, on
  ``evaluation.shards`` / ``evaluation.split`` (never regenerated; its ``index.json`` sha256 is pinned at the
  start). A champion bundle already scored with the same settings on the same index (an earlier retrain's
  candidate that was promoted) is not scored again: its recorded score is reused (tag ``hires.retrain.eval_key``).

Steps, in order: ``champions`` (pin the current ``@champion`` versions), ``corpus``, ``train.<stage>`` per trained
stage, ``evaluate.candidate``, ``evaluate.champion``, ``decision``, ``promote``. Every step with work is a child
MLflow run (tag ``mlflow.parentRunId``) of the retrain's parent run, which records the config, the pinned
champions, a tag per finished step and the decision (tags ``hires.retrain.decision`` / ``hires.retrain.reason``
and the run's description). A retrain whose ``promote`` step is recorded is finished: rerunning it prints the
decision and does nothing.

The gate: ``improvement = candidate - champion`` (``direction: higher``) or ``champion - candidate`` (``lower``) of
the mean of ``evaluation.metric`` (``SYSTEM/METRIC``, e.g. ``restored/si_sdr``); the candidate is promoted only
when ``improvement > margin``. Without a complete champion bundle (a first retrain) the candidate is promoted.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from datasets import storage
from datasets.audio import is_uri
from datasets.config import CONFIG_ROOT, ConfigError, StrictModel, canonical_json, format_validation_error
from datasets.errors import DataError, IncompatibleError, UsageError

log = logging.getLogger(__name__)

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
SYSTEMS = ("degraded", "recovery", "restored")
DEFAULT_CONFIG = CONFIG_ROOT / "retrain.yaml"
STATE_FILE = "state.json"
STATE_FORMAT = "hires-retrain"
ALIAS = "champion"
TAG = "hires.retrain."  # prefix of the tags this module sets
EVAL_KEY_TAG = TAG + "eval_key"  # on an evaluation run: digest of (bundle versions, held-out index, settings)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under its parent in the UI
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run's description
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# ------------------------------------------------------------------------------------------------------ config
class RetrainCorpus(StrictModel):
    """The corpus version each retrain synthesises (a new seed, or new clean manifests, per retrain)."""

    clean: str  # speech manifest (hires corpus scan); local path or URI
    noise: str  # noise bank manifest
    rir: str  # RIR bank manifest
    synth_config: str | None = None  # synth YAML; a relative path not found here is looked up in configs/
    samples_per_shard: int | None = Field(None, ge=1)  # None: the synth config's
    seed: int | Literal["auto"] = "auto"  # auto: derived from the run id (stable when the retrain resumes)

    @field_validator("seed")
    @classmethod
    def _non_negative(cls, seed: int | str) -> int | str:
        if isinstance(seed, int) and seed < 0:
            raise ValueError("expected 'auto' or an integer >= 0")
        return seed


class RetrainStage(StrictModel):
    """How one stage is trained (``hires train`` flags as fields)."""

    config: str = "paper"  # shipped name (paper, tiny) or a stage YAML
    steps: int | None = Field(None, ge=1)  # None: the config's train.steps
    workers: int | str = 1  # N, or "MIN-MAX" (elastic)
    gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0)
    max_failures: int = Field(0, ge=-1)
    overrides: dict[str, Any] = {}  # dotted stage-config keys, like --set

    @field_validator("workers")
    @classmethod
    def _workers(cls, workers: int | str) -> int | str:
        from training.launcher import parse_workers

        try:
            parse_workers(workers)
        except UsageError:
            raise ValueError("expected N or 'MIN-MAX' with 1 <= MIN <= MAX") from None
        return workers


class RetrainTrain(StrictModel):
    """The stages to train (the others are taken from their champion as they are)."""

    recovery: RetrainStage | None = None
    autoencoder: RetrainStage | None = None
    vocoder: RetrainStage | None = None
    ldm: RetrainStage | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RetrainTrain:
        if not self.stages():
            raise ValueError("name at least one stage to train (recovery, autoencoder, vocoder, ldm)")
        if self.autoencoder is not None and self.ldm is None:
            # the champion ldm generates in the champion autoencoder's latent space: a new VAE needs a new ldm
            raise ValueError(
                "autoencoder is trained but ldm is not: the ldm must be retrained on the new VAE"
            )
        return self

    def stages(self) -> list[str]:
        return [s for s in STAGES if getattr(self, s) is not None]


class RetrainEvaluation(StrictModel):
    """The fixed held-out set and the gate."""

    shards: str  # a synthesis run (index.json) that retraining never regenerates
    split: str = "test"
    limit: int | None = Field(None, ge=1)  # the first LIMIT samples of the split, in index order
    steps: int | None = Field(None, ge=1)  # DDIM steps (None: the ldm config's)
    guidance: float | None = None  # classifier-free guidance (None: the ldm config's)
    seed: int = Field(0, ge=0)
    metric: str = "restored/si_sdr"  # SYSTEM/METRIC whose mean decides
    direction: Literal["higher", "lower"] = "higher"
    margin: float = 0.0  # promote only when the improvement is more than this (negative: tolerate a loss)
    metrics: list[str] | None = None  # metrics to compute (None: only the gate's); the gate's is always added
    device: str = "cpu"  # where the restorer runs (cuda on a GPU worker)
    remote: bool = True  # run as a Ray task with num_cpus/num_gpus (a GPU worker); false: in this process
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str) -> str:
        from training.metrics import METRICS

        system, sep, name = metric.partition("/")
        if not sep or system not in SYSTEMS or name not in METRICS:
            raise ValueError(
                f"expected SYSTEM/METRIC with SYSTEM one of {', '.join(SYSTEMS)} and METRIC one of "
                f"{', '.join(METRICS)}"
            )
        return metric

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, metrics: list[str] | None) -> list[str] | None:
        from training.metrics import METRICS

        unknown = [m for m in metrics or [] if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; expected some of {', '.join(METRICS)}")
        return metrics

    @field_validator("margin")
    @classmethod
    def _finite(cls, margin: float) -> float:
        if not math.isfinite(margin):
            raise ValueError("expected a finite number")
        return margin

    @property
    def system(self) -> str:
        return self.metric.split("/")[0]

    @property
    def metric_name(self) -> str:
        return self.metric.split("/")[1]

    def metric_list(self) -> list[str]:
        return list(dict.fromkeys([*(self.metrics or []), self.metric_name]))


class RetrainConfig(StrictModel):
    output: str  # folder of the retrains (local or s3://); each retrain in OUTPUT/<run id>/
    tracking_uri: str | None = None  # None: --tracking-uri, else sqlite:///OUTPUT/mlflow.db (local OUTPUT)
    experiment: str = "hires"
    corpus: RetrainCorpus
    train: RetrainTrain
    evaluation: RetrainEvaluation


def resolve_config_path(path: str | Path) -> str:
    """``path`` as given when it exists (or is a URI), else the shipped file of that name: ``configs/retrain.yaml``
    resolves inside an installed hires (a job started outside a checkout) too."""
    text = str(path)
    if is_uri(text) or Path(text).expanduser().exists():
        return text
    rel = Path(text)
    for candidate in (CONFIG_ROOT.parent / rel, CONFIG_ROOT / rel):
        if not rel.is_absolute() and candidate.is_file():
            return str(candidate)
    raise ConfigError(f"--config {text}: no such file")


def load_retrain_config(path: str | Path | None = None) -> RetrainConfig:
    """Read a retrain YAML (local or URI); a ConfigError names the file and every bad field."""
    source = resolve_config_path(path or DEFAULT_CONFIG)
    try:
        text = storage.read_bytes(source).decode()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config: {e}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return RetrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None


# ------------------------------------------------------------------------------------------------------ state
def new_run_id(now: datetime.datetime | None = None) -> str:
    """A run id for a new retrain: the UTC time, ``retrain-20261130T020000Z``."""
    now = now or datetime.datetime.now(datetime.UTC)
    return "retrain-" + now.strftime("%Y%m%dT%H%M%SZ")


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise UsageError(f"--run-id {run_id!r}: expected letters, digits, '.', '_' or '-' (a folder name)")
    return run_id


def corpus_seed(cfg: RetrainConfig, run_id: str) -> int:
    """The corpus version's seed: the configured one, or (``auto``) one derived from the run id."""
    if cfg.corpus.seed != "auto":
        return int(cfg.corpus.seed)
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % 2**31


def _abs(path: str) -> str:
    return path.rstrip("/") if is_uri(path) else str(Path(path).expanduser().resolve())


class RetrainState:
    """``OUTPUT/R/state.json``: what the retrain was started with and the result of each finished step."""

    def __init__(self, path: str, doc: dict) -> None:
        self.path = path
        self.doc = doc

    @classmethod
    def open(cls, path: str, identity: dict) -> RetrainState:
        """The state at ``path``, created with ``identity``; an existing one must have the same identity."""
        if storage.exists(path):
            try:
                doc = json.loads(storage.read_bytes(path))
            except ValueError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise DataError(f"{path}: not the state of a hires retrain")
            from training.launcher import _diff

            where = _diff(doc.get("identity"), json.loads(canonical_json(identity)))
            if where:
                raise IncompatibleError(
                    f"{path}: this retrain was started with another {where}; pass the config it was started "
                    f"with to resume it, or a new --run-id"
                )
            return cls(path, doc)
        state = cls(path, {"format": STATE_FORMAT, "identity": identity, "steps": {}})
        state.save()
        return state

    @property
    def steps(self) -> dict[str, dict]:
        return self.doc["steps"]

    def done(self, step: str) -> bool:
        return step in self.steps

    def record(self, step: str, result: dict) -> None:
        self.steps[step] = {**result, "finished_at": datetime.datetime.now(datetime.UTC).isoformat()}
        self.save()

    def save(self) -> None:
        storage.write_bytes(self.path, (json.dumps(self.doc, indent=2) + "\n").encode())


# ------------------------------------------------------------------------------------------------------ registry
def champion_version(tracking_uri: str, stage: str) -> str | None:
    """The version ``hires-<stage>@champion`` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    from training import tracking

    client = tracking._client(tracking_uri)
    try:
        return str(client.get_model_version_by_alias(tracking.model_name(stage), ALIAS).version)
    except MlflowException as e:
        # no such model, or no such alias (MLflow 3 answers INVALID_PARAMETER_VALUE); anything else (a refused
        # request, a broken store) must not pass for "no champion", which would promote the candidate unchecked
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def check_champions(cfg: RetrainConfig, tracking_uri: str) -> dict[str, str | None]:
    """The champion version of every stage (None: none yet); a UsageError when a stage that is not trained has
    none (the candidate bundle would lack it)."""
    pinned = {stage: champion_version(tracking_uri, stage) for stage in STAGES}
    trained = cfg.train.stages()
    lacking = [s for s in STAGES if pinned[s] is None and s not in trained]
    if lacking:
        raise UsageError(
            f"no {', '.join(f'hires-{s}@{ALIAS}' for s in lacking)} in the registry at {tracking_uri}: "
            f"train {'it' if len(lacking) == 1 else 'them'} in this retrain (train.{lacking[0]} in the config) "
            f"or mark a version {ALIAS}"
        )
    return pinned


def version_uri(stage: str, version: str) -> str:
    from training import tracking

    return f"models:/{tracking.model_name(stage)}/{version}"


def eval_key(sources: dict[str, str], heldout_sha256: str, ev: RetrainEvaluation) -> str:
    """Digest of what an evaluation score depends on: the four model versions, the held-out index and the
    restoring and scoring settings (the gate's metric included)."""
    doc = {
        "bundle": dict(sorted(sources.items())),
        "index_sha256": heldout_sha256,
        "split": ev.split,
        "limit": ev.limit,
        "options": {"steps": ev.steps, "guidance": ev.guidance, "seed": ev.seed},
        "device": ev.device,
        "metric": ev.metric,
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def recorded_score(tracking_uri: str, experiment: str, key: str, ev: RetrainEvaluation) -> dict | None:
    """``{"score", "run_id"}`` of a finished evaluation run tagged with ``key`` that holds the gate's metric."""
    from training import tracking

    client = tracking._client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{EVAL_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["start_time DESC"],
        max_results=5,
    )
    name = f"{ev.system}.{ev.metric_name}"
    for run in runs:
        if name in run.data.metrics:
            return {"score": float(run.data.metrics[name]), "run_id": run.info.run_id}
    return None


def _set_tags(tracking_uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from training import tracking

    tracking._set_tags(tracking._client(tracking_uri), run_id, tags)


def _child_run(tracking_uri: str, experiment: str, parent: str, name: str, key_dir: str, run_id: str) -> str:
    """Find or create the child run of ``parent`` whose run key is ``key_dir`` (a step's own folder)."""
    from training import tracking

    child, _ = tracking.find_or_create_run(
        tracking_uri, experiment, name, key_dir, {PARENT_TAG: parent, TAG + "run_id": run_id}
    )
    return child


@contextlib.contextmanager
def _failing(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Mark ``run_id`` FAILED (KILLED on Ctrl-C) when the block raises; the error goes on."""
    from training import tracking

    try:
        yield
    except BaseException as e:
        try:
            tracking.end_run(tracking_uri, run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        except Exception:  # the original error matters more
            log.warning("could not mark the MLflow run %s as failed", run_id)
        raise


# ------------------------------------------------------------------------------------------------------ gate
@dataclass
class Decision:
    promote: bool
    reason: str
    metric: str
    direction: str
    margin: float
    candidate: float | None = None
    champion: float | None = None
    improvement: float | None = None


def decide(
    candidate: float | None,
    champion: float | None,
    ev: RetrainEvaluation,
    missing_champions: list[str] | None = None,
) -> Decision:
    """The gate (see the module docstring); ``missing_champions``: stages without a champion version."""
    d = Decision(False, "", ev.metric, ev.direction, ev.margin, candidate, champion)
    if candidate is None or not math.isfinite(candidate):
        d.reason = f"the candidate has no finite {ev.metric} mean on the held-out set"
        return d
    if missing_champions:
        d.promote = True
        d.reason = f"no champion yet for {', '.join(missing_champions)}: the first candidate is promoted"
        return d
    if champion is None or not math.isfinite(champion):
        d.promote = True
        d.reason = f"the champion has no finite {ev.metric} mean on the held-out set"
        return d
    d.improvement = (candidate - champion) if ev.direction == "higher" else (champion - candidate)
    better = f"{ev.metric} {candidate:.4g} vs champion {champion:.4g} ({ev.direction} is better)"
    if d.improvement > ev.margin:
        d.promote = True
        d.reason = f"{better}: improvement {d.improvement:.4g} > margin {ev.margin:g}"
    else:
        d.reason = f"{better}: improvement {d.improvement:.4g} <= margin {ev.margin:g}"
    return d


# ------------------------------------------------------------------------------------------------------ evaluation
def _score_bundle(
    sources: dict[str, str],
    ev: dict,
    out: str,
    tracking_uri: str,
    run_name: str,
    experiment: str,
    progress: bool,
) -> dict:
    """Load the bundle and evaluate it on the held-out split (in this process or as a Ray task)."""
    from pipelines.evaluate import evaluate_shards
    from training.restorer import Bundle, RestoreOptions

    e = RetrainEvaluation.model_validate(ev)
    bundle = Bundle.load(tracking_uri=tracking_uri, **sources)
    report = evaluate_shards(
        e.shards,
        e.split,
        bundle,
        out,
        options=RestoreOptions(steps=e.steps, guidance=e.guidance, seed=e.seed),
        tracking_uri=tracking_uri,
        run_name=run_name,
        limit=e.limit,
        progress=progress,
        device=e.device,
        experiment=experiment,
        metrics=e.metric_list(),
    )
    stats = (report.aggregate.get(e.system) or {}).get(e.metric_name) or {}
    mean = stats.get("mean")
    return {
        "score": float(mean) if mean is not None and math.isfinite(mean) else None,
        "n": int(stats.get("n") or 0),
        "items": report.items,
        "failed": len(report.failed),
        "index_sha256": report.settings.get("index_sha256"),
        "report": str(report.out),
        "run_id": report.mlflow_run_id,
    }


def evaluate_bundle(
    sources: dict[str, str], ev: RetrainEvaluation, out: str, tracking_uri: str, run_name: str, experiment: str,
    progress: bool,
) -> dict:  # fmt: skip
    """Score ``sources`` (stage -> model) on the held-out set: a Ray task (``evaluation.remote``, e.g. on a GPU
    worker) or in this process."""
    args = (sources, ev.model_dump(mode="json"), out, tracking_uri, run_name, experiment)
    if not ev.remote:
        return _score_bundle(*args, progress)
    import ray

    task = ray.remote(num_cpus=ev.num_cpus, num_gpus=ev.num_gpus, max_retries=0)(_score_bundle)
    return ray.get(task.remote(*args, False))


# ------------------------------------------------------------------------------------------------------ result
@dataclass
class RetrainResult:
    run_id: str
    folder: str
    status: str  # "finished" | "already finished"
    steps: dict[str, dict] = field(default_factory=dict)
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    skipped: list[str] = field(default_factory=list)  # steps found finished and not redone
    wall_s: float = 0.0

    @property
    def decision(self) -> dict:
        return self.steps.get("decision", {})

    def lines(self) -> list[str]:
        s = self.steps
        head = f"retrain {self.run_id} ({self.folder})"
        out = [f"{head}: already finished; nothing to do" if self.status == "already finished" else head]
        if self.skipped and self.status != "already finished":
            out.append(f"  resumed: {', '.join(self.skipped)} already done")
        if "corpus" in s:
            c = s["corpus"]
            out.append(
                f"  corpus version: {c['out']} (seed {c['seed']}, {c['samples']} samples, {c['hours']:.3g} h)"
            )
        for key, t in s.items():
            if key.startswith("train."):
                warm = f"warm start from {t['init']}" if t.get("init") else "from scratch (no champion)"
                out.append(f"  trained {key[6:]}: {t['version_uri']} to step {t['final_step']} ({warm})")
        metric = (self.decision or {}).get("metric")
        for which in ("candidate", "champion"):
            e = s.get(f"evaluate.{which}")
            if not e:
                continue
            if e.get("score") is None and e.get("skipped"):
                out.append(f"  {which}: {e['skipped']}")
                continue
            how = f"reused from run {e['run_id']}" if e.get("reused") else f"run {e.get('run_id')}"
            score = e.get("score")
            shown = f"{score:.4f}" if isinstance(score, float) else "no finite score"
            out.append(f"  {which} {metric or 'score'}: {shown} ({how})")
        if self.decision:
            verdict = "promoted the candidate" if self.decision["promote"] else "kept the champion"
            out.append(f"  decision: {verdict}: {self.decision['reason']}")
        if "promote" in s and s["promote"].get("aliases"):
            moved = ", ".join(f"{k}@{ALIAS} -> {v}" for k, v in s["promote"]["aliases"].items())
            out.append(f"  aliases: {moved}")
        timed = [f"{k} {v['seconds']:g} s" for k, v in s.items() if v.get("seconds") is not None]
        if timed and self.status != "already finished":
            out.append(f"  steps: {', '.join(timed)}")
        if self.parent_run_id:
            out.append(f"  MLflow parent run {self.parent_run_id} at {self.tracking_uri}")
        return out


# ------------------------------------------------------------------------------------------------------ the run
def run_retrain(
    cfg: RetrainConfig,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> RetrainResult:
    """Run (or resume, or recognise as finished) the retrain ``run_id`` (default: a new one, :func:`new_run_id`).

    ``tracking_uri`` overrides the config's. Ray is joined (``address``) or started only when a step needs it.
    """
    import ray

    from training import tracking

    t0 = time.monotonic()
    run_id = check_run_id(run_id or new_run_id())
    output = _abs(cfg.output)
    folder = storage.join(output, run_id)
    tracking_uri = tracking_uri or cfg.tracking_uri
    if tracking_uri is None:
        if is_uri(output):
            raise UsageError(
                f"output {output}: not a local folder: pass --tracking-uri (or tracking_uri in the config)"
            )
        tracking_uri = tracking.default_tracking_uri(output)
    identity = {"config": cfg.model_dump(mode="json"), "tracking_uri": tracking_uri, "run_id": run_id}
    identity["config"].pop("tracking_uri")
    state_path = storage.join(folder, STATE_FILE)
    result = RetrainResult(run_id, folder, "finished", tracking_uri=tracking_uri)

    def finished(state: RetrainState) -> RetrainResult:
        result.status, result.steps = "already finished", dict(state.steps)
        result.parent_run_id = state.doc.get("parent_run_id")
        result.wall_s = time.monotonic() - t0
        return result

    if storage.exists(state_path):
        if (state := RetrainState.open(state_path, identity)).done("promote"):
            return finished(state)
    else:
        from pipelines.evaluate import split_samples

        # the held-out set and the inputs are checked before anything is written
        split_samples(cfg.evaluation.shards, cfg.evaluation.split)
        for role in ("clean", "noise", "rir"):
            value = getattr(cfg.corpus, role)
            if not is_uri(value) and not Path(value).expanduser().is_file():
                raise DataError(f"corpus.{role} {value}: no such manifest")
        tracking.check_reachable(tracking_uri)
        check_champions(cfg, tracking_uri)  # pinned for good in the first step; here only to fail early
        storage.makedirs(folder)
    from datasets.lease import hold_lease

    with hold_lease(folder, what="retrain"):  # one driver per retrain: a second one fails naming the first
        state = RetrainState.open(state_path, identity)
        if state.done("promote"):  # finished by another driver meanwhile
            return finished(state)
        result.skipped = [k for k in state.steps if k != "champions"]
        tags = {"hires.kind": "retrain", TAG + "run_id": run_id}
        parent, _ = tracking.find_or_create_run(tracking_uri, cfg.experiment, run_id, folder, tags)
        state.doc["parent_run_id"] = result.parent_run_id = parent
        state.save()
        started = False
        with _failing(tracking_uri, parent):
            try:
                if not state.done("champions"):
                    _log_config(tracking_uri, parent, cfg)
                run = _Run(cfg, run_id, folder, state, tracking_uri, parent, progress)
                run.champions()  # before Ray starts: a missing champion is a one-line error in seconds
                ray_steps = ["corpus", *(f"train.{s}" for s in cfg.train.stages())]
                if cfg.evaluation.remote:
                    ray_steps += ["evaluate.candidate", "evaluate.champion"]
                if any(not state.done(s) for s in ray_steps):
                    from pipelines.ray_setup import init_ray

                    started, _ = init_ray(address, num_cpus, quiet=not progress)
                    run.restart_clock()  # Ray's start-up is no step's time
                run.corpus()
                for stage in cfg.train.stages():
                    run.train(stage)
                run.evaluate_candidate()
                run.evaluate_champion()
                run.decide()
                run.promote()
            finally:
                if started:
                    ray.shutdown()
        tracking.end_run(tracking_uri, parent)
    result.steps = dict(state.steps)
    result.wall_s = time.monotonic() - t0
    return result


def _log_config(tracking_uri: str, run_id: str, cfg: RetrainConfig) -> None:
    from mlflow.entities import Param

    from training import tracking

    client = tracking._client(tracking_uri)
    existing = client.get_run(run_id).data.params
    flat = tracking.flatten(cfg.model_dump(mode="json"))
    params = [Param(k, str(v)[: tracking.MAX_PARAM_CHARS]) for k, v in flat.items() if k not in existing]
    for i in range(0, len(params), tracking.BATCH):
        client.log_batch(run_id, params=params[i : i + tracking.BATCH])


class _Run:
    """The steps of one retrain; each returns at once when ``state`` records it finished."""

    def __init__(
        self, cfg: RetrainConfig, run_id: str, folder: str, state: RetrainState, tracking_uri: str, parent: str,
        progress: bool,
    ) -> None:  # fmt: skip
        self.cfg, self.run_id, self.folder, self.state = cfg, run_id, folder, state
        self.tracking_uri, self.parent, self.progress = tracking_uri, parent, progress
        self._since = time.monotonic()  # steps run one after the other: a step took the time since the last

    def restart_clock(self) -> None:
        self._since = time.monotonic()

    def _finish(self, step: str, result: dict) -> None:
        now = time.monotonic()
        self.state.record(step, {**result, "seconds": round(now - self._since, 1)})
        self._since = now
        _set_tags(self.tracking_uri, self.parent, {f"{TAG}step.{step}": "done"})
        log.info("retrain %s: %s done", self.run_id, step)

    # --- champions: pinned once, so a resumed retrain compares against the champion it started from
    def champions(self) -> None:
        if self.state.done("champions"):
            return
        from datasets.shards import index_sha256

        pinned = check_champions(self.cfg, self.tracking_uri)
        heldout = index_sha256(self.cfg.evaluation.shards)
        params = {f"champion.{s}": version_uri(s, v) if v else "none" for s, v in pinned.items()}
        _set_tags(self.tracking_uri, self.parent, {**{TAG + k: v for k, v in params.items()},
                                                    TAG + "heldout_index_sha256": heldout})  # fmt: skip
        self._finish("champions", {"versions": pinned, "heldout_index_sha256": heldout})

    @property
    def pinned(self) -> dict[str, str | None]:
        return self.state.steps["champions"]["versions"]

    # --- corpus version
    def corpus(self) -> None:
        if self.state.done("corpus"):
            return
        from datasets.synth_config import load_synth_config
        from pipelines.synth_run import run_synth
        from training import tracking

        c = self.cfg.corpus
        out = storage.join(self.folder, "corpus")
        seed = corpus_seed(self.cfg, self.run_id)
        synth_path = None
        if c.synth_config:
            p = Path(c.synth_config).expanduser()
            synth_path = p if p.exists() or p.is_absolute() else CONFIG_ROOT / p
        synth_cfg = load_synth_config(synth_path, {"shards.samples_per_shard": c.samples_per_shard})
        child = _child_run(self.tracking_uri, self.cfg.experiment, self.parent, "corpus", out, self.run_id)
        with _failing(self.tracking_uri, child):
            summary = run_synth(c.clean, c.noise, c.rir, out, synth_cfg, seed=seed, progress=self.progress)
        from datasets.shards import index_sha256

        sha = index_sha256(out)
        client = tracking._client(self.tracking_uri)
        from mlflow.entities import Metric, Param

        existing = client.get_run(child).data.params
        params = {"clean": c.clean, "noise": c.noise, "rir": c.rir, "seed": seed, "out": out,
                  "synth_config": str(synth_path or "default")}  # fmt: skip
        now = int(time.time() * 1000)
        client.log_batch(
            child,
            metrics=[Metric(k, float(v), now, 0) for k, v in (("samples", summary.samples), ("hours", summary.hours),
                                                               ("shards", summary.shards))],
            params=[Param(k, str(v)) for k, v in params.items() if k not in existing],
        )  # fmt: skip
        _set_tags(self.tracking_uri, child, {"hires.shards": out, "hires.shards_index_sha256": sha})
        tracking.end_run(self.tracking_uri, child)
        self._finish("corpus", {"out": out, "seed": seed, "samples": summary.samples, "hours": summary.hours,
                                "shards": summary.shards, "index_sha256": sha, "run_id": child})  # fmt: skip

    # --- training, warm from the champion
    def _model_for(self, stage: str) -> str | None:
        """The model of ``stage`` in the candidate bundle: this retrain's when trained, else the champion."""
        trained = self.state.steps.get(f"train.{stage}")
        if trained:
            return trained["model_dir"]
        v = self.pinned.get(stage)
        return version_uri(stage, v) if v else None

    def train(self, stage: str) -> None:
        step = f"train.{stage}"
        if self.state.done(step):
            return
        from training import launcher, tracking

        st: RetrainStage = getattr(self.cfg.train, stage)
        v = self.pinned.get(stage)
        init = version_uri(stage, v) if v else None
        models: dict[str, str | None] = {"init": init}
        if stage == "ldm":
            models.update({r: self._model_for(r) for r in ("recovery", "autoencoder", "vocoder")})
        req = launcher.TrainRequest(
            stage=stage,
            out=storage.join(self.folder, "train"),
            shards=self.state.steps["corpus"]["out"],
            config=st.config,
            overrides=dict(st.overrides),
            workers=launcher.parse_workers(st.workers),
            gpu=st.gpu,
            steps=st.steps,
            tracking_uri=self.tracking_uri,
            experiment=self.cfg.experiment,
            max_failures=st.max_failures,
            models=models,
            seed=int(self.state.steps["corpus"]["seed"]),
            cpus_per_worker=st.cpus_per_worker,
            command=f"hires retrain --run-id {self.run_id} (train {stage})",
        )
        prepared = launcher.prepare(req)
        # created here, found again by the launcher (same run directory): the run is nested from its start
        _child_run(self.tracking_uri, self.cfg.experiment, self.parent, prepared.run_name, prepared.run_dir,
                   self.run_id)  # fmt: skip
        summary = launcher.run_training(req, connect=lambda _address: False, progress=self.progress)
        if not summary.model_dir or not summary.model_version:
            raise DataError(f"{summary.run_dir}: training ended without a registered model")
        client = tracking._client(self.tracking_uri)
        client.set_model_version_tag(
            tracking.model_name(stage), summary.model_version, TAG + "run_id", self.run_id
        )
        self._finish(step, {"model_dir": summary.model_dir, "version": summary.model_version,
                            "version_uri": version_uri(stage, summary.model_version), "run_id": summary.run_id,
                            "final_step": summary.final_step, "init": init})  # fmt: skip

    # --- evaluation on the fixed held-out set
    def _eval_dir(self, which: str) -> str:
        if is_uri(self.folder):  # the report is a local folder; its files go to MLflow
            return str(Path(tempfile.gettempdir(), "hires-retrain", self.run_id, "evaluation", which))
        return str(Path(self.folder, "evaluation", which))

    def _evaluate(
        self, which: str, sources: dict[str, str], key: str, version_sources: dict[str, str]
    ) -> dict:
        out = self._eval_dir(which)
        name = f"{self.run_id}-{which}"
        child = _child_run(self.tracking_uri, self.cfg.experiment, self.parent, name, str(Path(out).resolve()),
                           self.run_id)  # fmt: skip
        tags = {EVAL_KEY_TAG: key, **{f"{TAG}bundle.{s}": u for s, u in version_sources.items()}}
        _set_tags(self.tracking_uri, child, tags)
        with _failing(self.tracking_uri, child):
            scored = evaluate_bundle(sources, self.cfg.evaluation, out, self.tracking_uri, name,
                                     self.cfg.experiment, self.progress)  # fmt: skip
        heldout = self.state.steps["champions"]["heldout_index_sha256"]
        if scored.get("index_sha256") != heldout:
            raise DataError(
                f"evaluation.shards {self.cfg.evaluation.shards}: index.json changed during the retrain (sha256 "
                f"{scored.get('index_sha256')}, pinned {heldout}): the held-out set must never be regenerated"
            )
        return {**scored, "key": key, "bundle": version_sources}

    def evaluate_candidate(self) -> None:
        if self.state.done("evaluate.candidate"):
            return
        sources = {s: m for s in STAGES if (m := self._model_for(s))}
        versions = {s: self.state.steps[f"train.{s}"]["version_uri"] if f"train.{s}" in self.state.steps
                    else sources[s] for s in STAGES}  # fmt: skip
        key = eval_key(versions, self.state.steps["champions"]["heldout_index_sha256"], self.cfg.evaluation)
        self._finish("evaluate.candidate", self._evaluate("candidate", sources, key, versions))

    def evaluate_champion(self) -> None:
        if self.state.done("evaluate.champion"):
            return
        missing = [s for s in STAGES if not self.pinned.get(s)]
        if missing:
            self._finish("evaluate.champion", {"score": None, "missing": missing,
                                               "skipped": f"no champion yet for {', '.join(missing)}"})  # fmt: skip
            return
        versions = {s: version_uri(s, str(self.pinned[s])) for s in STAGES}
        key = eval_key(versions, self.state.steps["champions"]["heldout_index_sha256"], self.cfg.evaluation)
        found = recorded_score(self.tracking_uri, self.cfg.experiment, key, self.cfg.evaluation)
        if found is not None:
            log.info("retrain %s: the champion's score on this held-out set is recorded (run %s)", self.run_id,
                     found["run_id"])  # fmt: skip
            self._finish("evaluate.champion", {**found, "reused": True, "key": key, "bundle": versions})
            return
        self._finish("evaluate.champion", self._evaluate("champion", versions, key, versions))

    # --- the gate
    def decide(self) -> None:
        if self.state.done("decision"):
            return
        from training import tracking

        s = self.state.steps
        d = decide(
            s["evaluate.candidate"].get("score"),
            s["evaluate.champion"].get("score"),
            self.cfg.evaluation,
            s["evaluate.champion"].get("missing"),
        )
        # another retrain may have moved an alias since this one pinned it: never overwrite its choice
        for stage in self.cfg.train.stages():
            now = champion_version(self.tracking_uri, stage)
            if now not in (self.pinned.get(stage), s[f"train.{stage}"]["version"]) and d.promote:
                d.promote = False
                d.reason = (f"hires-{stage}@{ALIAS} moved to version {now} during this retrain (pinned "
                            f"{self.pinned.get(stage)}); the candidate is not promoted over it")  # fmt: skip
        child = _child_run(self.tracking_uri, self.cfg.experiment, self.parent, f"{self.run_id}-gate",
                           storage.join(self.folder, "gate"), self.run_id)  # fmt: skip
        client = tracking._client(self.tracking_uri)
        from mlflow.entities import Metric, Param

        now_ms = int(time.time() * 1000)
        values = {"candidate": d.candidate, "champion": d.champion, "improvement": d.improvement}
        existing = client.get_run(child).data.params
        params = {"metric": d.metric, "direction": d.direction, "margin": d.margin}
        client.log_batch(
            child,
            metrics=[
                Metric(k, float(v), now_ms, 0)
                for k, v in values.items()
                if v is not None and math.isfinite(v)
            ],
            params=[Param(k, str(v)) for k, v in params.items() if k not in existing],
        )
        verdict = "promoted" if d.promote else "rejected"
        decision_tags = {TAG + "decision": verdict, TAG + "reason": d.reason[:5000]}
        _set_tags(self.tracking_uri, child, {**decision_tags, NOTE_TAG: d.reason})
        tracking.end_run(self.tracking_uri, child)
        line = f"{'promoted the candidate' if d.promote else 'kept the champion'}: {d.reason}"
        _set_tags(self.tracking_uri, self.parent, {**decision_tags, NOTE_TAG: line})
        self._finish("decision", {**asdict(d), "run_id": child})

    def promote(self) -> None:
        if self.state.done("promote"):
            return
        from training import tracking

        d = self.state.steps["decision"]
        client = tracking._client(self.tracking_uri)
        aliases: dict[str, str] = {}
        verdict = "promoted" if d["promote"] else "rejected"
        for stage in self.cfg.train.stages():
            version = self.state.steps[f"train.{stage}"]["version"]
            name = tracking.model_name(stage)
            client.set_model_version_tag(name, version, TAG + "decision", verdict)
            if d["promote"]:
                client.set_registered_model_alias(name, ALIAS, version)
                aliases[name] = version
        self._finish("promote", {"aliases": aliases})
