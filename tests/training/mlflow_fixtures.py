"""A real ``mlflow server`` for the tracking tests: sqlite backend, local artifact store served by the server
(``mlflow-artifacts:/``), bound to 127.0.0.1 on a free port, stopped (with its worker processes) afterwards.

Import the fixture into a test module (``from mlflow_fixtures import mlflow_server``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_helpers import free_port

VENV_BIN = Path(sys.executable).parent


@dataclass
class MlflowServer:
    uri: str
    root: Path


def _up(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    # the server's uvicorn worker shares its process group (its own session): stop the whole group, and kill
    # whatever is left of it once the server itself has gone
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        env={
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            # no background job runner (a pool of busy consumer processes): the tests need none of its jobs
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _up(uri):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"mlflow server not up after 90 s: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield MlflowServer(uri=uri, root=root)
    finally:
        _stop(proc)
        log.close()
