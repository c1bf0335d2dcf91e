"""Generated noise and room-impulse-response banks (48 kHz FLAC + manifest), deterministic for a seed.

* :func:`make_rir_bank` simulates shoebox rooms with pyroomacoustics' image-source method. Each room is drawn
  from a class (:data:`ROOM_TYPES`: car cabins and booths from RT60 0.05 s, small and large rooms up to 1.3 s);
  its absorption spectrum, in eight octave bands up to 16 kHz, is the area-weighted mean of real materials
  from pyroomacoustics' database drawn for its walls, floor and ceiling (upholstery, glass, carpet,
  plasterboard, mineral wool ...), scaled so that the mid-frequency RT60 (500 Hz and 1 kHz octaves) meets a
  target drawn for the class; air absorbs per band too (ISO 9613-1, 20 degC, 50 % RH, 125 Hz-16 kHz). High
  frequencies therefore decay faster than the mid band, as they do in real rooms at 48 kHz. The measured broadband RT60 (Schroeder, T30
  extrapolated), DRR and C50 of each response are recorded, with the octave-band RT60s ``rt60_mid`` and
  ``rt60_8k``, the ``room_type`` and the ``target_rt60``.
* :func:`make_noise_bank` writes white, pink and brown noise, babble made from demo speech, mains hum with
  harmonics, clicks/transients and synthetic wind (gusty low-frequency turbulence with occasional overload).

Real banks (DEMAND, WHAM!, MUSAN, measured RIRs ...) are scanned with ``hires corpus scan --kind noise|rir``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import signal

from datasets.audio import write_audio
from datasets.demo import make_speakers, synthesize_utterance
from datasets.manifest import stable_hash

SAMPLE_RATE = 48000
NOISE_TYPES = ("white", "pink", "brown", "babble", "hum", "clicks", "wind")


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


# ---------------------------------------------------------------------------------------------------- rooms
OCTAVE_CENTERS_HZ = (125, 250, 500, 1000, 2000, 4000, 8000, 16000)
# energy attenuation of air, 1/m per octave band: ISO 9613-1 at 20 degC, 50 % RH, 101.325 kPa. pyroomacoustics'
# own table stops at 8 kHz and extrapolates 16 kHz linearly (35e-3 instead of 84e-3).
AIR_ABSORPTION = (0.10e-3, 0.30e-3, 0.63e-3, 1.07e-3, 2.28e-3, 6.83e-3, 24.2e-3, 83.9e-3)


@dataclass(frozen=True)
class RoomType:
    """A class of rooms: probability, shoebox size ranges (m), mid-band RT60 range (s), talker/microphone
    placement and the pyroomacoustics materials its walls, floor and ceiling are drawn from."""

    probability: float
    length: tuple[float, float]
    width: tuple[float, float]  # as a fraction of the length (rooms) or in metres (cabins, booths)
    height: tuple[float, float]
    rt60: tuple[float, float]
    margin: float  # closest distance of talker / microphone to a surface
    min_distance: float  # closest talker-microphone distance
    walls: tuple[str, ...]
    floor: tuple[str, ...]
    ceiling: tuple[str, ...]
    width_is_fraction: bool = False


_ROOM_WALLS = (
    "hard_surface", "brickwork", "rough_concrete", "plasterboard", "gypsum_board", "wooden_lining",
    "glass_window", "ceramic_tiles", "curtains_cotton_0.5", "curtains_velvet", "blinds_half_open",
    "panel_fabric_covered_6pcf",
)  # fmt: skip
_ROOM_FLOORS = (
    "carpet_cotton", "carpet_thin", "linoleum_on_concrete", "concrete_floor", "marble_floor", "audience_floor",
    "stage_floor", "wood_16mm",
)  # fmt: skip
_ROOM_CEILINGS = (
    "ceiling_plasterboard", "ceiling_fissured_tile", "ceiling_fibre_absorber", "ceiling_perforated_gypsum_board",
    "ceiling_metal_panel", "hard_surface", "plasterboard",
)  # fmt: skip
# Cabins and booths give the short end (RT60 0.05-0.25 s, DRR high), ordinary and large rooms the rest.
ROOM_TYPES: dict[str, RoomType] = {
    "car": RoomType(
        0.15, (1.5, 2.2), (1.2, 1.5), (1.0, 1.25), (0.05, 0.12), 0.2, 0.3,
        walls=("glass_window", "glass_3mm", "chairs_upholstered_cloth", "chairs_upholstered_leather",
               "chairs_heavy_upholstered"),
        floor=("carpet_thin", "carpet_tufted_9.5mm", "carpet_rubber_5mm"),
        ceiling=("felt_5mm", "carpet_thin", "curtains_fabric"),
    ),
    "booth": RoomType(
        0.10, (1.0, 2.5), (1.0, 2.2), (2.0, 2.6), (0.06, 0.25), 0.25, 0.3,
        walls=("rockwool_50mm_80kgm3", "mineral_wool_50mm_40kgm3", "panel_fabric_covered_8pcf",
               "studio_curtains", "glass_window", "plasterboard", "wooden_door"),
        floor=("carpet_soft_10mm", "carpet_cotton", "linoleum_on_concrete"),
        ceiling=("ceiling_melamine_foam", "ceiling_fibre_absorber", "ceiling_perforated_gypsum_board"),
    ),
    "small": RoomType(
        0.35, (2.5, 5.5), (0.6, 1.0), (2.3, 3.0), (0.2, 0.7), 0.4, 0.5,
        _ROOM_WALLS, _ROOM_FLOORS, _ROOM_CEILINGS, width_is_fraction=True,
    ),
    "large": RoomType(
        0.40, (5.5, 14.0), (0.5, 1.0), (2.6, 4.5), (0.4, 1.3), 0.5, 0.5,
        _ROOM_WALLS, _ROOM_FLOORS, _ROOM_CEILINGS, width_is_fraction=True,
    ),
}  # fmt: skip
WALL_NAMES = ("east", "west", "north", "south")


@cache
def material_bands(name: str) -> tuple[float, ...]:
    """Energy absorption of pyroomacoustics material ``name`` in the :data:`OCTAVE_CENTERS_HZ` bands (bands the
    database does not list, 8 and 16 kHz for some materials, keep the highest listed value)."""
    import pyroomacoustics as pra

    coeffs = list(pra.Material(name).energy_absorption["coeffs"])
    return tuple(float(coeffs[min(i, len(coeffs) - 1)]) for i in range(len(OCTAVE_CENTERS_HZ)))


def _scaled(alpha: np.ndarray, scale: float) -> np.ndarray:
    # scale -ln(1 - alpha) (Eyring's absorption exponent) rather than alpha: the spectral shape of each material
    # is kept and no coefficient passes 1
    return np.clip(1.0 - (1.0 - alpha) ** scale, 0.001, 0.99)


def _eyring_rt60(dims: np.ndarray, areas: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Eyring RT60 per octave band with air absorption; ``alpha`` is (surfaces, bands)."""
    volume = float(np.prod(dims))
    mean = np.sum(areas[:, None] * alpha, axis=0) / areas.sum()
    air = np.asarray(AIR_ABSORPTION)
    return 0.161 * volume / (-areas.sum() * np.log(1.0 - mean) + 4.0 * air * volume)


def _scale_for_rt60(dims: np.ndarray, areas: np.ndarray, alpha: np.ndarray, target: float) -> float:
    """The scale (see :func:`_scaled`) giving the mid-band (500 Hz, 1 kHz) Eyring RT60 ``target`` (bisection)."""
    lo, hi = -12.0, 8.0  # log2 of the scale
    for _ in range(40):
        mid = (lo + hi) / 2
        rt60 = _eyring_rt60(dims, areas, _scaled(alpha, 2.0**mid))[2:4].mean()
        lo, hi = (mid, hi) if rt60 > target else (lo, mid)
    return 2.0 ** ((lo + hi) / 2)


def band_rt60(rir: np.ndarray, sr: int, center_hz: float) -> float:
    """RT60 of one octave band (Butterworth, filtered time-reversed so the filter's ringing does not lengthen
    short decays; Schroeder fit as :func:`rir_metrics`); NaN where it cannot be measured."""
    hi = min(center_hz * math.sqrt(2.0), 0.95 * sr / 2)
    if hi <= center_hz / math.sqrt(2.0):
        return float("nan")
    sos = signal.butter(3, [center_hz / math.sqrt(2.0), hi], btype="bandpass", fs=sr, output="sos")
    x = np.asarray(rir, dtype=np.float64)
    return rir_metrics(signal.sosfilt(sos, x[::-1])[::-1], sr)["rt60"]


def room_rt60s(rir: np.ndarray, sr: int) -> dict[str, float]:
    """``rt60_mid`` (mean of the 500 Hz and 1 kHz octaves) and ``rt60_8k`` (the 8 kHz octave), seconds."""
    return {
        "rt60_mid": float(np.mean([band_rt60(rir, sr, 500.0), band_rt60(rir, sr, 1000.0)])),
        "rt60_8k": band_rt60(rir, sr, 8000.0),
    }


def simulate_rir(
    rng: np.random.Generator, sr: int = SAMPLE_RATE, room_type: str | None = None
) -> tuple[np.ndarray, dict]:
    """One shoebox room response of a room class drawn from :data:`ROOM_TYPES` (or ``room_type``); returns
    ``(rir, room description)``."""
    import pyroomacoustics as pra

    names = list(ROOM_TYPES)
    probs = np.array([ROOM_TYPES[n].probability for n in names])
    drawn = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    room_type = room_type or drawn
    if room_type not in ROOM_TYPES:
        raise ValueError(f"unknown room type {room_type!r}; expected one of {', '.join(ROOM_TYPES)}")
    kind = ROOM_TYPES[room_type]
    length = rng.uniform(*kind.length)
    width = rng.uniform(*kind.width) * (length if kind.width_is_fraction else 1.0)
    dims = np.array([length, max(width, 2.0 if kind.width_is_fraction else 1.0), rng.uniform(*kind.height)])
    target = float(rng.uniform(*kind.rt60))
    surfaces = {
        **{w: kind.walls[int(rng.integers(len(kind.walls)))] for w in WALL_NAMES},
        "floor": kind.floor[int(rng.integers(len(kind.floor)))],
        "ceiling": kind.ceiling[int(rng.integers(len(kind.ceiling)))],
    }
    x, y, z = dims
    areas = np.array([y * z, y * z, x * z, x * z, x * y, x * y])  # east, west, north, south, floor, ceiling
    drawn_alpha = np.array([material_bands(surfaces[s]) for s in (*WALL_NAMES, "floor", "ceiling")])
    # every surface gets the area-weighted mean spectrum of the drawn materials: with distinct materials per
    # wall, the image-source model (which has no scattering) lets sound flutter between the two hardest
    # parallel walls far longer than in a real room, and the decay misses its target by a factor of 2-3
    alpha = np.sum(areas[:, None] * drawn_alpha, axis=0) / areas.sum()
    # below 500 Hz, at least 70 % of the mid-band absorption: furniture, doors, windows and people absorb low
    # frequencies that the database's massive constructions lack (otherwise T(125 Hz) reaches 5-10x T_mid;
    # with the floor the bass ratio stays below about 1.5, as in real rooms)
    alpha[:2] = np.maximum(alpha[:2], 0.7 * alpha[2:4].mean())
    alpha = np.repeat(alpha[None, :], len(areas), axis=0)
    src = rng.uniform(kind.margin, dims - kind.margin)
    mic = rng.uniform(kind.margin, dims - kind.margin)
    while np.linalg.norm(src - mic) < kind.min_distance:
        mic = rng.uniform(kind.margin, dims - kind.margin)
    scale = _scale_for_rt60(dims, areas, alpha, target)
    # image-source order: enough reflections for the slowest band's decay, capped (beyond ~50 per axis the
    # tail adds < 1 % of energy at 48 kHz)
    slowest = float(_eyring_rt60(dims, areas, _scaled(alpha, scale)).max())
    max_order = int(np.clip(math.ceil(343.0 * slowest / dims.min()), 3, 50))
    # the image-source decay departs from Eyring's (few reflections in a cabin, a capped order in a hall):
    # correct the scale from the measured mid-band decay, at most twice
    for attempt in range(3):
        coeffs = _scaled(alpha, scale)
        materials = {
            s: pra.Material({"coeffs": coeffs[i].tolist(), "center_freqs": list(OCTAVE_CENTERS_HZ)})
            for i, s in enumerate((*WALL_NAMES, "floor", "ceiling"))
        }
        room = pra.ShoeBox(dims, fs=sr, materials=materials, max_order=max_order)
        room.set_air_absorption(list(AIR_ABSORPTION), list(OCTAVE_CENTERS_HZ))
        room.add_source(src.tolist())
        room.add_microphone(mic.tolist())
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        measured = room_rt60s(rir, sr)["rt60_mid"]
        if attempt == 2 or not np.isfinite(measured) or abs(measured - target) <= 0.15 * target:
            break
        scale = float(np.clip(scale * measured / target, 2.0**-12, 2.0**8))
    rir = rir / np.abs(rir).max() * 0.9
    desc = {
        "room_type": room_type,
        "room_dims": dims.round(3).tolist(),
        "materials": surfaces,
        "absorption": [round(float(a), 4) for a in _scaled(alpha[0], scale)],
        "target_rt60": round(target, 4),
        "absorption_scale": float(scale),
        "max_order": max_order,
        "measured_rt60_mid": float(measured),
        "distance_m": float(np.linalg.norm(src - mic)),
    }
    return rir.astype(np.float32), desc


def make_rir_bank(out_dir: str | Path, count: int = 50, seed: int = 0, progress: bool = True) -> Path:
    """Simulate ``count`` rooms into ``out_dir/rooms/rir_NNNNN.flac`` + manifest: measured ``rt60`` (broadband),
    ``drr``, ``c50``, ``rt60_mid`` and ``rt60_8k`` (octave bands), ``room_type`` and ``target_rt60``."""
    from tqdm import tqdm

    from datasets.scan import scan_to_manifest

    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    out_dir = Path(out_dir)
    (out_dir / "rooms").mkdir(parents=True, exist_ok=True)
    extra: dict[str, dict] = {}
    for i in tqdm(range(count), desc="rir bank", unit="room", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, stable_hash(f"rir/{i}")])
        rir, desc = simulate_rir(rng)
        path = out_dir / "rooms" / f"rir_{i:05d}.flac"
        write_audio(path, rir, SAMPLE_RATE)
        extra[str(path.absolute())] = {
            **rir_metrics(rir, SAMPLE_RATE),
            **room_rt60s(rir, SAMPLE_RATE),
            "room_type": desc["room_type"],
            "target_rt60": desc["target_rt60"],
        }
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


def _wind(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Wind on a microphone: low-frequency turbulence (mostly below ~500 Hz) whose level follows gusts, brighter
    when stronger, and overloads the microphone (tanh saturation) in the strongest gusts of half the files.

    The gusts are a log-normal wind speed whose logarithm is Gaussian noise low-passed at 0.3-1.5 Hz; the noise
    pressure grows with the square of the speed (dynamic pressure). Loosely after Mirabilii & Habets' wind
    noise simulator, which URGENT 2025 uses; a demo stand-in for recorded wind.
    """
    rate = 100  # envelope rate, Hz
    m = n * rate // sr + 2
    sos = signal.butter(2, rng.uniform(0.3, 1.5), fs=rate, output="sos")
    log_speed = signal.sosfiltfilt(sos, rng.standard_normal(m + 2 * rate))[rate : rate + m]
    log_speed *= rng.uniform(0.25, 0.5) / (log_speed.std() + 1e-12)
    speed = np.interp(np.arange(n) * rate / sr, np.arange(m), np.exp(log_speed))
    # turbulence spectrum: flat below a corner at 30-80 Hz, falling as f^-(1.8..2.5) in power above it, with
    # a second-order roll-off below 15-30 Hz (a microphone's rumble filter)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    corner, exponent, rumble_hz = rng.uniform(30, 80), rng.uniform(1.8, 2.5), rng.uniform(15, 30)
    shape = (f / rumble_hz) ** 2 / (1.0 + (f / rumble_hz) ** 2) / np.sqrt(1.0 + (f / corner) ** exponent)
    rumble = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n)
    rumble /= np.sqrt(np.mean(rumble**2)) + 1e-12
    hiss = signal.sosfilt(
        signal.butter(2, [400, 4000], "bandpass", fs=sr, output="sos"), colored_noise(n, 1.0, rng)
    )
    x = rumble * speed**2 + rng.uniform(0.005, 0.03) * hiss * speed**3
    if rng.random() < 0.5:  # overload: the strongest gusts saturate
        x = np.tanh(rng.uniform(1.2, 2.5) * x / (np.abs(x).max() + 1e-12))
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
    elif kind == "wind":
        x = _wind(n, rng, sr)
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
