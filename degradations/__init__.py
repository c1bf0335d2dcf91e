"""Degradation library: operators that turn clean speech into realistic degraded speech, and the chain.

Pure numpy/scipy (plus audio codec libraries), no Ray, no torch: synthesis workers, tests and the online training
data path share it. Typical use::

    from degradations import Banks, ChainConfig, plan, render
    banks = Banks.from_manifests("noise/manifest.parquet", "rir/manifest.parquet", sr=48000)
    steps = plan("utt1_0000", seed=0, cfg=ChainConfig(), ctx=banks.catalog())
    out = render(clean, 48000, steps, banks)   # out.target, out.degraded, out.report

See :mod:`degradations.base` for the operator interface and :mod:`degradations.chain` for the recipe.
"""

from degradations import (  # noqa: F401  (importing the modules registers the operators)
    bandwidth,
    bitdepth,
    clipping,
    codec,
    dynamics,
    eq,
    gain,
    loudness,
    mic,
    noise,
    packet_loss,
    peak,
    reverb,
    saturation,
    wind,
)
from degradations.banks import BankEntry, Banks
from degradations.base import (
    REGISTRY,
    Applied,
    Degradation,
    fit_length,
    get_operator,
    register,
    sample_rng,
    stable_hash,
)
from degradations.chain import ChainConfig, RenderResult, check_backends, plan, render, report_keys
from degradations.codec import CODECS, CodecUnavailableError, available_codecs, check_codecs

__all__ = [
    "CODECS",
    "REGISTRY",
    "Applied",
    "BankEntry",
    "Banks",
    "ChainConfig",
    "CodecUnavailableError",
    "Degradation",
    "RenderResult",
    "available_codecs",
    "check_backends",
    "check_codecs",
    "fit_length",
    "get_operator",
    "plan",
    "register",
    "render",
    "report_keys",
    "sample_rng",
    "stable_hash",
]
