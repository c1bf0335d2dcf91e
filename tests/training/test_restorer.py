"""The restorer core (training.restorer): bundle checks, loudness, window reading, the chain's contracts.

Models are tiny random networks (configs/train/<stage>/tiny.yaml); the ldm's zero-initialised output layer is
randomised so samples depend on the noise. Audio is a few seconds; DDIM runs 2 steps.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datasets.audio import resample
from datasets.errors import DataError, IncompatibleError, UsageError
from degradations.input_loudness import input_gain
from degradations.levels import integrated_loudness
from training.config import load_stage_config
from training.model_dir import save_model_dir
from training.models import build
from training.restorer import (
    ArraySource,
    Bundle,
    FilePlan,
    RestoreOptions,
    Restorer,
    StreamingLoudness,
    bundle_sources,
    loudness_gain,
    stage_path,
    window_seed,
    write_bundle,
)
from training.windows import assemble, plan_windows

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
FAST = RestoreOptions(steps=2)
SMALL = RestoreOptions(steps=2, window_seconds=0.64, overlap_seconds=0.16)  # several windows in 2 s


def make_model(path: Path, stage: str, seed: int = 0, overrides: dict | None = None, **meta) -> Path:
    torch.manual_seed(seed)
    cfg = load_stage_config(stage, "tiny", overrides)
    net = build(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():  # zero-initialised output layers: random so outputs depend on inputs
                p.normal_(0.0, 0.05)
    if stage == "ldm":
        meta.setdefault("scale_factor", 0.5)
    save_model_dir(str(path), stage, cfg, net.state_dict(), {"step": 0, **meta})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("restore_models")
    return {s: str(make_model(root / s, s, seed=i)) for i, s in enumerate(STAGES)}


@pytest.fixture(scope="module")
def restorer(models) -> Restorer:
    return Restorer(Bundle.load(**models))


def speech_like(seconds: float, sr: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (1 + 0.1 * c) for c in range(channels)], axis=1)


# ------------------------------------------------------------------------------------------------- loudness


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
@pytest.mark.parametrize("seconds", [0.2, 3.7])
def test_streaming_loudness_equals_whole_signal_measurement(sr, seconds):
    x = speech_like(seconds, sr, seed=sr)
    x[: len(x) // 3] *= 0.01  # quiet stretch: exercises both gates
    meter = StreamingLoudness(sr)
    for start in range(0, len(x), 1234):
        meter.add(x[start : start + 1234])
    expected = integrated_loudness(x, sr)
    assert meter.loudness() == pytest.approx(expected, abs=1e-9)
    assert loudness_gain(meter.loudness(), -20.0) == pytest.approx(input_gain(x, sr, -20.0), rel=1e-9)


def test_silence_gets_unit_gain():
    meter = StreamingLoudness(16000)
    meter.add(np.zeros(16000, np.float32))
    assert meter.loudness() == -math.inf and loudness_gain(meter.loudness(), -20.0) == 1.0


# ------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 96000])
def test_windows_read_the_same_16k_samples_as_resampling_the_whole_file(sr):
    x = speech_like(2.3, sr, seed=1)
    length = round(len(x) * 48000 / sr)
    windows = plan_windows(length, 30720, 7680, 480)
    plan = FilePlan("x", sr, 1, len(x), length, 0.0, 2.0, windows)
    whole = np.concatenate([resample(x, sr, 16000), np.zeros(30720, np.float32)])
    for w in windows.windows:
        got = Restorer.read_source_window(ArraySource(x, sr), plan, w)
        expected = 2.0 * whole[w.start // 3 : w.stop // 3]
        np.testing.assert_allclose(got, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------- chain


@pytest.mark.parametrize(("sr", "channels", "seconds"), [(8000, 1, 1.3), (44100, 1, 0.77), (96000, 2, 1.0)])
def test_output_is_48k_mono_of_the_input_duration(restorer, sr, channels, seconds):
    x = speech_like(seconds, sr, channels=channels)
    out = restorer.restore(x, sr, FAST)
    assert out.sample_rate == 48000 and out.audio.dtype == np.float32
    assert out.audio.shape == (round(len(x) * 48000 / sr),)
    assert np.isfinite(out.audio).all() and np.abs(out.audio).max() <= 1.0


def test_deterministic_for_a_seed_and_independent_of_batching(restorer):
    x = speech_like(2.0, 16000)
    a = restorer.restore(x, 16000, SMALL).audio
    np.testing.assert_array_equal(a, restorer.restore(x, 16000, SMALL).audio)
    other = restorer.restore(x, 16000, RestoreOptions(**{**SMALL.__dict__, "seed": 1})).audio
    assert np.abs(a - other).max() > 1e-4
    # the per-window API a batch job uses: any grouping and order of windows gives the same result
    plan = restorer.plan_source(ArraySource(x, 16000), 1, SMALL, None)
    inputs = {
        w.index: restorer.read_source_window(ArraySource(x, 16000), plan, w) for w in plan.windows.windows
    }
    order = list(reversed(inputs))
    batched = restorer.restore_windows([inputs[k] for k in order], order, SMALL)
    pieces = [(k, r["restored"]) for k, r in zip(order, batched, strict=True)]
    np.testing.assert_allclose(plan.finish(assemble(plan.windows, pieces)), a, atol=1e-4)
    single = restorer.restore_window(inputs[1], 1, SMALL)["restored"]
    np.testing.assert_allclose(single, dict(pieces)[1], atol=1e-4)


def test_window_seeds_differ_per_window_and_pass():
    seeds = {window_seed(0, k, p) for k in range(50) for p in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)


def test_keep_stages_recovery_only_and_iterations(restorer, models):
    x = speech_like(1.5, 22050)
    full = restorer.restore(x, 22050, RestoreOptions(steps=2, keep_stages=True))
    assert set(full.stages) == {"recovery", "restored"}
    np.testing.assert_array_equal(full.stages["restored"], full.audio)
    rec_only = Restorer(Bundle.load(recovery=models["recovery"], need_generative=False))
    rec = rec_only.restore(x, 22050, RestoreOptions(recovery_only=True)).audio
    np.testing.assert_allclose(rec, full.stages["recovery"], atol=1e-6)
    with pytest.raises(UsageError, match="recovery-only"):
        rec_only.restore(x, 22050, FAST)
    twice = restorer.restore(x, 22050, RestoreOptions(steps=2, iterations=2)).audio
    assert twice.shape == full.audio.shape and np.abs(twice - full.audio).max() > 1e-5
    # one run with every pass kept gives what separate runs with 1, 2 and 3 passes give
    passes = restorer.restore(x, 22050, RestoreOptions(steps=2, iterations=3, keep_stages=True)).stages
    assert {"restored@1", "restored@2", "restored@3"} <= set(passes)
    np.testing.assert_array_equal(passes["restored@1"], full.audio)
    np.testing.assert_array_equal(passes["restored@2"], twice)
    np.testing.assert_array_equal(passes["restored@3"], passes["restored"])


def test_input_loudness_is_restored(restorer):
    # both levels normalise to the same network input, so the outputs differ by the input's level alone
    x = speech_like(1.0, 16000)
    loud = restorer.restore(x, 16000, FAST).audio
    quiet = restorer.restore(0.25 * x, 16000, FAST).audio
    np.testing.assert_allclose(quiet, 0.25 * loud, atol=2e-5)


@pytest.mark.parametrize(
    ("audio", "match"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.ones(1, np.float32), "too short"),
        (np.r_[np.zeros(500), np.nan, np.zeros(8000)].astype(np.float32), "NaN"),
    ],
)
def test_bad_audio_is_a_one_line_data_error(restorer, audio, match):
    with pytest.raises(DataError, match=match) as info:
        restorer.restore(audio, 16000, FAST)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------- files


def test_restore_file_streams_to_a_24bit_file(restorer, tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, speech_like(2.0, 32000, channels=2), 32000)
    dst = tmp_path / "out" / "in.flac"
    info = restorer.restore_file(
        str(src), str(dst), RestoreOptions(**{**SMALL.__dict__, "keep_stages": True})
    )
    meta = sf.info(dst)
    assert (meta.samplerate, meta.channels, meta.subtype, meta.frames) == (48000, 1, "PCM_24", 96000)
    assert info.channels_in == 2 and info.windows > 1 and info.length == 96000
    assert sf.info(stage_path(dst, "recovery")).frames == 96000
    expected = restorer.restore(sf.read(src, dtype="float32")[0], 32000, SMALL).audio
    np.testing.assert_allclose(sf.read(dst, dtype="float32")[0], expected, atol=2e-6)  # 24-bit rounding
    assert sorted(p.name for p in dst.parent.iterdir()) == ["in.flac", "in.recovery.flac"]


def test_a_file_that_vanishes_mid_run_leaves_no_output(restorer, tmp_path, monkeypatch):
    from training import restorer as module

    src = tmp_path / "gone.wav"
    sf.write(src, speech_like(2.0, 16000), 16000)
    real = module.FileSource.read
    calls = []

    def read(self, start, stop):
        calls.append(start)
        if len(calls) == 2:
            src.unlink()
        return real(self, start, stop)

    monkeypatch.setattr(module.FileSource, "read", read)
    dst = tmp_path / "out" / "gone.flac"
    with pytest.raises(DataError, match="disappeared"):
        restorer.restore_file(str(src), str(dst), SMALL)
    assert not dst.exists() and list(dst.parent.iterdir()) == []


def test_restore_file_rejects_what_is_not_audio(restorer, tmp_path):
    empty, text = tmp_path / "empty.wav", tmp_path / "text.wav"
    empty.write_bytes(b"")
    text.write_text("not audio at all\n")
    for path, match in ((empty, "empty"), (text, "not readable audio"), (tmp_path / "none.wav", "not found")):
        with pytest.raises(DataError, match=match):
            restorer.restore_file(str(path), str(tmp_path / "o.flac"), FAST)
    assert not (tmp_path / "o.flac").exists()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")
def test_ffmpeg_only_containers_are_decoded(restorer, tmp_path):
    wav, m4a = tmp_path / "x.wav", tmp_path / "x.m4a"
    sf.write(wav, speech_like(1.0, 44100), 44100)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    info = restorer.restore_file(str(m4a), str(tmp_path / "y.flac"), RestoreOptions(recovery_only=True))
    assert info.sample_rate_in == 44100 and sf.info(tmp_path / "y.flac").frames == info.length


# ------------------------------------------------------------------------------------------------- bundles


def test_bundle_round_trip_and_no_overwrite(models, tmp_path):
    out = write_bundle(tmp_path / "b", **models)
    doc = json.loads((out / "bundle.json").read_text())
    assert set(doc["stages"]) == set(STAGES) and doc["stages"]["ldm"]["source"] == models["ldm"]
    assert Bundle.load(str(out)).generative
    with pytest.raises(FileExistsError):
        write_bundle(tmp_path / "b", **models)


def test_bundle_missing_a_stage(models, tmp_path):
    out = write_bundle(tmp_path / "b", **models)
    shutil.rmtree(out / "vocoder")
    with pytest.raises(DataError, match="stage vocoder is missing"):
        bundle_sources(out)
    (out / "bundle.json").unlink()
    with pytest.raises(UsageError, match="no vocoder"):
        Bundle.load(str(out))
    assert Bundle.load(str(out), need_generative=False).recovery.stage == "recovery"


def test_incompatible_stages_are_refused(models, tmp_path):
    mel128 = {"features.mel.n_mels": 128, "model.n_mels": 128}
    other_mel = make_model(tmp_path / "voc128", "vocoder", overrides=mel128)
    with pytest.raises(IncompatibleError, match="n_mels"):
        Bundle.load(**{**models, "vocoder": str(other_mel)})
    z8 = make_model(tmp_path / "vae8", "autoencoder", overrides={"model.z_channels": 8})
    with pytest.raises(IncompatibleError, match="latent channels"):
        Bundle.load(**{**models, "autoencoder": str(z8)})
    with pytest.raises(IncompatibleError, match="stage"):
        Bundle.load(**{**models, "vocoder": models["autoencoder"]})
    no_scale = make_model(tmp_path / "ldm0", "ldm", scale_factor=None)
    with pytest.raises(IncompatibleError, match="scale_factor"):
        Bundle.load(**{**models, "ldm": str(no_scale)})
