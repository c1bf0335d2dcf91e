"""The documentation stands alone: every file, folder or page it points a reader to exists in the repository.

Checked: the links of README.md and docs/*.md, every repository path they name (in code spans, code blocks
and prose, with ``<stage>`` and ``{paper,tiny}`` patterns expanded), and every ``*.md`` file that any
documentation, config or source file mentions (a docstring citing a note that is not shipped is a dead end).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_DIRS = (
    "configs",
    "datasets",
    "degradations",
    "pipelines",
    "training",
    "infra",
    "benchmarks",
    "tests",
    "docs",
)
SOURCE_DIRS = (*TOP_DIRS,)
SOURCE_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP_DIRS) + r")/[\w./<>{},*-]*)")
MD_FILE = re.compile(r"(?<![\w/.-])([\w./-]*[A-Za-z0-9_-]\.md)\b")
# markdown files the project writes (outputs, not citations): the evaluation report (pipelines/report.py)
WRITTEN_MD = {"report.md"}


def _expand(pattern: str) -> list[str]:
    """``a/{x,y}/<stage>.yaml`` -> globs ``a/x/*.yaml``, ``a/y/*.yaml``."""
    pattern = re.sub(r"<[^>]*>", "*", pattern)
    parts = re.split(r"\{([^}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _exists(path: str, base: Path) -> bool:
    path = path.rstrip(".,:;")
    return all(any(base.glob(g)) if "*" in g else (base / g).exists() for g in _expand(path))


def _doc_ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def test_docs_exist():
    assert (ROOT / "docs" / "design.md").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids(DOCS))
def test_links_resolve(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids(DOCS))
def test_named_repository_paths_exist(doc):
    text = doc.read_text()
    missing = sorted({p for p in REPO_PATH.findall(text) if not _exists(p, ROOT)})
    assert not missing, f"{doc.relative_to(ROOT)} names paths that are not in the repository: {missing}"


def _text_files() -> list[Path]:
    files = [p for p in ROOT.iterdir() if p.is_file() and p.suffix in SOURCE_SUFFIXES]
    for top in SOURCE_DIRS:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES]
    return sorted(files)


def test_every_cited_markdown_file_is_shipped():
    """``DESIGN.md section 4`` in a docstring sends a reader to a file the repository must hold."""
    dead = []
    for path in _text_files():
        if path == Path(__file__).resolve():
            continue  # its own examples
        for name in set(MD_FILE.findall(path.read_text(errors="replace"))):
            if Path(name).name in WRITTEN_MD:
                continue
            candidates = [path.parent / name, ROOT / name, ROOT / "docs" / name]
            if not any(c.exists() for c in candidates):
                dead.append(f"{path.relative_to(ROOT)}: {name}")
    assert not dead, "files cite markdown files that the repository does not hold:\n" + "\n".join(
        sorted(dead)
    )


def test_the_checker_sees_paths():
    """Guards the patterns themselves."""
    assert _exists("configs/train/<stage>/{paper,tiny}.yaml", ROOT)
    assert not _exists("configs/train/<stage>/{paper,nonexistent}.yaml", ROOT)
    assert REPO_PATH.findall("see `datasets/manifest.py`, and infra/runtime_env.yaml.") == [
        "datasets/manifest.py",
        "infra/runtime_env.yaml.",
    ]
    assert MD_FILE.findall("Columns (DESIGN.md section 3) and docs/shards.md.") == [
        "DESIGN.md",
        "docs/shards.md",
    ]


def _readme_commands() -> set[tuple[str, ...]]:
    """Sub-command paths of the README's command table: `hires synth plan --clean M ...` -> ("synth", "plan")."""
    found = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `hires "):
            continue
        cell = line.split("` |", 1)[0] + "`"
        for span in re.findall(r"`hires ([^`]*)`", cell):
            words = []
            for word in span.split():
                if not re.fullmatch(r"[a-z][a-z_-]*", word):
                    break  # the first flag, placeholder (STAGE, DIR) or option group ends the command path
                words.append(word)
            found.add(tuple(words))
    return found


def test_the_readme_command_table_matches_the_cli():
    """Every command the README lists exists, and every command of the CLI is listed."""
    from pipelines.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    yield (*prefix, name), child
                    yield from walk(child, (*prefix, name))

    groups = {path for path, child in walk(build_parser(), ()) if child.get_default("func") is None}
    cli = {path for path, _ in walk(build_parser(), ())} - groups  # what a user can run
    documented = _readme_commands()
    assert documented - cli == set(), "README lists commands the CLI does not have"
    assert cli - documented == set(), "CLI commands missing from the README's command table"
