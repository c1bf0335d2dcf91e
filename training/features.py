"""Audio features in torch, batched, CPU or CUDA.

* :class:`ComplexSTFT` - the 16 kHz front-end of the recovery network: complex STFT (n_fft 510, hop 128, Hann)
  with magnitude compression ``beta * |X|**alpha * exp(j angle X)`` and its exact inverse. The network sees the
  real and imaginary parts as two channels, ``(batch, 2, 256, frames)``.
* :class:`LogMel` - the 48 kHz log-mel (n_fft 2048, win 2048, hop 480, 256 Slaney mels, 20-24000 Hz) used by the
  VAE, the vocoder losses and the metrics, with a least-squares way back to linear magnitudes.
* :func:`resample` - windowed-sinc polyphase resampling for rational ratios (48k <-> 16k is exactly 3).

Framing conventions (shared by every stage, see :func:`stft_frames` and :func:`mel_frames`):

* STFT: centred frames with reflect padding, ``frames = 1 + samples // hop``; 81 920 samples -> 641 frames.
  The inverse takes the original length and returns exactly that many samples.
* Mel: the waveform is zero-padded on the right to a multiple of the hop, framed centred with reflect padding,
  and the last frame is dropped, so ``frames = ceil(samples / hop)`` and ``frames * hop`` samples are what the
  vocoder regenerates; 245 760 samples (5.12 s at 48 kHz) -> 512 frames.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from datasets.config import StrictModel

LOG_FLOOR = 1e-5  # log-mel floor (HiFi-GAN convention): silence maps to log(1e-5) ~ -11.5


class StftConfig(StrictModel):
    """16 kHz complex STFT front-end of the recovery network."""

    sample_rate: int = Field(16000, gt=0)
    n_fft: int = Field(510, gt=0)
    hop_length: int = Field(128, gt=0)
    window: str = Field("hann", pattern="^hann$")
    compression_alpha: float = Field(0.5, gt=0, le=1)
    compression_beta: float = Field(0.15, gt=0)

    @model_validator(mode="after")
    def _check(self) -> StftConfig:
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length {self.hop_length} > n_fft {self.n_fft}: frames would not overlap")
        return self

    @property
    def freq_bins(self) -> int:
        return self.n_fft // 2 + 1


class MelConfig(StrictModel):
    """48 kHz log-mel spectrogram."""

    sample_rate: int = Field(48000, gt=0)
    n_fft: int = Field(2048, gt=0)
    win_length: int = Field(2048, gt=0)
    hop_length: int = Field(480, gt=0)
    n_mels: int = Field(256, gt=0)
    f_min: float = Field(20.0, ge=0)
    f_max: float = Field(24000.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> MelConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if not self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        return self


def stft_frames(samples: int, hop_length: int) -> int:
    """Frames of a centred STFT of ``samples`` samples."""
    return 1 + samples // hop_length


def mel_frames(samples: int, hop_length: int) -> int:
    """Frames of :class:`LogMel` for ``samples`` samples (``ceil(samples / hop)``)."""
    return -(-samples // hop_length)


def _as_batch(wave: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(..., samples) -> (batch, samples) plus the leading shape to restore."""
    if wave.dim() == 0:
        raise ValueError("expected a waveform tensor (..., samples), got a scalar")
    lead = tuple(wave.shape[:-1])
    return wave.reshape(-1, wave.shape[-1]), lead


class ComplexSTFT(nn.Module):
    """Compressed complex STFT as two real channels, and its exact inverse.

    ``forward(wave (..., samples)) -> (..., 2, freq, frames)``; ``inverse(spec, length) -> (..., length)``.
    Compression ``beta * |X|**alpha`` evens out the dynamic range the network has to model; the phase is kept.
    """

    def __init__(self, cfg: StftConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or StftConfig()
        # not persistent: a checkpoint of a network must not depend on the front-end's window
        self.register_buffer("window", torch.hann_window(self.cfg.n_fft), persistent=False)

    def frames(self, samples: int) -> int:
        return stft_frames(samples, self.cfg.hop_length)

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``(..., freq, frames)`` (no compression), always computed in float32."""
        x, lead = _as_batch(wave)
        if x.shape[-1] <= self.cfg.n_fft // 2:
            raise ValueError(f"waveform of {x.shape[-1]} samples is too short for n_fft {self.cfg.n_fft}")
        spec = torch.stft(
            x.float(),
            self.cfg.n_fft,
            self.cfg.hop_length,
            window=self.window.to(x.device, torch.float32),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.reshape(*lead, *spec.shape[-2:])

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        lead = tuple(spec.shape[:-2])
        flat = spec.reshape(-1, *spec.shape[-2:])
        wave = torch.istft(
            flat,
            self.cfg.n_fft,
            self.cfg.hop_length,
            window=self.window.to(flat.device, torch.float32),
            center=True,
            length=length,
        )
        return wave.reshape(*lead, length)

    def compress(self, spec: torch.Tensor) -> torch.Tensor:
        mag = spec.abs()
        # |X|**alpha * X/|X| written without the division so silent bins stay exactly 0
        return (
            self.cfg.compression_beta
            * mag.pow(self.cfg.compression_alpha - 1.0).nan_to_num(0.0, 0.0, 0.0)
            * spec
        )

    def decompress(self, spec: torch.Tensor) -> torch.Tensor:
        mag = spec.abs() / self.cfg.compression_beta
        inv = 1.0 / self.cfg.compression_alpha
        return mag.pow(inv - 1.0) * spec / self.cfg.compression_beta

    @staticmethod
    def to_channels(spec: torch.Tensor) -> torch.Tensor:
        """complex ``(..., F, T)`` -> real ``(..., 2, F, T)``."""
        return torch.stack([spec.real, spec.imag], dim=-3)

    @staticmethod
    def from_channels(channels: torch.Tensor) -> torch.Tensor:
        if channels.shape[-3] != 2:
            raise ValueError(f"expected 2 channels (real, imag) at dim -3, got shape {tuple(channels.shape)}")
        channels = channels.float()
        return torch.complex(channels.select(-3, 0), channels.select(-3, 1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.to_channels(self.compress(self.stft(wave)))

    def inverse(self, channels: torch.Tensor, length: int) -> torch.Tensor:
        return self.istft(self.decompress(self.from_channels(channels)), length)


def _hz_to_mel_slaney(hz: torch.Tensor) -> torch.Tensor:
    # Slaney's auditory toolbox scale: linear below 1 kHz, logarithmic above (librosa's default "slaney")
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(
        hz >= min_log_hz, min_log_mel + torch.log(hz.clamp_min(1e-10) / min_log_hz) / logstep, hz / f_sp
    )


def _mel_to_hz_slaney(mel: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Slaney-normalised triangular mel filters, ``(n_mels, n_fft // 2 + 1)`` float32 (cached; clone to modify)."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_pts = torch.linspace(
        _hz_to_mel_slaney(torch.tensor(f_min, dtype=torch.float64)).item(),
        _hz_to_mel_slaney(torch.tensor(f_max, dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz_pts = _mel_to_hz_slaney(mel_pts)
    widths = hz_pts[1:] - hz_pts[:-1]
    ramps = hz_pts[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]  # equal area per filter
    if bool((weights.max(dim=1).values == 0).any()):
        raise ValueError(f"mel filterbank has empty filters: n_mels {n_mels} too large for n_fft {n_fft}")
    return weights.float()


class LogMel(nn.Module):
    """Log-mel spectrogram ``(..., samples) -> (..., n_mels, ceil(samples / hop))``, natural log floored at 1e-5."""

    def __init__(self, cfg: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = c = cfg or MelConfig()
        self.register_buffer("window", torch.hann_window(c.win_length), persistent=False)
        self.register_buffer(
            "filters",
            mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max).clone(),
            persistent=False,
        )

    def frames(self, samples: int) -> int:
        return mel_frames(samples, self.cfg.hop_length)

    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude ``(..., n_fft/2+1, frames)`` with the framing described in the module docstring."""
        c = self.cfg
        x, lead = _as_batch(wave)
        x = x.float()
        frames = self.frames(x.shape[-1])
        x = F.pad(x, (0, frames * c.hop_length - x.shape[-1]))
        if x.shape[-1] <= c.n_fft // 2:
            # reflect padding needs more samples than half a window; zero padding is the honest continuation
            x = F.pad(x, (0, c.n_fft // 2 + 1 - x.shape[-1]))
        spec = torch.stft(
            x,
            c.n_fft,
            c.hop_length,
            win_length=c.win_length,
            window=self.window.to(x.device, torch.float32),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )[..., :frames]
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-9)  # eps keeps the gradient finite at 0
        return mag.reshape(*lead, *mag.shape[-2:])

    def mel_from_magnitude(self, mag: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.filters.to(mag.device), mag.float())
        return torch.log(mel.clamp_min(LOG_FLOOR))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.mel_from_magnitude(self.magnitude(wave))

    def to_magnitude(self, log_mel: torch.Tensor, iterations: int = 200) -> torch.Tensor:
        """Non-negative least-squares linear magnitude ``(..., n_fft/2+1, frames)`` whose mel matches ``log_mel``.

        Mel is lossy (and at 48 kHz / 256 mels the lowest filters are narrower than an FFT bin, so the filterbank
        is rank deficient): the result is one magnitude consistent with the mel, for previews and Griffin-Lim,
        not the original. Pseudo-inverse start, then multiplicative NNLS updates (Lee-Seung) which keep it >= 0.
        """
        filters = self.filters.to(log_mel.device)
        target = log_mel.float().exp()
        pinv = torch.linalg.pinv(filters.double()).to(filters)
        mag = torch.matmul(pinv, target).clamp_min(1e-8)
        numerator = torch.matmul(filters.T, target)
        for _ in range(iterations):
            mag = mag * numerator / (torch.matmul(filters.T, torch.matmul(filters, mag)) + 1e-12)
        return mag


@lru_cache(maxsize=16)
def _sinc_kernels(
    orig: int, new: int, zero_crossings: int, rolloff: float, beta: float
) -> tuple[torch.Tensor, int]:
    """Polyphase kernels ``(new, 1, taps)`` of a Kaiser-windowed sinc low-pass, and the one-sided width."""
    cutoff = min(orig, new) * rolloff  # in units of the lower rate's Nyquist band per phase
    width = math.ceil(zero_crossings * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new
    t = (phases + taps[None, :]) * cutoff
    t = t.clamp(-zero_crossings, zero_crossings)
    window = torch.special.i0(beta * torch.sqrt(1 - (t / zero_crossings) ** 2)) / torch.special.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    arg = math.pi * t
    sinc = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / torch.where(arg == 0, 1.0, arg))
    kernels = sinc * window * (cutoff / orig)
    return kernels[:, None, :].float(), width


def resample(
    wave: torch.Tensor,
    orig_sr: int,
    new_sr: int,
    zero_crossings: int = 64,
    rolloff: float = 0.945,
    beta: float = 14.769656459379492,
) -> torch.Tensor:
    """Band-limited resampling of ``(..., samples)`` to ``ceil(samples * new_sr / orig_sr)`` samples.

    Kaiser-windowed sinc (64 zero crossings, beta 14.77, cut-off at 94.5 % of the lower Nyquist frequency)
    applied as a strided polyphase convolution: a 48k -> 16k -> 48k round trip reproduces tones up to 7 kHz to
    better than -120 dB; computed in float32 and returned in the input's dtype.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    x, lead = _as_batch(wave)
    length = x.shape[-1]
    kernels, width = _sinc_kernels(orig, new, zero_crossings, rolloff, beta)
    kernels = kernels.to(device=x.device, dtype=torch.float32)
    padded = F.pad(x.float()[:, None, :], (width, width + orig))
    y = F.conv1d(padded, kernels, stride=orig)  # (batch, new phases, steps)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    out_len = -(-length * new // orig)
    return (
        y[:, :out_len].reshape(*lead, out_len).to(wave.dtype if wave.is_floating_point() else torch.float32)
    )
