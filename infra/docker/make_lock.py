"""Write ``infra/docker/requirements.lock``: the runtime dependency closure of ``pyproject.toml``, pinned to the
versions installed in the environment that runs this script (the project's tested ``.venv``).

    .venv/bin/python infra/docker/make_lock.py            # rewrite the lock
    .venv/bin/python infra/docker/make_lock.py --check    # exit 1 when the lock differs from the environment

Only what the packages need at run time is pinned (the ``test`` extra stays out of the image). Local version labels
are dropped (``torch==2.13.0+cpu`` -> ``torch==2.13.0``): the Dockerfile picks the CPU or CUDA build of torch by
the index it installs from.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).resolve().parent / "requirements.lock"
HEADER = """\
# Runtime dependencies of hires, pinned to the tested environment: written by infra/docker/make_lock.py
# (rerun it after changing pyproject.toml or upgrading .venv). Installed by infra/docker/Dockerfile.
"""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    for extra in ["", *sorted(extras)]:
        env["extra"] = extra
        if req.marker.evaluate(env):
            return True
    return False


def closure(requirements: list[str]) -> dict[str, str]:
    """``{normalised name: installed version}`` of ``requirements`` and everything they pull in here."""
    extras_seen: dict[str, set[str]] = {}
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = _normalize(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # a dependency for another platform or Python: not part of this environment
        if name in extras_seen and set(req.extras) <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(req.extras)
        stack.extend(r for r in map(Requirement, dist.requires or []) if _applies(r, extras_seen[name]))
    return {name: metadata.distribution(name).version.split("+")[0] for name in extras_seen}


def render() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = closure(project["dependencies"])
    missing = [r for r in project["dependencies"] if _normalize(Requirement(r).name) not in pins]
    if missing:
        sys.exit(f"make_lock.py: not installed here: {', '.join(missing)} (pip install -e . first)")
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render()
    if args.check:
        same = LOCK.is_file() and LOCK.read_text() == text
        print(f"{LOCK}: {'up to date' if same else 'differs from this environment'}")
        return 0 if same else 1
    tmp = LOCK.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(LOCK)
    print(f"wrote {LOCK} ({text.count(chr(10)) - HEADER.count(chr(10))} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
