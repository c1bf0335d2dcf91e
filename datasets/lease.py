"""One writer per output directory: a lease (a small lock object with a heartbeat) on local disk or on S3.

:func:`hold_lease` creates ``<out>/.lease.json``::

    {"owner": "alice", "host": "node-3", "pid": 4242, "started": 1764230000.0, "heartbeat": 1764230030.0,
     "what": "synth", "token": "<uuid4>", "stale_after_s": 300.0, "pid_start": "<ticks>",
     "pid_ns": "pid:[4026531836]"}

and a thread rewrites ``heartbeat`` every ``heartbeat_s`` seconds. A second holder fails at once with a
:class:`LeaseHeldError` naming the owner, the host and the age of the lease. A lease is taken over (with a
warning) when its heartbeat is older than ``stale_after_s``, or at once when it was written on this host by a
process that no longer exists (a run killed with SIGKILL, then started again). The lease is removed on exit,
also when the body raises.

Every change of the lease is a compare-and-swap, so two runs that start together cannot both win:

* on S3, a conditional PUT: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to heartbeat or take over
  (AWS S3, MinIO and moto honour both), and a delete with ``If-Match`` to release (where a store refuses a
  conditional delete, the lease is read and compared first);
* on local disk, read-compare-write under ``flock`` on the directory (on NFS, which cannot lock a directory,
  on a ``.lease.lock`` file beside the lease), and an atomic rename for the write.

What is left: staleness compares the holder's clock (``heartbeat``) with the reader's, so hosts need roughly
synchronised clocks (a skew of a few seconds against a stale time of minutes is harmless); an object store
that ignores conditional headers, or a shared filesystem without working ``flock``, would let two runs that
start in the same instant both believe they hold the lease. A holder that loses its lease (it stalled for
longer than ``stale_after_s`` and another run took over) learns it at its next heartbeat: :meth:`Lease.check`
raises, and so does the end of the ``with`` block.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from datasets import storage
from datasets.audio import is_uri
from datasets.errors import HiresError, UsageError

log = logging.getLogger(__name__)

LEASE_NAME = ".lease.json"
LOCK_NAME = ".lease.lock"  # only on filesystems that cannot lock a directory (NFS)
DEFAULT_STALE_AFTER_S = 300.0
DEFAULT_HEARTBEAT_S = 30.0
# compare-and-swap rounds before giving up (each lost round means another run changed the lease)
_ATTEMPTS = 5


class LeaseHeldError(HiresError):
    """Another run holds the lease of the directory (and its heartbeat is fresh)."""


class LeaseLostError(HiresError):
    """This run's lease was taken over by another run (this run stalled for longer than the stale time)."""


def lease_path(out_dir: str) -> str:
    return storage.join(str(out_dir), LEASE_NAME)


# ----------------------------------------------------------------------------------- compare-and-swap stores


class _LocalStore:
    """The lease file on local disk: every operation compares and writes under ``flock`` on the directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dir = os.path.dirname(path) or "."

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                # NFS emulates flock with byte-range locks, which need a file open for writing: every client
                # of such a filesystem fails here alike and locks a file beside the lease instead (the
                # directory's descriptor is closed only once the lock file's is open: ``finally`` closes one)
                dir_fd, fd = fd, os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
                os.close(dir_fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _current(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        with self._locked():
            return self._current()

    def put(self, data: bytes, expect: str | None) -> str | None:
        """Write ``data`` if the current version is ``expect`` (None: absent): the new tag, else None."""
        with self._locked():
            current = self._current()
            if (current[1] if current else None) != expect:
                return None
            storage.write_bytes(self.path, data)  # temp file + rename: a reader never sees half a lease
            return hashlib.sha256(data).hexdigest()

    def delete(self, expect: str) -> bool:
        with self._locked():
            current = self._current()
            if current is None or current[1] != expect:
                return False
            os.remove(self.path)
            return True


def _precondition_failed(e: BaseException) -> bool:
    """True when an S3 error (as translated by s3fs) is a failed ``If-Match`` / ``If-None-Match``."""
    if isinstance(e, FileExistsError):
        return True
    seen: BaseException | None = e
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


class _S3Store:
    """The lease object in a bucket: conditional PUT and DELETE on its ETag."""

    def __init__(self, uri: str) -> None:
        import fsspec

        self.uri = uri
        self.fs, self.key = fsspec.core.url_to_fs(uri)
        self.bucket, _, self.object = self.key.partition("/")

    def read(self) -> tuple[bytes, str] | None:
        for _ in range(_ATTEMPTS):
            self.fs.invalidate_cache(self.key)
            try:
                # s3fs reads with If-Match on the ETag it saw at open: the bytes belong to that ETag
                with self.fs.open(self.key, "rb", cache_type="none") as f:
                    data = f.read()
                    tag = str(f.details["ETag"])
                return data, tag
            except FileNotFoundError:
                return None
            except OSError as e:
                if not _precondition_failed(e):
                    raise
        raise LeaseHeldError(
            f"{self.uri}: the lease changes faster than it can be read; another run is writing it"
        )

    def put(self, data: bytes, expect: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
        try:
            out = self.fs.call_s3(
                "put_object",
                Bucket=self.bucket,
                Key=self.object,
                Body=data,
                ContentType="application/json",
                **condition,
            )
        except Exception as e:
            if _precondition_failed(e):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self.key)
        return str(out["ETag"])

    def delete(self, expect: str) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.object, IfMatch=expect)
            return True
        except Exception as e:
            if _precondition_failed(e):
                return False
            # a store without conditional deletes: compare, then delete (a take-over in between is lost)
            log.debug("%s: conditional delete failed (%s); comparing first", self.uri, e)
        finally:
            self.fs.invalidate_cache(self.key)
        current = self.read()
        if current is None or current[1] != expect:
            return False
        self.fs.rm_file(self.key)
        return True


def _store(path: str) -> _LocalStore | _S3Store:
    if not is_uri(path) or path.startswith("file://"):
        return _LocalStore(path.removeprefix("file://"))
    if path.startswith(("s3://", "s3a://")):
        return _S3Store(path)
    raise UsageError(f"{path}: a lease needs a local directory or an s3:// prefix")


# ----------------------------------------------------------------------------------------------- the lease


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_gone(info: dict[str, Any]) -> bool:
    """The lease was written on this host by a process that no longer runs (killed, crashed).

    Only judged where this process sees the writer's pids: the same host name and the same pid namespace
    (containers sharing the host's name, e.g. with host networking, have pid namespaces of their own).
    """
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    if info.get("pid_ns") != _pid_namespace():
        return False
    pid = info["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, under another user
    started = _process_start(pid)
    return started is not None and info.get("pid_start") not in (None, started)


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with an arbitrary uid)
        return f"uid {os.getuid()}"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def describe(info: dict[str, Any], now: float | None = None) -> str:
    """``owner alice on host node-3 (pid 4242), started 12 min ago, last heartbeat 4 s ago``."""
    now = time.time() if now is None else now
    parts = [f"owner {info.get('owner', '?')} on host {info.get('host', '?')} (pid {info.get('pid', '?')})"]
    for key, label in (("started", "started"), ("heartbeat", "last heartbeat")):
        if isinstance(info.get(key), int | float):
            parts.append(f"{label} {_ago(now - info[key])}")
    return ", ".join(parts)


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        info = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


@dataclass
class Lease:
    """A held lease (what :func:`hold_lease` yields)."""

    path: str
    info: dict[str, Any]
    stale_after_s: float
    heartbeat_s: float
    lost: str | None = None  # why the lease was lost, once it is
    _store: Any = field(default=None, repr=False)
    _tag: str | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if another run has taken this lease over (call before publishing)."""
        if self.lost:
            raise LeaseLostError(self.lost)

    def beat(self) -> None:
        """Rewrite the heartbeat now (the heartbeat thread calls this every ``heartbeat_s``)."""
        with self._lock:
            if self.lost or self._tag is None:
                return
            info = {**self.info, "heartbeat": round(time.time(), 3)}
            tag = self._store.put(_encode(info), self._tag)
            if tag is None:
                current = self._store.read()
                other = _decode(current[0]) if current else None
                self.lost = f"{self.path}: this run's lease was taken over by another run" + (
                    f" ({describe(other)})" if other else ""
                )
                log.error("%s", self.lost)
                return
            self.info, self._tag = info, tag

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as e:  # a network blip: the next beat retries; staleness allows many misses
                log.warning("%s: heartbeat failed (%s); retrying in %.0f s", self.path, e, self.heartbeat_s)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this run's (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._tag is not None and not self.lost:
                self._store.delete(self._tag)
            self._tag = None


def _encode(info: dict[str, Any]) -> bytes:
    return (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()


def acquire_lease(
    out_dir: str,
    *,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float | None = None,
    what: str = "synth",
) -> Lease:
    """Take the lease of ``out_dir`` (local or ``s3://``), start its heartbeat; :meth:`Lease.release` ends it.

    Prefer :func:`hold_lease`. Raises :class:`LeaseHeldError` when another run holds a fresh lease.
    """
    if not stale_after_s > 0:
        raise UsageError(f"the lease stale time must be > 0 s, got {stale_after_s}")
    heartbeat_s = min(DEFAULT_HEARTBEAT_S, stale_after_s / 4) if heartbeat_s is None else heartbeat_s
    if not 0 < heartbeat_s <= stale_after_s / 2:
        raise UsageError(
            f"the lease heartbeat ({heartbeat_s} s) must be > 0 and at most half the stale time "
            f"({stale_after_s} s)"
        )
    path = lease_path(out_dir)
    store = _store(path)
    now = time.time()
    info: dict[str, Any] = {
        "owner": _owner(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "pid_ns": _pid_namespace(),
        "started": round(now, 3),
        "heartbeat": round(now, 3),
        "what": what,
        "token": uuid.uuid4().hex,
        "stale_after_s": stale_after_s,
    }
    for _ in range(_ATTEMPTS):
        current = store.read()
        if current is None:
            tag = store.put(_encode(info), None)
        else:
            data, expect = current
            other = _decode(data)
            age = (
                time.time() - other["heartbeat"]
                if other and isinstance(other.get("heartbeat"), int | float)
                else None
            )
            if other is None:
                reason = "it is not a valid lease"
            elif _process_gone(other):
                reason = "its process no longer runs"
            elif age is None or age > stale_after_s:
                reason = f"no heartbeat for more than {stale_after_s:g} s"
            else:
                raise LeaseHeldError(
                    f"{out_dir}: another `hires {other.get('what', what)}` run is writing this directory "
                    f"({describe(other)}); wait for it to end, or, if it is dead, rerun after its lease goes "
                    f"stale ({stale_after_s:g} s without a heartbeat)"
                )
            tag = store.put(_encode(info), expect)
            if tag is not None:
                log.warning(
                    "%s: taking over the lease of %s: %s",
                    out_dir,
                    describe(other) if other else "an unknown run",
                    reason,
                )
        if tag is not None:
            lease = Lease(path, info, stale_after_s, heartbeat_s, _store=store, _tag=tag)
            lease._thread = threading.Thread(target=lease._run, name=f"lease-heartbeat {path}", daemon=True)
            lease._thread.start()
            return lease
        # another run changed the lease between our read and our write: look again
    raise LeaseHeldError(f"{out_dir}: other runs keep changing the lease ({path}); try again")


@contextlib.contextmanager
def hold_lease(
    out_dir: str,
    *,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float | None = None,
    what: str = "synth",
) -> Iterator[Lease]:
    """Hold the lease of ``out_dir`` for the ``with`` block: one run writes a directory at a time.

    ``stale_after_s``: a lease whose heartbeat is older is taken over; ``heartbeat_s`` (default: a quarter of
    it, at most 30 s) is how often this run renews its own. ``what`` names the command in the message another
    run gets. On exit the lease is removed (also when the block raises); a lease lost during the block raises
    :class:`LeaseLostError` at the end of a block that did not raise otherwise.
    """
    lease = acquire_lease(out_dir, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s, what=what)
    try:
        yield lease
    except BaseException:
        with contextlib.suppress(Exception):  # never mask the body's own error
            lease.release()
        raise
    lease.release()
    lease.check()


def read_lease(out_dir: str) -> dict[str, Any] | None:
    """The lease of ``out_dir`` as a dict, or None when there is none (for messages and tools)."""
    current = _store(lease_path(out_dir)).read()
    return _decode(current[0]) if current else None


__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_STALE_AFTER_S",
    "LEASE_NAME",
    "Lease",
    "LeaseHeldError",
    "LeaseLostError",
    "acquire_lease",
    "describe",
    "hold_lease",
    "lease_path",
    "read_lease",
]
