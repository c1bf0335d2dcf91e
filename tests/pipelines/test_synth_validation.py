"""Synthesis refuses wrong inputs before Ray starts: one line naming the flag, nothing left behind.

Ray is kept out by :func:`no_ray`, which makes starting it fail the test: each refusal here must come first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.config import ConfigError
from datasets.errors import DataError
from datasets.manifest import read_manifest, write_manifest
from datasets.synth_config import load_synth_config
from pipelines.cli import main
from pipelines.synth_run import check_synth_config, plan_synth, run_synth


@pytest.fixture
def no_ray(monkeypatch):
    """Starting (or joining) Ray fails the test."""

    def init_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("pipelines.ray_setup.init_ray", init_ray)


def synth(inputs: dict[str, str], out: Path, **swap: str) -> list[str]:
    flags = {**inputs, **swap}
    return [
        "synth",
        "--clean",
        flags["clean"],
        "--noise",
        flags["noise"],
        "--rir",
        flags["rir"],
        "--out",
        str(out),
    ]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hires: error: "), err
    return err


@pytest.mark.parametrize(
    ("flag", "given", "found"),
    [
        ("noise", "rir", "rir"),
        ("rir", "noise", "noise"),
        ("clean", "noise", "noise"),
        ("noise", "clean", "speech"),
    ],
)
def test_a_manifest_of_the_wrong_kind_is_refused_naming_flag_file_and_kinds(
    demo_inputs, tmp_path, capsys, no_ray, flag, given, found
):
    out = tmp_path / "run"
    assert main(synth(demo_inputs, out, **{flag: demo_inputs[given]})) == 2
    err = one_line(capsys)
    assert f"--{flag} {demo_inputs[given]}:" in err and f"found kind(s) {found}" in err
    assert not out.exists()


def test_a_folder_given_for_a_manifest_is_one_line(demo_inputs, tmp_path, capsys, no_ray):
    folder = str(Path(demo_inputs["clean"]).parent)
    assert main(synth(demo_inputs, tmp_path / "run", clean=folder)) == 2
    assert f"--clean {folder}: is a directory" in one_line(capsys)
    assert main(synth(demo_inputs, tmp_path / "run", rir=str(tmp_path / "missing.parquet"))) == 2
    assert "--rir" in one_line(capsys)


def test_out_naming_a_file_is_refused(demo_inputs, tmp_path, capsys, no_ray):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(synth(demo_inputs, afile)) == 2
    assert f"--out {afile}: is a file" in one_line(capsys)
    assert main(synth(demo_inputs, afile / "below")) == 2
    assert f"{afile} is a file" in one_line(capsys)


def test_an_empty_bank_or_a_corpus_too_short_for_one_sample_is_refused(demo_inputs, tmp_path, capsys, no_ray):
    rows = read_manifest(demo_inputs["clean"]).head(3).to_dict("records")
    for row in rows:
        row["frames"], row["duration_s"] = 4800, 0.1  # 0.1 s: below min_tail_seconds
    short = tmp_path / "short.parquet"
    write_manifest(rows, short, kind="speech")
    assert main(synth(demo_inputs, tmp_path / "run", clean=str(short))) == 2
    assert f"--clean {short}: no utterance is long enough" in one_line(capsys)
    empty = tmp_path / "empty.parquet"
    write_manifest([], empty, kind="noise")
    assert main(synth(demo_inputs, tmp_path / "run", noise=str(empty))) == 2
    assert f"--noise {empty}: the manifest has no rows" in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_failed_run_leaves_no_output_folder_it_created(demo_inputs, tmp_path, monkeypatch):
    def failing_plan(*_args, **_kwargs):
        raise DataError("planning failed")

    monkeypatch.setattr("pipelines.synth_run._plan", failing_plan)
    monkeypatch.setattr("pipelines.ray_setup.init_ray", lambda *a, **k: (False, 1.0))  # as if Ray had started
    cfg = load_synth_config()
    out = tmp_path / "new" / "run"
    with pytest.raises(DataError):
        run_synth(**demo_inputs, out=str(out), cfg=cfg, progress=False)
    assert not out.exists()
    with pytest.raises(DataError):
        plan_synth(**demo_inputs, out=str(out), cfg=cfg)
    assert not out.exists()
    mine = tmp_path / "mine"  # a folder the user made is theirs: kept
    mine.mkdir()
    with pytest.raises(DataError):
        plan_synth(**demo_inputs, out=str(mine), cfg=cfg)
    assert mine.is_dir()


def test_a_refused_resume_names_the_fields_that_changed(demo_inputs, tmp_path):
    small = tmp_path / "clean.parquet"
    write_manifest(read_manifest(demo_inputs["clean"]).head(2).to_dict("records"), small, kind="speech")
    inputs = {**demo_inputs, "clean": str(small)}
    out = str(tmp_path / "run")
    plan_synth(**inputs, out=out, cfg=load_synth_config(overrides={"shards.samples_per_shard": 8}), seed=1)
    other = load_synth_config(overrides={"shards.samples_per_shard": 512, "segment.tail": "drop"})
    with pytest.raises(FileExistsError) as e:
        plan_synth(**inputs, out=out, cfg=other, seed=2)
    msg = str(e.value)
    assert "config (segment.tail: pad -> drop, shards.samples_per_shard: 8 -> 512)" in msg
    assert "seed (was 1, now 2)" in msg and "config_sha256" not in msg
    write_manifest(read_manifest(demo_inputs["clean"]).head(1).to_dict("records"), small, kind="speech")
    with pytest.raises(FileExistsError, match=r"manifests\.clean \(content changed"):
        plan_synth(
            **inputs, out=out, cfg=load_synth_config(overrides={"shards.samples_per_shard": 8}), seed=1
        )


def test_a_synth_config_is_checked_on_its_own(tmp_path):
    cfg = check_synth_config(overrides={"shards.samples_per_shard": 8})
    assert cfg.shards.samples_per_shard == 8
    bad = tmp_path / "synth.yaml"
    bad.write_text("segmnt:\n  seconds: 2.0\n")
    with pytest.raises(ConfigError) as e:
        check_synth_config(bad, what="demo config synth.config")
    assert str(e.value).startswith(f"demo config synth.config: {bad}: invalid config: segmnt: unknown key")
    with pytest.raises(ConfigError, match="cannot read config"):
        check_synth_config(tmp_path / "defualt.yaml")


def test_a_directory_another_run_holds_is_refused_before_ray_starts(demo_inputs, tmp_path, capsys, no_ray):
    from datasets.lease import hold_lease

    out = tmp_path / "busy"
    with hold_lease(str(out), what="synth"):
        assert main(synth(demo_inputs, out)) == 2
        assert "hires synth" in one_line(capsys)
