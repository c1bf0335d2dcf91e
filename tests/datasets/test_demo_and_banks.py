"""Demo corpus and generated banks: deterministic bytes for a seed, documented content."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets.audio import read_audio
from datasets.banks import (
    NOISE_TYPES,
    ROOM_TYPES,
    direct_path_index,
    make_noise,
    make_noise_bank,
    make_rir_bank,
    rir_metrics,
    room_rt60s,
    simulate_rir,
)
from datasets.demo import make_demo_corpus
from datasets.manifest import read_manifest


def regenerate_digest(make, out: Path) -> dict[str, str]:
    """Digest of a second generation into the same folder (manifests hold absolute paths)."""
    shutil.rmtree(out)
    make(out)
    return tree_digest(out)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".flac", ".parquet", ".jsonl")
    }


def test_demo_corpus_is_deterministic_and_full_band(tmp_path):
    def make(out, seed=3):
        return make_demo_corpus(out, minutes=0.4, seed=seed, speakers=4, progress=False)

    a = make(tmp_path / "a")
    digest_a = tree_digest(a.parent)
    assert regenerate_digest(make, a.parent) == digest_a and len(digest_a) > 4
    make(tmp_path / "c", seed=4)
    assert tree_digest(tmp_path / "c") != digest_a

    df = read_manifest(a, kind="speech")
    assert set(df.sample_rate) == {48000} and df.speaker.nunique() == 4
    assert df.duration_s.sum() >= 0.4 * 60 - 1
    assert (tmp_path / "a" / "manifest.rejects.jsonl").read_text() == ""
    x, sr = read_audio(df.path.iloc[0])
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    above_16k = spectrum[freqs > 16000].sum() / spectrum.sum()
    assert 1e-6 < above_16k < 0.2, "demo speech must carry (some) energy up to 24 kHz"
    frames = x[: len(x) // 480 * 480].reshape(-1, 480)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    assert (level < level.max() - 40).mean() > 0.05, "pauses between words"


def test_rir_bank_is_deterministic_and_measured(tmp_path):
    def make(out):
        return make_rir_bank(out, count=4, seed=1, progress=False)

    a = make(tmp_path / "a")
    assert regenerate_digest(make, a.parent) == tree_digest(a.parent)
    df = read_manifest(a, kind="rir")
    # broadband rt60 (Schroeder on the whole response) runs above the mid-band one: low frequencies decay last
    assert len(df) == 4 and df.rt60.between(0.03, 2.5).all()
    assert df.drr.notna().all() and df.c50.notna().all()
    assert set(df.room_type) <= set(ROOM_TYPES)
    # the mid-band RT60 meets the room's target (the simulation corrects its absorption from the measurement)
    assert (abs(df.rt60_mid - df.target_rt60) <= 0.25 * df.target_rt60).all()
    rir, sr = read_audio(df.path.iloc[0])
    assert rir_metrics(rir, sr)["rt60"] == pytest.approx(df.rt60.iloc[0], rel=0.02)
    assert room_rt60s(rir, sr)["rt60_mid"] == pytest.approx(df.rt60_mid.iloc[0], rel=0.02)


def test_room_types_reach_cars_and_booths():
    assert min(t.rt60[0] for t in ROOM_TYPES.values()) == 0.05
    assert max(t.rt60[1] for t in ROOM_TYPES.values()) == 1.3
    assert sum(t.probability for t in ROOM_TYPES.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("room_type", ["car", "large"])
def test_rooms_absorb_high_frequencies_more(room_type):
    rng = np.random.default_rng(5)
    rir, desc = simulate_rir(rng, room_type=room_type)
    again, _ = simulate_rir(np.random.default_rng(5), room_type=room_type)
    np.testing.assert_array_equal(rir, again)
    assert desc["room_type"] == room_type and len(desc["absorption"]) == 8  # octave bands 125 Hz - 16 kHz
    assert len(set(desc["absorption"])) > 1, "materials absorb differently per band"
    rt = room_rt60s(rir, 48000)
    low, high = ROOM_TYPES[room_type].rt60
    assert 0.75 * low <= rt["rt60_mid"] <= 1.25 * high
    assert rt["rt60_8k"] < rt["rt60_mid"], "high frequencies decay faster (materials and air)"
    if room_type == "car":
        assert (
            rt["rt60_mid"] <= 0.15 and rir_metrics(rir, 48000)["drr"] > 0
        )  # a cabin: short, direct sound wins


def test_noise_bank_has_every_type_and_is_deterministic(tmp_path):
    def make(out):
        return make_noise_bank(out, minutes=0.5, seed=0, clip_seconds=3, progress=False)

    a = make(tmp_path / "a")
    assert regenerate_digest(make, a.parent) == tree_digest(a.parent)
    df = read_manifest(a, kind="noise")
    assert sorted(df.noise_type.unique()) == sorted(NOISE_TYPES)
    white = read_audio(df[df.noise_type == "white"].path.iloc[0])[0]
    brown = read_audio(df[df.noise_type == "brown"].path.iloc[0])[0]

    def hf_fraction(x):
        s = np.abs(np.fft.rfft(x)) ** 2
        return s[len(s) // 2 :].sum() / s.sum()

    assert hf_fraction(white) > 0.3 > 0.01 > hf_fraction(brown)


def test_wind_noise_is_low_frequency_and_gusty():
    def level_spread_db(x):  # 10th to 90th percentile of 100 ms frame levels
        frames = x[: len(x) // 4800 * 4800].reshape(-1, 4800).astype(np.float64)
        level = 10 * np.log10((frames**2).mean(axis=1) + 1e-20)
        return np.percentile(level, 90) - np.percentile(level, 10)

    for seed in range(3):
        wind = make_noise("wind", 6.0, np.random.default_rng(seed))
        np.testing.assert_array_equal(wind, make_noise("wind", 6.0, np.random.default_rng(seed)))
        assert wind.dtype == np.float32 and len(wind) == 6 * 48000 and np.abs(wind).max() <= 0.9
        spectrum = np.abs(np.fft.rfft(wind.astype(np.float64))) ** 2
        freqs = np.fft.rfftfreq(len(wind), 1 / 48000)
        assert spectrum[freqs < 500].sum() / spectrum.sum() > 0.7
        assert spectrum[freqs < 10].sum() / spectrum.sum() < 0.05  # rumble-filtered, no DC drift
        assert level_spread_db(wind) > 8.0  # gusts
    assert level_spread_db(make_noise("pink", 6.0, np.random.default_rng(0))) < 6.0


def test_rir_metrics_of_a_known_decay():
    sr = 48000
    rt60 = 0.5
    t = np.arange(int(sr * 1.0)) / sr
    rir = np.random.default_rng(0).standard_normal(len(t)) * 10 ** (-3 * t / rt60)
    rir[0] = 30.0
    m = rir_metrics(rir, sr)
    assert m["rt60"] == pytest.approx(rt60, rel=0.1)
    assert m["c50"] > 0


def _lobe(n: int, at: float, gain: float) -> np.ndarray:
    """A band-limited arrival at fractional position ``at`` (Hann-windowed sinc, as simulators render one)."""
    k = np.arange(n) - at
    return gain * np.sinc(k) * np.where(np.abs(k) < 40, 0.5 + 0.5 * np.cos(np.pi * k / 40), 0.0)


def test_direct_path_is_the_first_arrival_not_a_stronger_reflection():
    # the direct sound falls between two samples (its top sample 0.76), a reflection 2 ms later lands on one
    rir = _lobe(4000, 500.6, 1.0) + _lobe(4000, 596.0, 0.8)
    assert np.argmax(np.abs(rir)) == 596
    assert direct_path_index(rir) == 501  # the top of the first arrival's lobe
    # a reflection far above the direct sound (more than 6 dB) wins: nothing else is a credible first arrival
    assert direct_path_index(_lobe(4000, 500.0, 0.3) + _lobe(4000, 596.0, 1.0)) == 596


def test_direct_path_skips_a_noisy_pre_delay():
    rng = np.random.default_rng(0)
    rir = np.zeros(6000)
    rir[:1500] = 0.01 * rng.standard_normal(1500)  # measurement noise floor before the sound arrives
    rir[700] = -0.3  # a click in the pre-delay, 10 dB below the direct sound
    rir[1500] = -0.95  # direct sound, negative polarity
    t = np.arange(4499) / 48000
    rir[1501:] = 0.2 * rng.standard_normal(4499) * np.exp(-t / 0.05)
    rir[1580] = 1.0  # one reflection slightly stronger
    assert direct_path_index(rir) == 1500
    assert direct_path_index(rir.astype(np.float32)) == 1500


def test_direct_path_of_ordinary_responses_is_their_peak():
    from degradations.synthetic import synthetic_rir

    for seed in range(5):
        h = synthetic_rir(0.4, 48000, seed=seed)
        assert direct_path_index(h) == int(np.argmax(np.abs(h)))
    assert direct_path_index(np.zeros(10)) == 0
    with pytest.raises(ValueError, match="no samples"):
        direct_path_index(np.zeros(0))


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_voices_are_added_at_48k(tmp_path):
    df = read_manifest(
        make_demo_corpus(tmp_path, minutes=0.1, seed=0, speakers=2, espeak=True, progress=False)
    )
    espeak = df[df.speaker.str.startswith("espeak")]
    assert len(espeak) >= 4 and set(espeak.sample_rate) == {48000}


def test_espeak_missing_is_a_clear_error(tmp_path, monkeypatch):
    import datasets.demo as demo

    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="espeak-ng is not installed"):
        make_demo_corpus(tmp_path, minutes=0.05, seed=0, speakers=1, espeak=True, progress=False)
