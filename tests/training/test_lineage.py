"""``hires models lineage``: the chain that produced a registered model, from an MLflow registry (sqlite here)
holding runs and versions registered the way the launcher registers them (training.tracking), with the parent
references the launcher records (training.lineage): run, config, code version, shard index and manifests'
sha256, and the parents (ldm -> recovery and autoencoder), an alias pinned to the version the run downloaded."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipelines.cli import main
from training import lineage, tracking

MANIFESTS = {"clean": "a" * 64, "noise": "b" * 64, "rir": "c" * 64}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite store: creating one runs MLflow's migrations (seconds), copying it does not."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking._client(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def registry(tmp_path, empty_store):
    """A sqlite registry with recovery v1 (alias champion), autoencoder v1 and an ldm v1 trained on them."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shards = tmp_path / "shards"
    shards.mkdir()
    index = json.dumps({"manifests": MANIFESTS, "seed": 7}).encode()
    (shards / "index.json").write_bytes(index)
    index_sha = hashlib.sha256(index).hexdigest()
    out = tmp_path / "out"

    def train(stage: str, models: dict | None = None, job: str | None = None) -> tuple[str, str]:
        run_dir = out / f"{stage}-tiny"
        model_dir = run_dir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.json").write_text(json.dumps({"stage": stage, "step": 3}))
        (model_dir / "weights.safetensors").write_bytes(b"w")
        tags = {"hires.stage": stage, "hires.config": "tiny", "hires.code_version": "0.1.0+src.abc"}
        if job:
            tags.update({"ray.job_id": "02000000", "ray.job_submission_id": job})
        run_id, _ = tracking.find_or_create_run(uri, "hires", f"{stage}-tiny", str(run_dir), tags)
        client = tracking._client(uri)
        client.log_param(run_id, "command", f"hires train {stage}")
        for role, value in (models or {}).items():
            client.log_param(run_id, f"models.{role}", value)
        meta = {
            "run_id": run_id,
            "run_dir": str(run_dir),
            "shards": str(shards),
            "shards_index_sha256": index_sha,
            "code_version": "0.1.0+src.abc",
            "step": 3,
        }
        return run_id, tracking.log_and_register_model(uri, run_id, stage, str(model_dir), meta)

    train("recovery", job="raysubmit_rec")
    tracking._client(uri).set_registered_model_alias("hires-recovery", "champion", "1")
    train("autoencoder")
    return uri, out, train, index_sha


def test_ldm_lineage_names_run_data_and_parents(registry, tmp_path, capsys):
    uri, out, train, index_sha = registry
    ldm_dir = out / "ldm-tiny"
    # the launcher downloads a models:/ input into RUN/inputs/<role>/ and records the version it resolved to
    inputs = ldm_dir / "inputs" / "recovery"
    inputs.mkdir(parents=True)
    given = "models:/hires-recovery@champion"
    lineage.write_source(str(inputs), given, lineage.pin_model_uri(given, uri))
    models = {"recovery": given, "autoencoder": str(out / "autoencoder-tiny" / "model")}
    parents = lineage.parent_references(models, str(ldm_dir), uri)
    assert parents == {"recovery": "models:/hires-recovery/1", "autoencoder": "models:/hires-autoencoder/1"}

    # the champion moves on before the ldm registers: the ldm keeps the version it trained with
    train("recovery")  # same run directory, same step: still version 1 ...
    tracking._client(uri).create_model_version("hires-recovery", source=str(tmp_path), run_id=None)  # v2
    tracking._client(uri).set_registered_model_alias("hires-recovery", "champion", "2")
    assert lineage.parent_references(models, str(ldm_dir), uri)["recovery"] == "models:/hires-recovery/1"

    run_id, version = train("ldm", models={"recovery": str(inputs), "autoencoder": models["autoencoder"]})
    client = tracking._client(uri)
    for role, ref in parents.items():  # what training.launcher._register adds to the version's tags
        client.set_model_version_tag("hires-ldm", version, f"{lineage.PARENT_TAG}{role}", ref)
    client.set_registered_model_alias("hires-ldm", "champion", version)

    assert main(["models", "lineage", "models:/hires-ldm@champion", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    assert text.startswith("hires-ldm version 1 (aliases: champion)")
    assert f"run: {run_id} (ldm-tiny, RUNNING)" in text
    assert "stage: ldm, config: tiny, step: 3" in text and "code version: 0.1.0+src.abc" in text
    assert f"shard index sha256: {index_sha} (index now: same)" in text
    for role, sha in MANIFESTS.items():
        assert f"manifest {role} sha256: {sha}" in text
    assert "  parent recovery:\n    hires-recovery version 1:" in text
    assert "Ray job 02000000 (submission raysubmit_rec)" in text  # the recovery run ran as a Ray job
    assert "  parent autoencoder:\n    hires-autoencoder version 1:" in text

    assert main(["models", "lineage", "models:/hires-ldm/1", "--tracking-uri", uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["parents"]["recovery"]["version"] == "1" and doc["manifests"] == MANIFESTS
    assert doc["parents"]["autoencoder"]["parents"] == {}


def test_versions_without_parent_tags_are_traced_from_the_run_params(registry, capsys):
    uri, out, train, _ = registry
    train("ldm", models={"recovery": str(out / "recovery-tiny" / "model"), "autoencoder": "/gone/model"})
    lin = lineage.model_lineage("models:/hires-ldm/1", uri)
    assert lin.parents["recovery"].version == "1"  # the directory matched to the version registered from it
    assert lin.parents["autoencoder"] == "/gone/model"  # never registered: the directory as given
    assert "parent autoencoder: /gone/model (not a registered model)" in "\n".join(lin.lines())


def test_changed_index_and_bad_uris_are_reported(registry, tmp_path, capsys):
    uri, _, _, _ = registry
    (tmp_path / "shards" / "index.json").write_text("{}")
    lin = lineage.model_lineage("models:/hires-recovery/1", uri)
    assert lin.index_now.startswith("changed (sha256 ") and lin.manifests == {}
    assert main(["models", "lineage", "out/recovery-tiny/model", "--tracking-uri", uri]) == 2
    assert main(["models", "lineage", "models:/hires-recovery@nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "expected models:/NAME/VERSION" in err and "models:/hires-recovery@nope" in err
