"""The ``hires`` command line: one sub-command group per module of :mod:`pipelines.commands`.

Each command module defines ``register(subparsers)`` which adds its parser(s) and sets ``func`` (a callable
``func(args) -> int | None``).

Errors are reported in two ways:

* an error the user can fix (a :class:`datasets.errors.HiresError`: bad flag, bad config, bad manifest, ...,
  or an OS error that names a missing, existing or unreadable path) ends the process with exit code 2 and a
  one-line reason on stderr;
* any other exception is a bug: one line names its type and message and the file the full traceback was
  written to (under ``$HIRES_LOG_DIR``, default ``~/.cache/hires/logs``), exit code 1.

``--debug`` lets every exception propagate with its traceback instead. ``--debug`` and ``-q`` are accepted before
or after the sub-command (``hires -q corpus scan ...`` and ``hires corpus scan ... -q``) and listed in every
sub-command's ``--help``.

Run outside the project's environment (``python3 -m pipelines`` with a Python that lacks the dependencies), the
command says so in one line instead of an import traceback.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path

from datasets.errors import HiresError, UsageError

__all__ = ["COMMAND_MODULES", "USER_ERRORS", "UsageError", "build_parser", "log_dir", "main"]

# every module is imported on start-up: one that fails to import is a broken installation, reported as such
COMMAND_MODULES = [
    "pipelines.commands.corpus",
    "pipelines.commands.banks",
    "pipelines.commands.synth",
    "pipelines.commands.shards",
    "pipelines.commands.models",
    "pipelines.commands.train",
    "pipelines.commands.demo",
    "pipelines.commands.evaluate",
    "pipelines.commands.restore",
    "pipelines.commands.retrain",
]

# ConfigError, UsageError, DataError and IncompatibleError are HiresErrors; the OS errors listed name a path
USER_ERRORS: tuple[type[BaseException], ...] = (
    HiresError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)

LOG_DIR_ENV = "HIRES_LOG_DIR"
SUMMARY_CHARS = 400


PROJECT_PACKAGES = ("datasets", "degradations", "pipelines", "training")


class CommandImportError(Exception):
    """A module of :data:`COMMAND_MODULES` failed to import: a broken installation, not a user error."""


class MissingEnvironmentError(CommandImportError):
    """A dependency is missing because this Python is not the project's environment (``.venv``)."""


# distributions whose import name is not the distribution name with "-" as "_"
IMPORT_NAMES = {"pyyaml": "yaml", "ffmpeg-python": "ffmpeg", "pillow": "PIL"}


def _declared_imports() -> set[str]:
    """Top-level import names of the project's runtime dependencies (pyproject.toml beside the packages, else the
    installed metadata); empty when neither can be read."""
    import re

    requirements: list[str] = []
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib

        requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    except (OSError, KeyError, ValueError):
        from importlib import metadata

        try:
            requirements = [r for r in metadata.requires("hires") or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            return set()
    names = set()
    for requirement in requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if m:
            dist = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            names.add(IMPORT_NAMES.get(dist, dist.replace("-", "_")))
    return names


def _missing_dependency(e: BaseException) -> str | None:
    """The name of a declared dependency that this Python lacks (run outside the project's ``.venv``); None for
    any other import failure, which is a broken installation."""
    if not isinstance(e, ModuleNotFoundError) or not e.name:
        return None
    top = e.name.split(".")[0]
    return top if top not in PROJECT_PACKAGES and top in _declared_imports() else None


def _environment_message(module: str) -> str:
    venv = Path(__file__).resolve().parent.parent / ".venv"
    return (
        f"{sys.executable} lacks {module!r}, a dependency of hires: run hires from the project's environment "
        f" ({venv / 'bin' / 'hires'}, or `source {venv / 'bin' / 'activate'}` first; "
        "`make test` or `make demo` creates it)"
    )


# accepted before the sub-command (the main parser) and after it (every sub-parser); after it they default to
# SUPPRESS, so leaving them out there never resets a value given before the sub-command
GLOBAL_FLAGS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--debug",), "debug", "show tracebacks on errors"),
    (("-q", "--quiet"), "quiet", "no progress bars, warnings only"),
)


def _add_global_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    for flags, dest, text in GLOBAL_FLAGS:
        if any(flag in parser._option_string_actions for flag in flags):
            continue  # a command that defines the flag itself keeps its own
        default = False if top else argparse.SUPPRESS
        parser.add_argument(*flags, dest=dest, action="store_true", default=default, help=text)


def _sub_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (sub-commands and their sub-commands), each once."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [child, *_sub_parsers(child)]
    return found


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; ``modules`` defaults to :data:`COMMAND_MODULES` (read at call time)."""
    parser = argparse.ArgumentParser(
        prog="hires",
        description="High-resolution speech restoration with latent diffusion, on Ray. The commands below are "
        "what this installation provides; `hires COMMAND --help` describes each.",
    )
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if modules is None else modules:
        try:
            module = importlib.import_module(name)
        except Exception as e:
            missing = _missing_dependency(e)
            if missing is not None:
                raise MissingEnvironmentError(_environment_message(missing)) from e
            raise CommandImportError(f"command module {name} failed to import: {_describe(e)}") from e
        try:
            module.register(sub)
        except Exception as e:
            raise CommandImportError(f"command module {name} failed to register: {_describe(e)}") from e
    for child in _sub_parsers(parser):
        _add_global_flags(child, top=False)
    return parser


def log_dir() -> Path:
    """Where tracebacks of internal errors go: ``$HIRES_LOG_DIR``, else ``$XDG_CACHE_HOME/hires/logs``."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "hires" / "logs"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _origin(e: BaseException) -> BaseException:
    """The exception a Ray task raised, for an error re-raised on the driver (``RayTaskError``); else ``e``.

    Ray re-raises a task's exception on the driver as a subclass of both ``RayTaskError`` and the original class
    (so a task's :class:`HiresError` is still caught as one), with the remote traceback as its message.
    """
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and any(c.__name__ == "RayTaskError" for c in type(e).__mro__):
        return cause
    return e


def _type_name(e: BaseException) -> str:
    cls = type(e)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _describe(e: BaseException) -> str:
    e = _origin(e)
    msg = _one_line(str(e))
    if len(msg) > SUMMARY_CHARS:
        msg = msg[: SUMMARY_CHARS - 3] + "..."
    return f"{_type_name(e)}: {msg}" if msg else _type_name(e)


def _write_traceback(e: BaseException, argv: list[str]) -> Path:
    """Write the full traceback (with the command line) to a new file; falls back to the temp dir."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = (
        f"command: hires {' '.join(argv)}\n"
        f"python: {sys.version.split()[0]} ({sys.executable})\n"
        f"cwd: {os.getcwd()}\n\n" + "".join(traceback.format_exception(e))
    )
    last: OSError | None = None
    # the configured folder first; with a read-only home (containers, Ray workers) the temp dir still works
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "hires-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=f"hires-{stamp}-", suffix=".log", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return Path(path)
        except OSError as err:
            last = err
    assert last is not None
    raise last


def _internal_error(e: BaseException, argv: list[str]) -> int:
    try:
        where = f"traceback written to {_write_traceback(e, argv)}"
    except OSError as err:
        traceback.print_exception(e, file=sys.stderr)
        where = f"could not write the traceback ({_one_line(str(err))}); it is printed above"
    print(f"hires: internal error: {_describe(e)} ({where})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except MissingEnvironmentError as e:
        if "--debug" in argv:
            raise
        print(f"hires: error: {e}", file=sys.stderr)
        return 2
    except CommandImportError as e:
        if "--debug" in argv:
            raise
        return _internal_error(e, argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        # a group without a sub-command prints its own help
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("hires: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`hires shards list DIR | head`): not an error of ours; silence the final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except USER_ERRORS as e:
        if args.debug:
            raise
        cause = _origin(e)
        print(f"hires: error: {_one_line(str(cause)) or type(cause).__name__}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        return _internal_error(e, argv)
    return int(rc or 0)
