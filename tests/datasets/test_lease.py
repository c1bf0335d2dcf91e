"""The output-directory lease: one holder at a time, heartbeat, stale and dead holders taken over, release.

Every behaviour runs on local disk and on a local S3 API (moto), whose conditional PUT/DELETE the lease uses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from s3_server import BUCKET, s3_server_module  # noqa: F401  (the fixture)

from datasets import storage
from datasets.errors import HiresError
from datasets.lease import (
    LEASE_NAME,
    LeaseHeldError,
    LeaseLostError,
    acquire_lease,
    hold_lease,
    lease_path,
    read_lease,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def out_dir(request, tmp_path) -> str:
    """An output directory on local disk, or a prefix in the moto bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("s3_server_module")
    return f"s3://{BUCKET}/runs/{request.node.name.replace('[', '-').rstrip(']')}"


def _write(out: str, **info) -> None:
    base = {
        "owner": "someone",
        "host": "elsewhere.example",
        "pid": 4242,
        "started": time.time() - 60,
        "heartbeat": time.time(),
        "what": "synth",
        "token": "t",
    }
    storage.write_bytes(lease_path(out), json.dumps({**base, **info}).encode())


def test_held_then_released(out_dir):
    with hold_lease(out_dir, stale_after_s=60) as lease:
        info = read_lease(out_dir)
        assert info == lease.info
        assert {"owner", "host", "pid", "started", "heartbeat"} <= set(info)
        assert info["host"] == socket.gethostname() and info["what"] == "synth"
        assert storage.exists(storage.join(out_dir, LEASE_NAME))
    assert read_lease(out_dir) is None


def test_released_when_the_body_raises(out_dir):
    with pytest.raises(KeyError), hold_lease(out_dir):
        raise KeyError("boom")
    assert read_lease(out_dir) is None


def test_second_holder_fails_at_once_naming_owner_host_and_age(out_dir):
    _write(out_dir, heartbeat=time.time() - 5)
    t0 = time.monotonic()
    with pytest.raises(LeaseHeldError) as e, hold_lease(out_dir, stale_after_s=60):
        pass
    msg = str(e.value)
    assert time.monotonic() - t0 < 10  # no waiting for a heartbeat
    assert isinstance(e.value, HiresError) and "\n" not in msg
    assert "owner someone" in msg and "host elsewhere.example" in msg
    assert re.search(r"started (6\d|7\d) s ago, last heartbeat ([5-9]|1\d) s ago", msg), msg
    assert msg.startswith(f"{out_dir}: another `hires synth` run")
    assert read_lease(out_dir)["token"] == "t"  # untouched


def test_a_live_holder_in_this_process_blocks_another(out_dir):
    with (
        hold_lease(out_dir, what="synth"),
        pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}"),
    ):
        acquire_lease(out_dir)


def test_a_stale_lease_is_taken_over_with_a_warning(out_dir, caplog):
    _write(out_dir, heartbeat=time.time() - 30)
    with (
        caplog.at_level(logging.WARNING, logger="datasets.lease"),
        hold_lease(out_dir, stale_after_s=10) as lease,
    ):
        assert read_lease(out_dir)["token"] == lease.info["token"] != "t"
    assert "taking over the lease of owner someone on host elsewhere.example" in caplog.text
    assert "no heartbeat for more than 10 s" in caplog.text
    assert read_lease(out_dir) is None


def test_an_unreadable_lease_is_taken_over(out_dir, caplog):
    storage.write_bytes(lease_path(out_dir), b"{not json")
    with caplog.at_level(logging.WARNING, logger="datasets.lease"), hold_lease(out_dir):
        pass
    assert "not a valid lease" in caplog.text


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(out_dir, caplog):
    """A run killed with SIGKILL leaves its lease; running the command again resumes at once."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_ns = os.readlink("/proc/self/ns/pid")
    # in another pid namespace (a container with the host's name) the pid says nothing: the lease holds
    _write(out_dir, host=socket.gethostname(), pid=dead.pid, pid_ns="pid:[1]", heartbeat=time.time())
    with pytest.raises(LeaseHeldError):
        acquire_lease(out_dir, stale_after_s=600)
    _write(out_dir, host=socket.gethostname(), pid=dead.pid, pid_ns=pid_ns, heartbeat=time.time())
    with caplog.at_level(logging.WARNING, logger="datasets.lease"), hold_lease(out_dir, stale_after_s=600):
        pass
    assert "its process no longer runs" in caplog.text


def test_heartbeat_renews_the_lease(out_dir):
    with hold_lease(out_dir, stale_after_s=1.0, heartbeat_s=0.1) as lease:
        first = read_lease(out_dir)["heartbeat"]
        time.sleep(0.6)
        later = read_lease(out_dir)["heartbeat"]
        assert later > first and lease.lost is None
        # fresh because of the heartbeat, although older than the stale time
        time.sleep(0.6)
        with pytest.raises(LeaseHeldError):
            acquire_lease(out_dir, stale_after_s=1.0)


def test_a_lost_lease_is_reported_and_not_deleted(out_dir, caplog):
    with pytest.raises(LeaseLostError, match="taken over by another run .*owner intruder"):
        with hold_lease(out_dir, stale_after_s=1.0, heartbeat_s=0.1) as lease:
            _write(out_dir, owner="intruder", token="theirs")  # what a run that saw this one stale does
            deadline = time.monotonic() + 10
            while lease.lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(LeaseLostError):
                lease.check()
    assert read_lease(out_dir)["token"] == "theirs"


@pytest.mark.parametrize("stale", [False, True], ids=["empty", "stale"])
def test_racing_runs_exactly_one_wins(out_dir, stale):
    if stale:
        _write(out_dir, heartbeat=time.time() - 100)
    barrier = threading.Barrier(6)
    won, held = [], []

    def run() -> None:
        barrier.wait()
        try:
            won.append(acquire_lease(out_dir, stale_after_s=30))
        except LeaseHeldError as e:
            held.append(e)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(won) == 1 and len(held) == 5
        assert read_lease(out_dir)["token"] == won[0].info["token"]
    finally:
        for lease in won:
            lease.release()


def test_another_process_holding_the_lease(tmp_path):
    """A real second process on the same directory: the first fails while it runs, not after it is killed."""
    out = str(tmp_path / "run")
    code = (
        "import sys, time\n"
        "from datasets.lease import hold_lease\n"
        "with hold_lease(sys.argv[1], stale_after_s=600):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, out], cwd=REPO, stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
            acquire_lease(out)
        proc.kill()  # SIGKILL: no release, the lease stays behind
        proc.wait(10)
        assert read_lease(out)["pid"] == proc.pid
        with hold_lease(out):  # a dead process on this host: taken over at once
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize(
    ("stale", "beat"),
    [(0, None), (-1, None), (10, 6), (10, 0)],
    ids=["zero", "negative", "slow-beat", "no-beat"],
)
def test_bad_timings_are_usage_errors(tmp_path, stale, beat):
    from datasets.errors import UsageError

    with pytest.raises(UsageError, match="lease"):
        acquire_lease(str(tmp_path), stale_after_s=stale, heartbeat_s=beat)


def test_a_filesystem_that_cannot_lock_directories_locks_a_file(tmp_path, monkeypatch):
    """NFS emulates flock with byte-range locks, which fail on a directory opened read-only."""
    import errno
    import fcntl
    import stat

    real_flock = fcntl.flock

    def nfs_flock(fd, op):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    out = str(tmp_path / "run")
    with hold_lease(out, stale_after_s=60), pytest.raises(LeaseHeldError):
        acquire_lease(out)
    assert (tmp_path / "run" / ".lease.lock").exists() and read_lease(out) is None
