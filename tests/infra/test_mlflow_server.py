"""The cluster's tracking server as ``infra/mlflow/server.sh`` starts it: a database backend (sqlite here) and an
S3 artifact store (the moto S3 server on 127.0.0.1). A training run logged through ``training.tracking`` lands its
artifacts in the bucket, its registered model downloads back and its lineage prints over HTTP. Every command that
reads or writes MLflow takes ``--tracking-uri``."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from ray_helpers import VENV_BIN, free_port, stop_process_group
from s3_server import BUCKET, s3_server  # noqa: F401 - fixture

from pipelines.cli import build_parser, main
from training import tracking

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "infra" / "mlflow" / "server.sh"
# the commands that read or write MLflow runs or the registry (retrain and evaluate once they are registered)
TRACKED = [
    ("train",),
    ("demo",),
    ("restore",),
    ("evaluate",),
    ("retrain",),
    ("models", "lineage"),
    ("models", "bundle"),
]


def _subparser(parser, path: tuple[str, ...]):
    for name in path:
        choices = {}
        for action in parser._actions:
            if getattr(action, "choices", None) and isinstance(action.choices, dict):
                choices = action.choices
        if name not in choices:
            return None
        parser = choices[name]
    return parser


def test_every_tracked_command_takes_tracking_uri():
    parser = build_parser()
    found = []
    for path in TRACKED:
        sub = _subparser(parser, path)
        if sub is None:  # not a command (yet)
            continue
        found.append(path)
        options = {opt for action in sub._actions for opt in action.option_strings}
        assert "--tracking-uri" in options, f"hires {' '.join(path)} lacks --tracking-uri"
    assert ("train",) in found and ("models", "lineage") in found


def test_server_script_refuses_a_non_s3_artifact_store(tmp_path):
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path),
    }
    done = subprocess.run(["bash", str(SERVER)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "is not an s3:// URI" in done.stderr
    env.pop("MLFLOW_BACKEND_STORE_URI")
    done = subprocess.run(["bash", str(SERVER)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "MLFLOW_BACKEND_STORE_URI" in done.stderr


def _up(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def server(s3_server, tmp_path):  # noqa: F811
    endpoint, aws_env = s3_server
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    env = {
        **os.environ,
        **aws_env,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no background job runner: nothing here needs one
    }
    proc = subprocess.Popen(
        ["bash", str(SERVER)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _up(uri):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.3)
        yield uri
    finally:
        stop_process_group(proc)
        log.close()


def test_runs_log_their_artifacts_into_the_bucket(server, tmp_path, capsys):
    import fsspec

    run_dir = tmp_path / "out" / "recovery-tiny"
    run_id, created = tracking.find_or_create_run(server, "hires", "recovery-tiny", str(run_dir), {"k": "v"})
    assert created
    logger = tracking.RankZeroLogger({"tracking_uri": server, "run_id": run_id}, rank=0)
    logger.log_params({"train.steps": 2})
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.log_audio("examples/step1.wav", np.zeros(480, np.float32), 48000)
    assert logger.failures == 0
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"stage": "recovery", "step": 2}))
    (model / "weights.safetensors").write_bytes(b"weights")
    version = tracking.log_and_register_model(server, run_id, "recovery", str(model), {"step": 2})
    tracking.end_run(server, run_id)

    s3 = fsspec.filesystem("s3", skip_instance_cache=True)
    stored = {p.split(f"{BUCKET}/mlflow/", 1)[1] for p in s3.find(f"{BUCKET}/mlflow")}
    assert any(p.endswith(f"{run_id}/artifacts/model/weights.safetensors") for p in stored), stored
    assert any(p.endswith(f"{run_id}/artifacts/examples/step1.wav") for p in stored), stored
    assert not (tmp_path / "mlartifacts").exists()  # nothing written beside the database

    local = tracking.download_model(f"models:/hires-recovery/{version}", server, dst=str(tmp_path / "back"))
    assert Path(local, "weights.safetensors").read_bytes() == b"weights"
    assert main(["models", "lineage", f"models:/hires-recovery/{version}", "--tracking-uri", server]) == 0
    assert f"run: {run_id} (recovery-tiny, FINISHED)" in capsys.readouterr().out


def test_demo_passes_its_tracking_uri_on(monkeypatch, tmp_path, capsys):
    import pipelines.demo

    seen = {}

    class Result:
        def lines(self) -> list[str]:
            return ["done"]

    def fake_run_demo(out, cfg, **kwargs):
        seen.update(kwargs)
        return Result()

    monkeypatch.setattr(pipelines.demo, "run_demo", fake_run_demo)
    assert main(["-q", "demo", "--out", str(tmp_path), "--tracking-uri", "http://127.0.0.1:5999"]) == 0
    assert seen["tracking_uri"] == "http://127.0.0.1:5999"
    assert "done" in capsys.readouterr().out
