"""MLflow tracking against a real ``mlflow server`` (sqlite backend, served artifacts) on 127.0.0.1: one run per
training run across restarts, rank-0 logging read back with MlflowClient, model registration with lineage, and
``models:/`` URIs downloaded back into model directories."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from mlflow_fixtures import mlflow_server  # noqa: F401 - fixture

from datasets.errors import DataError, UsageError
from training import tracking


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.random.default_rng(0).random((8, 8)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _download(uri: str, run_id: str, path: str, tmp_path) -> bytes:
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(tmp_path), tracking_uri=uri
    )
    with open(local, "rb") as f:
        return f.read()


def test_run_found_again_by_run_dir_and_rank_zero_logging(mlflow_server, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    uri = mlflow_server.uri
    run_dir = str(tmp_path / "out" / "recovery-tiny")
    run_id, created = tracking.find_or_create_run(
        uri, "t-logging", "recovery-tiny", run_dir, {"hires.stage": "x"}
    )
    assert created
    again, created_again = tracking.find_or_create_run(uri, "t-logging", "recovery-tiny", run_dir, {"k": "2"})
    assert (again, created_again) == (run_id, False)
    other, _ = tracking.find_or_create_run(uri, "t-logging", "recovery-tiny", run_dir + "-b")
    assert other != run_id  # another run directory is another run

    cfg = {"tracking_uri": uri, "run_id": run_id}
    logger = tracking.RankZeroLogger(cfg, rank=0)
    logger.log_params({"train.steps": 4, "model.nf": 16})
    logger.log_params({"train.steps": 5, "world_size": 2})  # a resumed attempt: the first value stays
    for step in (1, 2, 3):
        logger.log_metrics({"loss": 1.0 / step, "lr": 1e-3}, step=step)
    sr = 16000
    wave = (0.1 * np.sin(np.linspace(0, 200, sr // 4))).astype(np.float32)
    logger.log_audio("eval/step_000003/ex0_output.wav", wave, sr)
    png = _png()
    logger.log_image("eval/step_000003/ex0_spec.png", png)
    logger.set_tags({"hires.code_version": "abc"})
    logger.close()
    assert logger.failures == 0
    tracking.RankZeroLogger(cfg, rank=1).log_metrics({"loss": 99.0}, step=1)  # other ranks log nothing
    tracking.RankZeroLogger(None).log_metrics({"loss": 99.0}, step=1)  # no tracking: no-op

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["train.steps"] == "4" and run.data.params["world_size"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(1 / 3)),
    ]
    tags = run.data.tags
    assert tags["hires.stage"] == "x" and tags["k"] == "2" and tags["hires.code_version"] == "abc"
    assert tags[tracking.RUN_DIR_TAG] == run_dir
    assert tags[tracking.RESTARTS_TAG] == "0"  # one rank-0 start so far
    tracking.RankZeroLogger(cfg, rank=0)
    assert client.get_run(run_id).data.tags[tracking.RESTARTS_TAG] == "1"

    got, got_sr = sf.read(
        io.BytesIO(_download(uri, run_id, "eval/step_000003/ex0_output.wav", tmp_path / "a"))
    )
    assert got_sr == sr and np.allclose(got, wave, atol=1e-6)
    from PIL import Image

    img = Image.open(io.BytesIO(_download(uri, run_id, "eval/step_000003/ex0_spec.png", tmp_path / "b")))
    img.verify()
    assert img.format == "PNG"


def test_logging_errors_never_stop_training(tmp_path, monkeypatch):
    # a tracking server that is not there: each call warns and returns (no retries here: MLflow's default
    # back-off would wait minutes)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger = tracking.RankZeroLogger({"tracking_uri": "http://127.0.0.1:9", "run_id": "0" * 32}, rank=0)
    logger.log_metrics({"loss": 1.0}, step=1)
    assert logger.failures >= 1


def _model_dir(path, step: int = 4) -> str:
    path.mkdir(parents=True)
    (path / "weights.safetensors").write_bytes(b"\0" * 16)
    (path / "model.json").write_text(json.dumps({"stage": "recovery", "step": step}))
    return str(path)


def test_model_registered_with_lineage_and_downloaded_by_version_and_alias(mlflow_server, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    uri = mlflow_server.uri
    run_id, _ = tracking.find_or_create_run(uri, "t-register", "recovery-tiny", str(tmp_path / "run"))
    lineage = {
        "run_id": run_id,
        "shards": "/data/shards",
        "shards_index_sha256": "ab" * 32,
        "code_version": "c0de",
        "step": 4,
    }
    model_dir = _model_dir(tmp_path / "run" / "model")
    version = tracking.log_and_register_model(uri, run_id, "recovery", model_dir, lineage)
    # a rerun after a driver crash past registration registers nothing new
    assert tracking.log_and_register_model(uri, run_id, "recovery", model_dir, lineage) == version
    client = MlflowClient(uri, registry_uri=uri)
    mv = client.get_model_version("hires-recovery", version)
    assert mv.run_id == run_id and mv.source.endswith("/model")
    assert mv.tags["hires.shards_index_sha256"] == "ab" * 32 and mv.tags["hires.code_version"] == "c0de"
    assert mv.tags["hires.shards"] == "/data/shards" and mv.tags["hires.run_id"] == run_id
    names = {a.path for a in client.list_artifacts(run_id, "model")}
    assert names == {"model/model.json", "model/weights.safetensors"}

    # the run continued to more steps: a new version from its own folder, the first one's files untouched
    later = _model_dir(tmp_path / "run2" / "model", step=8)
    version2 = tracking.log_and_register_model(uri, run_id, "recovery", later, {**lineage, "step": 8})
    assert int(version2) == int(version) + 1
    assert client.get_model_version("hires-recovery", version2).source.endswith("/model-step8")

    client.set_registered_model_alias("hires-recovery", "champion", version)
    for ref in (f"models:/hires-recovery/{version}", "models:/hires-recovery@champion"):
        local = tracking.download_model(ref, uri, dst=str(tmp_path / "dl" / ref[-9:].replace("/", "_")))
        assert json.loads(open(f"{local}/model.json").read())["step"] == 4
        assert open(f"{local}/weights.safetensors", "rb").read() == b"\0" * 16
    with pytest.raises(DataError, match="models:/hires-recovery/999"):
        tracking.download_model("models:/hires-recovery/999", uri, dst=str(tmp_path / "dl" / "none"))
    with pytest.raises(DataError, match="@nosuch"):
        tracking.download_model("models:/hires-recovery@nosuch", uri, dst=str(tmp_path / "dl" / "none2"))


def test_embedded_store_default_and_s3_out_needs_a_server(tmp_path):
    uri = tracking.default_tracking_uri(str(tmp_path / "out"))
    assert uri == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    run_id, created = tracking.find_or_create_run(uri, "hires", "r", str(tmp_path / "out" / "r"))
    assert created
    tracking.RankZeroLogger({"tracking_uri": uri, "run_id": run_id}, rank=0).log_audio(
        "a/b.wav", np.zeros(100, np.float32), 16000
    )
    # artifacts live beside the database, under OUT
    assert list((tmp_path / "out" / "mlartifacts").rglob("b.wav"))
    with pytest.raises(UsageError, match="--tracking-uri"):
        tracking.default_tracking_uri("s3://bucket/runs")


def test_unreachable_server_is_a_one_line_error_in_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens once closed
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="no MLflow server answers"):
        tracking.find_or_create_run(f"http://127.0.0.1:{port}", "hires", "r", str(tmp_path / "r"))
    assert time.monotonic() - t0 < 10


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}]}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d.0.e": 3,
    }
