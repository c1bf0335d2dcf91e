"""Sub-command groups of the ``hires`` CLI; each module has ``register(subparsers)``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_args(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--config FILE`` (a YAML of the command's typed config) and ``--print-config``."""
    parser.add_argument("--config", type=Path, default=default, help=f"YAML config (default: {default.name})")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
