"""Code version of an entry point: a hash of every project module it can import (its import closure).

``code_version(["datasets.synth_render"])`` is ``{package version}+src.{sha256[:12]}`` over the source of the
given modules and of every project module they import, directly or not, found statically with :mod:`ast`:
``import a.b``, ``from a import b`` (``b`` a submodule or a name), relative imports, and imports inside
functions or ``if`` blocks alike; each imported module's parent packages (their ``__init__.py``) count too,
because importing a module runs them. Only modules that resolve to files of the project packages under the
repository root are followed; third-party libraries are recorded elsewhere (their versions).

A content hash rather than a git commit: it is the same in a ``ray job submit`` working directory (no ``.git``)
and changes exactly when code the entry point can run changes. Over-inclusion (an import under
``TYPE_CHECKING``) only costs a re-render; leaving a module out would let two code versions mix in one corpus.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datasets", "degradations", "pipelines", "training")


def _module_file(root: Path, name: str) -> Path | None:
    """The source file of project module ``name`` under ``root``, or None (not ours, or not a module)."""
    parts = name.split(".")
    if not parts or parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module an AST may import (submodule candidates of ``from`` imports included)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            if not base:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(entry_modules: list[str], root: str | Path = REPO_ROOT) -> list[Path]:
    """Source files of the project modules reachable from ``entry_modules`` (sorted, relative to ``root``)."""
    root = Path(root).resolve()
    todo = [n for entry in entry_modules for n in _with_parents(entry)]
    found: dict[str, Path] = {}
    missing = [e for e in entry_modules if _module_file(root, e) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not a module of {', '.join(PACKAGES)} under {root}")
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(root, name)
        if path is None:
            continue
        found[name] = path
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            todo.extend(n for n in _with_parents(imported) if n not in found)
    return sorted(p.relative_to(root) for p in found.values())


def package_version() -> str:
    try:
        return metadata.version("hires")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _compute(entries: tuple[str, ...], root: Path) -> str:
    digest = hashlib.sha256()
    for rel in import_closure(list(entries), root):
        digest.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return f"{package_version()}+src.{digest.hexdigest()[:12]}"


@functools.lru_cache(maxsize=16)
def _cached(entries: tuple[str, ...]) -> str:
    return _compute(entries, REPO_ROOT)


def code_version(entry_modules: list[str], root: str | Path | None = None) -> str:
    """``{package version}+src.{sha256[:12]}`` of the import closure of ``entry_modules`` (see the module doc).

    For this installation (``root`` None) the result is cached per process: the sources of a running program
    do not change under it. Another ``root`` (a copy of the tree) is hashed afresh at each call.
    """
    entries = tuple(sorted(entry_modules))
    return _cached(entries) if root is None else _compute(entries, Path(root).resolve())
