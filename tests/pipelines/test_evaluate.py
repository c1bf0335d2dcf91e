"""Evaluation: folders matched by relative path, a held-out shard split restored and scored (a stand-in restorer
for the bookkeeping, a tiny random-init bundle through the CLI), per degradation type, resume, MLflow, errors."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from model_helpers import write_tiny_models

from datasets import shards as shard_format
from datasets.audio import encode_audio, read_audio
from pipelines.cli import main
from pipelines.commands.evaluate import iteration_counts
from pipelines.evaluate import (
    EvaluationReport,
    degradation_types,
    evaluate_folders,
    evaluate_shards,
    mean_ci,
)
from training import metrics
from training.restorer import RestoredAudio, RestoreOptions

SR = 48000


def tone(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 180 + 40 * seed
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 30)) * (
        0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    )
    return (0.2 * x / np.max(np.abs(x)) + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


TEST_OPS = [["loudness", "noise", "peak"], ["loudness", "noise", "bandwidth", "peak"], ["loudness", "reverb", "noise", "codec", "peak"]]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A synthesis run: shard 0 train (2 samples), shard 1 test (3 samples of 1.2 s, the last padded after 1.15 s; DNSMOS repeats a clip to 9.6 s: one window)."""
    root = tmp_path_factory.mktemp("eval_run")
    (root / shard_format.SHARDS_DIR).mkdir()
    entries = []
    seg = int(1.2 * SR)
    for index, (split, count) in enumerate((("train", 2), ("test", 3))):
        buf = io.BytesIO()
        with shard_format.ShardWriter(buf) as writer:
            for i in range(count):
                key = f"utt{index}{i}_0000"
                clean = tone(1.2, i)
                valid = int(1.15 * SR) if i == 2 else seg
                clean[valid:] = 0
                noise = 0.02 * np.random.default_rng(10 + i).standard_normal(seg).astype(np.float32)
                degraded = clean + noise
                degraded[valid:] = 0
                ops = [{"op": op, "params": {}} for op in TEST_OPS[i % 3]]
                meta = {"key": key, "split": split, "ops": ops, "valid": valid, "samples": seg}
                writer.add(key, encode_audio(clean, SR), encode_audio(degraded, SR), meta)
        data = buf.getvalue()
        name = shard_format.shard_name(index)
        (root / shard_format.SHARDS_DIR / name).write_bytes(data)
        entries.append(
            {
                "name": name,
                "split": split,
                "samples": count,
                "seconds": count * 1.2,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }  # fmt: skip
        )
    index = {"format_version": shard_format.FORMAT_VERSION, "code_version": "test", "seed": 0, "config": {},
             "sample_rate": SR, "segment_samples": seg, "shards": entries}  # fmt: skip
    (root / shard_format.INDEX_FILE).write_bytes(shard_format.index_bytes(index))
    return root


class StandIn:
    """A restorer with the contract's ``restore``: a smoothed recovery; pass k adds white noise of amplitude
    0.02 k; counts its calls."""

    def __init__(self, every_pass: bool = False) -> None:
        self.calls = 0
        self.every_pass = every_pass  # return restored@k for each pass, as training.restorer does

    def restore(self, audio, sample_rate, options=None):
        self.calls += 1
        x = np.asarray(audio, np.float32)
        recovery = 0.5 * x + 0.5 * np.roll(x, 1)
        noise = np.random.default_rng(0).standard_normal(len(x)).astype(np.float32)
        restored = recovery + 0.02 * options.iterations * noise
        final = recovery if options.recovery_only else restored
        stages = {"recovery": recovery, "restored": final} if options.keep_stages else {}
        if self.every_pass and options.keep_stages and options.iterations > 1:
            stages.update(
                {f"restored@{k}": recovery + 0.02 * k * noise for k in range(1, options.iterations + 1)}
            )
        return RestoredAudio(final, SR, stages)


def test_mean_ci_is_the_student_t_interval():
    s = mean_ci([1.0, 2.0, 3.0, math.nan])
    assert s["mean"] == 2 and s["n"] == 3 and s["nan"] == 1
    assert s["ci95_half"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert s["ci95_low"] == pytest.approx(2 - s["ci95_half"])
    one = mean_ci([5.0])
    assert one["mean"] == 5 and math.isnan(one["ci95_half"])
    assert mean_ci([])["n"] == 0


def test_iteration_counts_and_degradation_types():
    assert iteration_counts("10,1,3,3") == [1, 3, 10]
    for bad in ("0,1", "a", ""):
        with pytest.raises(Exception, match="expected"):
            iteration_counts(bad)
    ops = [{"op": "loudness"}, {"op": "noise"}, {"op": "codec"}, {"op": "noise"}, {"op": "peak"}]
    assert degradation_types({"ops": ops}) == ["noise", "codec"]
    assert degradation_types({"ops": [{"op": "loudness"}]}) == ["none"]


def test_shards_scored_per_system_and_type_and_resumed(run_dir, tmp_path):
    out = tmp_path / "report"
    stand_in = StandIn()
    names = ["si_sdr", "lsd", "dnsmos_ovrl"]  # a few: the figures and DNSMOS dominate the time
    report = evaluate_shards(
        str(run_dir), "test", stand_in, str(out), iterations=(3, 1), progress=False, examples=1, metrics=names
    )
    assert stand_in.calls == 3 * 2  # one restore per sample and count
    assert report.systems == ["clean", "degraded", "recovery", "restored@1", "restored@3"]
    assert report.items == 3 and report.iterations == [1, 3]
    assert set(report.per_type) == {"noise", "bandwidth", "reverb", "codec"}
    assert report.per_type["noise"]["degraded"]["si_sdr"]["n"] == 3
    assert report.per_type["codec"]["degraded"]["si_sdr"]["n"] == 1
    assert set(report.aggregate["clean"]) == {"dnsmos_ovrl"}  # the reference: DNSMOS only
    assert set(report.aggregate["degraded"]) == set(names)
    # scores are those of the metric code on the valid part of each sample
    samples = list(shard_format.iter_samples(str(run_dir / "shards" / shard_format.shard_name(1))))
    expected = [metrics.si_sdr(s.degraded[: s.meta["valid"]], s.clean[: s.meta["valid"]]) for s in samples]
    assert report.aggregate["degraded"]["si_sdr"]["mean"] == pytest.approx(np.mean(expected))
    # restored@k is the output of k passes (the stand-in adds more noise with k)
    sdr = {k: report.aggregate[f"restored@{k}"]["si_sdr"]["mean"] for k in (1, 3)}
    assert sdr[1] > sdr[3]
    # the paired change from degraded is the mean of per-file differences
    rows = {(r["item"], r["system"]): r["scores"] for r in report.rows}
    diffs = [rows[(s.key, "recovery")]["si_sdr"] - rows[(s.key, "degraded")]["si_sdr"] for s in samples]
    assert report.change["recovery"]["si_sdr"]["mean"] == pytest.approx(np.mean(diffs))
    assert "clean" not in report.change and "degraded" not in report.change
    doc = json.loads((out / "report.json").read_text())
    assert doc["systems"] == report.systems and len(doc["files"]) == 3 * 5
    assert doc["aggregate"]["clean"]["dnsmos_ovrl"]["n"] == 3
    md = (out / "report.md").read_text()
    assert "## Change from the degraded input (paired)" in md
    assert "## Per degradation type" in md and "### codec (1 samples)" in md and "## Iterations" in md
    for name in ("distributions.png", "examples.png", "iterations.png"):
        assert (out / name).stat().st_size > 1000, name
    assert len(list((out / "examples").glob("*/*.flac"))) == 5  # one example, every system
    # a rerun with the same settings restores nothing and reports the same
    again = StandIn()
    report2 = evaluate_shards(
        str(run_dir), "test", again, str(out), iterations=(1, 3), progress=False, examples=1, metrics=names
    )
    assert again.calls == 0
    assert report2.aggregate == report.aggregate
    # a restorer that returns every pass: one restore per sample gives the same scores
    every = StandIn(every_pass=True)
    report3 = evaluate_shards(
        str(run_dir), "test", every, str(tmp_path / "r3"), iterations=(1, 3), progress=False, examples=0,
        metrics=["si_sdr"],
    )  # fmt: skip
    assert every.calls == 3
    for system in ("recovery", "restored@1", "restored@3"):
        assert report3.aggregate[system]["si_sdr"] == report.aggregate[system]["si_sdr"]


def test_recovery_only_and_limit(run_dir, tmp_path):
    report = evaluate_shards(
        str(run_dir), "test", StandIn(), str(tmp_path / "r"), options=RestoreOptions(recovery_only=True),
        limit=1, progress=False, examples=0, metrics=["si_sdr"],
    )  # fmt: skip
    assert report.systems == ["degraded", "recovery"] and report.items == 1
    assert set(report.aggregate["recovery"]) == {"si_sdr"}
    assert not (tmp_path / "r" / "iterations.png").exists() and not (tmp_path / "r" / "examples.png").exists()


def test_missing_split_is_one_line_naming_the_splits_present(run_dir, tmp_path, capsys):
    rc = main(["evaluate", "--shards", str(run_dir), "--split", "valid", "--model", str(tmp_path / "none"),
               "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "split 'valid' has no samples (splits present: test (3 samples), train (2 samples))" in err
    rc = main(["evaluate", "--ref", str(tmp_path), "--shards", str(run_dir), "--out", str(tmp_path / "r")])
    assert rc == 2 and "exclude each other" in capsys.readouterr().err


def _write(path: Path, x: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)


def test_folders_matched_by_relative_path_at_any_rate(tmp_path):
    ref, est, deg, out = (tmp_path / n for n in ("ref", "est", "deg", "out"))
    a = tone(1.0, 0)
    b = tone(1.0, 1, sr=16000)
    _write(ref / "a" / "x.wav", a, SR)
    _write(ref / "b" / "y.flac", b, 16000)
    _write(ref / "z.wav", a, SR)
    _write(ref / "long.wav", a, SR)
    noisy = a + 0.01 * np.random.default_rng(0).standard_normal(len(a)).astype(np.float32)
    _write(est / "a" / "x.flac", noisy, SR)
    _write(est / "b" / "y.wav", tone(1.0, 1, sr=24000), 24000)
    _write(est / "extra.wav", a, SR)
    _write(est / "long.wav", np.concatenate([a, a]), SR)
    _write(deg / "a" / "x.wav", noisy + 0.05, SR)
    intrusive = list(metrics.INTRUSIVE)
    report = evaluate_folders(
        str(ref), str(est), str(out), str(deg), progress=False, examples=1, metrics=intrusive
    )
    assert isinstance(report, EvaluationReport)
    assert report.systems == ["degraded", "estimate"]  # no DNSMOS asked: the reference is not scored
    assert report.unmatched == {
        "reference_only": ["z.wav"], "estimate_only": ["extra.wav"], "no_degraded": ["b/y", "long"]
    }  # fmt: skip
    rows = {(r["item"], r["system"]): r for r in report.rows}
    expected = metrics.score(
        read_audio(est / "a" / "x.flac", sr=SR)[0], SR, read_audio(ref / "a" / "x.wav", sr=SR)[0]
    )
    assert rows[("a/x", "estimate")]["scores"]["pesq_wb"] == pytest.approx(expected["pesq_wb"])
    assert rows[("a/x", "estimate")]["scores"]["si_sdr"] == pytest.approx(expected["si_sdr"])
    assert rows[("b/y", "estimate")]["scores"]["si_sdr"] > 15  # 16 kHz vs 24 kHz copies of one signal
    assert "length mismatch" in rows[("long", "estimate")]["reasons"]["error"]
    assert report.aggregate["estimate"]["si_sdr"]["n"] == 2
    md = (out / "report.md").read_text()
    assert "Unmatched: reference only (1)" in md and "`extra.wav`" in md and "length mismatch" in md
    assert any(line.startswith("estimate") for line in report.lines())


# -------------------------------------------------------------------------- a real (tiny, random) restorer


def _tiny_bundle(root: Path) -> Path:
    from training.restorer import write_bundle

    return write_bundle(root / "bundle", **write_tiny_models(root, random_outputs=True))


def test_cli_restores_with_a_bundle_and_logs_to_mlflow(run_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    bundle = _tiny_bundle(tmp_path / "models")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "report"
    argv = ["-q", "evaluate", "--shards", str(run_dir), "--split", "test", "--model", str(bundle), "--out",
            str(out), "--steps", "2", "--limit", "1", "--iterations", "1,2", "--tracking-uri", uri,
            "--run-name", "eval-test", "--metrics", "si_sdr,lsd,pesq_wb"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "report.json").read_text())
    assert doc["systems"] == ["degraded", "recovery", "restored@1", "restored@2"]
    assert doc["settings"]["options"]["steps"] == 2
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("hires").experiment_id])
    assert [r.info.run_name for r in runs] == ["eval-test"]
    run = runs[0]
    assert "degraded.si_sdr" in run.data.metrics and "recovery.pesq_wb" in run.data.metrics
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "restored.lsd"))
    assert steps == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.json", "evaluation/report.md", "evaluation/iterations.png"} <= artifacts


def test_an_undecodable_sample_is_listed_and_the_rest_scored(tmp_path):
    run = tmp_path / "run"
    (run / shard_format.SHARDS_DIR).mkdir(parents=True)
    buf = io.BytesIO()
    clean = tone(1.2, 0)
    with shard_format.ShardWriter(buf) as writer:
        writer.add("bad_0000", encode_audio(clean, SR), b"not a flac", {"split": "test", "ops": []})
        writer.add(
            "good_0000", encode_audio(clean, SR), encode_audio(0.9 * clean, SR), {"split": "test", "ops": []}
        )
    data = buf.getvalue()
    name = shard_format.shard_name(0)
    (run / shard_format.SHARDS_DIR / name).write_bytes(data)
    entry = {"name": name, "split": "test", "samples": 2, "seconds": 2.4, "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    index = {"format_version": shard_format.FORMAT_VERSION, "code_version": "test", "seed": 0, "config": {},
             "sample_rate": SR, "segment_samples": len(clean), "shards": [entry]}  # fmt: skip
    (run / shard_format.INDEX_FILE).write_bytes(shard_format.index_bytes(index))
    report = evaluate_shards(
        str(run), "test", StandIn(), str(tmp_path / "r"), progress=False, examples=0, metrics=["si_sdr"]
    )
    assert report.items == 1 and report.per_type == {"none": report.per_type["none"]}
    assert [f["item"] for f in report.failed] == ["bad_0000"]
    assert "degraded.flac does not decode" in report.failed[0]["reason"]
    assert "## Not scored" in (tmp_path / "r" / "report.md").read_text()
