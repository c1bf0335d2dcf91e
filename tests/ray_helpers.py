"""Child processes and Ray clusters of this host for the tests of any package: ``from ray_helpers import ...``.

* :func:`subprocess_env`, :func:`free_port`, :func:`stop_process_group`, :func:`wait_for`: running the ``hires``
  CLI (or any tool of the venv) as a child process and stopping what a test started;
* :func:`local_cluster`: a multi-node cluster in this process (``ray.cluster_utils.Cluster``: a head without CPUs
  and worker nodes of one CPU each);
* :func:`ray_head` and :func:`submit_job`: a real head started with ``ray start --head`` and its job server, and
  ``ray job submit --working-dir .`` against it, the way a user runs a job on a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the venv first on PATH, the repo importable, no inherited Ray address."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group this test started (``start_new_session=True``), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.contextmanager
def local_cluster(temp_prefix: str, worker_nodes: int = 2) -> Iterator[tuple[Any, list[Any]]]:
    """``(cluster, worker nodes)``: a head without CPUs and ``worker_nodes`` nodes of one CPU each, all in this
    process; a driver connected to it is disconnected and the cluster shut down afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # one Ray per process: the test runs on its own cluster
        ray.shutdown()
    # own temp dir (short: it holds unix sockets): the head records itself there, not in
    # /tmp/ray/ray_current_cluster where any bare ray.init() on this host would find and join it
    temp_dir = tempfile.mkdtemp(prefix=temp_prefix, dir="/tmp")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": 150 * 2**20,
            "temp_dir": temp_dir,
        },
    )
    try:
        nodes = [cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(worker_nodes)]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _dashboard_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
        return True
    except urllib.error.HTTPError:  # answering (e.g. 401 without a token) is up
        return True
    except OSError:
        return False


@contextlib.contextmanager
def ray_head(env: dict[str, str], temp_prefix: str) -> Iterator[str]:
    """The dashboard URL of a head (``ray start --head --block``, 2 CPUs, job server on) started from the repo
    with ``env``, once its dashboard answers; stopped afterwards."""
    # short temp dir: Ray's unix sockets live there
    temp_dir = tempfile.mkdtemp(prefix=temp_prefix, dir="/tmp")
    dashboard_port = free_port()
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            # fixed default ports would collide with any other Ray on this host (the tests' own local one)
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for(
            lambda: head.poll() is not None or _dashboard_up(url),
            timeout_s=120,
            what="the Ray head",
            interval_s=0.5,
        )
        assert head.poll() is None, head.stderr.read().decode()[-2000:]
        yield url
    finally:
        stop_process_group(head, grace_s=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_job(
    url: str, job_id: str, entrypoint: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, str]:
    """``ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- ENTRYPOINT`` from the repo, waiting
    for the job; retried while the head's job agent has not registered yet (a few seconds after the dashboard
    answers). Returns the finished ``ray job submit`` and the tails of its stdout and stderr."""
    entrypoint = [
        "python",
        *entrypoint[1:],
    ]  # the interpreter is resolved on the cluster, as a user writes it
    deadline = time.monotonic() + 120
    while True:
        submit = subprocess.run(
            [
                str(VENV_BIN / "ray"),
                "job",
                "submit",
                "--address",
                url,
                "--submission-id",
                job_id,
                "--working-dir",
                ".",
                "--runtime-env",
                "infra/runtime_env.yaml",
                "--",
                *entrypoint,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=400,
        )
        logs = submit.stdout.decode()[-3000:] + submit.stderr.decode()[-3000:]
        if "No available agent" not in logs or time.monotonic() > deadline:
            return submit, logs
        time.sleep(2)
