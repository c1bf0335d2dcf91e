"""Launching a training run on Ray Train V2: checks on the driver, the loop config, the TorchTrainer, the end.

:func:`run_training` takes a :class:`TrainRequest` (what ``hires train`` parsed) and

1. loads the stage config (``tiny``/``paper``/a file, ``--set`` overrides, ``--steps``) and checks the data on the
   driver (:func:`training.data.check_shards`: a one-line error before any worker starts);
2. picks the run directory ``OUT/<run-name>`` (default name ``<stage>-<config>``, ``-online`` in online mode, so
   rerunning the same command resumes) and refuses a directory trained with another stage, config or data
   (``hires-train.json`` records what it was started with; ``--steps`` may change);
3. stops there when the run is finished (``model/model.json`` at the target step): it says so, completes the MLflow
   registration if a killed driver left it undone, and trains nothing;
4. finds or creates the MLflow run (:mod:`training.tracking`) and resolves ``--recovery/--autoencoder/--vocoder/
   --init`` to model directories (``models:/`` URIs are downloaded here, into ``OUT/<run>/inputs/<role>/``, where
   workers on any node can read them);
5. runs ``TorchTrainer(training.loop.train_func)`` with ``RunConfig(storage_path=OUT, name=<run-name>)``: Ray Train
   finds the run's latest checkpoint there after a driver crash; ``FailureConfig(max_failures)`` restarts the
   worker group from it after a worker failure; ``CheckpointConfig(num_to_keep=train.keep_checkpoints)``;
6. logs the model directory to the MLflow run and registers it as a new version of ``hires-<stage>``.

**CPU budget.** A worker reserves ``--cpus-per-worker`` CPUs; by default ``min(base, (C - R) / W)`` rounded down
to a quarter, where ``C`` is the cluster's CPU count, ``W`` the (maximum) number of workers, ``R`` the CPUs left to
Ray Data (1 in online mode, whose render tasks get nothing while training workers hold every CPU; 0 from shards,
which are decoded by threads inside the workers) and ``base`` 1 on CPU (torch then runs one intra-op thread per
worker, Ray's ``OMP_NUM_THREADS``) or ``train.num_threads`` with ``--gpu``. Two workers on a 2-core machine hold
1 CPU each from shards, 0.5 each online. Without ``--address`` a fresh local Ray of ``os.cpu_count()`` CPUs is
started, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import storage
from datasets.audio import is_uri
from datasets.config import canonical_json
from datasets.errors import DataError, HiresError, IncompatibleError, UsageError
from training import tracking

log = logging.getLogger(__name__)

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
MODEL_ROLES = ("recovery", "autoencoder", "vocoder", "init")
IDENTITY_FILE = "hires-train.json"
ONLINE_RESERVE_CPUS = 1.0  # CPUs the online mode's render tasks keep free of training workers


@dataclass
class TrainRequest:
    """One ``hires train`` invocation (see :mod:`pipelines.commands.train` for the flags)."""

    stage: str
    out: str
    shards: str | None = None
    online: dict | None = None  # {"clean", "noise", "rir", "synth_config", "seed"}
    config: str = "paper"
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int | tuple[int, int] = 1
    gpu: bool = False
    steps: int | None = None
    run_name: str | None = None
    tracking_uri: str | None = None  # None: sqlite:///OUT/mlflow.db; "none": no tracking
    experiment: str = tracking.DEFAULT_EXPERIMENT
    max_failures: int = 0
    models: dict[str, str | None] = field(default_factory=dict)  # role -> MODEL as given
    address: str | None = None
    seed: int = 0
    cpus_per_worker: float | None = None
    command: str = ""  # the command line, logged as a parameter


@dataclass
class TrainSummary:
    stage: str
    run_name: str
    run_dir: str
    model_dir: str | None
    final_step: int | None
    status: str  # "trained" | "already finished"
    resumed_from: int | None = None
    run_id: str | None = None
    model_version: str | None = None
    tracking_uri: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    cpus_per_worker: float | None = None

    def lines(self) -> list[str]:
        out = []
        if self.status == "already finished":
            out.append(f"{self.run_dir}: already finished at step {self.final_step}; nothing to do")
        else:
            start = f" (resumed from step {self.resumed_from})" if self.resumed_from else ""
            out.append(f"trained {self.stage} to step {self.final_step}{start} in {self.wall_s:.1f} s")
            loss = self.metrics.get("loss")
            if loss is not None:
                out.append(f"final loss: {loss:.4g}")
        if self.model_dir:
            out.append(f"model: {self.model_dir}")
        if self.run_id:
            reg = f", registered as models:/{tracking.model_name(self.stage)}/{self.model_version}"
            out.append(f"MLflow run {self.run_id} at {self.tracking_uri}{reg if self.model_version else ''}")
        return out


# ----- flags ------------------------------------------------------------------------------------------------------
def parse_workers(text: str | int) -> int | tuple[int, int]:
    """``"2"`` -> 2; ``"1-4"`` -> (1, 4) (elastic). UsageError otherwise."""
    s = str(text).strip()
    try:
        if "-" in s:
            lo, hi = (int(x) for x in s.split("-", 1))
            if 1 <= lo <= hi:
                return (lo, hi) if lo < hi else lo
        else:
            n = int(s)
            if n >= 1:
                return n
    except ValueError:
        pass
    raise UsageError(f"--workers {text}: expected N or MIN-MAX with 1 <= MIN <= MAX")


def max_workers(workers: int | tuple[int, int]) -> int:
    return workers[1] if isinstance(workers, tuple) else int(workers)


def config_label(config: str) -> str:
    """``tiny`` -> ``tiny``; ``path/to/my.yaml`` -> ``my``."""
    name = Path(str(config)).name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def default_run_name(stage: str, config: str, online: bool = False) -> str:
    """``<stage>-<config>`` (``-online`` appended in online mode): the same command maps to the same run."""
    return f"{stage}-{config_label(config)}" + ("-online" if online else "")


def _check_run_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or name.strip() != name:
        raise UsageError(f"--run-name {name!r}: expected a plain folder name")
    return name


def validate(req: TrainRequest) -> None:
    """Flag checks that need no file access (UsageError naming the flag)."""
    if req.stage not in STAGES:
        raise UsageError(f"unknown stage {req.stage!r}; expected one of {', '.join(STAGES)}")
    if (req.shards is None) == (req.online is None):
        raise UsageError("pass either --shards DIR or --online --clean M --noise M --rir M")
    if req.online is not None:
        missing = [k for k in ("clean", "noise", "rir") if not req.online.get(k)]
        if missing:
            raise UsageError("--online needs " + " ".join(f"--{k} M" for k in missing))
    if req.steps is not None and req.steps < 1:
        raise UsageError(f"--steps {req.steps}: expected at least 1")
    if req.max_failures < -1:
        raise UsageError(f"--max-failures {req.max_failures}: expected -1 (no limit) or more")
    if req.cpus_per_worker is not None and req.cpus_per_worker <= 0:
        raise UsageError(f"--cpus-per-worker {req.cpus_per_worker}: expected more than 0")
    parse_workers(
        req.workers if isinstance(req.workers, int) else f"{req.workers[0]}-{req.workers[1]}"
    )  # raises on a bad value
    if req.run_name is not None:
        _check_run_name(req.run_name)
    unknown = sorted(set(req.models) - set(MODEL_ROLES))
    if unknown:
        raise UsageError(f"unknown model role(s) {', '.join(unknown)}; expected {', '.join(MODEL_ROLES)}")


# ----- driver-side preparation ------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything decided on the driver before Ray Train starts."""

    request: TrainRequest
    stage_config: Any  # training.config.StageConfig
    steps: int
    run_name: str
    out: str
    run_dir: str
    data: dict  # DataSpec dict
    lineage: dict
    tracking_uri: str | None
    identity: dict


def _abs_out(out: str) -> str:
    return out.rstrip("/") if is_uri(out) else str(Path(out).expanduser().resolve())


def load_config(req: TrainRequest):
    from training.config import load_stage_config

    overrides = dict(req.overrides)
    if req.steps is not None:
        overrides["train.steps"] = int(req.steps)
    cfg = load_stage_config(req.stage, req.config, overrides)
    t = cfg.train
    if t.schedule.warmup_steps > t.steps:
        raise UsageError(
            f"--steps {t.steps} is shorter than the config's warm-up ({t.schedule.warmup_steps} steps)"
        )
    return cfg


def data_dict(req: TrainRequest, stage_cfg) -> dict:
    """The DataSpec dict the workers load (the stage config decides batch, crop, streams, loudness, threads)."""
    from training.loop import data_spec_dict
    from training.stages import get_stage

    base: dict[str, Any] = {"seed": int(req.seed)}
    if req.shards is not None:
        base["shards"] = req.shards if is_uri(req.shards) else str(Path(req.shards).expanduser().resolve())
    else:
        online = dict(req.online or {})
        for k in ("clean", "noise", "rir", "synth_config"):
            if online.get(k) and not is_uri(str(online[k])):
                online[k] = str(Path(str(online[k])).expanduser().resolve())
        online.setdefault("synth_config", None)
        online.setdefault("seed", int(req.seed))
        base["online"] = online
    spec = data_spec_dict({"data": base, "seed": req.seed}, stage_cfg, get_stage(req.stage).streams)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def _code_version() -> str:
    from datasets.code_version import code_version

    return code_version(["training.loop"])


def prepare(req: TrainRequest) -> Prepared:
    """Validate, load the config, check the data and decide the run directory (no Ray, no MLflow yet)."""
    from training import data as data_mod

    validate(req)
    cfg = load_config(req)
    data = data_dict(req, cfg)
    info = data_mod.check_shards(data)
    run_name = req.run_name or default_run_name(req.stage, req.config, req.online is not None)
    out = _abs_out(req.out)
    run_dir = storage.join(out, run_name)
    tracking_uri = req.tracking_uri
    if tracking_uri is None:
        tracking_uri = tracking.default_tracking_uri(out)
    elif tracking_uri.lower() == "none":
        tracking_uri = None
    lineage = {
        "code_version": _code_version(),
        "shards_index_sha256": info.get("index_sha256"),
        "shards": data.get("shards"),
    }
    # what the run was started with: a rerun must continue the same training (steps may grow)
    stage_cfg = cfg.model_dump(mode="json")
    stage_cfg["train"].pop("steps", None)
    identity = {
        "stage": req.stage,
        "stage_config": stage_cfg,
        "data": {k: v for k, v in data.items() if k in ("shards", "online", "seed")},
        "shards_index_sha256": info.get("index_sha256"),
        "models": {k: v for k, v in sorted(req.models.items()) if v},
    }
    return Prepared(
        req, cfg, int(cfg.train.steps), run_name, out, run_dir, data, lineage, tracking_uri, identity
    )


def _diff(a: Any, b: Any, path: str = "") -> str | None:
    """The first dotted key where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    return None if a == b else (path or "(root)")


def check_identity(p: Prepared) -> None:
    """Record what the run directory trains, or refuse a rerun that would continue it with something else."""
    path = storage.join(p.run_dir, IDENTITY_FILE)
    if storage.exists(path):
        try:
            before = json.loads(storage.read_bytes(path))
        except ValueError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        where = _diff(before, json.loads(canonical_json(p.identity)))
        if where:
            raise IncompatibleError(
                f"{p.run_dir} was started with another {where}; pass another --run-name (or --out) for a new run, "
                f"or the original settings to resume it"
            )
        return
    storage.makedirs(p.run_dir)
    storage.write_bytes(path, (json.dumps(p.identity, indent=2, sort_keys=True) + "\n").encode())


def finished_step(run_dir: str) -> int | None:
    """The step recorded in ``run_dir/model/model.json``, or None when the run has no model yet."""
    path = storage.join(run_dir, "model", "model.json")
    if not storage.exists(path):
        return None
    try:
        return int(json.loads(storage.read_bytes(path)).get("step"))
    except (ValueError, TypeError):
        return None


def latest_checkpoint(run_dir: str) -> dict | None:
    """Metrics of the run's latest reported checkpoint (``step``, ``epoch``, ...), or None (a fresh run)."""
    if not storage.exists(run_dir):
        return None
    from ray.train import Result

    train_log = logging.getLogger("ray.train")
    level = train_log.level
    train_log.setLevel(
        logging.WARNING
    )  # its INFO note about the snapshot found is for Ray Train's own resume
    try:
        result = Result.from_path(run_dir)
    except Exception:  # no snapshot yet: nothing reported, the run starts from scratch
        return None
    finally:
        train_log.setLevel(level)
    return dict(result.metrics or {}) if result.checkpoint is not None else None


# ----- models -----------------------------------------------------------------------------------------------------
def _model_meta(meta_bytes: bytes, where: str) -> dict:
    """A model directory's ``model.json`` (DataError unless it is a JSON object with a ``stage``)."""
    try:
        meta = json.loads(meta_bytes)
    except ValueError as e:
        raise DataError(f"{where}/model.json: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or "stage" not in meta:
        raise DataError(f"{where}/model.json: no 'stage' (not a hires model directory)")
    return meta


def _download_into(uri: str, tracking_uri: str | None, target: str) -> None:
    """Download ``models:/...`` into ``target`` (local or URI); model.json last, so a complete copy has one."""
    from training.lineage import pin_model_uri, write_source

    pinned = pin_model_uri(uri, tracking_uri)  # an alias may move later: the lineage keeps this version
    with tempfile.TemporaryDirectory(prefix="hires-model-") as tmp:
        local = tracking.download_model(pinned, tracking_uri, dst=tmp)
        storage.remove(target)
        storage.makedirs(target)
        write_source(target, uri, pinned)
        files = sorted(
            (f for f in Path(local).iterdir() if f.is_file()), key=lambda f: f.name == "model.json"
        )
        for f in files:
            storage.write_bytes(storage.join(target, f.name), f.read_bytes())


def resolve_models(p: Prepared) -> dict[str, str | None]:
    """MODEL arguments -> directories the workers can read; roles checked against the stage (``--init``: the
    trained stage; ``--recovery``: a recovery model, ...). ``models:/`` URIs are downloaded into
    ``run_dir/inputs/<role>/`` on the driver. Each ``model.json`` is read once, here, and also serves
    :func:`check_frozen_models`."""
    from training.stages import get_stage

    stage_cls = get_stage(p.request.stage)
    usable = set(stage_cls.requires) | set(getattr(stage_cls, "optional", ())) | {"init"}
    resolved: dict[str, str | None] = {role: None for role in MODEL_ROLES}
    metas: dict[str, dict] = {}
    for role, value in p.request.models.items():
        if not value:
            continue
        if role not in usable:
            raise UsageError(f"--{role}: stage {p.request.stage} does not use a {role} model")
        if tracking.is_model_uri(value):
            target = storage.join(p.run_dir, "inputs", role)
            if storage.exists(storage.join(target, "model.json")):
                # downloaded by an earlier attempt of this run: a resumed run keeps the model it started with,
                # even when the alias it named has moved since
                path = target
            else:
                _download_into(value, p.tracking_uri, target)
                path = target
        else:
            path = value if is_uri(value) else str(Path(value).expanduser().resolve())
        meta = storage.join(path, "model.json")
        if not storage.exists(meta):
            raise DataError(f"--{role} {value}: not a model directory (no model.json)")
        metas[role] = _model_meta(storage.read_bytes(meta), value)
        stage = str(metas[role]["stage"])
        expected = p.request.stage if role == "init" else role
        if stage != expected:
            raise IncompatibleError(f"--{role} {value} is a {stage} model, expected a {expected} model")
        resolved[role] = path
    missing = [r for r in stage_cls.requires if not resolved.get(r)]
    if missing:
        raise UsageError(
            f"stage {p.request.stage} needs a trained {' and '.join(missing)} model: pass "
            + " ".join(f"--{r} MODEL" for r in missing)
        )
    check_frozen_models(p, resolved, metas)
    return resolved


def check_frozen_models(p: Prepared, models: dict[str, str | None], metas: dict[str, dict]) -> None:
    """The ldm's cross-stage checks (latent layout, mel settings) on the driver, from the models' ``model.json``
    (``metas``, by role) alone (no weights), so a mismatch is a one-line error before any worker starts."""
    if p.request.stage != "ldm":
        return
    from types import SimpleNamespace

    from training.model_dir import stage_config_of
    from training.stages.ldm import check_compatible

    described = {}
    for role in ("recovery", "autoencoder", "vocoder"):
        path = models.get(role)
        if not path:
            described[role] = None
            continue
        meta = metas[role]
        where = storage.join(path, "model.json")
        described[role] = SimpleNamespace(
            stage=meta.get("stage"), config=stage_config_of(meta.get("config"), where), source=path
        )
    check_compatible(
        p.stage_config,
        described["recovery"],
        described["autoencoder"],
        described["vocoder"],
        ldm_name=f"ldm config {p.request.config}",
    )


# ----- Ray --------------------------------------------------------------------------------------------------------
def _default_connect(address: str | None) -> bool:
    """Join ``address`` or start a fresh local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if address is None:
        # "local": a fresh instance; a bare ray.init() would join any cluster another program runs on this host
        address = "local"
        kwargs = {"include_dashboard": False, "num_cpus": os.cpu_count() or 1}
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    except ConnectionError as e:
        raise UsageError(f"--address {address}: cannot connect to a Ray cluster: {e}") from None
    return True


def cpus_per_worker(req: TrainRequest, cluster_cpus: float, num_threads: int) -> float:
    """The CPUs each training worker reserves (see the module docstring)."""
    if req.cpus_per_worker is not None:
        return float(req.cpus_per_worker)
    reserve = ONLINE_RESERVE_CPUS if req.online is not None else 0.0
    base = float(num_threads) if req.gpu else 1.0
    share = math.floor((cluster_cpus - reserve) / max_workers(req.workers) * 4) / 4
    cpus = min(base, share)
    if cpus < 0.25:
        raise UsageError(
            f"{max_workers(req.workers)} worker(s) do not fit in {cluster_cpus:g} CPUs"
            + (f" with {reserve:g} left for online rendering" if reserve else "")
            + ": use fewer --workers or set --cpus-per-worker"
        )
    return cpus


def _job_tags() -> dict[str, str]:
    """Ray job id and submission id when the command runs as a submitted Ray job."""
    import ray

    tags = {}
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        try:
            submission = (json.loads(raw).get("metadata") or {}).get("job_submission_id")
        except ValueError:
            submission = None
        if submission:
            tags["ray.job_submission_id"] = str(submission)
            tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
    return tags


def _online_datasets(p: Prepared, world: int, before: dict | None) -> dict:
    """Ray Data for online mode: enough epochs for the remaining steps at the largest world size, from the
    epoch of ``before`` (the latest checkpoint's metrics, None for a fresh run)."""
    from training import data as data_mod
    from training.online import trainer_datasets

    start_epoch = int((before or {}).get("epoch", 0))
    per_epoch = data_mod.batches_per_epoch(p.data, world)
    done = int((before or {}).get("step", 0))
    needed = (p.steps - done) * p.stage_config.train.grad_accum
    epochs = start_epoch + max(1, math.ceil(needed / per_epoch)) + 1  # +1: a resumed epoch starts mid-way
    return trainer_datasets(p.data, epochs, start_epoch)


def _unwrap_user_error(err: BaseException) -> BaseException | None:
    """A HiresError raised on a worker (bad model, mismatch), to report as one line on the driver."""
    failures = getattr(err, "worker_failures", None) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], HiresError):
            return failures[rank]
    return None


def loop_config(p: Prepared, models: dict, mlflow_cfg: dict | None, workers: Any) -> dict:
    """The loop config of contract C3 (plain JSON), plus ``command`` and ``workers`` for the run's parameters."""
    return {
        "stage": p.request.stage,
        "stage_config": p.stage_config.model_dump(mode="json"),
        "config_name": config_label(p.request.config),
        "data": p.data,
        "steps": p.steps,
        "seed": int(p.request.seed),
        "models": models,
        "run_dir": p.run_dir,
        "run_name": p.run_name,
        "mlflow": mlflow_cfg,
        "lineage": p.lineage,
        "command": p.request.command,
        "workers": f"{workers[0]}-{workers[1]}" if isinstance(workers, tuple) else int(workers),
    }


def run_training(
    req: TrainRequest,
    connect: Callable[[str | None], bool] | None = None,
    train_func: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> TrainSummary:
    """Train (or resume, or recognise as finished) the run ``req`` describes; see the module docstring.

    ``connect(address) -> started`` joins or starts Ray (the command passes :func:`pipelines.ray_setup.init_ray`,
    which also keeps Ray's logging out of the terminal); ``train_func`` defaults to
    :func:`training.loop.train_func`; ``progress`` shows a bar of the checkpointed step.
    """
    t0 = time.monotonic()
    p = prepare(req)
    check_identity(p)
    summary = TrainSummary(
        stage=req.stage,
        run_name=p.run_name,
        run_dir=p.run_dir,
        model_dir=None,
        final_step=None,
        status="trained",
        tracking_uri=p.tracking_uri,
    )
    tags = {
        "hires.stage": req.stage,
        "hires.config": config_label(req.config),
        "hires.code_version": p.lineage["code_version"],
        "hires.shards_index_sha256": p.lineage["shards_index_sha256"] or "",
        "hires.shards": p.lineage["shards"] or "",
        "hires.target_step": p.steps,
    }
    done_step = finished_step(p.run_dir)
    if done_step is not None and done_step >= p.steps:
        summary.status, summary.final_step = "already finished", done_step
        summary.model_dir = storage.join(p.run_dir, "model")
        if p.tracking_uri:
            summary.run_id, _ = tracking.find_or_create_run(
                p.tracking_uri, req.experiment, p.run_name, p.run_dir, tags
            )
            summary.model_version = _register(p, summary.run_id, summary.model_dir, done_step)
            tracking.end_run(p.tracking_uri, summary.run_id)
        summary.wall_s = time.monotonic() - t0
        return summary

    models = resolve_models(p)  # before Ray: a wrong, missing or mismatched model fails in seconds
    before = latest_checkpoint(p.run_dir)
    summary.resumed_from = int(before["step"]) if before and "step" in before else None

    import ray

    started = (connect or _default_connect)(req.address)
    try:
        tags.update(_job_tags())
        mlflow_cfg = None
        if p.tracking_uri:
            run_id, _ = tracking.find_or_create_run(
                p.tracking_uri, req.experiment, p.run_name, p.run_dir, tags
            )
            summary.run_id = run_id
            mlflow_cfg = {"tracking_uri": p.tracking_uri, "run_id": run_id}
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and not is_uri(p.out):
            log.warning(
                "--out %s is a local path on a cluster of %d nodes: every node must see it at that path "
                "(NFS), else use s3://",
                p.out,
                len(nodes),
            )
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
        cpw = cpus_per_worker(req, cluster_cpus, p.stage_config.train.num_threads)
        summary.cpus_per_worker = cpw
        config = loop_config(p, models, mlflow_cfg, req.workers)
        datasets = None
        if req.online is not None:
            datasets = _online_datasets(p, max_workers(req.workers), before)
        try:
            with _progress(p, summary.resumed_from or 0, enabled=progress):
                result = _fit(p, config, cpw, datasets, train_func)
        except BaseException as e:
            if summary.run_id:
                status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
                try:
                    tracking.end_run(p.tracking_uri, summary.run_id, status)
                except Exception:  # the original error matters more
                    log.warning("could not mark MLflow run %s %s", summary.run_id, status)
            user = _unwrap_user_error(e)
            if user is not None:
                raise user from None
            raise
        metrics = dict(result.metrics or {})
        summary.metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    finally:
        if started:
            ray.shutdown()
    model_step = finished_step(p.run_dir)
    summary.final_step = int(metrics.get("final_step", metrics.get("step", 0))) or model_step
    if model_step is not None:
        summary.model_dir = storage.join(p.run_dir, "model")
        if summary.run_id:
            summary.model_version = _register(p, summary.run_id, summary.model_dir, model_step)
    if summary.run_id:
        tracking.end_run(p.tracking_uri, summary.run_id)
    summary.wall_s = time.monotonic() - t0
    return summary


def _register(p: Prepared, run_id: str, model_dir: str, step: int) -> str:
    """Log ``model_dir`` (at ``step``, from its model.json) to the run and register it as a new version."""
    lineage = {
        "run_id": run_id,
        "run_dir": p.run_dir,
        "shards": p.lineage["shards"],
        "shards_index_sha256": p.lineage["shards_index_sha256"],
        "code_version": p.lineage["code_version"],
        "step": step,
        "online": canonical_json(p.data["online"]) if p.data.get("online") else None,
    }
    from training.lineage import parent_references

    # the parent models (hires.parent.<role>): registered versions where they are, for `hires models lineage`
    try:
        parents = parent_references(p.request.models, p.run_dir, p.tracking_uri)
    except Exception as e:  # noqa: BLE001 - lineage is informative: registering the model matters more
        log.warning("could not resolve the parent models' versions: %s", e)
        parents = {role: str(v) for role, v in p.request.models.items() if v}
    lineage.update({f"parent.{role}": ref for role, ref in parents.items()})
    return tracking.log_and_register_model(p.tracking_uri, run_id, p.request.stage, model_dir, lineage)


@contextlib.contextmanager
def _progress(p: Prepared, start: int, enabled: bool, interval_s: float = 5.0) -> Iterator[None]:
    """A progress bar of the run's latest checkpointed step (the driver only sees checkpoints: the bar moves every
    ``train.checkpoint_every`` steps; per-step curves are in MLflow)."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    stop = threading.Event()
    bar = tqdm(total=p.steps, initial=start, unit="step", desc=f"train {p.request.stage}", dynamic_ncols=True)

    def poll() -> None:
        try:
            step = int((latest_checkpoint(p.run_dir) or {}).get("step", bar.n))
        except Exception:  # a snapshot being rewritten: next time
            return
        if step != bar.n:
            bar.update(step - bar.n)

    def watch() -> None:
        while not stop.wait(interval_s):
            poll()

    thread = threading.Thread(target=watch, name="hires-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 10)
        poll()  # the final checkpoint
        bar.close()


def _fit(p: Prepared, config: dict, cpw: float, datasets: dict | None, train_func: Callable | None):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if train_func is None:
        from training.loop import train_func as loop_train_func

        train_func = loop_train_func
    req = p.request
    resources: dict[str, float] = {"CPU": cpw}
    if req.gpu:
        resources["GPU"] = 1.0
    trainer = TorchTrainer(
        train_loop_per_worker=train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=req.workers, use_gpu=req.gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=p.run_name,
            storage_path=p.out,
            failure_config=FailureConfig(max_failures=int(req.max_failures)),
            checkpoint_config=CheckpointConfig(num_to_keep=int(p.stage_config.train.keep_checkpoints)),
            # Ray Train's own INFO lines stay in the session logs; the command prints its summary
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )
    return trainer.fit()
