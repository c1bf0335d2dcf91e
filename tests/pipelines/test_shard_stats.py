"""``hires shards stats``: the corpus report (histograms as PNG + JSON) of rendered shards and of a plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.shard_stats import corpus_stats, effective_bandwidth, plateau_fraction

SR = 48000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cfg():
    from datasets.synth_config import load_synth_config

    return load_synth_config(
        overrides={
            "segment.seconds": 1.0,
            "segment.min_tail_seconds": 1.0,
            "shards.samples_per_shard": 4,
            "chain.noise.probability": 1.0,
            "chain.reverb.probability": 0.5,
            "chain.extras.count_probabilities": [0.0, 0.0, 1.0],
        }
    )


def _plan(n: int = 8):
    import pandas as pd

    from datasets.synth_plan import make_plan
    from degradations import Banks
    from degradations.synthetic import noise_signal, synthetic_rir

    banks = Banks.from_arrays(
        SR,
        noise={"white": noise_signal(2.0, SR, seed=1), "brown": noise_signal(2.0, SR, seed=2, color=0.95)},
        rir={"room": synthetic_rir(0.4, SR, seed=3)},
        rir_meta={"room": {"rt60": 0.4, "drr": 2.0, "c50": 10.0}},
    )
    clean = pd.DataFrame(
        {
            "id": [f"utt{i:02d}" for i in range(n)],
            "path": [f"/nowhere/utt{i:02d}.flac" for i in range(n)],
            "sample_rate": SR,
            "frames": SR,
            "speaker": "spk",
            "corpus": "test",
            "split": "train",
        }
    )
    return make_plan(clean, _cfg(), 0, banks.catalog()), banks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Eight rendered 1 s samples in two shards (rendered in-process, no Ray) with their plan and index."""
    from datasets.shards import FORMAT_VERSION, ShardWriter, index_bytes, shard_name
    from datasets.synth_plan import plan_bytes
    from datasets.synth_render import encode_sample, render_sample
    from degradations.synthetic import speech_like

    plan, banks = _plan()
    cfg = plan.cfg
    run = tmp_path_factory.mktemp("run")
    (run / "shards").mkdir()
    (run / "plan.parquet").write_bytes(plan_bytes(plan.table, {"test": True}))
    rows = plan.table.to_pylist()
    entries = []
    for shard in sorted({r["shard"] for r in rows}):
        name = shard_name(shard)
        mine = [r for r in rows if r["shard"] == shard]
        with open(run / "shards" / name, "wb") as f, ShardWriter(f) as writer:
            for i, row in enumerate(mine):
                x = speech_like(1.0, SR, seed=shard * 10 + i)
                sample = render_sample(row, x, SR, cfg, 0, banks, "test")
                writer.add(sample.key, *encode_sample(sample, cfg), sample.meta)
        size = (run / "shards" / name).stat().st_size
        entries.append({"name": name, "split": "train", "samples": len(mine), "seconds": len(mine) * 1.0,
                        "bytes": size, "sha256": "0" * 64})  # fmt: skip
    index = {"format_version": FORMAT_VERSION, "code_version": "test", "seed": 0, "config": {},
             "sample_rate": SR, "segment_samples": SR, "shards": entries}  # fmt: skip
    (run / "index.json").write_bytes(index_bytes(index))
    return run


def test_effective_bandwidth_follows_the_band_limit():
    white = np.random.default_rng(0).standard_normal(SR)
    assert effective_bandwidth(white, SR) >= 23000
    spectrum, freqs = np.fft.rfft(white), np.fft.rfftfreq(SR, 1 / SR)
    for cutoff in (4000.0, 11025.0):  # a brick wall, as resampling to 8 and 22.05 kHz leaves
        limited = np.fft.irfft(np.where(freqs <= cutoff, spectrum, 0), SR)
        assert cutoff - 200 <= effective_bandwidth(limited, SR) <= cutoff + 400
    assert effective_bandwidth(np.zeros(SR), SR) is None
    assert effective_bandwidth(white[:1000], SR) is None  # shorter than one analysis window


def test_plateau_fraction_sees_clipping():
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 220 * t)
    assert plateau_fraction(sine) < 0.05
    assert plateau_fraction(np.clip(sine, -0.5, 0.5)) > 0.5
    assert plateau_fraction(np.zeros(10)) is None


def test_report_of_rendered_shards(tiny_run, tmp_path):
    report = corpus_stats(str(tiny_run), tmp_path / "report", workers=2)
    assert report.source == "shards" and report.samples == 8
    names = {p.name for p in report.files}
    assert {"stats.json", "samples.jsonl", "overview.png", "snr.png", "bandwidth.png", "codec.png"} <= names
    assert {"room.png", "clipping.png", "loudness.png", "operators.png"} <= names
    for png in (p for p in report.files if p.suffix == ".png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "report").glob(".*"))  # no temp files left behind

    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "report" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == stats["samples"] == 8
    for name, hist in stats["histograms"].items():
        assert sum(hist["counts"]) == hist["n"] == 8 - hist["missing"], name
        assert len(hist["edges"]) == len(hist["counts"]) + 1
    assert stats["histograms"]["snr_target_db"]["n"] == 8  # noise in every sample
    assert stats["histograms"]["bandwidth_degraded_hz"]["n"] == 8
    assert stats["histograms"]["loudness_target_lufs"]["n"] == 8
    assert stats["summaries"]["loudness_target_lufs"]["median"] == pytest.approx(
        -20.0, abs=1.0
    )  # chain target

    ops = stats["operators"]["samples"]
    assert ops["loudness"] == ops["noise"] == ops["peak"] == 8
    co = stats["operators"]["cooccurrence"]
    assert all(co[a][a] == ops[a] for a in co) and all(co[a][b] == co[b][a] for a in co for b in co)
    assert "loudness" not in co and "peak" not in co
    assert stats["headline"]["degradation_ops_mean"] == pytest.approx(
        np.mean([r["degradation_ops"] for r in rows])
    )

    plan = {r["key"]: json.loads(r["steps"]) for r in _plan()[0].table.to_pylist()}
    for row in rows:
        noise = next(s["params"] for s in plan[row["key"]] if s["op"] == "noise")
        assert row["snr_target_db"] == pytest.approx(noise["snr_db"])
        assert row["snr_achieved_db"] == pytest.approx(noise["snr_db"], abs=0.5)
        assert row["ops"] == [s["op"] for s in plan[row["key"]]]
        assert 0 < row["bandwidth_degraded_hz"] <= 24000
        if "reverb" in row["ops"]:
            assert row["rt60_s"] == 0.4 and row["drr_db"] == 2.0


def test_report_of_a_plan_before_rendering(tiny_run, tmp_path):
    run = tmp_path / "planned"
    run.mkdir()
    (run / "plan.parquet").write_bytes((tiny_run / "plan.parquet").read_bytes())
    report = corpus_stats(str(run), tmp_path / "report")
    assert report.source == "plan" and report.samples == 8
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert "bandwidth_degraded_hz" not in stats["histograms"] and "rt60_s" not in stats["histograms"]
    assert stats["histograms"]["snr_target_db"]["n"] == 8
    assert (
        not (tmp_path / "report" / "room.png").exists() and (tmp_path / "report" / "operators.png").exists()
    )
    # the same run, rendered, can still be looked at as planned
    assert corpus_stats(str(tiny_run), tmp_path / "as_planned", source="plan").source == "plan"


def test_cli_writes_the_report_and_names_a_non_run(tiny_run, tmp_path, capsys):
    from pipelines.cli import main

    assert main(["-q", "shards", "stats", str(tiny_run), "--out", str(tmp_path / "r"), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 samples (shards)" in out and "overview.png" in out
    assert main(["-q", "shards", "stats", str(tmp_path / "r"), "--out", str(tmp_path / "x")]) == 2
    assert "neither index.json nor plan.parquet" in capsys.readouterr().err


def test_synth_plan_writes_the_planned_values_report(tmp_path, capsys):
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus
    from pipelines.cli import main

    inputs = {
        "--clean": make_demo_corpus(tmp_path / "clean", minutes=0.3, seed=0, speakers=2, progress=False),
        "--noise": make_noise_bank(tmp_path / "noise", minutes=0.2, seed=0, progress=False),
        "--rir": make_rir_bank(tmp_path / "rir", count=1, seed=0, progress=False),
    }
    args = [a for flag, path in inputs.items() for a in (flag, str(path))]
    assert (
        main(["-q", "synth", "plan", *args, "--out", str(tmp_path / "run"), "--stats", str(tmp_path / "r")])
        == 0
    )
    out = capsys.readouterr().out
    assert "planned values" in out and "samples (plan)" in out
    assert (tmp_path / "r" / "overview.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "run" / "index.json").exists()  # nothing rendered
