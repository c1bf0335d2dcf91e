"""Shard loader throughput (training/data.py), JSON on stdout.

Samples of 5.12 s per second the loader delivers for the recovery stage: read the tar, decode clean and degraded
FLAC, crop, normalise the degraded input's loudness (and scale the target), resample both to 16 kHz, collate to
torch. Two crops: the recovery stage's paper crop (2.04 s) and the whole sample (5.12 s); decoding is the same
for both (whole samples), loudness and resampling scale with the crop. Shards come from a real synthesis run of the demo corpus (made once under ``--workdir`` and reused), so the
FLAC sizes are those of speech, not of noise. Tars are read from the page cache after the first epoch: this
measures the loader's CPU cost, not a disk.

Figures, per thread count (1 and the cores this process may use):

* ``clips_per_s``: delivered clips per wall second;
* ``clips_per_s_per_core``: the same divided by the thread count; the process (reader thread, decode pool,
  collation) is pinned to that many cores, so this is a true per-core figure;
* ``clips_per_cpu_s``: clips per CPU second of this process (robust to other load on the host).

Target (docs/design.md, "Performance targets"): >= 150 clips of 5.12 s per second per core. Usage::

    python benchmarks/loader.py [--minutes 3] [--clips 400] [--workdir out/bench-loader] [--json out.json]
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


def make_run(workdir: Path, minutes: float) -> Path:
    """Shards of ``minutes`` of demo speech, 16 samples each, rendered in this process with the functions
    synthesis uses (plan, then render); made once per work directory."""
    run = workdir / f"run_m{minutes:g}"
    if (run / "index.json").exists():
        return run
    from datasets import shards
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus
    from datasets.manifest import read_manifest
    from datasets.synth_config import load_synth_config
    from datasets.synth_plan import make_plan
    from datasets.synth_render import cached_banks, render_shard_bytes, synth_code_version

    inputs = workdir / f"inputs_m{minutes:g}"
    clean = make_demo_corpus(inputs / "clean", minutes=minutes, seed=0, progress=False)
    noise = make_noise_bank(inputs / "noise", minutes=1.0, seed=0, progress=False)
    rir = make_rir_bank(inputs / "rir", count=8, seed=0, progress=False)
    cfg = load_synth_config(overrides={"shards.samples_per_shard": 16})
    banks = cached_banks(str(noise), str(rir), cfg.segment.sample_rate)
    plan = make_plan(read_manifest(clean, kind="speech"), cfg, 0, banks.catalog())
    rows = plan.table.to_pylist()
    (run / "shards").mkdir(parents=True, exist_ok=True)
    entries = []
    for shard in sorted({r["shard"] for r in rows}):
        mine = [r for r in rows if r["shard"] == shard]
        name = shards.shard_name(shard)
        with open(run / "shards" / name, "wb") as f:
            result = render_shard_bytes(mine, f, plan.cfg, 0, banks, synth_code_version())
        entries.append(
            {
                "name": name,
                "split": "train",  # every sample trains here: the benchmark reads the train split only
                "samples": result.samples,
                "seconds": result.samples * cfg.segment.seconds,
                "bytes": result.bytes,
                "sha256": result.sha256,
            }
        )
    index = {
        "format_version": shards.FORMAT_VERSION,
        "code_version": synth_code_version(),
        "seed": 0,
        "config": {},
        "sample_rate": cfg.segment.sample_rate,
        "segment_samples": cfg.segment.samples,
        "shards": entries,
    }
    (run / "index.json").write_bytes(shards.index_bytes(index))
    return run


def measure(run: Path, threads: int, clips: int, batch_size: int, crop: int, sr: int) -> dict:
    from training.data import DataSpec, batches_per_epoch, train_batches

    spec = DataSpec(
        shards=str(run),
        batch_size=batch_size,
        crop_samples=crop,
        streams=("clean_16k", "degraded_16k"),
        input_loudness_lufs=-20.0,
        num_threads=threads,
        prefetch_batches=2,
    )
    per_epoch = batches_per_epoch(spec, 1) * batch_size
    pinned = hasattr(os, "sched_setaffinity")
    if (
        pinned
    ):  # every thread of the loader (reader, pool, collation) on ``threads`` cores: honest per-core figures
        usable = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, usable[:threads])
    for _ in train_batches(spec, 0, 1, epoch=1000):  # warm-up: page cache, imports, soxr plans
        pass
    done, epoch = 0, 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while done < clips:
        for batch in train_batches(spec, 0, 1, epoch):
            done += len(batch["keys"])
        epoch += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if pinned:
        os.sched_setaffinity(0, usable)
    return {
        "crop_s": crop / sr,
        "threads": threads,
        "clips": done,
        "clips_per_epoch": per_epoch,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "clips_per_s": round(done / wall, 1),
        "clips_per_s_per_core": round(done / wall / threads, 1),
        "clips_per_cpu_s": round(done / cpu, 1),
        "ms_per_clip_per_core": round(1000 * wall * threads / done, 2),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="demo speech synthesised into shards")
    parser.add_argument("--clips", type=int, default=400, help="clips measured per thread count")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", default=str(REPO / "out" / "bench-loader"))
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    import soundfile
    import soxr
    import torch

    torch.set_num_threads(1)  # collation only; keeps torch from competing with the decode threads
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = make_run(workdir, args.minutes)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = sorted({1, cores})
    load_before = os.getloadavg()[0]
    # the recovery stage's paper crop (configs/train/recovery/paper.yaml) and the whole 5.12 s sample
    from training.config import load_stage_config

    index = json.loads((run / "index.json").read_text())
    sr = int(index["sample_rate"])
    crops = (load_stage_config("recovery", "paper").train.crop_samples, int(index["segment_samples"]))
    results = [measure(run, n, args.clips, args.batch_size, crop, sr) for crop in crops for n in counts]
    out = {
        "benchmark": "loader",
        "what": "5.12 s clips: tar read, decode clean+degraded FLAC, crop, loudness, resample both to 16 kHz",
        "target_clips_per_s_per_core": 150,
        "machine": {
            "cpu": cpu_model(),
            "cores_usable": cores,
            "python": platform.python_version(),
            "libsndfile": soundfile.__libsndfile_version__,
            "soxr": soxr.__version__,
            "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "shards": str(run),
        "results": results,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
