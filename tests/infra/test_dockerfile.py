"""``infra/docker/Dockerfile``: it parses (BuildKit's own parser, through the ``dockerfile`` package), every file it
copies exists and is in the build context its ``.dockerignore`` leaves, its base image matches the Ray and Python
of the lock, and the image's entrypoint is the ``hires`` CLI. ``requirements.lock`` pins every runtime dependency
of ``pyproject.toml`` within its declared range."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import ray
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "infra" / "docker" / "Dockerfile.dockerignore"
LOCK = REPO / "infra" / "docker" / "requirements.lock"


@pytest.fixture(scope="module")
def instructions() -> list:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{LOCK.name}: {line!r} is not pinned with =="
            pins[_name(name)] = version
    return pins


def test_a_broken_dockerfile_does_not_parse():
    with pytest.raises(dockerfile.GoParseError):
        dockerfile.parse_string("FROM scratch\nCOPY <<EOF\n")  # an unterminated heredoc


def test_copied_files_exist_and_are_in_the_build_context(instructions):
    allowed = {
        line[1:].strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")
    }
    copies = [i for i in instructions if i.cmd in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        assert not any(f.startswith("--from") for f in ins.flags), "no multi-stage copies expected"
        *sources, _dest = ins.value
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile line {ins.start_line}: {src} does not exist"
            assert src.rstrip("/") in allowed, (
                f"{src} is excluded from the build context by {DOCKERIGNORE.name}"
            )
    copied = {src.rstrip("/") for ins in copies for src in ins.value[:-1]}
    # the wheel install needs every package, the configs (package data) and the metadata files
    assert {"pyproject.toml", "configs", "datasets", "degradations", "pipelines", "training"} <= copied


def test_entrypoint_is_the_hires_cli(instructions):
    (entry,) = [i for i in instructions if i.cmd == "ENTRYPOINT"]
    assert entry.json and list(entry.value) == ["hires"]  # exec form: arguments go straight to the CLI
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hires"] == "pipelines.cli:main"
    final = [i.cmd for i in instructions][-2:]
    assert final == ["ENTRYPOINT", "CMD"]


def test_base_image_matches_the_lock(instructions):
    args = {}
    for ins in instructions:
        if ins.cmd == "ARG" and "=" in ins.value[0]:
            key, _, value = ins.value[0].partition("=")
            args[key] = value
    (base,) = [i for i in instructions if i.cmd == "FROM"]
    assert base.value[0] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}"
    assert args["VARIANT"] == "cpu"
    assert args["RAY_VERSION"] == lock_pins()["ray"] == ray.__version__
    assert args["PYTHON_TAG"] == f"py{sys.version_info.major}{sys.version_info.minor}"
    runs = " ".join(" ".join(i.value) for i in instructions if i.cmd == "RUN")
    assert "ffmpeg" in runs and "-r infra/docker/requirements.lock" in runs and "--no-deps ." in runs


def test_lock_pins_every_runtime_dependency_in_range():
    pins = lock_pins()
    for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(text)
        name = _name(req.name)
        assert name in pins, f"{LOCK.name} lacks {name}: rerun infra/docker/make_lock.py"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{LOCK.name}: {name}=={pins[name]} is outside {req.specifier}"
        )
    assert "hires" not in pins and "pytest" not in pins  # the project and test tools stay out


def test_lock_header_says_how_it_was_made():
    assert "make_lock.py" in LOCK.read_text().splitlines()[0]
    assert json.dumps(sorted(lock_pins())) == json.dumps(sorted(set(lock_pins())))  # no duplicates
