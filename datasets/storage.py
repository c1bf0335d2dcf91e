"""Output storage for local directories and object stores (``s3://``, ``gs://``, ...) behind one small API.

Synthesis writes three kinds of objects: shard tars (large, written once), per-shard state records and the
index (small). Readers must never see a partial object, so every write is *publish complete data only*:

* local paths: write a temporary file beside the target (same filesystem), then ``os.replace`` it;
* object stores: upload the finished bytes or file to the final key; a PUT (or a completed multipart upload)
  becomes visible atomically, so no temporary key is needed and a killed upload leaves nothing behind.

URIs go through fsspec (``s3fs`` for ``s3://``). Endpoint and credentials come from the usual environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...) so Ray workers configured like the driver behave the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import IO

from datasets.audio import is_uri, open_binary
from datasets.audio import read_bytes as read_bytes  # re-exported: the read side of this API

CHUNK = 1 << 20


def join(base: str, *parts: str) -> str:
    """Join path components with ``/`` for URIs and the OS separator for local paths."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _fs(uri: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def exists(path: str) -> bool:
    if is_uri(path):
        fs, p = _fs(path)
        fs.invalidate_cache()
        return fs.exists(p)
    return os.path.exists(path)


def size(path: str) -> int:
    if is_uri(path):
        fs, p = _fs(path)
        return int(fs.size(p))
    return os.path.getsize(path)


def open_read(path: str) -> IO[bytes]:
    """A binary file object for reading (caller closes it)."""
    return open_binary(path, "rb")


def write_bytes(path: str, data: bytes) -> None:
    """Publish ``data`` at ``path`` atomically (temp + rename locally, single PUT on object stores)."""
    if is_uri(path):
        fs, p = _fs(path)
        fs.pipe_file(p, data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def publish_file(local_tmp: str | Path, path: str) -> None:
    """Move a finished local file to ``path`` (rename locally, upload then delete for object stores)."""
    local_tmp = Path(local_tmp)
    if is_uri(path):
        fs, p = _fs(path)
        fs.put_file(str(local_tmp), p)
        local_tmp.unlink(missing_ok=True)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(local_tmp, path)
    except OSError:
        # a scratch dir on another filesystem: copy next to the target first so the final step is a rename
        staged = Path(path).with_name(f".{Path(path).name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(local_tmp, staged)
        os.replace(staged, path)
        local_tmp.unlink(missing_ok=True)


def sha256_of(path: str) -> tuple[str, int]:
    """Streamed sha256 and byte count of a local file or URI."""
    h = hashlib.sha256()
    n = 0
    with open_read(path) as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def listdir(path: str) -> list[str]:
    """Names (not paths) of the entries directly under ``path``; empty when it does not exist."""
    if is_uri(path):
        fs, p = _fs(path)
        fs.invalidate_cache()
        if not fs.exists(p):
            return []
        return sorted(Path(e.rstrip("/")).name for e in fs.ls(p, detail=False))
    if not os.path.isdir(path):
        return []
    return sorted(os.listdir(path))


def remove(path: str) -> None:
    """Remove a file or a whole directory tree / prefix; missing paths are fine."""
    if is_uri(path):
        fs, p = _fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
        return
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def makedirs(path: str) -> None:
    """Create a local directory (object stores have no directories: nothing to do)."""
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
