"""Generated noise and room-impulse-response banks (48 kHz FLAC + manifest), deterministic for a seed.

* :func:`make_rir_bank` simulates shoebox rooms with pyroomacoustics' image-source method: random dimensions,
  absorption from Sabine's formula for a target RT60 drawn in [0.2, 1.3] s, random source/microphone positions,
  air absorption. The measured RT60 (Schroeder, T30 extrapolated), DRR and C50 of each response are recorded.
* :func:`make_noise_bank` writes white, pink and brown noise, babble made from demo speech, mains hum with
  harmonics, and clicks/transients.

Real banks (DEMAND, WHAM!, MUSAN, measured RIRs ...) are scanned with ``hires corpus scan --kind noise|rir``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import signal

from datasets.audio import write_audio
from datasets.demo import make_speakers, synthesize_utterance
from datasets.manifest import stable_hash

SAMPLE_RATE = 48000
NOISE_TYPES = ("white", "pink", "brown", "babble", "hum", "clicks")


# ---------------------------------------------------------------------------------------------------- RIR metrics
FIRST_ARRIVAL_DB = 6.0


def direct_path_index(rir: np.ndarray, within_db: float = FIRST_ARRIVAL_DB) -> int:
    """Index of the direct path: the top of the first arrival, which need not be the largest sample.

    The first sample whose magnitude comes within ``within_db`` of the largest one marks the first arrival;
    the index is the top of that arrival's lobe (uphill from there). A reflection a hair stronger than the direct
    sound (microphone near a wall or a desk) therefore does not move the alignment, and whatever precedes the
    direct sound at least ``within_db`` below the peak (the noise floor of a measured response's pre-delay, a
    fractional-delay filter's pre-ringing) is skipped. 0 for an all-zero response.
    """
    a = np.abs(np.asarray(rir, dtype=np.float64).reshape(-1))
    if a.size == 0:
        raise ValueError("direct_path_index: the RIR has no samples")
    top = float(a.max())
    if not top > 0.0:
        return 0
    i = int(np.argmax(a >= top * 10.0 ** (-within_db / 20.0)))
    while i + 1 < a.size and a[i + 1] > a[i]:
        i += 1
    return i


def rir_metrics(rir: np.ndarray, sr: int) -> dict[str, float]:
    """RT60 (Schroeder backward integration, -5 to -35 dB fit, extrapolated), DRR and C50 in dB."""
    rir = np.asarray(rir, dtype=np.float64)
    d = direct_path_index(rir)
    energy = rir**2
    win = int(0.0025 * sr)  # +-2.5 ms around the direct path counts as direct
    direct = energy[max(0, d - win) : d + win + 1].sum()
    reverberant = energy[d + win + 1 :].sum()
    early = energy[max(0, d - win) : d + int(0.05 * sr)].sum()
    late = energy[d + int(0.05 * sr) :].sum()
    tiny = 1e-20
    edc = np.cumsum(energy[d:][::-1])[::-1]
    edc_db = 10 * np.log10(edc / (edc[0] + tiny) + tiny)
    t = np.arange(len(edc_db)) / sr
    sel = (edc_db <= -5) & (edc_db >= -35)
    if sel.sum() >= 2:
        slope, _ = np.polyfit(t[sel], edc_db[sel], 1)
        rt60 = float(-60.0 / slope) if slope < 0 else float("nan")
    else:
        rt60 = float("nan")
    return {
        "rt60": rt60,
        "drr": float(10 * math.log10((direct + tiny) / (reverberant + tiny))),
        "c50": float(10 * math.log10((early + tiny) / (late + tiny))),
    }


def simulate_rir(
    rng: np.random.Generator, sr: int = SAMPLE_RATE, rt60_range=(0.2, 1.3)
) -> tuple[np.ndarray, dict]:
    """One shoebox room response; returns ``(rir, room description)``."""
    import pyroomacoustics as pra

    length = rng.uniform(3, 14)
    dims = np.array([length, length * rng.uniform(0.5, 1.0), rng.uniform(2.4, 4.5)])
    dims[1] = max(dims[1], 2.5)
    target = float(rng.uniform(*rt60_range))
    try:
        absorption, max_order = pra.inverse_sabine(target, dims)
    except ValueError:  # room too small for that RT60: the most reverberant the room allows
        absorption, max_order = 0.02, 60
    # the image-source order is capped: beyond ~50 reflections per axis the tail adds < 1 % of energy at 48 kHz
    max_order = int(min(max_order, 50))
    margin = 0.5
    src = rng.uniform(margin, dims - margin)
    mic = rng.uniform(margin, dims - margin)
    while np.linalg.norm(src - mic) < 0.5:
        mic = rng.uniform(margin, dims - margin)
    # Sabine's formula is off in long, flat rooms (flutter between close walls): correct the absorption from
    # the measured decay, at most twice, so the bank covers the requested RT60 range.
    for _ in range(3):
        room = pra.ShoeBox(
            dims, fs=sr, materials=pra.Material(float(absorption)), max_order=max_order, air_absorption=True
        )
        room.add_source(src.tolist())
        room.add_microphone(mic.tolist())
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        measured = rir_metrics(rir, sr)["rt60"]
        if not np.isfinite(measured) or abs(measured - target) <= 0.15 * target:
            break
        absorption = float(np.clip(absorption * measured / target, 0.01, 0.99))
    rir = rir / np.abs(rir).max() * 0.9
    desc = {
        "room_dims": dims.round(3).tolist(),
        "target_rt60": round(target, 4),
        "absorption": float(absorption),
        "max_order": max_order,
        "measured_rt60": float(measured),
        "distance_m": float(np.linalg.norm(src - mic)),
    }
    return rir.astype(np.float32), desc


def make_rir_bank(out_dir: str | Path, count: int = 50, seed: int = 0, progress: bool = True) -> Path:
    """Simulate ``count`` rooms into ``out_dir/rir_NNNNN.flac`` + manifest (with rt60, drr, c50)."""
    from tqdm import tqdm

    from datasets.scan import scan_to_manifest

    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    out_dir = Path(out_dir)
    (out_dir / "rooms").mkdir(parents=True, exist_ok=True)
    extra: dict[str, dict] = {}
    for i in tqdm(range(count), desc="rir bank", unit="room", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, stable_hash(f"rir/{i}")])
        rir, _ = simulate_rir(rng)
        path = out_dir / "rooms" / f"rir_{i:05d}.flac"
        write_audio(path, rir, SAMPLE_RATE)
        extra[str(path.absolute())] = rir_metrics(rir, SAMPLE_RATE)
    manifest = out_dir / "manifest.parquet"
    scan_to_manifest([out_dir], manifest, kind="rir", name="simrir", progress=False, extra_columns=extra)
    return manifest


# ---------------------------------------------------------------------------------------------------- noise
def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spec *= f ** (-exponent / 2)
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _babble(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    speakers = make_speakers(8, int(rng.integers(1 << 30)))
    x = np.zeros(n)
    for spk in speakers[: int(rng.integers(4, 8))]:
        utt = synthesize_utterance(spk, n / sr + 1.0, rng, sr)
        shift = int(rng.integers(0, sr))
        x += utt[shift : shift + n]
    return x


def _hum(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    base = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(n) / sr
    x = np.zeros(n)
    for k in range(1, 16):
        x += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi))
    return x + 0.05 * colored_noise(n, 1.0, rng)


def _clicks(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    x = 0.01 * colored_noise(n, 1.0, rng)
    for _ in range(int(rng.integers(5, 20) * n / sr)):
        pos = int(rng.integers(0, n))
        length = int(rng.uniform(0.001, 0.03) * sr)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5))
        if rng.random() < 0.5:  # some transients are low thumps, some sharp clicks
            burst = signal.lfilter([0.05], [1, -0.95], burst)
        end = min(n, pos + length)
        x[pos:end] += rng.uniform(0.3, 1.0) * burst[: end - pos]
    return x


def make_noise(kind: str, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    n = int(seconds * sr)
    if kind in ("white", "pink", "brown"):
        x = colored_noise(n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], rng)
    elif kind == "babble":
        x = _babble(n, rng, sr)
    elif kind == "hum":
        x = _hum(n, rng, sr)
    elif kind == "clicks":
        x = _clicks(n, rng, sr)
    else:
        raise ValueError(f"unknown noise type {kind!r}; expected one of {', '.join(NOISE_TYPES)}")
    return (x / (np.abs(x).max() + 1e-12) * rng.uniform(0.3, 0.9)).astype(np.float32)


def make_noise_bank(
    out_dir: str | Path,
    minutes: float = 2.0,
    seed: int = 0,
    clip_seconds: float = 10.0,
    progress: bool = True,
) -> Path:
    """Write ``minutes`` of noise, evenly over :data:`NOISE_TYPES`, as ``out_dir/<type>/<type>_NNN.flac``: clips of
    about ``clip_seconds``, stretched or shortened so that they add up to ``minutes``."""
    from tqdm import tqdm

    from datasets.scan import scan_to_manifest

    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    out_dir = Path(out_dir)
    per_type = max(1, round(minutes * 60 / clip_seconds / len(NOISE_TYPES)))
    clip_seconds = minutes * 60 / (per_type * len(NOISE_TYPES))  # the total is what was asked, clips ~equal
    extra: dict[str, dict] = {}
    jobs = [(kind, j) for kind in NOISE_TYPES for j in range(per_type)]
    for kind, j in tqdm(jobs, desc="noise bank", unit="file", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, stable_hash(f"noise/{kind}/{j}")])
        path = out_dir / kind / f"{kind}_{j:03d}.flac"
        write_audio(path, make_noise(kind, clip_seconds, rng), SAMPLE_RATE)
        extra[str(path.absolute())] = {"noise_type": kind}
    manifest = out_dir / "manifest.parquet"
    scan_to_manifest([out_dir], manifest, kind="noise", name="demonoise", progress=False, extra_columns=extra)
    return manifest
