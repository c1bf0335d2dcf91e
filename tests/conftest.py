"""Suite-wide guards: tests run headless and deterministic, and leave no background process behind."""

from __future__ import annotations

import os

import psutil
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes():
    """Every background process a test starts (Ray, moto_server, mlflow server), the test stops."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=15)
    if alive:
        names = []
        for p in alive:
            try:
                names.append(f"{p.pid}:{' '.join(p.cmdline())[:80]}")
                p.kill()
            except psutil.Error:
                continue
        if names:
            pytest.fail("tests left background processes running: " + "; ".join(names))
