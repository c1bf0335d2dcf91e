"""Dependencies declared in pyproject.toml are the dependencies the code imports, no more and no less.

Every ``import`` (module level or inside a function) of the packages must come from a runtime dependency;
imports of tests/ and benchmarks/ may also come from the ``test`` extra. Every runtime dependency (and every
extra of one) must be imported by the packages, unless :data:`INDIRECT` says how it is used without an import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datasets", "degradations", "pipelines", "training")
OTHERS = ("tests", "benchmarks")

# runtime dependencies (or "dist[extra]") used without an import of their own, with how they are used
INDIRECT: dict[str, str] = {
    "pandas": "pyarrow's Table.to_pandas(): manifests are read as DataFrames (datasets/manifest.py)",
    "s3fs": "fsspec's implementation of s3:// URIs, which datasets/storage.py and datasets/audio.py open",
    "ray[default]": "Ray's dashboard and job server: `ray start --head` and `ray job submit` (README)",
    "onnxruntime": "runs the DNSMOS models of speechmos, which declares no dependencies (training/metrics.py)",
}
# modules whose import shows that an extra of a dependency is used
EXTRA_MODULES = {"ray[data]": "ray.data", "ray[train]": "ray.train"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(requirement: str) -> tuple[str, list[str]]:
    """``"ray[data,train]>=2.40"`` -> ``("ray", ["data", "train"])`` (names normalised)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
    assert m, f"pyproject.toml: cannot parse requirement {requirement!r}"
    extras = [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    return _normalize(m.group(1)), extras


@cache
def declared() -> dict[str, dict[str, list[str]]]:
    """``{"runtime": {dist: extras}, "test": {dist: extras}}`` from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"runtime": project["dependencies"], "test": project["optional-dependencies"]["test"]}
    return {group: dict(_parse(r) for r in reqs) for group, reqs in groups.items()}


def _local(top: str, importer: Path) -> bool:
    """A module of this repository: a package at the root, or a helper module beside the importer or in a
    folder above it (pytest puts the folders of conftest files on the path)."""
    folders = [d for d in importer.parents if d == ROOT or ROOT in d.parents]
    return any((d / f"{top}.py").exists() or (d / top / "__init__.py").exists() for d in folders)


@cache
def imports() -> dict[str, dict[str, set[str]]]:
    """``{"packages"|"others": {module: {files}}}``: third-party modules imported (full dotted names)."""
    found: dict[str, dict[str, set[str]]] = {"packages": {}, "others": {}}
    for group, roots in (("packages", PACKAGES), ("others", OTHERS)):
        for root in roots:
            for path in sorted((ROOT / root).rglob("*.py")):
                tree = ast.parse(path.read_text(), filename=str(path))
                # `import ray` then `ray.data.from_items(...)` uses ray.data: attributes of plain imports
                plain = {
                    a.name
                    for n in ast.walk(tree)
                    if isinstance(n, ast.Import)
                    for a in n.names
                    if not a.asname
                }
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif (
                        isinstance(node, ast.Attribute)
                        and isinstance(node.value, ast.Name)
                        and node.value.id in plain
                    ):
                        names = [f"{node.value.id}.{node.attr}"]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    else:
                        continue
                    for name in names:
                        top = name.split(".")[0]
                        if top in sys.stdlib_module_names or _local(top, path):
                            continue
                        found[group].setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


@cache
def _top_level_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> list[str]:
    return [_normalize(d) for d in _top_level_distributions().get(module.split(".")[0], [])]


def _check_declared(group: str, allowed: set[str]) -> list[str]:
    problems = []
    for module, files in sorted(imports()[group].items()):
        dists = distribution_of(module)
        if not dists:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is not installed")
        elif not set(dists) & allowed:
            problems.append(f"{module} ({'/'.join(dists)}) is imported by {', '.join(sorted(files))}")
    return sorted(set(problems))


def test_every_import_of_the_packages_is_a_runtime_dependency():
    problems = _check_declared("packages", set(declared()["runtime"]))
    assert not problems, "not declared in pyproject.toml [project] dependencies:\n" + "\n".join(problems)


def test_every_import_of_tests_and_benchmarks_is_declared():
    problems = _check_declared("others", set(declared()["runtime"]) | set(declared()["test"]))
    assert not problems, "not declared in pyproject.toml (dependencies or the test extra):\n" + "\n".join(
        problems
    )


def test_every_runtime_dependency_is_used():
    imported_dists = {d for module in imports()["packages"] for d in distribution_of(module)}
    unused = []
    for dist, extras in declared()["runtime"].items():
        if dist not in imported_dists and dist not in INDIRECT:
            unused.append(dist)
        for extra in extras:
            key = f"{dist}[{extra}]"
            module = EXTRA_MODULES.get(key)
            used = module is not None and any(
                m == module or m.startswith(module + ".") for m in imports()["packages"]
            )
            if not used and key not in INDIRECT:
                unused.append(key)
    assert not unused, (
        "declared in pyproject.toml but never imported by the packages (drop them, or add an INDIRECT entry "
        "saying how they are used): " + ", ".join(unused)
    )


def test_indirect_entries_are_still_needed():
    """An allow-list entry whose dependency is now imported directly (or no longer declared) goes."""
    runtime = declared()["runtime"]
    imported_dists = {d for module in imports()["packages"] for d in distribution_of(module)}
    stale = []
    for key in INDIRECT:
        dist, extras = _parse(key)
        if dist not in runtime or any(e not in runtime[dist] for e in extras):
            stale.append(f"{key} (not declared)")
        elif not extras and dist in imported_dists:
            stale.append(f"{key} (imported directly now)")
        elif extras and any(m.startswith(EXTRA_MODULES.get(key, "\0")) for m in imports()["packages"]):
            stale.append(f"{key} (imported directly now)")
    assert not stale, "INDIRECT entries to remove from tests/test_dependencies.py: " + ", ".join(stale)


def test_the_scan_sees_imports_inside_functions():
    """Guards the scanner itself: lazy imports (inside functions) count, e.g. ``from tqdm import tqdm``."""
    assert "tqdm" in imports()["packages"] and "torch" in imports()["packages"]
    assert any(m == "ray.data" or m.startswith("ray.data.") for m in imports()["packages"])
