"""Starting or joining Ray for a ``hires`` command, with Ray's own logging kept out of the terminal.

The terminal belongs to the command: its progress bar, its result lines and its own warnings. Ray's messages
(the token-authentication notice, "Started a local Ray instance", Ray Data's per-dataset INFO lines and its
progress-bar notice) go to the Ray session's log files, next to the logs of Ray's own processes:

* ``ray.data`` (configured by Ray Data when it is imported): its console handler is removed; its file handler
  keeps writing ``{session}/logs/ray-data/ray-data.log``;
* ``ray`` (the driver-side core logger; it does not propagate): its console handler is replaced by
  :class:`SessionLogHandler`, which holds records until the session exists (the token notice is logged during
  ``ray.init``) and then appends them to ``{session}/logs/hires-driver.log``;
* workers' stdout/stderr are not forwarded (``log_to_driver=False``); they stay in the worker log files.

Where the session logs are is logged at INFO (shown without ``-q``). The same recipe serves any driver that
starts Ray, e.g. the training launcher: call :func:`route_ray_logs` after importing ``ray`` (and ``ray.data``
where used) and before ``ray.init``, then pass ``log_to_driver=False``.
"""

from __future__ import annotations

import logging
import os
import socket

from datasets.errors import UsageError

log = logging.getLogger(__name__)

DRIVER_LOG = "hires-driver.log"


def session_logs_dir() -> str | None:
    """The current Ray session's log directory on this host, or None before Ray is initialised."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else None


class SessionLogHandler(logging.Handler):
    """Appends records to ``{session logs}/hires-driver.log``; records emitted before the session exists are
    buffered (up to ``capacity``) and written once it does."""

    def __init__(self, capacity: int = 1000) -> None:
        super().__init__()
        self.capacity = capacity
        self.pending: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None and not self.open_session():
            if len(self.pending) < self.capacity:
                self.pending.append(record)
            return
        self.file.emit(record)

    def open_session(self) -> bool:
        """Open the log file once the session exists and write the records held so far; False before."""
        if self.file is not None:
            return True
        logs = session_logs_dir()
        if logs is None:
            return False
        os.makedirs(logs, exist_ok=True)
        self.file = logging.FileHandler(os.path.join(logs, DRIVER_LOG), encoding="utf-8")
        self.file.setFormatter(
            self.formatter or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        pending, self.pending = self.pending, []
        for earlier in pending:
            self.file.emit(earlier)
        return True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


def _is_console(handler: logging.Handler) -> bool:
    return type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler)


def route_ray_logs() -> None:
    """Send the ``ray`` and ``ray.data`` loggers of this process to the session log files (module docstring).

    Idempotent; call it after importing ``ray.data`` (its import installs a console handler).
    """
    core = logging.getLogger("ray")
    for handler in [h for h in core.handlers if _is_console(h)]:
        core.removeHandler(handler)
    if not any(isinstance(h, SessionLogHandler) for h in core.handlers):
        core.addHandler(SessionLogHandler())
    core.propagate = False
    data = logging.getLogger("ray.data")
    for handler in [h for h in data.handlers if _is_console(h)]:
        data.removeHandler(handler)


def check_reachable(address: str) -> None:
    """Fail in seconds on a ``host:port`` nobody listens on (Ray itself keeps retrying for minutes)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({e})") from None


def init_ray(address: str | None, num_cpus: int | None, quiet: bool = False) -> tuple[bool, float]:
    """Join the cluster at ``address`` (``auto``: the running one) or, without one, start a fresh local Ray of
    ``num_cpus`` CPUs; returns (whether this call started Ray, CPUs the job may use: ``num_cpus`` caps a
    cluster). Ray's logging goes to its session files (see the module docstring)."""
    import ray
    import ray.data  # noqa: F401  (its import installs the console handler that route_ray_logs removes)

    route_ray_logs()
    started = False
    if ray.is_initialized() and address not in (None, "auto"):
        log.warning("Ray is already initialised in this process: its cluster is used, not %s", address)
    if not ray.is_initialized():
        kwargs = {}
        if address is None:
            # "local": always a fresh instance of the requested size; a bare ray.init() would attach to any
            # cluster another program started on this host (/tmp/ray/ray_current_cluster)
            address = "local"
            kwargs = {"include_dashboard": False, "num_cpus": num_cpus or os.cpu_count() or 1}
        else:
            check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.INFO, **kwargs)
        except ConnectionError as e:
            raise UsageError(f"--address {address}: cannot connect to a Ray cluster: {e}") from None
        started = True
        for handler in logging.getLogger("ray").handlers:
            if isinstance(handler, SessionLogHandler):
                handler.open_session()  # what Ray logged while starting (e.g. the token notice)
        logs = session_logs_dir()
        if logs and not quiet:
            log.info("Ray logs: %s", logs)
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return started, min(float(num_cpus), total) if num_cpus else total
