"""``pip install .`` (not editable) into a fresh virtualenv outside the repository gives a working ``hires`` that
finds its shipped configs (package data) from any directory.

Offline and quick: the project is built from a copy of its sources (nothing written into the repository) with
``--no-deps --no-build-isolation --no-index``; the fresh venv reaches the dependencies already installed in the
test interpreter's environment through a path entry (a ``.pth`` line, which does not run that environment's own
``.pth`` files, so the editable install of the project there stays out of sight)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "configs", "datasets", "degradations", "pipelines", "training")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a venv holding the project as a wheel install."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "_hires_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    shutil.rmtree(src)  # the install must not depend on the sources it was built from
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / "hires"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_install_runs_from_elsewhere(installed, tmp_path):
    where = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import datasets.config as c, pipelines; print(pipelines.__file__);print(c.CONFIG_ROOT)",
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    venv = installed.parent
    assert all(Path(p).is_relative_to(venv) for p in where), where  # not the repository's editable copy
    assert not any(Path(p).is_relative_to(REPO) for p in where)

    helped = run(installed, tmp_path, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "synth" in helped.stdout and "train" in helped.stdout

    # commands that read the shipped configs: the train configs and the synth default
    listed = run(installed, tmp_path, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["recovery"]["configs"] == ["paper", "tiny"]
    summary = run(installed, tmp_path, "models", "summary", "recovery", "--config", "tiny")
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["parameters"] > 0
    shipped = {p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml")}
    in_wheel = {p.relative_to(Path(where[1])) for p in Path(where[1]).rglob("*.yaml")}
    assert shipped <= in_wheel
