"""The two-stage restorer: a bundle of the four trained stages turned into 48 kHz restored speech.

Chain, per window (the exact feeds the stages were trained with, see :mod:`training.stages.ldm`)::

    input (any rate, downmixed to mono) x gain          # loudness normalisation to the recovery's training level
      -> soxr to 16 kHz -> recovery (NCSN++M)            # training.stages.recovery.enhance
      -> torch resample to 48 kHz -> log-mel -> VAE encode (mode) x scale_factor   = condition z_0
      -> DDIM (steps, guidance, per-window seed) -> / scale_factor -> VAE decode -> HiFi-GAN -> 48 kHz
      -> overlap-add of the windows -> / gain           # the input's loudness restored

``iterations`` > 1 re-applies the generative stage: the waveform restored by pass k takes the recovery output's
place as the condition of pass k + 1 (log-mel -> VAE encode -> x scale_factor), with fresh noise.

Long inputs go through :mod:`training.windows` (5.12 s windows, 0.64 s raised-cosine cross-fades) and are streamed
from the reader to the writer: :meth:`Restorer.plan` makes one streaming pass (header, non-finite samples,
BS.1770 loudness), then each window reads only its own samples (plus a resampling context), so memory does not
grow with the input's length. The per-window calls (:meth:`Restorer.plan`, :meth:`Restorer.read_window`,
:meth:`Restorer.restore_windows`, :class:`training.windows.OverlapAdd`, :class:`OutputWriter`) are what a
distributed batch job runs; :meth:`Restorer.restore_file` and :meth:`Restorer.restore` are the local loops.

Window k of a seed draws its DDIM noise from a CPU generator seeded with :func:`window_seed` ``(seed, k, pass)``,
so the result does not depend on the order or the grouping in which windows run.

A bundle (:func:`write_bundle`, ``hires models bundle``) is a folder ``recovery/ autoencoder/ vocoder/ ldm/`` of
model directories plus ``bundle.json`` naming them and where they came from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.signal import sosfilt

from datasets.audio import (
    FFMPEG_EXTENSIONS,
    AudioError,
    downmix,
    ffmpeg_available,
    is_uri,
    resample,
    short_error,
)
from datasets.errors import DataError, IncompatibleError, UsageError
from degradations.input_loudness import DEFAULT_MAX_GAIN_DB
from degradations.levels import db_to_gain, gated_loudness, k_weighting_sos
from training.features import ComplexSTFT, LogMel
from training.features import resample as torch_resample
from training.model_dir import META, WEIGHTS, LoadedModel, _local_dir, load_model
from training.models.diffusion import GaussianDiffusion
from training.stages.ldm import check_compatible
from training.stages.recovery import enhance
from training.windows import OverlapAdd, WindowPlan, plan_windows

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
LOW_RATE = 16000
STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
BUNDLE_FORMAT = "hires-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_META = "bundle.json"
MIN_SECONDS = 0.05  # shorter inputs hold no speech to restore (one STFT frame of the recovery is 32 ms)
RESAMPLE_CONTEXT_S = 0.1  # input read on each side of a window so soxr's filter sees real neighbours
READ_BLOCK_S = 10.0  # block of the streaming loudness pass
FORMATS = {"flac": ("FLAC", ".flac"), "wav": ("WAV", ".wav")}
SUBTYPE = "PCM_24"


@dataclass(frozen=True)
class RestoreOptions:
    steps: int | None = None  # DDIM steps (None: the ldm config's sampler.steps)
    guidance: float | None = None  # classifier-free guidance scale (None: config)
    iterations: int = 1  # re-apply the generative stage N times (paper's iterative refinement)
    seed: int = 0
    recovery_only: bool = False  # stop after stage 1 (output = recovery at 48 kHz)
    keep_stages: bool = False  # also return the intermediate signals
    window_seconds: float = 5.12
    overlap_seconds: float = 0.64  # cross-fade length between windows

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"steps must be >= 1, got {self.steps}")
        if self.guidance is not None and not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise UsageError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if self.iterations < 1:
            raise UsageError(f"iterations must be >= 1, got {self.iterations}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")
        if not self.window_seconds > 0:
            raise UsageError(f"window_seconds must be > 0, got {self.window_seconds}")
        if not 0 <= 2 * self.overlap_seconds <= self.window_seconds:
            raise UsageError(
                f"overlap_seconds {self.overlap_seconds} must be in [0, window_seconds / 2 = "
                f"{self.window_seconds / 2}]"
            )

    @property
    def final_stage(self) -> str:
        return "recovery" if self.recovery_only else "restored"


def window_seed(seed: int, index: int, pass_: int = 0) -> int:
    """The DDIM noise seed of window ``index`` in generative pass ``pass_`` (a 63-bit integer)."""
    state = np.random.SeedSequence([int(seed), int(index), int(pass_)]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


# ------------------------------------------------------------------------------------------------------ bundle


def _stage_check(role: str, loaded: LoadedModel) -> None:
    if loaded.stage != role:
        raise IncompatibleError(f"{loaded.source} is a model of stage {loaded.stage}, not {role}")


@dataclass
class Bundle:
    """The four stages of a restorer, checked compatible when loaded (``ldm``, ``autoencoder`` and ``vocoder``
    may be ``None`` in a recovery-only bundle, see :meth:`load`)."""

    recovery: LoadedModel
    autoencoder: LoadedModel | None = None
    vocoder: LoadedModel | None = None
    ldm: LoadedModel | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check()

    @property
    def generative(self) -> bool:
        return None not in (self.autoencoder, self.vocoder, self.ldm)

    def check(self) -> None:
        """Raise :class:`IncompatibleError` (one line naming the models) unless the stages fit together."""
        _stage_check("recovery", self.recovery)
        stft = self.recovery.config.features.stft
        if stft is None or stft.sample_rate != LOW_RATE:
            raise IncompatibleError(
                f"recovery {self.recovery.source} works at {getattr(stft, 'sample_rate', None)} Hz, expected "
                f"{LOW_RATE} Hz"
            )
        if not self.generative:
            return
        assert self.ldm is not None and self.autoencoder is not None and self.vocoder is not None
        _stage_check("ldm", self.ldm)
        check_compatible(
            self.ldm.config, self.recovery, self.autoencoder, self.vocoder, f"ldm {self.ldm.source}"
        )
        if (
            self.ldm.scale_factor is None
            or not math.isfinite(self.ldm.scale_factor)
            or self.ldm.scale_factor <= 0
        ):
            raise IncompatibleError(
                f"ldm {self.ldm.source}/{META}: scale_factor is {self.ldm.meta.get('scale_factor')!r}, expected "
                "the positive latent scale recorded by training"
            )
        mel = self.ldm.config.features.mel
        if mel is None or mel.sample_rate != SAMPLE_RATE:
            raise IncompatibleError(
                f"ldm {self.ldm.source} works at {getattr(mel, 'sample_rate', None)} Hz, expected {SAMPLE_RATE} Hz"
            )

    @classmethod
    def load(
        cls,
        bundle: str | None = None,
        *,
        recovery: str | None = None,
        autoencoder: str | None = None,
        vocoder: str | None = None,
        ldm: str | None = None,
        tracking_uri: str | None = None,
        need_generative: bool = True,
    ) -> Bundle:
        """Load a bundle folder and/or one model per stage (a per-stage argument replaces the bundle's entry).

        Each model is a model directory, an ``s3://`` directory or a ``models:/`` URI. With
        ``need_generative=False`` only the recovery is required (the others load when given).
        """
        given = {"recovery": recovery, "autoencoder": autoencoder, "vocoder": vocoder, "ldm": ldm}
        sources: dict[str, str] = {}
        if bundle is not None:
            sources.update(bundle_sources(bundle))
        sources.update({k: str(v) for k, v in given.items() if v is not None})
        needed = STAGES if need_generative else ("recovery",)
        missing = [s for s in needed if s not in sources]
        if missing:
            where = f"bundle {bundle}" if bundle is not None else "the command line"
            flags = " ".join(f"--{s} M" for s in missing)
            raise UsageError(
                f"{where} names no {', '.join(missing)} model (give {flags} or a complete --bundle)"
            )
        loaded: dict[str, LoadedModel] = {}
        for stage in STAGES:
            if stage in sources and (need_generative or stage == "recovery" or given[stage] is not None):
                loaded[stage] = load_model(sources[stage], tracking_uri)
        return cls(  # checked in __post_init__
            recovery=loaded["recovery"],
            autoencoder=loaded.get("autoencoder"),
            vocoder=loaded.get("vocoder"),
            ldm=loaded.get("ldm"),
            sources={k: v for k, v in sources.items() if k in loaded},
        )


def bundle_sources(bundle: str | Path) -> dict[str, str]:
    """Stage -> model directory of a bundle folder (from ``bundle.json``; without it, the stage sub-folders)."""
    root = Path(os.path.expanduser(str(bundle)))
    if not root.is_dir():
        raise DataError(f"{bundle}: bundle folder not found")
    meta_path = root / BUNDLE_META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{meta_path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise DataError(f"{meta_path}: not a hires bundle (format must be {BUNDLE_FORMAT!r})")
        stages = meta.get("stages")
        if not isinstance(stages, dict):
            raise DataError(f"{meta_path}: 'stages' must map stage names to entries")
        out = {}
        for stage, entry in stages.items():
            rel = entry.get("path") if isinstance(entry, dict) else entry
            if stage not in STAGES or not isinstance(rel, str):
                raise DataError(f"{meta_path}: stages.{stage}: expected one of {STAGES} with a 'path'")
            path = root / rel
            if not (path / META).is_file():
                raise DataError(f"bundle {bundle}: stage {stage} is missing ({path}/{META} not found)")
            out[stage] = str(path)
        return out
    found = {s: str(root / s) for s in STAGES if (root / s / META).is_file()}
    if not found:
        raise DataError(f"{bundle}: not a bundle (no {BUNDLE_META} and no stage folders {', '.join(STAGES)})")
    return found


def write_bundle(
    out: str | Path,
    *,
    recovery: str,
    autoencoder: str,
    vocoder: str,
    ldm: str,
    tracking_uri: str | None = None,
) -> Path:
    """Copy four model directories (paths, ``s3://`` or ``models:/`` URIs) into a bundle folder ``out``.

    The models are loaded and checked compatible first; the folder is assembled under a temporary name beside
    ``out`` and renamed, so ``out`` is either complete or absent. An existing bundle is never overwritten.
    """
    out = Path(os.path.expanduser(str(out)))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty folder; choose another --out")
    sources = {"recovery": recovery, "autoencoder": autoencoder, "vocoder": vocoder, "ldm": ldm}
    Bundle.load(tracking_uri=tracking_uri, **sources)  # fails before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stages = {}
        for stage, src in sources.items():
            local, holder = _local_dir(str(src), tracking_uri)
            try:
                (tmp / stage).mkdir()
                for name in (META, WEIGHTS):
                    shutil.copyfile(local / name, tmp / stage / name)
            finally:
                if holder is not None:
                    holder.cleanup()
            meta = json.loads((tmp / stage / META).read_text())
            stages[stage] = {
                "path": stage,
                "source": str(src),
                "network": meta.get("network"),
                "step": meta.get("step"),
                "code_version": meta.get("code_version"),
            }
        doc = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "stages": stages}
        (tmp / BUNDLE_META).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------------------ sources


class ArraySource:
    """An in-memory mono signal read like a file."""

    def __init__(self, x: np.ndarray, sample_rate: int, name: str = "<array>") -> None:
        self.x, self.sample_rate, self.frames, self.name = x, int(sample_rate), len(x), name

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.x[max(start, 0) : max(stop, 0)]


class FileSource:
    """A local audio file read in slices with soundfile (seeking, so memory stays bounded); downmixed to mono."""

    def __init__(self, path: str, name: str | None = None) -> None:
        self.path, self.name = path, name or path
        try:
            info = sf.info(path)
        except FileNotFoundError:
            raise
        except Exception as e:
            if not Path(path).exists():
                raise DataError(f"{self.name}: file not found") from None
            raise AudioError(f"{self.name}: not readable audio ({short_error(e)})") from None
        self.sample_rate, self.frames, self.channels = (
            int(info.samplerate),
            int(info.frames),
            int(info.channels),
        )

    def blocks(self, block: int):
        try:
            with sf.SoundFile(self.path) as f:
                for x in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                    yield downmix(x)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioError(f"{self.name}: cannot decode audio ({short_error(e)})") from None

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(start, 0), min(max(stop, 0), self.frames)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        try:
            with sf.SoundFile(self.path) as f:
                f.seek(start)
                x = f.read(stop - start, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            if not Path(self.path).exists():
                raise DataError(f"{self.name}: disappeared while it was being restored") from None
            raise AudioError(f"{self.name}: cannot decode audio ({short_error(e)})") from None
        return downmix(x)


def decode_with_ffmpeg(src: str, dst_dir: str) -> str:
    """Decode an ffmpeg-only container to a float WAV file (streamed by ffmpeg: memory stays flat)."""
    if not ffmpeg_available():
        raise AudioError(
            f"{src}: decoding {Path(src).suffix} needs the ffmpeg binary, which is not installed"
        )
    dst = str(Path(dst_dir) / "decoded.wav")
    run = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-i",
            src,
            "-vn",
            "-f",
            "wav",
            "-acodec",
            "pcm_f32le",
            dst,
        ],
        capture_output=True,
        check=False,
    )
    if run.returncode != 0 or not Path(dst).is_file():
        raise AudioError(f"{src}: ffmpeg cannot decode it: {' '.join(run.stderr.decode().split())[-200:]}")
    return dst


# --------------------------------------------------------------------------------------------- loudness, plan


class StreamingLoudness:
    """BS.1770-4 integrated loudness fed block by block (the same numbers as
    :func:`degradations.levels.integrated_loudness` on the whole signal, in memory that holds one value per
    100 ms)."""

    def __init__(self, sample_rate: int) -> None:
        self.sr = int(sample_rate)
        self.sos = k_weighting_sos(self.sr)
        self.zi = np.zeros((len(self.sos), 2))
        self.step = int(round(0.1 * self.sr))
        self.partial = 0.0  # squares of the unfinished 100 ms step
        self.partial_n = 0
        self.steps: list[float] = []
        self.total, self.count = 0.0, 0

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        y, self.zi = sosfilt(self.sos, np.asarray(x, dtype=np.float64), zi=self.zi)
        sq = y * y
        self.total += float(sq.sum())
        self.count += len(sq)
        pos = 0
        if self.partial_n:
            take = min(self.step - self.partial_n, len(sq))
            self.partial += float(sq[:take].sum())
            self.partial_n += take
            pos = take
            if self.partial_n == self.step:
                self.steps.append(self.partial)
                self.partial, self.partial_n = 0.0, 0
        whole = (len(sq) - pos) // self.step
        if whole:
            self.steps.extend(
                sq[pos : pos + whole * self.step].reshape(whole, self.step).sum(axis=1).tolist()
            )
            pos += whole * self.step
        if pos < len(sq):
            self.partial += float(sq[pos:].sum())
            self.partial_n += len(sq) - pos

    def loudness(self) -> float:
        if self.count == 0:
            return -math.inf
        return gated_loudness(np.asarray(self.steps), self.step, self.total / self.count)


def loudness_gain(
    loudness: float, target_lufs: float | None, max_gain_db: float = DEFAULT_MAX_GAIN_DB
) -> float:
    """The bounded gain of :func:`degradations.input_loudness.input_gain` for a measured ``loudness``."""
    if target_lufs is None or not math.isfinite(loudness):
        return 1.0
    return db_to_gain(min(max(float(target_lufs) - loudness, -max_gain_db), max_gain_db))


@dataclass(frozen=True)
class FilePlan:
    """What the restorer knows about one input before restoring it (picklable; see :meth:`Restorer.plan`)."""

    source: str  # the input as named by the caller
    sample_rate: int
    channels: int
    frames: int
    length: int  # output samples at 48 kHz
    loudness_lufs: float
    gain: float
    windows: WindowPlan
    final_stage: str = "restored"
    reader_path: str | None = None  # the file actually read (a decoded temp WAV for ffmpeg-only containers)

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def finish(self, chunk: np.ndarray) -> np.ndarray:
        """A chunk of assembled output at the input's loudness: inverse gain, clipped to [-1, 1]."""
        y = np.asarray(chunk, dtype=np.float32) * np.float32(1.0 / self.gain)
        return np.clip(np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


class OutputWriter:
    """A 48 kHz 24-bit FLAC/WAV written in chunks under a temporary name beside ``dst``; :meth:`commit` renames
    it into place (so ``dst`` is complete or absent), :meth:`abort` removes it."""

    def __init__(self, dst: str | Path, fmt: str = "flac", sample_rate: int = SAMPLE_RATE) -> None:
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
        self.dst = Path(dst)
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dst.with_name(f".{self.dst.name}.{os.getpid()}.partial")
        self.frames = 0
        self._file = sf.SoundFile(
            str(self.tmp), "w", samplerate=sample_rate, channels=1, format=FORMATS[fmt][0], subtype=SUBTYPE
        )

    def write(self, chunk: np.ndarray) -> None:
        if len(chunk):
            self._file.write(np.asarray(chunk, dtype=np.float32))
            self.frames += len(chunk)

    def commit(self) -> Path:
        self._file.close()
        os.replace(self.tmp, self.dst)
        return self.dst

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class RestoredAudio:
    audio: np.ndarray  # float32 mono 48 kHz, length = round(len_in * 48000 / sr_in)
    sample_rate: int  # 48000
    # keep_stages: "recovery", "restored", and with iterations N > 1 "restored@1" .. "restored@N" (each pass)
    stages: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RestoredFileInfo:
    source: str
    output: str
    stages: dict[str, str]  # stage -> file written beside the output (keep_stages)
    sample_rate_in: int
    channels_in: int
    seconds: float  # input duration
    length: int  # output samples (48 kHz)
    loudness_lufs: float
    gain: float
    windows: int
    wall_seconds: float


def stage_path(dst: str | Path, stage: str) -> Path:
    """Where ``keep_stages`` puts an intermediate signal: ``name.<stage>.<ext>`` beside ``dst``."""
    dst = Path(dst)
    return dst.with_name(f"{dst.stem}.{stage}{dst.suffix}")


# ------------------------------------------------------------------------------------------------------ restorer


class Restorer:
    """Runs a :class:`Bundle` on a device; see the module docstring for the chain."""

    def __init__(self, bundle: Bundle, device: str = "cpu") -> None:
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        self.bundle = bundle
        self.device = torch.device(device)
        rec = bundle.recovery
        self.recovery = rec.network.to(self.device).eval()
        self.rec_stft = ComplexSTFT(rec.config.features.stft).to(self.device)
        self.target_lufs = rec.config.train.input_loudness_lufs
        mel_cfg = bundle.ldm.config.features.mel if bundle.ldm is not None else None
        hop = mel_cfg.hop_length if mel_cfg is not None else 480
        self.align = hop * 3 // math.gcd(hop, 3)  # window starts on mel frames and on 16 kHz samples
        self.mel = LogMel(mel_cfg).to(self.device) if mel_cfg is not None else None
        if bundle.generative:
            assert bundle.ldm is not None and bundle.autoencoder is not None and bundle.vocoder is not None
            self.vae = bundle.autoencoder.network.to(self.device).eval()
            voc = bundle.vocoder.network
            if hasattr(voc, "remove_weight_norm"):
                voc.remove_weight_norm()  # same outputs, fewer operations per call
            self.vocoder = voc.to(self.device).eval()
            self.ldm = bundle.ldm.network.to(self.device).eval()
            self.diffusion = GaussianDiffusion(bundle.ldm.config.model.diffusion)  # type: ignore[attr-defined]
            self.scale_factor = float(bundle.ldm.scale_factor)  # type: ignore[arg-type]

    @classmethod
    def from_bundle(cls, bundle: str, device: str = "cpu", tracking_uri: str | None = None) -> Restorer:
        return cls(Bundle.load(bundle, tracking_uri=tracking_uri), device)

    # ----- planning and reading ---------------------------------------------------------------------------
    def _check_options(self, options: RestoreOptions) -> None:
        if not options.recovery_only and not self.bundle.generative:
            raise UsageError(
                "the generative stage needs autoencoder, vocoder and ldm models (or --recovery-only)"
            )

    def window_plan(self, length: int, options: RestoreOptions) -> WindowPlan:
        return plan_windows(
            length,
            int(round(options.window_seconds * SAMPLE_RATE)),
            int(round(options.overlap_seconds * SAMPLE_RATE)),
            align=self.align,
        )

    def plan_source(
        self, source: Any, channels: int, options: RestoreOptions, reader_path: str | None
    ) -> FilePlan:
        """The :class:`FilePlan` of an open source (:class:`FileSource`, :class:`ArraySource`): checks, the
        streaming loudness pass and the windows. ``reader_path`` is the decoded copy of an ffmpeg-only input."""
        name, sr, frames = source.name, source.sample_rate, source.frames
        if frames == 0:
            raise DataError(f"{name}: empty audio (0 samples)")
        if sr <= 0:
            raise DataError(f"{name}: invalid sample rate {sr}")
        if frames / sr < MIN_SECONDS:
            raise DataError(
                f"{name}: too short to restore ({frames} sample(s), {frames / sr:.4f} s; at least {MIN_SECONDS} s)"
            )
        meter = StreamingLoudness(sr)
        block = max(int(READ_BLOCK_S * sr), 1)
        pos = 0
        blocks = source.blocks(block) if hasattr(source, "blocks") else _slices(source, block)
        for x in blocks:
            bad = ~np.isfinite(x)
            if bad.any():
                first = pos + int(np.argmax(bad))
                raise DataError(
                    f"{name}: NaN or infinite samples (the first at {first / sr:.3f} s); not restored"
                )
            meter.add(x)
            pos += len(x)
        if pos != frames:
            # a truncated file or an estimated header (some mp3s): what decodes is what gets restored
            log.warning("%s: header says %d frames, %d decode; restoring %d", name, frames, pos, pos)
            frames = pos
            if frames / sr < MIN_SECONDS:
                raise DataError(f"{name}: only {frames} sample(s) decode (header says {source.frames})")
        loudness = meter.loudness()
        length = int(round(frames * SAMPLE_RATE / sr))
        return FilePlan(
            source=name,
            sample_rate=sr,
            channels=channels,
            frames=frames,
            length=length,
            loudness_lufs=loudness,
            gain=loudness_gain(loudness, self.target_lufs),
            windows=self.window_plan(length, options),
            final_stage=options.final_stage,
            reader_path=reader_path,
        )

    def plan(self, src: str, options: RestoreOptions = RestoreOptions()) -> FilePlan:
        """Streaming first pass over a local file: header, empty/short/non-finite checks, loudness -> gain.

        Bad input raises :class:`DataError` naming the file. ffmpeg-only containers (m4a, webm, ...) are first
        decoded to a temporary WAV (``FilePlan.reader_path``; :meth:`release` removes it).
        """
        self._check_options(options)
        if is_uri(src):
            raise UsageError(f"{src}: restore reads local files (copy remote inputs first)")
        path = Path(src)
        if not path.exists():
            raise DataError(f"{src}: file not found")
        if not path.is_file():
            raise DataError(f"{src}: not a file")
        if path.stat().st_size == 0:
            raise DataError(f"{src}: empty file (0 bytes)")
        reader_path = None
        if path.suffix.lower() in FFMPEG_EXTENSIONS:
            reader_path = decode_with_ffmpeg(str(path), tempfile.mkdtemp(prefix="hires-restore-"))
        source = FileSource(reader_path or str(path), name=str(src))
        try:
            return self.plan_source(source, source.channels, options, reader_path)
        except BaseException:
            if reader_path is not None:
                shutil.rmtree(Path(reader_path).parent, ignore_errors=True)
            raise

    @staticmethod
    def release(plan: FilePlan) -> None:
        """Remove a plan's temporary decoded file, if it has one."""
        if plan.reader_path is not None:
            shutil.rmtree(Path(plan.reader_path).parent, ignore_errors=True)

    def read_window(self, plan: FilePlan, window: Any) -> np.ndarray:
        """The 16 kHz, loudness-normalised input of one window, ``window.length // 3`` samples (zeros past the end)."""
        return self.read_source_window(
            FileSource(plan.reader_path or plan.source, name=plan.source), plan, window
        )

    @staticmethod
    def read_source_window(source: Any, plan: FilePlan, window: Any) -> np.ndarray:
        """Window ``window`` of an open source at 16 kHz with the plan's gain applied (what
        :meth:`restore_windows` takes); reads only the window and a little resampling context."""
        sr = plan.sample_rate
        g = math.gcd(sr, LOW_RATE)
        p, q = LOW_RATE // g, sr // g  # 16 kHz sample j sits at input sample j * q / p
        start16, n16 = window.start // 3, window.length // 3
        total16 = int(round(plan.frames * LOW_RATE / sr))
        context = int(math.ceil(RESAMPLE_CONTEXT_S * LOW_RATE))
        # read from an input sample that falls exactly on a 16 kHz sample, so every window is on one grid
        first16 = (max(start16 - context, 0) // p) * p
        r0 = first16 // p * q
        r1 = min(plan.frames, -(-(start16 + n16 + context) * q // p))
        out = np.zeros(n16, dtype=np.float32)
        if r1 <= r0:
            return out
        x = source.read(r0, r1)
        if len(x) != r1 - r0:
            raise DataError(
                f"{plan.source}: read {len(x)} samples at {r0}, expected {r1 - r0} (file changed?)"
            )
        y = resample(x, sr, LOW_RATE) if sr != LOW_RATE else x
        a = start16 - first16  # window start inside y
        stop = min(n16, len(y) - a, total16 - start16)
        if stop > 0:
            out[:stop] = y[a : a + stop]
        return out * np.float32(plan.gain)

    # ----- the networks -------------------------------------------------------------------------------------
    def _vae_condition(self, wave48: torch.Tensor) -> torch.Tensor:
        assert self.mel is not None
        return self.vae.encode(self.mel(wave48.float())).mode().float() * self.scale_factor

    def _noise(self, shape: tuple[int, ...], indices: Sequence[int], seed: int, pass_: int) -> torch.Tensor:
        draws = [
            torch.randn(shape, generator=torch.Generator().manual_seed(window_seed(seed, k, pass_)))
            for k in indices
        ]
        return torch.stack(draws).to(self.device)

    @torch.no_grad()
    def restore_windows(
        self, inputs: Sequence[np.ndarray], indices: Sequence[int], options: RestoreOptions = RestoreOptions()
    ) -> list[dict[str, np.ndarray]]:
        """Restore equal-length 16 kHz windows (from :meth:`read_window`) in one batch.

        Returns per window ``{"recovery": ..., "restored": ...}`` (``restored`` absent with ``recovery_only``;
        with ``keep_stages`` and ``iterations`` N > 1 also ``restored@1`` .. ``restored@N``, one per pass),
        float32 at 48 kHz, three times the input length, at the normalised level (:meth:`FilePlan.finish` undoes
        the gain after assembly).
        """
        self._check_options(options)
        if len(inputs) != len(indices) or not inputs:
            raise ValueError("restore_windows needs as many indices as inputs, at least one")
        x16 = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in inputs])).to(self.device)
        n48 = x16.shape[-1] * 3
        rec16 = enhance(self.recovery, self.rec_stft, x16)
        rec48 = torch_resample(rec16.float(), LOW_RATE, SAMPLE_RATE)
        rec48 = F.pad(rec48, (0, max(n48 - rec48.shape[-1], 0)))[..., :n48]
        outs = {"recovery": rec48}
        if not options.recovery_only:
            sampler = self.diffusion.cfg.sampler
            steps = options.steps if options.steps is not None else sampler.steps
            guidance = options.guidance if options.guidance is not None else sampler.guidance_scale
            frames = self.mel.frames(n48)  # type: ignore[union-attr]
            wave = rec48
            for pass_ in range(options.iterations):
                cond = self._vae_condition(wave)
                if sampler.eta > 0:
                    # stochastic DDIM draws noise at every step from one generator: run windows one by one
                    z = torch.cat(
                        [
                            self.diffusion.ddim_sample(
                                self.ldm,
                                cond[i : i + 1],
                                steps=steps,
                                guidance_scale=guidance,
                                generator=torch.Generator().manual_seed(window_seed(options.seed, k, pass_)),
                            )
                            for i, k in enumerate(indices)
                        ]
                    )
                else:
                    x_T = self._noise(tuple(cond.shape[1:]), indices, options.seed, pass_)
                    z = self.diffusion.ddim_sample(
                        self.ldm, cond, steps=steps, guidance_scale=guidance, x_T=x_T
                    )
                mel = self.vae.decode(z / self.scale_factor)
                mel = mel[..., : self.mel.cfg.n_mels, :frames]  # type: ignore[union-attr]
                wave = self.vocoder(mel.float()).float()
                wave = F.pad(wave, (0, max(n48 - wave.shape[-1], 0)))[..., :n48]
                if options.keep_stages and options.iterations > 1:
                    outs[f"restored@{pass_ + 1}"] = wave
            outs["restored"] = wave
        arrays = {k: v.float().cpu().numpy() for k, v in outs.items()}
        return [{k: v[i] for k, v in arrays.items()} for i in range(len(indices))]

    def restore_window(
        self, x16: np.ndarray, index: int, options: RestoreOptions = RestoreOptions()
    ) -> dict[str, np.ndarray]:
        """:meth:`restore_windows` for one window."""
        return self.restore_windows([x16], [index], options)[0]

    # ----- local loops --------------------------------------------------------------------------------------
    def _run(
        self,
        source: Any,
        plan: FilePlan,
        options: RestoreOptions,
        sinks: dict[str, Callable[[np.ndarray], None]],
        batch_size: int = 1,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        assemblers = {stage: OverlapAdd(plan.windows) for stage in sinks}
        windows = plan.windows.windows
        for b in range(0, len(windows), batch_size):
            group = windows[b : b + batch_size]
            inputs = [self.read_source_window(source, plan, w) for w in group]
            results = self.restore_windows(inputs, [w.index for w in group], options)
            for w, result in zip(group, results, strict=True):
                for stage, sink in sinks.items():
                    for chunk in assemblers[stage].add(w.index, result[stage]):
                        sink(plan.finish(chunk))
                if progress is not None:
                    last = w.index == len(windows) - 1
                    covered = plan.length - w.start if last else min(plan.windows.hop, plan.length - w.start)
                    progress(covered / SAMPLE_RATE)

    def restore(
        self, audio: np.ndarray, sample_rate: int, options: RestoreOptions = RestoreOptions()
    ) -> RestoredAudio:
        """Restore an in-memory signal ``(frames,)`` or ``(frames, channels)`` (channels are averaged)."""
        self._check_options(options)
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim == 2:
            channels = x.shape[1]
            x = downmix(x)
        elif x.ndim == 1:
            channels = 1
        else:
            raise DataError(f"audio must be (frames,) or (frames, channels), got shape {x.shape}")
        source = ArraySource(x, sample_rate)
        plan = self.plan_source(source, channels, options, None)
        stages = [options.final_stage]
        if options.keep_stages and not options.recovery_only:
            stages = ["recovery", "restored"]
            if options.iterations > 1:
                stages += [f"restored@{k}" for k in range(1, options.iterations + 1)]
        parts: dict[str, list[np.ndarray]] = {s: [] for s in stages}
        self._run(source, plan, options, {s: parts[s].append for s in stages})
        arrays = {s: np.concatenate([np.zeros(0, np.float32), *parts[s]]) for s in stages}
        return RestoredAudio(
            audio=arrays[options.final_stage],
            sample_rate=SAMPLE_RATE,
            stages=arrays if options.keep_stages else {},
        )

    def restore_file(
        self,
        src: str,
        dst: str,
        options: RestoreOptions = RestoreOptions(),
        fmt: str = "flac",
        batch_size: int = 1,
        progress: Callable[[float], None] | None = None,
    ) -> RestoredFileInfo:
        """Restore ``src`` into ``dst`` (48 kHz, 24-bit ``fmt``), streaming window by window.

        ``dst`` (and with ``keep_stages`` ``name.recovery.ext`` beside it) appear only when complete; an input is
        never overwritten. ``progress`` receives the input seconds of each finished window.
        """
        began = time.perf_counter()
        dst_path = Path(dst)
        plan = self.plan(src, options)
        try:
            stages = {options.final_stage: dst_path}
            if options.keep_stages and not options.recovery_only:
                stages["recovery"] = stage_path(dst_path, "recovery")
            for out in stages.values():
                if out.exists() and out.resolve() == Path(src).resolve():
                    raise DataError(f"{src}: output {out} would overwrite the input")
            writers: dict[str, OutputWriter] = {}
            try:
                for stage, out in stages.items():
                    writers[stage] = OutputWriter(out, fmt)
                source = FileSource(plan.reader_path or str(src), name=str(src))
                self._run(
                    source, plan, options, {s: w.write for s, w in writers.items()}, batch_size, progress
                )
                for stage, w in writers.items():
                    if w.frames != plan.length:
                        raise RuntimeError(
                            f"{src}: wrote {w.frames} samples of {stage}, expected {plan.length}"
                        )
                # the final output last: its presence marks the whole file as done
                for stage in sorted(writers, key=lambda s: s == options.final_stage):
                    writers[stage].commit()
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
        finally:
            self.release(plan)
        return RestoredFileInfo(
            source=str(src),
            output=str(dst_path),
            stages={s: str(p) for s, p in stages.items() if s != options.final_stage},
            sample_rate_in=plan.sample_rate,
            channels_in=plan.channels,
            seconds=plan.seconds,
            length=plan.length,
            loudness_lufs=plan.loudness_lufs,
            gain=plan.gain,
            windows=len(plan.windows),
            wall_seconds=time.perf_counter() - began,
        )


def _slices(source: ArraySource, block: int):
    for start in range(0, source.frames, block):
        yield source.read(start, start + block)
