"""End-to-end synthesis throughput (clean FLAC in, WebDataset shards out), JSON on stdout.

Measures ``hires synth`` (plan + Ray Data render) on the demo corpus with 1 and 2 workers, each on a fresh
local Ray of that size, and a plain single-process chain built from off-the-shelf parts in the same run:
pyloudnorm (-20 LUFS), audiomentations (impulse response, background noise, one to three of low-pass / clipping /
MP3 / peaking EQ, peak normalisation), pyroomacoustics (RT60 of the response used, as our metadata records), FLAC
encoding and ``webdataset.TarWriter``. Figures:

* ``x_realtime_per_core``: seconds of 48 kHz audio written per wall second per worker, render phase (Ray Data
  execution from its start to the last shard, including Ray Data's and the worker processes' start-up);
* ``steady_x_realtime_per_core``: the same once every worker has delivered its first shard (what a long job
  runs at: the few seconds of start-up are amortised over hours of audio);
* ``end_to_end_x_realtime_per_core``: the same over the whole call (plan, Ray start, worker start-up, index);
* ``x_realtime_per_task_cpu_second``: audio seconds per CPU second spent inside the shard tasks (robust to other
  load on the host, which inflates the wall-clock figures);
* ``scaling_1_to_2``: render throughput with 2 workers over 1 worker.

Besides, in the same run and in this one process (no Ray): ``baseline_user_chain``, the twenty-line chain a user
would write (:func:`bench_user_chain`), ``hires_in_process``, hires' own per-sample render path (what one worker
does), and ``hires_in_process_user_recipe``, the same with the user chain's recipe (extras: zero to two of
clipping / MP3 / low-pass), which separates doing more from doing it slower.

Targets (docs/design.md, "Performance targets"): >= 150x real time per core, 1 -> 2 workers >= 1.8x. Usage::

    python benchmarks/synth_throughput.py --minutes 10 [--workdir out/bench-synth] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_inputs(workdir: Path, minutes: float, noise_minutes: float, rirs: int) -> dict[str, str]:
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus

    tag = f"m{minutes:g}_n{noise_minutes:g}_r{rirs}"
    root = workdir / "inputs" / tag
    paths = {"clean": root / "clean", "noise": root / "noise", "rir": root / "rir"}
    if not all((p / "manifest.parquet").exists() for p in paths.values()):
        make_demo_corpus(paths["clean"], minutes=minutes, seed=0, progress=False)
        make_noise_bank(paths["noise"], minutes=noise_minutes, seed=0, progress=False)
        make_rir_bank(paths["rir"], count=rirs, seed=0, progress=False)
    return {k: str(p / "manifest.parquet") for k, p in paths.items()}


def bench_hires(inputs: dict[str, str], workdir: Path, workers: int, samples_per_shard: int) -> dict:
    import ray

    from datasets.synth_config import load_synth_config
    from pipelines.synth_run import run_synth

    cfg = load_synth_config(overrides={"shards.samples_per_shard": samples_per_shard})
    start = time.perf_counter()
    ray.init(
        address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    done: list[tuple[float, float]] = []  # (completion time, audio seconds) per shard
    try:
        summary = run_synth(
            **inputs,
            out=str(workdir / f"hires_{workers}w"),
            cfg=cfg,
            seed=0,
            num_cpus=workers,
            force=True,
            progress=False,
            on_shard=lambda e: done.append((time.perf_counter(), e["seconds"])),
        )
    finally:
        ray.shutdown()
    total = time.perf_counter() - start
    audio_s = summary.rendered_seconds
    # steady state: from the moment every worker has delivered a shard (start-up of Ray Data and of the worker
    # processes is behind us) to the last shard
    t0 = done[workers - 1][0]
    steady = sum(sec for _, sec in done[workers:]) / (done[-1][0] - t0) if done[-1][0] > t0 else float("nan")
    return {
        "workers": workers,
        "samples": summary.samples,
        "shards": summary.shards,
        "audio_hours": round(audio_s / 3600, 4),
        "render_wall_s": round(summary.wall_s, 2),
        "total_wall_s": round(total, 2),
        "x_realtime": round(audio_s / summary.wall_s, 1),
        "x_realtime_per_core": round(audio_s / summary.wall_s / workers, 1),
        "steady_x_realtime": round(steady, 1),
        "steady_x_realtime_per_core": round(steady / workers, 1),
        "end_to_end_x_realtime_per_core": round(audio_s / total / workers, 1),
        "x_realtime_per_task_cpu_second": round(summary.x_realtime_per_cpu_second, 1),
    }


def _flac(x, sr: int) -> bytes:
    """``x`` clipped to [-1, 1] as 24-bit FLAC through soundfile: how the single-process baselines encode."""
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), sr, format="FLAC", subtype="PCM_24")
    return buf.getvalue()


def _one_process_speed(samples: int, segment_s: float, wall: float, cpu: float) -> dict:
    """What a single-process baseline reports: ``samples`` segments written in ``wall`` s using ``cpu`` s."""
    audio_s = samples * segment_s
    return {
        "workers": 1,
        "samples": samples,
        "audio_hours": round(audio_s / 3600, 4),
        "wall_s": round(wall, 2),
        "x_realtime_per_core": round(audio_s / wall, 1),
        "x_realtime_per_cpu_second": round(audio_s / cpu, 1),
    }


def bench_baseline(inputs: dict[str, str], workdir: Path, segment_s: float = 5.12) -> dict:
    """A plain single-process chain: audiomentations + pyroomacoustics + webdataset, same segments."""

    import numpy as np
    import pyroomacoustics as pra
    import soundfile as sf
    import webdataset as wds
    from audiomentations import (
        AddBackgroundNoise,
        ApplyImpulseResponse,
        ClippingDistortion,
        Compose,
        LowPassFilter,
        Mp3Compression,
        Normalize,
        PeakingFilter,
        SomeOf,
    )

    from datasets.manifest import read_manifest

    clean = read_manifest(inputs["clean"])
    noise_files = read_manifest(inputs["noise"])["path"].tolist()
    rir_files = read_manifest(inputs["rir"])["path"].tolist()
    reverb = ApplyImpulseResponse(ir_path=rir_files, p=0.5)
    import pyloudnorm

    meter = pyloudnorm.Meter(48_000)
    chain = Compose(
        [
            reverb,
            AddBackgroundNoise(sounds_path=noise_files, min_snr_db=-5.0, max_snr_db=20.0, p=1.0),
            SomeOf(
                (1, 3),
                [
                    LowPassFilter(p=1.0),
                    ClippingDistortion(p=1.0),
                    Mp3Compression(p=1.0),
                    PeakingFilter(p=1.0),
                ],
            ),
            Normalize(p=1.0),
        ]
    )
    sr = 48_000
    n = int(round(segment_s * sr))
    out = workdir / "baseline"
    out.mkdir(parents=True, exist_ok=True)

    samples = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    with wds.TarWriter(str(out / "baseline-000000.tar")) as sink:
        for row in clean.sort_values("id").itertuples():
            for j, offset in enumerate(range(0, int(row.frames) - sr, n)):
                x, _ = sf.read(row.path, start=offset, frames=n, dtype="float32")
                x = np.pad(x, (0, n - len(x)))
                # loudness to -20 LUFS with pyloudnorm (audiomentations' own needs the optional `loudness`)
                x = pyloudnorm.normalize.loudness(x, meter.integrated_loudness(x), -20.0).astype(np.float32)
                y = chain(samples=x, sample_rate=sr)
                rt60 = None
                if reverb.parameters.get("should_apply"):
                    ir, _ = sf.read(reverb.parameters["ir_file_path"], dtype="float32")
                    rt60 = float(pra.experimental.measure_rt60(ir, fs=sr))
                meta = {"source_id": row.id, "offset": offset, "rt60": rt60}
                sink.write(
                    {
                        "__key__": f"{row.id}_{j:04d}",
                        "clean.flac": _flac(x, sr),
                        "degraded.flac": _flac(y, sr),
                        "json": json.dumps(meta).encode(),
                    }
                )
                samples += 1
    return _one_process_speed(
        samples, segment_s, time.perf_counter() - start, time.process_time() - cpu_start
    )


# the user chain's recipe in hires terms: 0-2 of clipping / MP3 / low-pass (poly resampling band limit)
USER_RECIPE = {
    "chain.extras.count_probabilities": [1 / 3, 1 / 3, 1 / 3],
    "chain.extras.ops": ["clipping", "codec", "bandwidth"],
    "chain.codec.codecs": [{"name": "mp3", "bitrates_kbps": [8, 16, 24, 32, 48, 64]}],
    "chain.bandwidth.families": ["poly"],
}


def bench_hires_in_process(inputs: dict[str, str], workdir: Path, overrides: dict | None = None) -> dict:
    """hires' per-sample render path (read, chain, FLAC, shard tar) in this one process, no Ray: what one
    synthesis worker does, comparable with the user chain's loop. Plan time is left out (it is not per sample)."""
    import numpy as np

    from datasets.manifest import read_manifest
    from datasets.synth_config import load_synth_config
    from datasets.synth_plan import plan_rows
    from datasets.synth_render import render_shard_bytes
    from degradations import Banks

    cfg = load_synth_config(overrides=overrides)
    banks = Banks.from_manifests(inputs["noise"], inputs["rir"], sr=cfg.segment.sample_rate)
    rows = plan_rows(read_manifest(inputs["clean"], kind="speech"), cfg, 0, banks.catalog())
    out = workdir / ("hires_in_process" + ("_user_recipe" if overrides else ""))
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    per = 512
    for i in range(0, len(rows), per):
        with open(out / f"shard-{i // per:06d}.tar", "wb") as f:
            render_shard_bytes(rows[i : i + per], f, cfg, 0, banks, "bench")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ops: dict[str, int] = {}
    for row in rows:
        for step in json.loads(row["steps"]):
            ops[step["op"]] = ops.get(step["op"], 0) + 1
    return {
        **_one_process_speed(len(rows), cfg.segment.seconds, wall, cpu),
        "mean_ops_per_sample": round(float(np.mean([len(json.loads(r["steps"])) for r in rows])), 2),
        "op_counts": ops,
    }


def _segments(frames: int, n: int, sr: int, min_tail_s: float = 1.0):
    """Offsets of ``n``-sample pieces, the last one zero-padded when at least ``min_tail_s`` long (as synthesis)."""
    offsets = list(range(0, frames - n + 1, n))
    tail = frames - len(offsets) * n
    if tail >= min_tail_s * sr:
        offsets.append(len(offsets) * n)
    return offsets


def bench_user_chain(inputs: dict[str, str], workdir: Path, segment_s: float = 5.12) -> dict:
    """The chain a user would write in twenty lines, one process: audiomentations all the way.

    Loudness to -20 LUFS, impulse response at p 0.5, background noise at SNR U(-5, 20) dB, zero to two of
    clipping / MP3 / low-pass, peak normalisation, 24-bit FLAC through soundfile and ``webdataset.ShardWriter``;
    the same 48 kHz clean sources cut the same way as synthesis. audiomentations' LoudnessNormalization needs
    the optional ``loudness`` package, which the project does not install; the chain measures BS.1770 loudness
    with :func:`degradations.levels.integrated_loudness` instead (half the CPU of pyloudnorm, so the comparison
    does not flatter hires).
    """
    import random

    import numpy as np
    import soundfile as sf
    import webdataset as wds
    from audiomentations import (
        AddBackgroundNoise,
        ApplyImpulseResponse,
        ClippingDistortion,
        Compose,
        LowPassFilter,
        Mp3Compression,
        Normalize,
        SomeOf,
    )

    from datasets.manifest import read_manifest
    from degradations.levels import integrated_loudness

    random.seed(0)
    np.random.seed(0)
    clean = read_manifest(inputs["clean"])
    degrade = Compose(
        [
            ApplyImpulseResponse(ir_path=read_manifest(inputs["rir"])["path"].tolist(), p=0.5),
            AddBackgroundNoise(
                sounds_path=read_manifest(inputs["noise"])["path"].tolist(), min_snr_db=-5, max_snr_db=20, p=1
            ),
            SomeOf((0, 2), [ClippingDistortion(p=1.0), Mp3Compression(p=1.0), LowPassFilter(p=1.0)]),
            Normalize(p=1.0),
        ]
    )
    sr = 48_000
    n = int(round(segment_s * sr))
    out = workdir / "user_chain"
    out.mkdir(parents=True, exist_ok=True)

    samples = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=512, verbose=0) as sink:
        for row in clean.sort_values("id").itertuples():
            for j, offset in enumerate(_segments(int(row.frames), n, sr)):
                x, _ = sf.read(row.path, start=offset, frames=n, dtype="float32")
                x = np.pad(x, (0, n - len(x)))
                lufs = integrated_loudness(x, sr)
                if np.isfinite(lufs):
                    x = (x * 10 ** ((-20.0 - lufs) / 20)).astype(np.float32)
                y = degrade(samples=x, sample_rate=sr)
                key = f"{row.id}_{j:04d}"
                meta = {"key": key, "source_id": row.id, "offset": offset}
                sink.write(
                    {"__key__": key, "clean.flac": _flac(x, sr), "degraded.flac": _flac(y, sr), "json": meta}
                )
                samples += 1
    return _one_process_speed(
        samples, segment_s, time.perf_counter() - start, time.process_time() - cpu_start
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="demo speech to synthesise (default 30)")
    p.add_argument("--noise-minutes", type=float, default=2.0)
    p.add_argument("--rirs", type=int, default=20)
    p.add_argument(
        "--samples-per-shard",
        type=int,
        default=32,
        help="samples per shard (default 32, ~1 s tasks): Ray Data launches tasks at a few per second, so much "
        "shorter tasks measure its scheduler, not the render; production shards (512) run ~18 s",
    )
    p.add_argument("--workdir", type=Path, default=REPO / "out" / "bench-synth")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    args.workdir.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(args.workdir, args.minutes, args.noise_minutes, args.rirs)
    load_before = os.getloadavg()
    runs = [bench_hires(inputs, args.workdir, w, args.samples_per_shard) for w in (1, 2)]
    result = {
        "benchmark": "synth_throughput",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # other work on the host skews wall-clock figures; the per-CPU-second ones are robust to it
            "load_average_1m_before": round(load_before[0], 2),
        },
        "corpus_minutes": args.minutes,
        "hires": runs,
        "scaling_1_to_2": round(runs[1]["x_realtime"] / runs[0]["x_realtime"], 2),
        "steady_scaling_1_to_2": round(runs[1]["steady_x_realtime"] / runs[0]["steady_x_realtime"], 2),
        "targets": {"x_realtime_per_core": 150, "scaling_1_to_2": 1.8},
    }
    if not args.skip_baseline:
        base = bench_baseline(inputs, args.workdir)
        result["baseline_audiomentations_pyroomacoustics_webdataset"] = base
        result["hires_1w_over_baseline_per_core"] = round(
            runs[0]["x_realtime_per_core"] / base["x_realtime_per_core"], 2
        )
        user = bench_user_chain(inputs, args.workdir)
        result["baseline_user_chain"] = user
        local = bench_hires_in_process(inputs, args.workdir)
        same = bench_hires_in_process(inputs, args.workdir, USER_RECIPE)
        result["hires_in_process"] = local
        result["hires_in_process_user_recipe"] = same
        result["hires_in_process_over_user_chain_per_cpu_second"] = round(
            local["x_realtime_per_cpu_second"] / user["x_realtime_per_cpu_second"], 2
        )
        result["hires_user_recipe_over_user_chain_per_cpu_second"] = round(
            same["x_realtime_per_cpu_second"] / user["x_realtime_per_cpu_second"], 2
        )
        # end to end (Ray and worker start-up, plan and index included) against the chain's whole loop
        result["hires_1w_end_to_end_over_user_chain_per_core"] = round(
            runs[0]["end_to_end_x_realtime_per_core"] / user["x_realtime_per_core"], 2
        )
        # CPU seconds inside the render against the chain's CPU seconds: robust to other load on the host
        result["hires_over_user_chain_per_cpu_second"] = round(
            runs[0]["x_realtime_per_task_cpu_second"] / user["x_realtime_per_cpu_second"], 2
        )
        result["targets"]["hires_over_user_chain_per_core"] = 1.3
    result["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    result["meets_targets"] = (
        min(r["steady_x_realtime_per_core"] for r in runs) >= 150 and result["steady_scaling_1_to_2"] >= 1.8
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
