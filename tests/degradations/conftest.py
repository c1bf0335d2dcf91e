"""Fixtures for the degradation tests: synthetic speech, in-memory banks and a tiny on-disk bank with manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datasets.manifest import write_manifest
from degradations import BankEntry, Banks
from degradations.synthetic import noise_signal, speech_like, synthetic_rir

SR = 48000


@pytest.fixture(scope="session")
def sr() -> int:
    return SR


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """2 s of speech-like signal with pauses, at about -20 dBFS while active."""
    x = speech_like(2.0, SR, seed=3)
    x.setflags(write=False)
    return x


@pytest.fixture(scope="session")
def speech_long() -> np.ndarray:
    """One 5.12 s training segment of speech-like signal."""
    x = speech_like(5.12, SR, seed=7)
    x.setflags(write=False)
    return x


RIR_RT60 = {"rir_a": 0.3, "rir_b": 0.6, "rir_c": 0.9}


@pytest.fixture(scope="session")
def memory_banks() -> Banks:
    noise = {
        "white": noise_signal(3.0, SR, seed=1),
        "brown": noise_signal(4.0, SR, seed=2, color=0.95),
        "short": noise_signal(0.3, SR, seed=3, color=0.5),  # shorter than any clip: gets looped
    }
    rir = {rid: synthetic_rir(rt, SR, seed=i) for i, (rid, rt) in enumerate(RIR_RT60.items())}
    meta = {rid: {"rt60": rt, "drr": None, "c50": None} for rid, rt in RIR_RT60.items()}
    return Banks.from_arrays(SR, noise=noise, rir=rir, rir_meta=meta)


@pytest.fixture(scope="session")
def wind_banks() -> Banks:
    """The in-memory banks of ``memory_banks`` plus two demo wind files (``noise_type`` wind) for the wind step."""
    from datasets.banks import make_noise

    base = Banks.from_arrays(
        SR,
        noise={
            "white": noise_signal(3.0, SR, seed=1),
            "brown": noise_signal(4.0, SR, seed=2, color=0.95),
            "short": noise_signal(0.3, SR, seed=3, color=0.5),
        },
        rir={rid: synthetic_rir(rt, SR, seed=i) for i, (rid, rt) in enumerate(RIR_RT60.items())},
        rir_meta={rid: {"rt60": rt, "drr": None, "c50": None} for rid, rt in RIR_RT60.items()},
    )
    catalog = base.catalog()
    noise = {e["id"]: base.entry("noise", e["id"]) for e in catalog["noise"]}
    rir = {e["id"]: base.entry("rir", e["id"]) for e in catalog["rir"]}
    arrays = {("noise", i): base.noise(i) for i in noise} | {("rir", i): base.rir(i) for i in rir}
    for i, wid in enumerate(("wind_a", "wind_b")):
        x = make_noise("wind", 3.0, np.random.default_rng(40 + i), SR)
        noise[wid] = BankEntry(wid, None, SR, len(x), {"noise_type": "wind"})
        arrays[("noise", wid)] = x
    return Banks(SR, noise=noise, rir=rir, arrays=arrays)


def _row(path: Path, bid: str, sr: int, frames: int, kind: str, split: str, **extra) -> dict:
    return {
        "id": bid,
        "path": str(path),
        "sample_rate": sr,
        "channels": 1,
        "frames": frames,
        "duration_s": frames / sr,
        "speaker": "",
        "corpus": f"test_{kind}",
        "split": split,
        "kind": kind,
        **extra,
    }


@pytest.fixture(scope="session")
def bank_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny noise bank (FLAC at 16 and 48 kHz) and RIR bank (numpy + pyroomacoustics) with manifests."""
    root = tmp_path_factory.mktemp("banks")
    (root / "noise").mkdir()
    (root / "rir").mkdir()
    noise_rows = []
    for i, (nid, rate, secs, split) in enumerate(
        [("hum", 16000, 2.5, "train"), ("fan", 48000, 3.0, "train"), ("babble", 48000, 2.0, "test")]
    ):
        x = noise_signal(secs, rate, seed=10 + i, color=0.6)
        path = root / "noise" / f"{nid}.flac"
        sf.write(path, x, rate, subtype="PCM_24")
        noise_rows.append(_row(path, nid, rate, len(x), "noise", split, noise_type="stationary"))
    rir_rows = []
    for i, (rid, rt) in enumerate([("room_a", 0.4), ("room_b", 0.8)]):
        h = synthetic_rir(rt, SR, seed=20 + i)
        path = root / "rir" / f"{rid}.wav"
        sf.write(path, h * 0.5, SR, subtype="FLOAT")
        rir_rows.append(_row(path, rid, SR, len(h), "rir", "train", rt60=rt, drr=3.0, c50=10.0))
    import pyroomacoustics as pra

    room = pra.ShoeBox([5.0, 4.0, 3.0], fs=16000, materials=pra.Material(0.3), max_order=8)
    room.add_source([1.0, 1.5, 1.6])
    room.add_microphone([3.5, 2.5, 1.5])
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float32)
    path = root / "rir" / "shoebox.wav"
    sf.write(path, h / np.max(np.abs(h)) * 0.9, 16000, subtype="FLOAT")
    rir_rows.append(_row(path, "shoebox", 16000, len(h), "rir", "train", rt60=0.35, drr=None, c50=None))
    noise_manifest = root / "noise" / "manifest.parquet"
    rir_manifest = root / "rir" / "manifest.parquet"
    write_manifest(noise_rows, noise_manifest, "noise")
    write_manifest(rir_rows, rir_manifest, "rir")
    return {"noise": noise_manifest, "rir": rir_manifest, "root": root}


@pytest.fixture(scope="session")
def file_banks(bank_files) -> Banks:
    return Banks.from_manifests(bank_files["noise"], bank_files["rir"], sr=SR)
