"""What a new user reads first: how to run hires, what infra/ holds, and packaging metadata without warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_says_how_to_run_hires_from_the_environment():
    assert "source .venv/bin/activate" in README and ".venv/bin/hires" in README


def test_readme_layout_names_every_folder_of_infra():
    line = next(line for line in README.splitlines() if line.startswith("infra/ "))
    folders = sorted(p.name for p in (ROOT / "infra").iterdir() if p.is_dir())
    missing = [f for f in folders if f"{f}/" not in line]
    assert not missing, f"README's layout line for infra/ leaves out {missing}: {line!r}"


def test_license_is_an_spdx_expression():
    """A table-style ``license`` makes setuptools >= 77 warn on every install; an SPDX string needs >= 77."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str) and re.fullmatch(
        r"[A-Za-z0-9.+-]+", data["project"]["license"]
    )
    assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", []))
    setuptools = next(r for r in data["build-system"]["requires"] if r.startswith("setuptools"))
    assert tuple(int(x) for x in re.search(r">=\s*([\d.]+)", setuptools).group(1).split(".")) >= (77,)
