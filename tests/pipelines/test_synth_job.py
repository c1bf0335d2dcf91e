"""The cluster entrypoint: a real local head (`ray start --head` with the job server, token auth on), the
synthesis submitted with `ray job submit --working-dir . --runtime-env infra/runtime_env.yaml`, SUCCEEDED, shards
identical to the local reference run; the head is stopped afterwards."""

from __future__ import annotations

import subprocess

import pytest
from ray_helpers import REPO, VENV_BIN, ray_head, submit_job, subprocess_env
from synth_helpers import assert_same_run, synth_argv


@pytest.mark.slow
def test_ray_job_submit_runs_the_synthesis(reference_run, demo_inputs, tmp_path):
    # own HOME: the head's auth token stays out of the user's
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
    with ray_head(head_env, "hrj") as url:
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
        job_id = "hires-synth-test"
        submit, logs = submit_job(url, job_id, entrypoint, env)
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
