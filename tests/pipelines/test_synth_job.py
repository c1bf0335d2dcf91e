"""The cluster entrypoint: a real local head (`ray start --head` with the job server, token auth on), the
synthesis submitted with `ray job submit --working-dir . --runtime-env infra/runtime_env.yaml`, SUCCEEDED, shards
identical to the local reference run; the head is stopped afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from synth_helpers import (
    REPO,
    VENV_BIN,
    assert_same_run,
    free_port,
    stop_process_group,
    subprocess_env,
    synth_argv,
    wait_for,
)


def _dashboard_up(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
        return True
    except urllib.error.HTTPError:  # answering (e.g. 401 without a token) is up
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_ray_job_submit_runs_the_synthesis(reference_run, demo_inputs, tmp_path):
    gcs_port, dashboard_port = free_port(), free_port()
    # short temp dir: Ray's unix sockets live there; own HOME: the head's auth token stays out of the user's
    temp_dir = tempfile.mkdtemp(prefix="hrj", dir="/tmp")
    head_env = subprocess_env(HOME=str(tmp_path / "home"))
    # Ray >= 2.60: `ray start --head` turns token auth on when $HOME/.ray/auth_token exists (else it warns and runs
    # open), so the token is generated first; the job client must be told to send it (RAY_AUTH_MODE=token)
    head_env.pop("RAY_AUTH_MODE", None)
    subprocess.run(
        [str(VENV_BIN / "ray"), "get-auth-token", "--generate"],
        env=head_env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()
    env = {**head_env, "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
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
        env=head_env,
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
        unauthenticated = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "list", "--address", url],
            cwd=REPO,
            env={**head_env, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            timeout=60,
        )
        assert unauthenticated.returncode != 0  # auth stays on
        out = tmp_path / "job"
        entrypoint = synth_argv(demo_inputs, str(out), "--address", "auto")
        entrypoint[0] = "python"  # resolved on the cluster, as a user would write it
        job_id = "hires-synth-test"
        deadline = time.monotonic() + 120
        while True:  # the head's job agent registers a few seconds after the dashboard answers
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
                break
            time.sleep(2)
        assert submit.returncode == 0, logs
        status = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "status", "--address", url, job_id],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert "succeeded" in (status.stdout.decode() + status.stderr.decode()).lower(), logs
        assert_same_run(reference_run, out)
    finally:
        stop_process_group(head, grace_s=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
