"""The demo's own parts: held-out speakers in the demo corpus, and reuse of generated inputs on a rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets.demo import make_demo_corpus
from datasets.manifest import read_manifest
from pipelines.demo import DemoCorpus, generated


def test_demo_corpus_holds_valid_and_test_speakers(tmp_path):
    manifest = make_demo_corpus(
        tmp_path, minutes=0.7, seed=0, speakers=4, valid_speakers=1, test_speakers=1, progress=False
    )
    by_split = read_manifest(manifest).groupby("split").speaker.unique().to_dict()
    assert sorted(by_split) == ["test", "train", "valid"]
    assert list(by_split["test"]) == ["spk03"] and list(by_split["valid"]) == ["spk02"]
    assert sorted(by_split["train"]) == ["spk00", "spk01"]


def test_held_out_speakers_must_leave_some_for_training(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        make_demo_corpus(tmp_path, minutes=0.1, speakers=2, valid_speakers=1, test_speakers=1, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        DemoCorpus(speakers=2, valid_speakers=1, test_speakers=1)


def test_generated_inputs_are_reused_until_their_parameters_change(tmp_path):
    calls = []

    def make(folder: Path, files: int) -> Path:
        calls.append(files)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (folder / f"f{i}.txt").write_text("x")
        (folder / "manifest.parquet").write_text(str(files))
        return folder / "manifest.parquet"

    folder = tmp_path / "corpus"
    _, reused = generated(folder, "datasets.demo", {"files": 3}, lambda f: make(f, 3))
    assert not reused
    _, reused = generated(folder, "datasets.demo", {"files": 3}, lambda f: make(f, 3))
    assert reused and calls == [3]
    # other parameters: generated anew, and nothing of the larger earlier run is left behind
    _, reused = generated(folder, "datasets.demo", {"files": 1}, lambda f: make(f, 1))
    assert not reused and calls == [3, 1]
    assert sorted(p.name for p in folder.glob("f*.txt")) == ["f0.txt"]
    # an interrupted generation (manifest without stamp) is not trusted
    (folder / "demo-stamp.json").unlink()
    _, reused = generated(folder, "datasets.demo", {"files": 1}, lambda f: make(f, 1))
    assert not reused and calls == [3, 1, 1]


def test_a_misspelled_synth_config_fails_before_the_corpus_is_generated(tmp_path):
    from datasets.config import ConfigError
    from pipelines.demo import load_demo_config, run_demo

    bad = tmp_path / "synth.yaml"
    bad.write_text("chain:\n  noize: {probability: 1.0}\n")
    cfg = load_demo_config(overrides={"synth.config": str(bad)})
    with pytest.raises(ConfigError, match="demo config synth.config"):
        run_demo(tmp_path / "out", cfg, progress=False)
    assert not (tmp_path / "out" / "corpus").exists()


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_a_rerun_resumes(tmp_path, ray_session):
    """The main job in miniature: every step runs, the held-out report and the restored file exist, and a second
    run reuses everything (corpus, banks, shards, trained models, scores) instead of redoing it."""
    import soundfile as sf

    from pipelines.demo import load_demo_config, run_demo

    cfg = load_demo_config(
        overrides={
            "corpus.minutes": 1.0,
            "corpus.speakers": 4,
            "noise.minutes": 0.2,
            "rir.count": 2,
            "train.steps": 2,
            "train.stage_steps": {"recovery": 2},
            "train.crop_seconds": 0.25,
            "evaluate.steps": 2,
            "evaluate.limit": 1,
        }
    )
    out = tmp_path / "demo"
    first = run_demo(out, cfg, progress=False)
    steps = first.steps
    assert list(steps) == [
        "corpus",
        "noise",
        "rir",
        "synth",
        "train recovery",
        "train autoencoder",
        "train vocoder",
        "train ldm",
        "bundle",
        "evaluate",
        "restore",
    ]
    assert "test 1" in steps["corpus"]["speakers"] and "valid 1" in steps["corpus"]["speakers"]
    report = first.report
    assert {"degraded", "recovery", "restored"} <= set(report.systems)
    assert (out / "evaluation" / "report.md").is_file() and (out / "evaluation" / "report.json").is_file()
    restored = Path(steps["restore"]["path"])
    assert sf.info(str(restored)).samplerate == 48000
    assert sf.info(str(restored)).frames == sf.info(steps["restore"]["input"]).frames
    text = "\n".join(first.lines())
    assert "Do not use them on real audio" in text and "mlflow ui --backend-store-uri" in text

    again = run_demo(out, cfg, progress=False).steps
    assert all(again[name]["seconds_taken"] == "reused" for name in ("corpus", "noise", "rir"))
    assert again["synth"]["x_realtime_per_core"] == "all kept"
    assert again["train ldm"]["steps"] == 2


def test_the_summary_points_to_the_runs_in_the_store_it_used(tmp_path):
    from pipelines.demo import DemoResult

    local = DemoResult(out=tmp_path, tracking_uri="sqlite:////x/mlflow.db").lines()
    assert local[-1] == "browse the runs: mlflow ui --backend-store-uri sqlite:////x/mlflow.db"
    server = DemoResult(out=tmp_path, tracking_uri="http://127.0.0.1:5000").lines()
    assert server[-1] == "browse the runs: http://127.0.0.1:5000"
