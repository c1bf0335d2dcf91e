"""Lineage of a registered model: the run, config, code version and data that produced it, and its parent models.

``hires models lineage models:/hires-ldm@champion`` prints :func:`model_lineage` as a tree: the model version (and
its aliases), its training run (name, status, the Ray job that ran it), the stage config, the code version, the
shard set with the sha256 of its ``index.json`` and of the manifests the shards were synthesised from (read from
that index), and then, indented, the same for each parent model (LDM -> recovery and autoencoder; a warm start's
``init`` model too).

How parents are known. At registration (:func:`training.launcher._register`) the version gets a tag
``hires.parent.<role>`` per model the run was given: a ``models:/NAME/VERSION`` reference when the parent is a
registered version (an alias given on the command line is pinned to the version it pointed at when the run
downloaded it, from the ``source.json`` written beside the downloaded copy by :func:`write_source`; a model
directory is matched to the version registered from its run), else the directory as given. Versions registered
before these tags existed are traced the same way from the run's ``models.<role>`` parameters.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import storage
from datasets.audio import is_uri
from datasets.errors import DataError
from training import tracking

PARENT_TAG = "hires.parent."  # + role: the parent model of a registered version
PARENT_ROLES = ("recovery", "autoencoder", "vocoder", "init")
SOURCE_FILE = "source.json"  # beside a downloaded input model: the URI given and the version it resolved to
INPUTS_DIR = "inputs"  # run_dir/inputs/<role>/: where the launcher downloads models:/ inputs


def pin_model_uri(uri: str, tracking_uri: str | None) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION`` (the version the alias points at now); a versioned URI
    is returned as it is. A missing alias is a DataError naming the URI."""
    name, version, alias = tracking.parse_model_uri(uri)
    if alias is None:
        return uri
    import mlflow
    from mlflow.exceptions import MlflowException

    client = tracking._client(tracking_uri or mlflow.get_tracking_uri())
    try:
        version = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        raise DataError(f"{uri}: {' '.join(str(e).split())[:300]}") from None
    return f"models:/{name}/{version}"


def write_source(target: str, given: str, pinned: str) -> None:
    """Record beside a downloaded input model which URI it was given as and which version that was."""
    doc = {"uri": given, "version_uri": pinned}
    storage.write_bytes(storage.join(target, SOURCE_FILE), (json.dumps(doc, sort_keys=True) + "\n").encode())


def _read_json(path: str) -> dict | None:
    try:
        doc = json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def registered_version_of(client, model_dir: str) -> str | None:
    """``models:/NAME/VERSION`` registered from the training run whose directory holds ``model_dir``
    (``RUN_DIR/model``), at the step its ``model.json`` records; None when no registered version matches."""
    run_dir = posixpath.dirname(str(model_dir).rstrip("/")) if is_uri(model_dir) else None
    if run_dir is None:
        from pathlib import Path

        run_dir = str(Path(model_dir).expanduser().resolve().parent)
    if "'" in run_dir:
        return None  # not expressible in an MLflow filter string
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments, filter_string=f"tags.`{tracking.RUN_DIR_TAG}` = '{run_dir}'", max_results=5
    )
    meta = _read_json(storage.join(model_dir, "model.json")) or {}
    step = str(meta.get("step")) if meta.get("step") is not None else None
    for run in runs:
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        matching = [mv for mv in versions if step is None or mv.tags.get("hires.step") == step]
        if matching:
            mv = max(matching, key=lambda mv: int(mv.version))
            return f"models:/{mv.name}/{mv.version}"
    return None


def parent_reference(client, role: str, value: str, run_dir: str | None) -> str:
    """The reference recorded for a parent model given as ``value`` (a ``models:/`` URI or a directory)."""
    if tracking.is_model_uri(value):
        name, version, _ = tracking.parse_model_uri(value)
        if version is not None:
            return value
        if run_dir:  # the copy the run downloaded says which version the alias pointed at
            source = _read_json(storage.join(run_dir, INPUTS_DIR, role, SOURCE_FILE))
            if source and source.get("uri") == value and source.get("version_uri"):
                return str(source["version_uri"])
        return value
    source = _read_json(storage.join(value, SOURCE_FILE))  # the run's own downloaded copy (inputs/<role>)
    if source and source.get("version_uri"):
        return str(source["version_uri"])
    return registered_version_of(client, value) or value


def parent_references(
    models: Mapping[str, str | None], run_dir: str | None, tracking_uri: str
) -> dict[str, str]:
    """``{role: reference}`` of the models a run was given (see :func:`parent_reference`)."""
    client = tracking._client(tracking_uri)
    return {
        role: parent_reference(client, role, str(value), run_dir)
        for role, value in models.items()
        if value and str(value) != "None" and role in PARENT_ROLES
    }


@dataclass
class ModelLineage:
    """What produced one registered model version (``parents`` by role: a lineage, or a directory that was
    never registered)."""

    uri: str
    name: str
    version: str
    aliases: list[str]
    source: str
    run_id: str | None
    run_name: str | None = None
    run_status: str | None = None
    ray_job_id: str | None = None
    ray_submission_id: str | None = None
    stage: str | None = None
    config: str | None = None
    step: str | None = None
    command: str | None = None
    code_version: str | None = None
    shards: str | None = None
    shards_index_sha256: str | None = None
    index_now: str | None = None  # "same", "changed (sha256 ...)", "unreadable: ..."
    manifests: dict[str, str] = field(default_factory=dict)
    synth_seed: Any = None
    parents: dict[str, ModelLineage | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "parents"}
        out["parents"] = {
            role: p.to_dict() if isinstance(p, ModelLineage) else {"directory": p}
            for role, p in self.parents.items()
        }
        return out

    def lines(self, indent: str = "") -> list[str]:
        alias = f" (aliases: {', '.join(self.aliases)})" if self.aliases else ""
        out = [f"{indent}{self.name} version {self.version}{alias}: {self.source}"]
        sub = indent + "  "
        if self.run_id:
            job = ""
            if self.ray_job_id or self.ray_submission_id:
                job = f", Ray job {self.ray_job_id or '?'} (submission {self.ray_submission_id or '?'})"
            out.append(f"{sub}run: {self.run_id} ({self.run_name}, {self.run_status}{job})")
        out.append(f"{sub}stage: {self.stage}, config: {self.config}, step: {self.step}")
        if self.command:
            out.append(f"{sub}command: {self.command}")
        out.append(f"{sub}code version: {self.code_version}")
        if self.shards:
            out.append(f"{sub}shards: {self.shards}")
            out.append(f"{sub}shard index sha256: {self.shards_index_sha256} (index now: {self.index_now})")
            if self.synth_seed is not None:
                out.append(f"{sub}synthesis seed: {self.synth_seed}")
            for role, sha in sorted(self.manifests.items()):
                out.append(f"{sub}manifest {role} sha256: {sha}")
        for role, parent in self.parents.items():
            if isinstance(parent, ModelLineage):
                out.append(f"{sub}parent {role}:")
                out.extend(parent.lines(sub + "  "))
            else:
                out.append(f"{sub}parent {role}: {parent} (not a registered model)")
        return out


def _shards_info(lin: ModelLineage) -> None:
    """The shard index as it is now: same bytes as trained on, and the manifests' sha256 it records."""
    from datasets import shards as shard_format

    try:
        raw = storage.read_bytes(shard_format.index_path(lin.shards))
    except Exception as e:  # noqa: BLE001 - a moved or unreadable index is reported, not fatal
        lin.index_now = f"unreadable: {type(e).__name__}: {' '.join(str(e).split())[:120]}"
        return
    digest = hashlib.sha256(raw).hexdigest()
    lin.index_now = "same" if digest == lin.shards_index_sha256 else f"changed (sha256 {digest})"
    try:
        index = json.loads(raw)
    except ValueError:
        return
    lin.manifests = {str(k): str(v) for k, v in (index.get("manifests") or {}).items()}
    lin.synth_seed = index.get("seed")


def model_lineage(uri: str, tracking_uri: str | None, depth: int = 4) -> ModelLineage:
    """The lineage of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (parents followed ``depth`` levels)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    tracking.check_reachable(tracking_uri)
    client = tracking._client(tracking_uri)
    name, version, alias = tracking.parse_model_uri(uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, version)
        )
    except MlflowException as e:
        raise DataError(
            f"{uri}: not in the registry at {tracking_uri} ({' '.join(str(e).split())[:200]})"
        ) from None
    tags = dict(mv.tags or {})
    lin = ModelLineage(
        uri=uri,
        name=name,
        version=str(mv.version),
        aliases=sorted(getattr(mv, "aliases", None) or []),
        source=str(mv.source),
        run_id=mv.run_id,
        step=tags.get("hires.step"),
        code_version=tags.get("hires.code_version"),
        shards=tags.get("hires.shards") or None,
        shards_index_sha256=tags.get("hires.shards_index_sha256"),
    )
    params: dict[str, str] = {}
    run_dir = tags.get("hires.run_dir")
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            run = None
        if run is not None:
            rtags, params = run.data.tags, run.data.params
            lin.run_name = run.info.run_name
            lin.run_status = run.info.status
            lin.ray_job_id = rtags.get("ray.job_id")
            lin.ray_submission_id = rtags.get("ray.job_submission_id")
            lin.stage = rtags.get("hires.stage")
            lin.config = rtags.get("hires.config") or params.get("config_name")
            lin.command = params.get("command")
            lin.code_version = lin.code_version or rtags.get("hires.code_version")
            run_dir = run_dir or rtags.get(tracking.RUN_DIR_TAG)
    if lin.shards:
        _shards_info(lin)
    refs = {role[len(PARENT_TAG) :]: ref for role, ref in tags.items() if role.startswith(PARENT_TAG)}
    if not refs:  # registered before parent tags were recorded: trace the run's model parameters
        refs = {
            role: parent_reference(client, role, params[f"models.{role}"], run_dir)
            for role in PARENT_ROLES
            if params.get(f"models.{role}") not in (None, "", "None")
        }
    for role in sorted(refs, key=lambda r: PARENT_ROLES.index(r) if r in PARENT_ROLES else len(PARENT_ROLES)):
        ref = refs[role]
        if tracking.is_model_uri(ref) and depth > 0:
            lin.parents[role] = model_lineage(ref, tracking_uri, depth - 1)
        else:
            lin.parents[role] = ref
    return lin
