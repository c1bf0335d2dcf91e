"""Audio I/O for local paths and URIs: headers, decoding, mono downmix, resampling, FLAC encoding.

* wav / flac / ogg / mp3 (and anything else libsndfile reads) are decoded by ``soundfile``;
* other containers (m4a, webm, aac, opus in mp4, ...) are decoded by the ``ffmpeg`` binary when it exists
  (:func:`ffmpeg_available`); without it they raise :class:`AudioError` saying so;
* paths may be local or URIs (``s3://``, ``gs://``, ``file://``, ...) opened through fsspec;
* resampling uses soxr at ``VHQ`` quality (see :func:`resample`); equal rates are a no-op.

Samples are float32 in [-1, 1]; mono signals are 1-D, multichannel ones ``(frames, channels)``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from datasets.errors import DataError

SOUNDFILE_EXTENSIONS = {
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".mp3",
    ".aiff",
    ".aif",
    ".au",
    ".w64",
    ".caf",
    ".opus",
}
FFMPEG_EXTENSIONS = {".m4a", ".mp4", ".aac", ".webm", ".mka", ".wma", ".amr", ".ac3"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS


class AudioError(DataError):
    """A file cannot be read as audio; the message starts with the path."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def is_uri(path: str | Path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str | Path) -> str:
    p = str(path)
    return p[len("file://") :] if p.startswith("file://") else p


def open_binary(path: str | Path, mode: str = "rb"):
    """Open a local path or URI as a binary file object (fsspec for URIs)."""
    if is_uri(path):
        import fsspec

        return fsspec.open(str(path), mode).open()
    return open(_local(path), mode)


def read_bytes(path: str | Path) -> bytes:
    with open_binary(path) as f:
        return f.read()


@lru_cache(maxsize=1)
def ffmpeg_available() -> bool:
    """True when the ``ffmpeg`` binary is on PATH (needed for m4a/webm/... and some codecs)."""
    return shutil.which("ffmpeg") is not None


def _suffix(path: str | Path) -> str:
    return Path(str(path).split("?")[0]).suffix.lower()


def _needs_ffmpeg(path: str | Path) -> bool:
    return _suffix(path) in FFMPEG_EXTENSIONS


def audio_info(path: str | Path) -> AudioInfo:
    """Header information without decoding the samples (ffprobe-like decode for ffmpeg-only containers)."""
    try:
        if _needs_ffmpeg(path):
            x, sr = _ffmpeg_decode(path, mono=False)
            return AudioInfo(
                sr, x.shape[1] if x.ndim == 2 else 1, x.shape[0], _suffix(path)[1:].upper(), "ffmpeg"
            )
        if is_uri(path):
            with open_binary(path) as f:
                info = sf.info(io.BytesIO(f.read()))
        else:
            info = sf.info(_local(path))
    except AudioError:
        raise
    except Exception as e:  # libsndfile reports bad headers as generic errors
        raise AudioError(f"{path}: cannot read audio header: {short_error(e)}") from e
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


def short_error(e: BaseException) -> str:
    """The last line of an exception's message (libsndfile/ffmpeg errors end with the useful one)."""
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _ffmpeg_decode(path: str | Path, mono: bool, data: bytes | None = None) -> tuple[np.ndarray, int]:
    if not ffmpeg_available():
        raise AudioError(f"{path}: decoding {_suffix(path)} needs the ffmpeg binary, which is not installed")
    if data is None:
        data = read_bytes(path)
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels",
            "-of",
            "csv=p=0",
            "-i",
            "pipe:0",
        ],
        input=data,
        capture_output=True,
        check=False,
    )
    fields = probe.stdout.decode().strip().split(",")
    if probe.returncode != 0 or len(fields) < 2:
        raise AudioError(
            f"{path}: ffmpeg cannot read an audio stream: {probe.stderr.decode().strip()[-200:]}"
        )
    sr, channels = int(fields[0]), int(fields[1])
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"],
        input=data,
        capture_output=True,
        check=False,
    )
    if out.returncode != 0:
        raise AudioError(f"{path}: ffmpeg decode failed: {out.stderr.decode().strip()[-200:]}")
    x = np.frombuffer(out.stdout, dtype=np.float32).reshape(-1, channels)
    return (downmix(x) if mono else x), sr


def downmix(x: np.ndarray) -> np.ndarray:
    """Average channels to mono (1-D float32). 1-D input is returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x if x.ndim == 1 else x.mean(axis=1, dtype=np.float32)


def read_audio(
    path: str | Path,
    sr: int | None = None,
    mono: bool = True,
    start: int = 0,
    frames: int = -1,
    data: bytes | None = None,
) -> tuple[np.ndarray, int]:
    """Decode ``frames`` samples from ``start`` (in the file's own rate), downmix, then resample to ``sr``.

    ``data``, when given, is the file's content already in memory (``path`` then only names the file and its
    format): callers that read several slices of one remote file fetch it once. Returns ``(samples,
    sample_rate)``; float32, 1-D when ``mono``.
    """
    try:
        if _needs_ffmpeg(path):
            x, file_sr = _ffmpeg_decode(path, mono=False, data=data)
            x = x[start : (start + frames if frames >= 0 else None)]
        else:
            if data is not None:
                src = io.BytesIO(data)
            else:
                src = io.BytesIO(read_bytes(path)) if is_uri(path) else _local(path)
            x, file_sr = sf.read(src, start=start, frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio: {short_error(e)}") from e
    x = downmix(x) if mono else np.ascontiguousarray(x, dtype=np.float32)
    if sr is not None and sr != file_sr:
        x = resample(x, file_sr, sr)
        file_sr = sr
    return x, int(file_sr)


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "VHQ") -> np.ndarray:
    """Band-limited resampling with soxr ``VHQ``: linear phase, >= 170 dB stop-band rejection, flat pass band
    to about 0.91 of the lower Nyquist frequency.

    Output length is ``round(len(x) * sr_out / sr_in)``. Equal rates return the input unchanged.
    """
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    import soxr

    y = soxr.resample(np.asarray(x, dtype=np.float32), sr_in, sr_out, quality=quality)
    return np.asarray(y, dtype=np.float32)


def encode_audio(x: np.ndarray, sr: int, format: str = "FLAC", subtype: str = "PCM_24") -> bytes:
    """Encode samples to bytes (default 24-bit FLAC). Deterministic: the same samples give the same bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(x, dtype=np.float32), sr, format=format, subtype=subtype)
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode in-memory audio bytes (any libsndfile format) to float32; mono stays 1-D."""
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return x, int(sr)


def write_audio(
    path: str | Path, x: np.ndarray, sr: int, format: str = "FLAC", subtype: str = "PCM_24"
) -> None:
    """Write samples to a local path or URI (atomically for local paths: temp name, then rename)."""
    data = encode_audio(x, sr, format=format, subtype=subtype)
    if is_uri(path):
        with open_binary(path, "wb") as f:
            f.write(data)
        return
    p = Path(_local(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(p)
