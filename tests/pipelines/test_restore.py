"""``hires restore`` on files and folders (pipelines.restore) and ``hires models bundle``: mirroring, rejects with
reasons, reruns, never overwriting, exit codes. Tiny random models, short audio, recovery-only or 2 DDIM steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from model_helpers import write_tiny_models

from pipelines.cli import main
from pipelines.restore import EXIT_SOME_FAILED, REJECTS, collect_jobs, restore_paths
from training.restorer import Bundle, RestoreOptions, Restorer


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    return write_tiny_models(tmp_path_factory.mktemp("restore_models"))


@pytest.fixture(scope="module")
def bundle(models, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bundle") / "b"
    args = [f"--{s}={p}" for s, p in models.items()]
    assert main(["-q", "models", "bundle", *args, "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def recovery_restorer(models) -> Restorer:
    return Restorer(Bundle.load(recovery=models["recovery"], need_generative=False))


REC = RestoreOptions(recovery_only=True)


def tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def make_inputs(root: Path) -> Path:
    """Good and bad inputs of every kind the restorer must handle (item by item)."""
    (root / "sub" / "deeper").mkdir(parents=True)
    sf.write(root / "narrow.wav", tone(1.0, 8000), 8000)  # 8 kHz mono
    sf.write(root / "sub" / "hires.flac", tone(0.7, 96000, 2), 96000, subtype="PCM_24")  # 96 kHz stereo
    sf.write(root / "sub" / "deeper" / "c.ogg", tone(0.5, 44100), 44100)
    (root / "empty.wav").write_bytes(b"")
    (root / "text.wav").write_text("this is not a wav file\n")
    sf.write(root / "one.wav", np.array([0.5], np.float32), 16000)
    nan = tone(0.5, 16000)
    nan[1000] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    (root / "notes.txt").write_text("not audio: ignored")
    return root


def test_folders_mirror_into_out_and_bad_inputs_are_rejected_with_reasons(recovery_restorer, tmp_path):
    src = make_inputs(tmp_path / "in")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    summary = restore_paths([str(src)], out, recovery_restorer, REC, progress=False)
    assert sorted(str(p.relative_to(out)) for p in summary.restored) == [
        "narrow.flac",
        "sub/deeper/c.flac",
        "sub/hires.flac",
    ]
    for rel, seconds in (("narrow.flac", 1.0), ("sub/hires.flac", 0.7), ("sub/deeper/c.flac", 0.5)):
        info = sf.info(out / rel)
        assert (info.samplerate, info.channels, info.subtype) == (48000, 1, "PCM_24")
        assert info.frames == round(seconds * 48000)
    rejects = {
        Path(r["path"]).name: r["reason"] for r in map(json.loads, (out / REJECTS).read_text().splitlines())
    }
    assert set(rejects) == {"empty.wav", "text.wav", "one.wav", "nan.wav"}
    assert "empty" in rejects["empty.wav"] and "not readable audio" in rejects["text.wav"]
    assert "too short" in rejects["one.wav"] and "NaN" in rejects["nan.wav"]
    assert all(str(src) in reason and "\n" not in reason for reason in rejects.values())
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left


def test_rerun_skips_finished_outputs(recovery_restorer, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.5, 16000), 16000)
    sf.write(src / "b.wav", tone(0.5, 16000), 16000)
    out = tmp_path / "out"
    first = restore_paths([str(src)], out, recovery_restorer, REC, progress=False)
    assert len(first.restored) == 2 and first.ok
    stamp = os.stat(out / "a.flac").st_mtime_ns
    (out / "b.flac").unlink()
    second = restore_paths([str(src)], out, recovery_restorer, REC, progress=False)
    assert [p.name for p in second.restored] == ["b.flac"] and [p.name for p in second.skipped] == ["a.flac"]
    assert os.stat(out / "a.flac").st_mtime_ns == stamp
    third = restore_paths(
        [str(src)], out, lambda: pytest.fail("models loaded with nothing to do"), REC, progress=False
    )
    assert len(third.skipped) == 2 and not third.restored


def test_never_overwrites_an_input_and_skips_its_own_output_folder(recovery_restorer, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.flac", tone(0.5, 48000), 48000)
    original = (src / "a.flac").read_bytes()
    summary = restore_paths([str(src)], src, recovery_restorer, REC, progress=False)
    assert not summary.restored and "overwrite an input" in summary.rejected[0]["reason"]
    assert (src / "a.flac").read_bytes() == original
    # output folder inside the input folder: its files are not inputs on the rerun
    sf.write(src / "b.wav", tone(0.5, 16000), 16000)
    out = src / "restored"
    restore_paths([str(src)], out, recovery_restorer, REC, progress=False)
    jobs, _ = collect_jobs([str(src)], out)
    assert sorted(j.source.name for j in jobs) == ["a.flac", "b.wav"]


def test_colliding_outputs_are_rejected(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    (tmp_path / "x.mp3").write_bytes(b"")
    jobs, rejects = collect_jobs([str(tmp_path)], tmp_path / "out", "wav")
    assert len(jobs) == 1 and "same output" in rejects[0]["reason"]


def test_a_path_that_disappears_mid_run_is_rejected_and_the_rest_restored(
    recovery_restorer, tmp_path, monkeypatch
):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(src / name, tone(0.5, 16000), 16000)
    real = Restorer.restore_file

    def restore_file(self, source, dst, *args, **kwargs):
        if Path(source).name == "a.wav":
            (src / "b.wav").unlink()  # vanishes after the job list was made
        return real(self, source, dst, *args, **kwargs)

    monkeypatch.setattr(Restorer, "restore_file", restore_file)
    summary = restore_paths([str(src)], tmp_path / "out", recovery_restorer, REC, progress=False)
    assert sorted(p.name for p in summary.restored) == ["a.flac", "c.flac"]
    assert summary.rejected[0]["path"].endswith("b.wav") and "not found" in summary.rejected[0]["reason"]


def test_read_only_output_folder_is_a_one_line_usage_error(tmp_path, capsys, models):
    src = tmp_path / "a.wav"
    sf.write(src, tone(0.5, 16000), 16000)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root ignores permission bits: /sys is a read-only place for everyone
    target = Path("/sys/hires-restore-test") if os.geteuid() == 0 else locked / "out"
    if os.geteuid() == 0 and not Path("/sys").is_dir():
        pytest.skip("running as root without /sys: no read-only folder to write into")
    try:
        rc = main(
            [
                "-q",
                "restore",
                str(src),
                "--out",
                str(target),
                "--recovery",
                models["recovery"],
                "--recovery-only",
            ]
        )
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot write" in err and str(target) in err
    assert src.exists()


def test_cli_end_to_end_with_a_bundle(bundle, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(1.0, 22050, 2), 22050)
    (src / "bad.wav").write_text("text")
    out = tmp_path / "out"
    rc = main(
        [
            "-q",
            "restore",
            str(src),
            "--out",
            str(out),
            "--bundle",
            bundle,
            "--steps",
            "2",
            "--keep-stages",
            "--format",
            "wav",
            "--seed",
            "3",
        ]
    )
    assert rc == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "1 rejected" in err and "bad.wav" in err
    assert sf.info(out / "a.wav").frames == 48000 and sf.info(out / "a.recovery.wav").frames == 48000
    assert sf.info(out / "a.wav").subtype == "PCM_24"
    first = sf.read(out / "a.wav")[0]
    (out / "a.wav").unlink()
    assert (
        main(
            [
                "-q",
                "restore",
                str(src / "a.wav"),
                "--out",
                str(out),
                "--bundle",
                bundle,
                "--steps",
                "2",
                "--format",
                "wav",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(sf.read(out / "a.wav")[0], first)  # same seed, same output


def test_bundle_missing_a_stage_is_a_one_line_error(bundle, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    shutil.rmtree(broken / "ldm")
    src = tmp_path / "a.wav"
    sf.write(src, tone(0.5, 16000), 16000)
    rc = main(["-q", "restore", str(src), "--out", str(tmp_path / "out"), "--bundle", str(broken)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "stage ldm is missing" in err
    assert not (tmp_path / "out" / "a.flac").exists()
