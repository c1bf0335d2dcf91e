"""Deterministic demo corpus: synthetic, speech-like 48 kHz audio for tests, the demo and benchmarks.

Each synthetic speaker has its own pitch range, vocal-tract length (formant scale), speaking rate and
breathiness. An utterance is a sequence of words of syllables; a syllable is an optional consonant (fricative
noise shaped by a band-pass, or a plosive burst) followed by a vowel: a Rosenberg glottal pulse train that follows
a pitch contour (declination, accents, jitter), mixed with aspiration noise and passed through a cascade of
formant resonators. Words are separated by pauses. Harmonics, aspiration and fricatives put energy up to 24 kHz,
so band-limiting degradations have something to remove.

This is a stand-in for plumbing and CI: it is not speech, and models trained on it learn nothing about speech.
Real training uses real studio corpora (VCTK 0.92, EARS, HiFi-TTS, ...) scanned with ``hires corpus scan``.

Optionally (``espeak=True``), espeak-ng voices are added, resampled to 48 kHz, when the binary is installed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal

from datasets.audio import read_audio, resample, write_audio
from datasets.manifest import stable_hash

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000

# (F1, F2, F3, F4) in Hz for an adult male vocal tract; scaled per speaker.
VOWELS = {
    "a": (730, 1090, 2440, 3400),
    "e": (530, 1840, 2480, 3500),
    "i": (270, 2290, 3010, 3700),
    "o": (570, 840, 2410, 3300),
    "u": (300, 870, 2240, 3200),
    "ae": (660, 1720, 2410, 3400),
    "er": (490, 1350, 1690, 3300),
}
FORMANT_BANDWIDTHS = (80, 100, 140, 200, 300)
# (low, high) band edges of fricatives in Hz; None = plosive burst
CONSONANTS = {
    "s": (4000, 16000),
    "sh": (2000, 7000),
    "f": (1500, 22000),
    "h": (600, 6000),
    "p": None,
    "t": None,
}


@dataclass(frozen=True)
class Speaker:
    name: str
    f0: float  # median pitch in Hz
    formant_scale: float
    rate: float  # syllables per second
    breathiness: float  # aspiration noise level relative to voicing


def make_speakers(count: int, seed: int) -> list[Speaker]:
    rng = np.random.default_rng([seed, 0x5EA])
    speakers = []
    for i in range(count):
        female = i % 2 == 1
        speakers.append(
            Speaker(
                name=f"spk{i:02d}",
                f0=float(rng.uniform(180, 250) if female else rng.uniform(90, 140)),
                formant_scale=float(rng.uniform(1.10, 1.22) if female else rng.uniform(0.92, 1.05)),
                rate=float(rng.uniform(3.5, 5.5)),
                breathiness=float(rng.uniform(0.02, 0.12)),
            )
        )
    return speakers


def _resonator(freq: float, bw: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / sr)
    theta = 2 * np.pi * freq / sr
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    b = np.array([a.sum()])  # unit gain at DC keeps levels comparable across formants
    return b, a


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n, dtype=np.float64)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, attack))
    if release:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, release))
    return env


def _glottal_source(f0: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Differentiated Rosenberg pulses following the per-sample pitch ``f0`` (with 1 % jitter)."""
    jitter = 1 + 0.01 * signal.lfilter([0.05], [1, -0.95], rng.standard_normal(len(f0)))
    phase = np.cumsum(f0 * jitter / sr) % 1.0
    open_q, close_q = 0.4, 0.16
    pulse = np.where(
        phase < open_q,
        0.5 * (1 - np.cos(np.pi * phase / open_q)),
        np.where(phase < open_q + close_q, np.cos(0.5 * np.pi * (phase - open_q) / close_q), 0.0),
    )
    return np.diff(pulse, prepend=0.0) * sr / (f0.mean() * 8)


def _vowel(spk: Speaker, vowel: str, n: int, f0: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    src = _glottal_source(f0, sr, rng)
    # aspiration noise, louder in the high band, gives energy up to Nyquist
    noise = signal.lfilter([1, -0.9], [1], rng.standard_normal(n))
    src = src + spk.breathiness * noise
    y = np.zeros(n)
    formants = [f * spk.formant_scale for f in VOWELS[vowel]] + [4500 * spk.formant_scale]
    gains = (1.0, 0.7, 0.35, 0.2, 0.12)
    for freq, bw, g in zip(formants, FORMANT_BANDWIDTHS, gains, strict=True):
        b, a = _resonator(min(freq, 0.45 * sr), bw, sr)
        y += g * signal.lfilter(b, a, src)
    # a gentle high shelf: studio recordings keep some air above 10 kHz
    y += 0.08 * signal.lfilter([1, -1], [1], src)
    return y * _envelope(n, int(0.02 * sr), int(0.03 * sr))


def _consonant(kind: str, n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    band = CONSONANTS[kind]
    noise = rng.standard_normal(n)
    if band is None:  # plosive: short broadband burst with fast decay
        env = np.exp(-np.arange(n) / (0.006 * sr))
        b, a = signal.butter(2, 500 / (sr / 2), "highpass")
        return 0.6 * signal.lfilter(b, a, noise) * env
    lo, hi = band
    sos = signal.butter(4, [lo / (sr / 2), min(hi, 0.49 * sr) / (sr / 2)], "bandpass", output="sos")
    return 0.25 * signal.sosfilt(sos, noise) * _envelope(n, int(0.015 * sr), int(0.02 * sr))


def synthesize_utterance(
    spk: Speaker, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """About ``seconds`` of speech-like audio for one speaker, peak-normalised to a random level."""
    total = int(seconds * sr)
    out = np.zeros(total + sr, dtype=np.float64)
    pos = int(rng.uniform(0.1, 0.3) * sr)  # leading silence
    vowels, consonants = list(VOWELS), list(CONSONANTS)
    while pos < total - int(0.3 * sr):
        for _ in range(int(rng.integers(1, 4))):  # syllables in a word
            if rng.random() < 0.6:
                kind = consonants[int(rng.integers(len(consonants)))]
                n = int(rng.uniform(0.04, 0.12) * sr)
                out[pos : pos + n] += _consonant(kind, n, rng, sr)[: len(out) - pos]
                pos += int(n * 0.8)
            n = int(rng.uniform(0.6, 1.4) / spk.rate * sr)
            progress = pos / max(total, 1)
            accent = 1 + 0.15 * rng.standard_normal()
            start_f0 = spk.f0 * (1.1 - 0.2 * progress) * accent
            f0 = np.linspace(start_f0, start_f0 * rng.uniform(0.85, 1.1), n)
            seg = _vowel(spk, vowels[int(rng.integers(len(vowels)))], n, f0, rng, sr)
            seg *= rng.uniform(0.5, 1.0)
            out[pos : pos + n] += seg[: len(out) - pos]
            pos += n
        pos += int(rng.uniform(0.08, 0.35) * sr)  # pause between words
    out = out[:total]
    # a very low noise floor, like a quiet studio
    out += 10 ** (-75 / 20) * rng.standard_normal(total)
    peak = np.abs(out).max()
    return (out / peak * rng.uniform(0.3, 0.9)).astype(np.float32)


def _espeak_utterances(out_dir: Path, seed: int) -> list[Path]:
    """A few espeak-ng voices resampled to 48 kHz (only when the binary exists)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(
            "espeak-ng is not installed: install it (apt-get install espeak-ng) or drop --espeak"
        )
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Speech restoration brings old recordings back to studio quality.",
        "She sells sea shells by the sea shore on sunny days.",
        "Please call Stella and ask her to bring these things with her from the store.",
    ]
    written = []
    for v, voice in enumerate(["en-us", "en-gb", "en-us+f3", "en-gb+m3"]):
        spk_dir = out_dir / f"espeak{v:02d}"
        spk_dir.mkdir(parents=True, exist_ok=True)
        for s, text in enumerate(sentences):
            with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
                pitch = 40 + (stable_hash(f"{seed}/{voice}/{s}") % 30)
                subprocess.run(
                    [exe, "-v", voice, "-p", str(pitch), "-w", tmp.name, text],
                    check=True,
                    capture_output=True,
                )
                x, sr = read_audio(tmp.name)
            path = spk_dir / f"espeak{v:02d}_utt{s:04d}.flac"
            write_audio(
                path, resample(x, sr, SAMPLE_RATE) * 0.8 / max(1e-6, float(np.abs(x).max())), SAMPLE_RATE
            )
            written.append(path)
    return written


def make_demo_corpus(
    out_dir: str | Path,
    minutes: float = 5.0,
    seed: int = 0,
    speakers: int = 8,
    espeak: bool = False,
    progress: bool = True,
    valid_speakers: int = 0,
    test_speakers: int = 0,
) -> Path:
    """Write ``minutes`` of demo speech as 48 kHz 24-bit FLAC under ``out_dir/spkNN/`` and its manifest.

    Deterministic: the same (minutes, seed, speakers) give the same bytes. Returns the manifest path.
    With ``valid_speakers``/``test_speakers`` above 0 the last speakers are held out (test last, valid before
    it) and the others train; otherwise the scan's hash split stands, which leaves a few speakers all in train.
    """
    if valid_speakers < 0 or test_speakers < 0 or valid_speakers + test_speakers >= speakers:
        raise ValueError(
            f"valid_speakers {valid_speakers} + test_speakers {test_speakers} must leave at least one of the "
            f"{speakers} speakers for training"
        )
    from tqdm import tqdm

    from datasets.scan import scan_to_manifest

    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spks = make_speakers(speakers, seed)
    target = minutes * 60
    total = 0.0
    i = 0
    bar = tqdm(total=round(target), desc="demo corpus", unit="s", disable=not progress, leave=False)
    while total < target:
        spk = spks[i % len(spks)]
        utt = i // len(spks)
        rng = np.random.default_rng([seed, stable_hash(f"{spk.name}/{utt}")])
        seconds = float(min(rng.uniform(2.5, 9.0), max(target - total, 1.0)))
        x = synthesize_utterance(spk, seconds, rng)
        write_audio(out_dir / spk.name / f"{spk.name}_utt{utt:04d}.flac", x, SAMPLE_RATE)
        total += len(x) / SAMPLE_RATE
        bar.update(round(len(x) / SAMPLE_RATE))
        i += 1
    bar.close()
    if espeak:
        _espeak_utterances(out_dir, seed)
    manifest = out_dir / "manifest.parquet"
    scan_to_manifest([out_dir], manifest, kind="speech", name="demo", progress=False)
    if valid_speakers or test_speakers:
        names = [s.name for s in spks]
        held = {n: "test" for n in names[len(names) - test_speakers :]}
        held.update(
            {
                n: "valid"
                for n in names[len(names) - test_speakers - valid_speakers : len(names) - test_speakers]
            }
        )
        assign_speaker_splits(manifest, held)
    return manifest


def assign_speaker_splits(manifest: Path, held_out: dict[str, str]) -> None:
    """Rewrite a manifest's ``split`` column: speakers named in ``held_out`` get their split, the rest train."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(manifest)
    splits = pa.array([held_out.get(s, "train") for s in table.column("speaker").to_pylist()], pa.string())
    table = table.set_column(table.schema.get_field_index("split"), table.schema.field("split"), splits)
    tmp = manifest.with_name(manifest.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(manifest)
