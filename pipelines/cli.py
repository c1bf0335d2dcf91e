"""The ``hires`` command line: one sub-command group per module of :mod:`pipelines.commands`.

Each command module defines ``register(subparsers)`` which adds its parser(s) and sets ``func`` (a callable
``func(args) -> int | None``). Errors the user can fix (bad config, missing file, bad audio) end the process with
exit code 2 and a one-line reason on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from datasets.config import ConfigError

COMMAND_MODULES = [
    "pipelines.commands.corpus",
    "pipelines.commands.banks",
    "pipelines.commands.synth",
    "pipelines.commands.shards",
    "pipelines.commands.models",
    "pipelines.commands.demo",
]


class UsageError(Exception):
    """A problem the user can fix: reported as one line, exit code 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ConfigError,
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hires",
        description="High-resolution speech restoration with latent diffusion: data synthesis, training, "
        "restoration and evaluation at cluster scale.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command group not present in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except USER_ERRORS as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"hires: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)
