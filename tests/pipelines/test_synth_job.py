"""The cluster entrypoint: a real local head (`ray start --head` with the job server, token auth on), the
synthesis submitted with `ray job submit --working-dir . --runtime-env infra/runtime_env.yaml`, SUCCEEDED, shards
identical to the local reference run; the head is stopped afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
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
    env = subprocess_env(HOME=str(tmp_path / "home"), RAY_AUTH_MODE="token")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for(lambda: head.poll() is not None or _dashboard_up(url), timeout_s=120, what="the Ray head",
                 interval_s=0.5)
        assert head.poll() is None, head.stderr.read().decode()[-2000:]
        out = tmp_path / "job"
        entrypoint = synth_argv(demo_inputs, str(out), "--address", "auto")
        entrypoint[0] = "python"  # resolved on the cluster, as a user would write it
        job_id = "hires-synth-test"
        submit = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", url, "--submission-id", job_id,
             "--working-dir", ".", "--runtime-env", "infra/runtime_env.yaml", "--", *entrypoint],
            cwd=REPO, env=env, capture_output=True, timeout=400,
        )
        logs = submit.stdout.decode()[-3000:] + submit.stderr.decode()[-3000:]
        assert submit.returncode == 0, logs
        status = subprocess.run([str(VENV_BIN / "ray"), "job", "status", "--address", url, job_id],
                                cwd=REPO, env=env, capture_output=True, timeout=60)
        assert "SUCCEEDED" in status.stdout.decode() + status.stderr.decode(), logs
        assert_same_run(reference_run, out)
    finally:
        stop_process_group(head, grace_s=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
