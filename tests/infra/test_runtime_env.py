"""``infra/runtime_env.yaml``: the package ``ray job submit --working-dir . --runtime-env infra/runtime_env.yaml``
uploads, built by Ray's own packaging code from this checkout, holds the packages and configs a job imports and
reads, and nothing else of size (virtualenv, outputs, tracking databases, tests, caches)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LIMIT_BYTES = (
    8 * 2**20
)  # what a checkout's code and configs take, with room; Ray refuses packages past 512 MiB


def test_the_job_package_is_the_code_and_configs(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    runtime_env = yaml.safe_load((REPO / "infra" / "runtime_env.yaml").read_text())
    assert set(runtime_env) <= {"excludes", "env_vars"}  # no pip/conda: the image carries the dependencies
    package = tmp_path / "job.zip"
    create_package(str(REPO), package, include_gitignore=True, excludes=runtime_env["excludes"])
    with zipfile.ZipFile(package) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
        unpacked = sum(i.file_size for i in z.infolist())
    tops = {n.split("/", 1)[0] for n in names}
    assert {"datasets", "degradations", "pipelines", "training", "configs", "pyproject.toml"} <= tops
    assert "configs/train/recovery/tiny.yaml" in names and "pipelines/cli.py" in names
    assert not tops & {".venv", ".git", "out", "tests", "mlruns", ".pytest_cache", ".ruff_cache"}, tops
    assert not [n for n in names if n.endswith((".pyc", ".db", ".ckpt", ".safetensors", ".whl"))]
    assert unpacked < LIMIT_BYTES, f"the job package unpacks to {unpacked} bytes"
    assert runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"
