"""A local S3 API (``moto_server``) for the tests of any package: ``from s3_server import s3_server``.

The fixtures start ``moto_server`` on a free port of 127.0.0.1, point the AWS variables of this process at it
(children started with ``os.environ`` inherit them), create :data:`BUCKET` and stop the server afterwards:
``s3_server`` per test, ``s3_server_module`` once per test module.
moto honours conditional requests (``If-None-Match: *`` and ``If-Match`` on PUT and DELETE), like AWS S3.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_helpers import free_port, stop_process_group

BUCKET = "hires-test"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@contextlib.contextmanager
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, str]]]:
    """Start the server, set the AWS variables with ``monkeypatch``, create :data:`BUCKET`; stop it afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        import fsspec

        # s3fs reuses instances, each bound to the endpoint it saw at creation: forget the earlier server's
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield endpoint, env
    finally:
        import fsspec

        fsspec.get_filesystem_class("s3").clear_instance_cache()
        stop_process_group(proc)


@pytest.fixture
def s3_server(monkeypatch) -> Iterator[tuple[str, dict[str, str]]]:
    """``(endpoint, env)`` of a fresh moto server holding :data:`BUCKET`; the env is set in this process."""
    with moto_server(monkeypatch) as server:
        yield server


@pytest.fixture(scope="module")
def s3_server_module() -> Iterator[tuple[str, dict[str, str]]]:
    """One server for all tests of a module (tests use their own prefixes): a start costs seconds on 2 cores."""
    with pytest.MonkeyPatch.context() as monkeypatch, moto_server(monkeypatch) as server:
        yield server
