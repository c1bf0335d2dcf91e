"""Degradation throughput: x real time per core for each operator and for the default chain.

Runs on 5.12 s clips at 48 kHz of synthetic speech with in-memory noise and RIR banks (no file I/O), one thread
(BLAS/OpenMP pinned to 1; pin the process with ``taskset -c 0`` for a per-core figure), and prints JSON::

    taskset -c 0 .venv/bin/python benchmarks/degradations.py [--clips 60] [--repeats 3]

``x_realtime`` is audio seconds processed per CPU second of this process (``time.process_time``, all threads),
i.e. per core, and robust to other load on a shared machine; ``x_realtime_wall`` uses wall-clock time. Per-operator figures use parameters drawn the
way the chain draws them (so "codec" averages over the configured codecs and bit rates or VBR qualities, and
"bandwidth" over its resample / lowpass / imaging modes); ``codec:<name>`` entries break the codec down. The default-chain figure averages over ``--clips`` planned samples, i.e. over the
chain's own mix of operators; the target is >= 200x real time per core.

``padded`` repeats the figures on the same clips with their last 60 % digital silence, as a 2 s utterance
zero-padded to a 5.12 s segment (most segments of a corpus of short utterances end so): IIR filters must not
slow down there (denormal numbers in their state on many x86 CPUs), so the two sets of figures should agree.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from datasets.banks import make_noise  # noqa: E402
from degradations import BankEntry, Banks, ChainConfig, plan, render, sample_rng  # noqa: E402
from degradations.codec import available_codecs  # noqa: E402
from degradations.synthetic import noise_signal, speech_like, synthetic_rir  # noqa: E402

SR = 48000
CLIP_S = 5.12


def make_banks() -> Banks:
    noise = {f"noise{i:02d}": noise_signal(20.0, SR, seed=i, color=0.25 * (i % 4)) for i in range(8)}
    rt60s = [0.2, 0.35, 0.5, 0.7, 0.9, 1.2]
    rir = {f"rir{i:02d}": synthetic_rir(rt, SR, seed=i) for i, rt in enumerate(rt60s)}
    meta = {f"rir{i:02d}": {"rt60": rt} for i, rt in enumerate(rt60s)}
    banks = Banks.from_arrays(SR, noise=noise, rir=rir, rir_meta=meta)
    # two demo wind files (noise_type wind) for the wind step
    entries = {k: {e["id"]: banks.entry(k, e["id"]) for e in banks.catalog()[k]} for k in ("noise", "rir")}
    arrays = {(k, i): banks.noise(i) if k == "noise" else banks.rir(i) for k in entries for i in entries[k]}
    for i in range(2):
        x = make_noise("wind", 20.0, np.random.default_rng(100 + i), SR)
        entries["noise"][f"wind{i:02d}"] = BankEntry(f"wind{i:02d}", None, SR, len(x), {"noise_type": "wind"})
        arrays[("noise", f"wind{i:02d}")] = x
    return Banks(SR, noise=entries["noise"], rir=entries["rir"], arrays=arrays)


def _time(fn, repeats: int) -> tuple[float, float]:
    """Best (CPU seconds, wall seconds) over ``repeats`` runs."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall


def _figures(n_clips: int, cpu: float, wall: float) -> dict[str, float]:
    return {
        "x_realtime": round(n_clips * CLIP_S / cpu, 1),
        "x_realtime_wall": round(n_clips * CLIP_S / wall, 1),
        "cpu_ms_per_clip": round(1000 * cpu / n_clips, 2),
    }


def bench_operator(
    name: str, cfg: ChainConfig, banks: Banks, clips: list[np.ndarray], draws: int, repeats: int
):
    op = cfg.operator(name)
    ctx = banks.catalog()
    params = [op.sample(sample_rng(0, f"bench{i}", name), ctx) for i in range(draws)]
    for p in params[:2]:  # warm caches (codec libraries, filter designs)
        op.apply(clips[0], SR, p, banks)

    def run() -> None:
        for i, p in enumerate(params):
            op.apply(clips[i % len(clips)], SR, p, banks)

    return _figures(draws, *_time(run, repeats))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60, help="planned samples for the default chain figure")
    ap.add_argument("--draws", type=int, default=12, help="parameter draws per operator")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    ap.add_argument("--skip-codecs", action="store_true", help="leave out the per-codec breakdown")
    args = ap.parse_args(argv)

    cfg = ChainConfig()
    banks = make_banks()
    ctx = banks.catalog()
    clips = [speech_like(CLIP_S, SR, seed=i) for i in range(4)]
    padded = [
        np.concatenate([c[: int(0.4 * len(c))], np.zeros(len(c) - int(0.4 * len(c)), np.float32)])
        for c in clips
    ]
    results: dict[str, object] = {}
    results_padded: dict[str, object] = {}
    for name in ("loudness", "gain", "reverb", "noise", "wind", *cfg.extras.ops, "peak"):
        results[name] = bench_operator(name, cfg, banks, clips, args.draws, args.repeats)
        results_padded[name] = bench_operator(name, cfg, banks, padded, args.draws, args.repeats)
    if not args.skip_codecs:
        for choice in cfg.codec.codecs:
            if choice.name not in available_codecs():
                results[f"codec:{choice.name}"] = "unavailable"
                continue
            sub = cfg.model_copy(deep=True)
            sub.codec.codecs = [choice]
            results[f"codec:{choice.name}"] = bench_operator(
                "codec", sub, banks, clips, len(choice.bitrates_kbps or choice.qualities), 1
            )

    plans = [plan(f"utt{i:05d}_0000", 0, cfg, ctx) for i in range(args.clips)]
    render(clips[0], SR, plans[0], banks)

    def run_chain(inputs: list[np.ndarray]) -> None:
        for i, steps in enumerate(plans):
            render(inputs[i % len(inputs)], SR, steps, banks)

    chain = {
        **_figures(args.clips, *_time(lambda: run_chain(clips), args.repeats)),
        "clips": args.clips,
        "mean_steps": round(float(np.mean([len(p) for p in plans])), 2),
    }
    chain_padded = _figures(args.clips, *_time(lambda: run_chain(padded), args.repeats))
    out = {
        "benchmark": "degradations",
        "clip_seconds": CLIP_S,
        "sample_rate": SR,
        "cpu": platform.processor() or platform.machine(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "operators": results,
        "default_chain": chain,
        "padded": {"operators": results_padded, "default_chain": chain_padded},
        "target_x_realtime": 200,
        "meets_target": chain["x_realtime"] >= 200,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
