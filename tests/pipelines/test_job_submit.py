"""Every job through ``ray job submit``: a real local head (``ray get-auth-token --generate``, then ``ray start
--head`` on free ports of 127.0.0.1 with the job server, token authentication on) receives a tiny synthesis and
then one tiny training stage on its shards, both as ``ray job submit --working-dir . --runtime-env
infra/runtime_env.yaml -- python -m pipelines ... --address auto`` the way README's cluster recipes run them. Both
jobs reach SUCCEEDED, the shards equal the local reference run byte for byte, ``ray job logs`` returns their
output, and the training's MLflow run carries the Ray job id and submission id. The head is stopped afterwards, also when the test fails."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from ray_helpers import (
    REPO,
    VENV_BIN,
    free_port,
    stop_process_group,
    submit_job,
    subprocess_env,
    wait_for,
)
from synth_helpers import assert_same_run, synth_argv

RAY = str(VENV_BIN / "ray")


def _ports() -> list[str]:
    """Every port a head listens on, free ones of this host: a second Ray here (the tests' own) clashes on the
    fixed defaults (dashboard agent 52365, metrics, runtime env agent, client server)."""
    names = [
        "port",
        "dashboard-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "ray-client-server-port",
        "node-manager-port",
        "object-manager-port",
    ]
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(names):
        ports = {name: free_port() for name in names}
    return [f"--{name}={port}" for name, port in ports.items()]


@contextlib.contextmanager
def authenticated_head(env: dict[str, str]) -> Iterator[str]:
    """``ray start --head --block`` bound to 127.0.0.1 with a token in ``$HOME/.ray``; its dashboard URL once the
    job server answers; the whole process group stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="hjs", dir="/tmp")  # short: Ray's unix sockets live there
    ports = _ports()
    dashboard = next(p for p in ports if p.startswith("--dashboard-port=")).split("=")[1]
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            *ports,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:

        def up() -> bool:
            if head.poll() is not None:
                return True
            try:
                import urllib.request

                urllib.request.urlopen(f"{url}/api/version", timeout=2)
            except OSError as e:  # HTTPError (401 without the token) means it answers
                return getattr(e, "code", None) is not None
            return True

        wait_for(up, timeout_s=120, what="the Ray head", interval_s=0.5)
        assert head.poll() is None, head.stderr.read().decode()[-2000:]
        yield url
    finally:
        stop_process_group(head, grace_s=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_synth_then_training_as_submitted_jobs(demo_inputs, reference_run, tmp_path):
    from mlflow import MlflowClient

    from training import tracking

    home = tmp_path / "home"
    head_env = subprocess_env(HOME=str(home))
    head_env.pop("RAY_AUTH_MODE", None)  # the token's presence turns auth on (Ray >= 2.60)
    generated = ray_cli(head_env, "get-auth-token", "--generate")
    assert generated.returncode == 0, generated.stderr
    assert (home / ".ray" / "auth_token").is_file()
    env = {**head_env, "RAY_AUTH_MODE": "token"}  # the job client sends the token only in token mode

    with authenticated_head(head_env) as url:
        refused = ray_cli({**head_env, "RAY_AUTH_MODE": "disabled"}, "job", "list", "--address", url)
        assert refused.returncode != 0  # no token, no jobs

        shards = tmp_path / "synth"
        synth_id = "hires-synth-job"
        submit, logs = submit_job(
            url, synth_id, synth_argv(demo_inputs, str(shards), "--address", "auto"), env
        )
        assert submit.returncode == 0, logs
        assert_same_run(reference_run, shards)  # a submitted job writes the bytes a local run writes

        train_out = tmp_path / "train"
        train_id = "hires-train-job"
        entrypoint = [
            str(VENV_BIN / "python"),
            "-m",
            "pipelines",
            "-q",
            "train",
            "recovery",
            "--shards",
            str(shards),
            "--out",
            str(train_out),
            "--config",
            "tiny",
            "--steps",
            "2",
            "--workers",
            "1",
            "--address",
            "auto",
        ]
        submit, logs = submit_job(url, train_id, entrypoint, env)
        assert submit.returncode == 0, logs

        for job_id, expected in ((synth_id, f"wrote {shards}: "), (train_id, "trained recovery to step 2")):
            status = ray_cli(env, "job", "status", "--address", url, job_id)
            assert f"job '{job_id}' succeeded" in status.stdout.lower(), status.stdout + status.stderr
            job_logs = ray_cli(env, "job", "logs", "--address", url, job_id)
            assert job_logs.returncode == 0 and expected in job_logs.stdout, job_logs.stdout[-2000:]
        listed = ray_cli(env, "job", "list", "--address", url).stdout

    client = MlflowClient(tracking.default_tracking_uri(str(train_out)))
    (run,) = client.search_runs([client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray.job_submission_id"] == train_id
    ray_job_id = run.data.tags["ray.job_id"]
    # the Ray job id the head gave the submission (JobDetails in `ray job list`)
    details = [d for d in listed.split("JobDetails(") if f"submission_id='{train_id}'" in d]
    assert len(details) == 1 and f"job_id='{ray_job_id}'" in details[0], listed[-3000:]
    assert "status=<JobStatus.SUCCEEDED" in details[0]
