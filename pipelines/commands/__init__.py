"""Sub-command groups of the ``hires`` CLI; each module has ``register(subparsers)``.

Flags are checked where argparse reads them (:func:`positive_int`, :func:`positive_float`,
:func:`non_negative_int`, :func:`config_override`), so a bad value is a usage message naming the flag, never an
error deep inside a job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def add_config_args(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--config FILE`` (a YAML of the command's typed config) and ``--print-config``."""
    parser.add_argument("--config", type=Path, default=default, help=f"YAML config (default: {default.name})")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _number(text: str, kind: type, low: float, inclusive: bool) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if value < low or (value == low and not inclusive) or value != value:  # value != value: NaN
        raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    return int(_number(text, int, 1, inclusive=True))


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0 (seeds)."""
    return int(_number(text, int, 0, inclusive=True))


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0."""
    value = float(_number(text, float, 0.0, inclusive=False))
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def config_override(text: str) -> tuple[str, object]:
    """argparse ``type=`` of ``--set KEY=VALUE``: ``(dotted key, value parsed as YAML)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE (dotted key), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def add_override_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """Repeatable ``--set KEY=VALUE`` into ``args.overrides`` (a list of :func:`config_override` pairs)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=config_override,
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )
