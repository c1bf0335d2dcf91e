"""The shard format module: writer bytes, index reading, and a reader that rejects hostile or broken tars."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datasets import storage
from datasets.audio import encode_audio
from datasets.errors import DataError
from datasets.shards import (
    FORMAT_VERSION,
    SampleDecodeError,
    ShardFormatError,
    ShardWriter,
    decode_sample,
    extract_sample,
    index_bytes,
    iter_raw_samples,
    iter_samples,
    output_path,
    read_index,
    shard_name,
    shard_path,
)

SR = 48_000


def _flac(seed: int, n: int = 4800) -> bytes:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    return encode_audio(x, SR, "FLAC", "PCM_24")


def _good_shard(path: Path, keys=("a_0000", "a_0001")) -> bytes:
    with open(path, "wb") as f, ShardWriter(f) as writer:
        for i, key in enumerate(keys):
            writer.add(key, _flac(i), _flac(i + 100), {"key": key, "valid": 4800})
    data = path.read_bytes()
    assert writer.sha256 == hashlib.sha256(data).hexdigest() and writer.bytes == len(data)
    return data


def _hand_made(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """A tar with exactly the given members: (name, data or None, tar type)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _sample(key: str, meta: dict | None = None) -> list[tuple[str, bytes, bytes]]:
    body = json.dumps(meta or {"key": key}).encode()
    return [
        (f"{key}.clean.flac", _flac(1), tarfile.REGTYPE),
        (f"{key}.degraded.flac", _flac(2), tarfile.REGTYPE),
        (f"{key}.json", body, tarfile.REGTYPE),
    ]


def test_writer_headers_are_fixed_and_bytes_reproducible(tmp_path):
    a = _good_shard(tmp_path / "a.tar")
    b = _good_shard(tmp_path / "b.tar")
    assert a == b
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        f"{k}.{s}" for k in ("a_0000", "a_0001") for s in ("clean.flac", "degraded.flac", "json")
    ]
    assert all(
        (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644) and m.isreg()
        for m in members
    )
    with open(tmp_path / "c.tar", "wb") as f, ShardWriter(f) as writer:
        writer.add("k", b"", b"", {})
        with pytest.raises(ValueError, match="twice"):
            writer.add("k", b"", b"", {})
        with pytest.raises(ValueError, match="contains"):
            writer.add("../x", b"", b"", {})


def test_reader_decodes_and_fills_the_digest_in_the_same_read(tmp_path, monkeypatch):
    data = _good_shard(tmp_path / "s.tar")
    opened = []
    real = storage.open_read
    monkeypatch.setattr(storage, "open_read", lambda p: opened.append(p) or real(p))
    digest: dict = {}
    raws = list(iter_raw_samples(str(tmp_path / "s.tar"), digest))
    assert [r.key for r in raws] == ["a_0000", "a_0001"] and raws[0].shard == "s.tar"
    assert digest == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert len(opened) == 1
    samples = list(iter_samples(str(tmp_path / "s.tar")))
    assert samples[1].sample_rate == SR and samples[1].clean.dtype == np.float32
    assert samples[1].clean.shape == samples[1].degraded.shape == (4800,)
    assert samples[1].meta == {"key": "a_0001", "valid": 4800}


def test_truncated_tar_is_a_format_error_and_still_hashed(tmp_path):
    data = _good_shard(tmp_path / "s.tar")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[:700])
    digest: dict = {}
    with pytest.raises(ShardFormatError, match="broken.tar"):
        list(iter_raw_samples(str(broken), digest))
    assert digest["sha256"] == hashlib.sha256(data[:700]).hexdigest()


HOSTILE = {
    "extra member": (lambda: [*_sample("a_0000"), ("a_0000.txt", b"x", tarfile.REGTYPE)], "a_0000.txt"),
    "absolute name": (lambda: [("/tmp/evil.clean.flac", b"x", tarfile.REGTYPE)], "/tmp/evil"),
    "dot-dot name": (lambda: [("../evil.clean.flac", b"x", tarfile.REGTYPE)], "../evil"),
    "nested name": (lambda: [("d/a_0000.clean.flac", b"x", tarfile.REGTYPE)], "d/a_0000"),
    "duplicate key": (lambda: [*_sample("a_0000"), *_sample("a_0001"), *_sample("a_0000")], "duplicate key"),
    "repeated member": (lambda: [*_sample("a_0000"), _sample("a_0000")[0]], "duplicate key"),
    "incomplete key": (lambda: [*_sample("a_0000")[:2], *_sample("a_0001")], "a_0000"),
    "incomplete at end": (lambda: [*_sample("a_0000"), *_sample("a_0001")[:1]], "incomplete"),
    "out of order": (lambda: [*reversed(_sample("a_0000"))], "out of order"),
    "symlink member": (lambda: [("a_0000.clean.flac", None, tarfile.SYMTYPE)], "link"),
    "directory member": (lambda: [("a_0000.json", None, tarfile.DIRTYPE)], "directory"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tars_are_rejected_naming_shard_and_member(case, tmp_path):
    members, expected = HOSTILE[case]
    path = _hand_made(tmp_path / "shard-000000.tar", members())
    with pytest.raises(ShardFormatError) as e:
        list(iter_raw_samples(str(path)))
    assert "shard-000000.tar" in str(e.value) and expected in str(e.value)
    assert isinstance(e.value, DataError)


def test_bad_audio_or_json_is_a_sample_decode_error(tmp_path):
    members = _sample("a_0000")
    members[1] = ("a_0000.degraded.flac", b"fLaC" + b"\0" * 100, tarfile.REGTYPE)
    path = _hand_made(tmp_path / "s.tar", members)
    with pytest.raises(SampleDecodeError, match="s.tar: sample a_0000: degraded.flac"):
        list(iter_samples(str(path)))
    members = _sample("a_0000")
    members[2] = ("a_0000.json", b"{not json", tarfile.REGTYPE)
    raw = next(iter_raw_samples(str(_hand_made(tmp_path / "t.tar", members))))
    with pytest.raises(SampleDecodeError, match="not valid JSON"):
        decode_sample(raw)
    members = _sample("a_0000")
    members[1] = ("a_0000.degraded.flac", _flac(3, n=10), tarfile.REGTYPE)
    raw = next(iter_raw_samples(str(_hand_made(tmp_path / "u.tar", members))))
    with pytest.raises(SampleDecodeError, match="clean is 4800 samples"):
        decode_sample(raw)


def _run_dir(tmp_path: Path, **index_fields) -> Path:
    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    data = _good_shard(run / "shards" / shard_name(0))
    index = {
        "format_version": FORMAT_VERSION,
        "code_version": "0+src.x",
        "seed": 0,
        "config": {},
        "sample_rate": SR,
        "segment_samples": 4800,
        "shards": [
            {
                "name": shard_name(0),
                "split": "train",
                "samples": 2,
                "seconds": 0.2,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
        **index_fields,
    }
    (run / "index.json").write_bytes(index_bytes(index))
    return run


def test_read_index_names_the_path_and_the_problem(tmp_path):
    assert shard_path("s3://b/run", shard_name(12)) == "s3://b/run/shards/shard-000012.tar"
    run = _run_dir(tmp_path)
    assert read_index(str(run))["shards"][0]["name"] == "shard-000000.tar"
    with pytest.raises(DataError, match="no index.json"):
        read_index(str(tmp_path / "nope"))
    (run / "index.json").write_text("{")
    with pytest.raises(DataError, match="index.json: not valid JSON"):
        read_index(str(run))
    run2 = _run_dir(tmp_path / "v", format_version=FORMAT_VERSION + 1)
    with pytest.raises(DataError, match="format_version"):
        read_index(str(run2))


def test_extract_writes_only_inside_its_folder(tmp_path):
    run = _run_dir(tmp_path)
    dest = tmp_path / "look"
    sample, written = extract_sample(str(run), "a_0001", dest)
    assert sample.key == "a_0001" and sorted(p.name for p in written) == [
        "a_0001.clean.wav",
        "a_0001.degraded.wav",
    ]
    assert all(p.parent == dest.resolve() for p in written)
    with pytest.raises(KeyError):
        extract_sample(str(run), "../../etc/passwd", dest)
    for key, suffix in (("../x", "wav"), ("a", "/etc/x"), ("a", "../x"), ("a/b", "wav")):
        with pytest.raises(DataError):
            output_path(dest, key, suffix)
    assert sorted(p.name for p in tmp_path.rglob("*.wav")) == ["a_0001.clean.wav", "a_0001.degraded.wav"]
