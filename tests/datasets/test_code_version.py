"""The code version of synthesis covers every project module its plan and render code can import."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datasets.code_version import PACKAGES, REPO_ROOT, code_version, import_closure
from datasets.synth_render import CODE_ENTRY_MODULES, synth_code_version

ENTRIES = list(CODE_ENTRY_MODULES)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the project packages: edits there never touch the real tree."""
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_closure_holds_the_modules_that_decide_the_bytes():
    closure = {p.as_posix() for p in import_closure(ENTRIES)}
    for module in (
        "datasets/synth_render.py",
        "datasets/synth_plan.py",
        "datasets/synth_config.py",
        "datasets/shards.py",
        "datasets/audio.py",
        "datasets/manifest.py",  # the per-sample RNG seed hash
        "datasets/banks.py",  # direct-path alignment, RIR metrics
        "degradations/__init__.py",
        "degradations/chain.py",
        "degradations/codec.py",
        "degradations/reverb.py",
    ):
        assert module in closure, module
    assert not any(p.startswith(("training/", "pipelines/")) for p in closure)
    assert synth_code_version() == code_version(ENTRIES)
    assert synth_code_version().split("+src.")[1].isalnum()


@pytest.mark.parametrize("module", ["datasets/manifest.py", "datasets/banks.py", "degradations/noise.py"])
def test_an_edit_inside_the_closure_changes_the_version(tree, module):
    before = code_version(ENTRIES, root=tree)
    assert before == code_version(ENTRIES)  # the copy is what is hashed, and it equals the tree
    _edit(tree / module)
    assert code_version(ENTRIES, root=tree) != before


@pytest.mark.parametrize("module", ["training/__init__.py", "pipelines/synth_run.py", "pipelines/cli.py"])
def test_an_edit_outside_the_closure_leaves_it(tree, module):
    before = code_version(ENTRIES, root=tree)
    _edit(tree / module)
    assert code_version(ENTRIES, root=tree) == before


def test_relative_function_level_and_from_imports_are_followed(tmp_path):
    pkg = tmp_path / "datasets"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "entry.py").write_text("def f():\n    from .sub import leaf\n    from datasets import other\n")
    (pkg / "sub" / "leaf.py").write_text("from ..deep import x\n")
    (pkg / "deep.py").write_text("x = 1\n")
    (pkg / "other.py").write_text("import numpy\n")
    (pkg / "unused.py").write_text("")
    files = {p.as_posix() for p in import_closure(["datasets.entry"], root=tmp_path)}
    assert files == {
        "datasets/__init__.py",
        "datasets/entry.py",
        "datasets/sub/__init__.py",
        "datasets/sub/leaf.py",
        "datasets/deep.py",
        "datasets/other.py",
    }
    with pytest.raises(ValueError, match="datasets.nope"):
        import_closure(["datasets.nope"], root=tmp_path)
