"""MLflow tracking of training runs: one MLflow run per training run, across restarts and driver reruns.

The driver (:mod:`training.launcher`) finds or creates the MLflow run with :func:`find_or_create_run` (found by
the tag ``hires.run_key``, a digest of the run directory, so a restarted worker group or a rerun command logs into
the same run id) and passes ``{"tracking_uri", "run_id"}`` to the workers in the loop config. Rank 0 logs through
:class:`RankZeroLogger` (every other rank, and a ``None`` config, gets a no-op logger). After training the driver
logs the model directory as the run's ``model/`` artifacts and registers it as a new version of ``hires-<stage>``
(:func:`log_and_register_model`); :func:`download_model` turns ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``
back into a local model directory.

Where runs go (:func:`default_tracking_uri`): a local ``--out`` keeps an embedded store, ``sqlite:///OUT/mlflow.db``,
with artifacts beside it in ``OUT/mlartifacts``; an ``s3://`` ``--out`` needs ``--tracking-uri`` (an
``http://`` tracking server, or a ``sqlite:///`` file whose artifacts then sit beside the database): a database
inside a bucket cannot be shared by the driver and the workers.

MLflow 3 notes: ``mlflow.register_model("runs:/ID/model")`` expects a logged model (``LoggedModel``) there; a plain
model directory logged as artifacts registers with ``MlflowClient.create_model_version(source=<artifact uri>)``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datasets.audio import is_uri
from datasets.errors import DataError, UsageError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "hires"
MODEL_PREFIX = "hires-"
RUN_KEY_TAG = "hires.run_key"  # sha256 of the run directory: how a restart finds its run
RUN_DIR_TAG = "hires.run_dir"
STARTS_TAG = "hires.worker_group_starts"  # rank 0 counts the worker groups that logged into the run
RESTARTS_TAG = "hires.restarts"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
BATCH = 100  # MLflow's limit on params per log_batch call


def _quiet_mlflow() -> None:
    # MLflow prints download progress bars and database-migration INFO lines; the command keeps its own output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def model_name(stage: str) -> str:
    """Registered model name of a stage: ``hires-<stage>``."""
    return f"{MODEL_PREFIX}{stage}"


def is_model_uri(text: str) -> bool:
    return str(text).startswith("models:/")


def default_tracking_uri(out: str) -> str:
    """``sqlite:///<abs OUT>/mlflow.db`` for a local ``out``; a UsageError for a URI (see the module docstring)."""
    if is_uri(out):
        raise UsageError(
            f"--out {out} is not a local directory: pass --tracking-uri (an http:// MLflow server, or a "
            "sqlite:///PATH.db on a disk the driver and the workers share)"
        )
    return f"sqlite:///{Path(out).expanduser().resolve() / 'mlflow.db'}"


def _artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside an embedded database (``.../mlartifacts``); a server decides for itself (``None``)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return str(db.parent / "mlartifacts")
    return None


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    _quiet_mlflow()
    if tracking_uri.startswith("sqlite:///"):
        # the database file's folder must exist before SQLAlchemy creates the file
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def run_key(run_dir: str) -> str:
    """Stable identity of a training run: the sha256 of its directory (filter strings need no quoting)."""
    return hashlib.sha256(str(run_dir).encode()).hexdigest()


def _experiment_id(client, experiment: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UsageError(
                f"MLflow experiment {experiment!r} at {tracking_uri} is deleted: restore it or pass --experiment"
            )
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(experiment, artifact_location=_artifact_root(tracking_uri))
    except MlflowException:
        # created meanwhile by another driver: use theirs
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def find_or_create_run(
    tracking_uri: str, experiment: str, run_name: str, run_dir: str, tags: Mapping[str, Any] | None = None
) -> tuple[str, bool]:
    """The MLflow run of the training run in ``run_dir``: ``(run_id, created)``.

    Found by :data:`RUN_KEY_TAG` among the experiment's active runs (the newest if several), else created with
    ``run_name``. ``tags`` are set on either (a rerun updates e.g. the Ray job id). The run is marked RUNNING.
    """
    from mlflow.exceptions import MlflowException

    check_reachable(tracking_uri)
    try:
        return _find_or_create_run(tracking_uri, experiment, run_name, run_dir, tags)
    except MlflowException as e:
        raise UsageError(
            f"--tracking-uri {tracking_uri}: the MLflow store refused the run: {' '.join(str(e).split())[:300]}"
        ) from None


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when an ``http(s)://`` tracking server does not answer (MLflow itself retries for
    minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:  # it answers (a proxy or an auth layer may refuse /health): reachable
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(
            f"--tracking-uri {tracking_uri}: no MLflow server answers there ({reason})"
        ) from None


def _find_or_create_run(
    tracking_uri: str, experiment: str, run_name: str, run_dir: str, tags: Mapping[str, Any] | None
) -> tuple[str, bool]:
    client = _client(tracking_uri)
    exp_id = _experiment_id(client, experiment, tracking_uri)
    key = run_key(run_dir)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", order_by=["start_time DESC"], max_results=1
    )
    all_tags = {RUN_KEY_TAG: key, RUN_DIR_TAG: str(run_dir), **{k: str(v) for k, v in (tags or {}).items()}}
    if found:
        run_id = found[0].info.run_id
        _set_tags(client, run_id, all_tags)
        client.update_run(run_id, status="RUNNING")
        return run_id, False
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
    return run.info.run_id, True


def _set_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, len(items), BATCH):
        client.log_batch(run_id, tags=items[i : i + BATCH])


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED (or FAILED / KILLED)."""
    _client(tracking_uri).set_terminated(run_id, status=status)


def _world_rank() -> int:
    """This process's Ray Train world rank; 0 outside a Ray Train worker (a local call, a test)."""
    try:
        import ray.train

        return int(ray.train.get_context().get_world_rank())
    except Exception:  # not inside a training worker
        return 0


class RankZeroLogger:
    """Logging into the training run's MLflow run from rank 0; every method is a no-op elsewhere.

    ``config`` is the loop config's ``mlflow`` entry (``{"tracking_uri": ..., "run_id": ...}``) or ``None`` (no
    tracking). Logging must never stop training: an MLflow error is logged as a warning and the call returns.
    Creating an active logger counts one worker-group start in the run's tags (``hires.restarts`` = starts - 1:
    worker-group restarts and reruns of the command both count).
    """

    def __init__(self, config: Mapping[str, Any] | None, rank: int | None = None) -> None:
        self.active = bool(config) and (_world_rank() if rank is None else rank) == 0
        self.run_id = str(config["run_id"]) if self.active else ""
        self.tracking_uri = str(config["tracking_uri"]) if self.active else ""
        self._client = None
        self._params: dict[str, str] | None = None
        self.failures = 0
        if self.active:
            self._guard("count the start", self._count_start)

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    def _guard(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # tracking is best effort: the run goes on without it
            self.failures += 1
            log.warning(
                "MLflow: could not %s in run %s: %s", what, self.run_id, " ".join(str(e).split())[:300]
            )

    def _count_start(self) -> None:
        tags = self.client.get_run(self.run_id).data.tags
        starts = int(tags.get(STARTS_TAG, "0")) + 1
        _set_tags(self.client, self.run_id, {STARTS_TAG: starts, RESTARTS_TAG: starts - 1})

    def log_params(self, flat: Mapping[str, Any]) -> None:
        """Log parameters; keys already logged (a resumed run) are skipped, a changed value only warns
        (MLflow parameters are immutable: the first value stays)."""
        if self.active:
            self._guard("log params", self._log_params, flat)

    def _log_params(self, flat: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        if self._params is None:
            self._params = dict(self.client.get_run(self.run_id).data.params)
        new = []
        for k, v in flat.items():
            value = str(v)[:MAX_PARAM_CHARS]
            if k in self._params:
                if self._params[k] != value:
                    log.warning("MLflow param %s keeps %r (this attempt: %r)", k, self._params[k], value)
                continue
            self._params[k] = value
            new.append(Param(str(k), value))
        for i in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` (the global optimisation step, so a resumed run continues the curve)."""
        if self.active and metrics:
            self._guard("log metrics", self._log_metrics, metrics, int(step))

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's limit on metrics per batch
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.active and tags:
            self._guard("set tags", _set_tags, self.client, self.run_id, tags)

    def log_audio(self, path_in_run: str, wave: np.ndarray, sr: int) -> None:
        """A wav (float32, 1-D or (samples, channels)) at ``path_in_run`` among the run's artifacts."""
        if self.active:
            self._guard(f"log {path_in_run}", self._log_audio, path_in_run, wave, sr)

    def _log_audio(self, path_in_run: str, wave: np.ndarray, sr: int) -> None:
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.asarray(wave, dtype=np.float32), int(sr), format="WAV", subtype="FLOAT")
        self._log_bytes(path_in_run, buf.getvalue())

    def log_image(self, path_in_run: str, png_bytes: bytes) -> None:
        """PNG bytes at ``path_in_run`` among the run's artifacts."""
        if self.active:
            self._guard(f"log {path_in_run}", self._log_bytes, path_in_run, png_bytes)

    def _log_bytes(self, path_in_run: str, data: bytes) -> None:
        rel = Path(path_in_run)
        if rel.is_absolute() or ".." in rel.parts or not rel.name:
            raise ValueError(f"artifact path must be relative and inside the run: {path_in_run!r}")
        with tempfile.TemporaryDirectory(prefix="hires-mlflow-") as tmp:
            local = Path(tmp) / rel.name
            local.write_bytes(data)
            parent = rel.parent.as_posix()
            self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)

    def close(self) -> None:
        self._client = None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> ``{"a.b.0": value}`` (parameters for :meth:`RankZeroLogger.log_params`)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list | tuple) and obj and any(isinstance(v, Mapping | list | tuple) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def log_and_register_model(
    tracking_uri: str, run_id: str, stage: str, model_dir: str, lineage: Mapping[str, Any]
) -> str:
    """Log ``model_dir`` (local or URI) among the run's artifacts and register it as a new version of
    ``hires-<stage>`` whose tags carry ``lineage`` (``hires.<key>``); returns the version.

    The first model of a run goes to the artifact folder ``model/``; a run continued to more steps registers its
    later model from ``model-step<N>/``, so every version's files stay as they were registered. A model already
    registered from this run at the same ``lineage["step"]`` (a rerun after the driver died past this point)
    keeps its version: nothing is logged twice.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    name = model_name(stage)
    step = str(lineage.get("step"))
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    for mv in sorted(found, key=lambda mv: int(mv.version)):
        if mv.tags.get("hires.step") == step:
            return str(mv.version)
    artifact_path = "model" if not found else f"model-step{step}"
    with tempfile.TemporaryDirectory(prefix="hires-model-") as tmp:
        local = _local_copy(model_dir, tmp)
        client.log_artifacts(run_id, local, artifact_path)
    try:
        client.create_registered_model(
            name, description=f"hires {stage} stage: model directories from training"
        )
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = client.get_run(run_id)
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{artifact_path}",
        run_id=run_id,
        tags={f"hires.{k}": str(v) for k, v in lineage.items() if v is not None},
    )
    return str(mv.version)


def _local_copy(model_dir: str, tmp: str) -> str:
    """A local directory with the model files (``model_dir`` itself when local)."""
    from datasets import storage

    if not is_uri(model_dir):
        return model_dir
    for name in storage.listdir(model_dir):
        Path(tmp, name).write_bytes(storage.read_bytes(storage.join(model_dir, name)))
    return tmp


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/VERSION`` -> ``(NAME, VERSION, None)``; ``models:/NAME@ALIAS`` -> ``(NAME, None, ALIAS)``."""
    body = str(uri)[len("models:/") :] if is_model_uri(uri) else ""
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias and "/" not in name and "/" not in alias:
            return name, None, alias
    else:
        name, _, version = body.partition("/")
        if name and version.isdigit():
            return name, version, None
    raise UsageError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")


def download_model(uri: str, tracking_uri: str | None, dst: str | None = None) -> str:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> a local directory holding the model files.

    ``tracking_uri`` is the registry to ask (``None``: MLflow's default, ``$MLFLOW_TRACKING_URI``). A version or
    alias that does not exist is a DataError naming the URI. The version is resolved here rather than by
    ``download_artifacts("models:/...")``, which asks the process-wide default registry whatever it is told.
    """
    import mlflow
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(uri)
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    client = _client(tracking_uri)
    dst = dst or tempfile.mkdtemp(prefix="hires-model-")
    try:
        if alias is not None:
            version = str(client.get_model_version_by_alias(name, alias).version)
        source = client.get_model_version_download_uri(name, version)
        Path(dst).mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri
        )
    except MlflowException as e:
        raise DataError(
            f"{uri}: cannot download from {tracking_uri}: {' '.join(str(e).split())[:300]}"
        ) from None
    if not Path(path, "model.json").is_file():
        raise DataError(f"{uri}: the registered files hold no model.json (not a hires model directory)")
    return path
