"""Shard tools (verify, inspect) and reading the shards back with webdataset and Ray Data, unmodified."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from synth_helpers import copy_run

from datasets.audio import audio_info, decode_audio
from datasets.shards import find_raw_sample
from pipelines.cli import main
from pipelines.shards import verify_shards


def test_verify_passes_on_a_fresh_run(reference_run, capsys):
    report = verify_shards(str(reference_run))
    index = json.loads((reference_run / "index.json").read_text())
    assert report.ok, report.problems
    assert report.samples == index["totals"]["samples"] and report.shards == len(index["shards"])
    assert main(["-q", "shards", "verify", str(reference_run)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_reports_corruption_missing_and_stray_shards(reference_run, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    shards = sorted((run / "shards").iterdir())
    data = bytearray(shards[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a FLAC stream
    shards[0].write_bytes(bytes(data))
    shards[1].unlink()
    (run / "shards" / "shard-999999.tar").write_bytes(shards[2].read_bytes())
    report = verify_shards(str(run))
    text = "\n".join(report.problems)
    assert f"{shards[0].name}: sha256" in text
    assert f"{shards[1].name}: missing" in text
    assert "shard-999999.tar: in shards/ but not in index.json" in text
    assert "planned sample(s) missing" in text
    assert main(["-q", "shards", "verify", str(run)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_without_index_is_a_one_line_error(tmp_path, capsys):
    assert main(["shards", "verify", str(tmp_path)]) == 2
    assert "no index.json" in capsys.readouterr().err


def test_inspect_prints_metadata_and_writes_audio_and_spectrogram(reference_run, tmp_path, capsys):
    key = pq.read_table(reference_run / "plan.parquet").column("key")[5].as_py()
    assert main(["shards", "inspect", str(reference_run), "--key", key, "--out", str(tmp_path / "look")]) == 0
    printed = capsys.readouterr().out
    meta = json.loads(printed[: printed.rindex("}") + 1])
    assert meta["key"] == key and meta["shard"].startswith("shard-")
    for suffix in ("clean.wav", "degraded.wav"):
        info = audio_info(tmp_path / "look" / f"{key}.{suffix}")
        assert (info.sample_rate, info.frames) == (48_000, 245_760)
    assert (tmp_path / "look" / f"{key}.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["shards", "inspect", str(reference_run), "--key", "nope_0000"]) == 2


def test_webdataset_reads_the_shards_unmodified(reference_run):
    import webdataset as wds

    index = json.loads((reference_run / "index.json").read_text())
    urls = [str(reference_run / "shards" / s["name"]) for s in index["shards"]]
    seen, by_key = [], {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        clean, sr = decode_audio(sample["clean.flac"])
        degraded, _ = decode_audio(sample["degraded.flac"])
        meta = json.loads(sample["json"])
        assert meta["key"] == sample["__key__"] and sr == 48_000 and clean.shape == degraded.shape
        seen.append(sample["__key__"])
        by_key[sample["__key__"]] = sample
    plan = pq.read_table(reference_run / "plan.parquet").column("key").to_pylist()
    assert seen == plan  # plan order, nothing lost or duplicated
    one = find_raw_sample(str(reference_run), plan[3])  # what `hires shards inspect` reads
    assert (one.clean, one.degraded) == (by_key[plan[3]]["clean.flac"], by_key[plan[3]]["degraded.flac"])


def test_ray_data_read_webdataset_reads_the_shards(reference_run, ray_session):
    import ray

    ds = ray.data.read_webdataset(str(reference_run / "shards"), decoder=None)
    rows = ds.take_all()
    index = json.loads((reference_run / "index.json").read_text())
    assert len(rows) == index["totals"]["samples"]
    row = rows[0]
    clean, sr = decode_audio(row["clean.flac"])
    assert sr == 48_000 and clean.shape == (245_760,)
    assert json.loads(row["json"])["key"] == row["__key__"]


def test_inspect_never_writes_outside_its_folder(reference_run, tmp_path, capsys):
    look = tmp_path / "look"
    assert main(["shards", "inspect", str(reference_run), "--key", "../../escape", "--out", str(look)]) == 2
    assert "not a sample key" in capsys.readouterr().err
    assert not look.exists() and not (tmp_path.parent / "escape.clean.wav").exists()
