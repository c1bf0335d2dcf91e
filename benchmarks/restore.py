"""Restore speed and memory: real-time factor and peak RSS of ``Restorer.restore_file`` per input length (JSON).

Each length runs in its own process (so peak RSS is that length's alone): the process loads the bundle, restores a
synthetic 48 kHz input of that length from a WAV file to a FLAC file (the streaming path ``hires restore`` uses) and
reports wall time, RTF = wall / audio seconds (model loading excluded, reported apart) and peak RSS. Flat memory in
length means the three peaks agree. One window (5.12 s) is also timed stage by stage (``breakdown``), which says
where the time goes.

Models are random-initialised networks of ``--config`` (tiny or paper: the speed does not depend on the weights),
or a trained ``--bundle``.

    python benchmarks/restore.py                                  # tiny, CPU, 2 threads, 10/60/600 s
    python benchmarks/restore.py --config paper --device cuda     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
RATE = 48000


def machine() -> dict:
    import torch

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def random_bundle(root: Path, config: str) -> Path:
    """A bundle of random-initialised networks of ``config`` (``scale_factor`` 1)."""
    import torch

    from training.config import load_stage_config
    from training.model_dir import save_model_dir
    from training.models import build
    from training.restorer import write_bundle

    dirs = {}
    for i, stage in enumerate(STAGES):
        torch.manual_seed(i)
        cfg = load_stage_config(stage, config)
        meta = {"step": 0, "scale_factor": 1.0} if stage == "ldm" else {"step": 0}
        dirs[stage] = str(
            save_model_dir(str(root / "models" / stage), stage, cfg, build(cfg).state_dict(), meta)
        )
    return write_bundle(root / "bundle", **dirs)


def synthetic_input(path: Path, seconds: float, seed: int = 0) -> None:
    """A speech-like 48 kHz signal (modulated harmonics + noise), written in 10 s blocks (the generator's memory
    stays small)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(round(seconds * RATE))
    block = 10 * RATE
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=1, subtype="PCM_16") as f:
        for start in range(0, total, block):
            t = (np.arange(start, min(start + block, total)) / RATE)[:, None]
            f0 = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
            voiced = (np.sin(2 * np.pi * f0 * np.arange(1, 6) * t) / np.arange(1, 6)).sum(axis=1)
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t[:, 0]) ** 2
            x = 0.1 * voiced * envelope + 0.01 * rng.standard_normal(len(t))
            f.write(x.astype(np.float32))


def breakdown(restorer, steps: int | None) -> dict:
    """Seconds per stage for one 5.12 s window (after one warm-up call of each)."""
    import torch

    from training.features import resample
    from training.stages.recovery import enhance

    sync = torch.cuda.synchronize if restorer.device.type == "cuda" else (lambda: None)
    x16 = (0.05 * torch.randn(1, 81920)).to(restorer.device)
    times = {}

    def timed(name, fn, repeat=2):
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(repeat):
            out = fn()
        sync()
        times[name] = round((time.perf_counter() - start) / repeat, 4)
        return out

    with torch.no_grad():
        rec = timed("recovery", lambda: enhance(restorer.recovery, restorer.rec_stft, x16))
        r48 = timed("upsample_48k", lambda: resample(rec, 16000, 48000))
        mel = timed("log_mel", lambda: restorer.mel(r48))
        cond = timed("vae_encode", lambda: restorer.vae.encode(mel).mode() * restorer.scale_factor)
        steps = steps or restorer.diffusion.cfg.sampler.steps
        t = torch.full((1,), 500, device=restorer.device)
        timed("ldm_step", lambda: restorer.ldm(torch.cat([cond, cond], 1), t), repeat=5)
        times["ldm_all_steps"] = round(times["ldm_step"] * steps, 4)
        out = timed("vae_decode", lambda: restorer.vae.decode(cond / restorer.scale_factor))
        timed("vocoder", lambda: restorer.vocoder(out[:, : restorer.mel.cfg.n_mels, :512]))
    times["window_total"] = round(sum(v for k, v in times.items() if k != "ldm_step"), 4)
    times["steps"] = steps
    return times


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process: load, restore ``args.input``, report."""
    import soundfile as sf
    import torch

    from training.restorer import RestoreOptions, Restorer

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    restorer = Restorer.from_bundle(args.bundle, device=args.device)
    loaded = time.perf_counter() - began
    seconds = sf.info(args.input).duration
    options = RestoreOptions(steps=args.steps)
    start = time.perf_counter()
    info = restorer.restore_file(args.input, args.output, options, batch_size=args.batch_size)
    if restorer.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "seconds": round(seconds, 2),
        "windows": info.windows,
        "wall_s": round(wall, 2),
        "rtf": round(wall / seconds, 4),
        "load_s": round(loaded, 2),
        # CPU seconds of the whole process (loading included) per audio second: what the run cost the machine,
        # readable on a busy one where the wall-clock RTF is not
        "cpu_s_per_audio_s": round((usage.ru_utime + usage.ru_stime) / seconds, 4),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "output_frames": sf.info(args.output).frames,
    }
    if restorer.device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if args.breakdown:
        result["breakdown_s_per_window"] = breakdown(restorer, args.steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0, 600.0], help="seconds")
    parser.add_argument("--config", default="tiny", help="network configs of the random bundle (tiny, paper)")
    parser.add_argument("--bundle", help="a trained bundle instead of random networks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the ldm config's)")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per network call")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="hires-bench-restore-") as tmp:
        root = Path(tmp)
        bundle = args.bundle or str(random_bundle(root, args.config))
        runs = []
        for i, length in enumerate(args.lengths):
            src = root / f"in_{length:g}s.wav"
            synthetic_input(src, length)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--input",
                str(src),
                "--output",
                str(root / f"out_{length:g}s.flac"),
                "--bundle",
                bundle,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
                "--batch-size",
                str(args.batch_size),
            ]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            if i == 0:
                cmd.append("--breakdown")
            load_before = os.getloadavg()[0]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"restore of {length:g} s failed:\n{done.stderr[-2000:]}")
            run = json.loads(done.stdout.strip().splitlines()[-1])
            run["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)  # partial results survive an interrupted run
            src.unlink()
        print(
            json.dumps(
                {
                    "benchmark": "restore",
                    "config": args.bundle or args.config,
                    "device": args.device,
                    "threads": args.threads,
                    "steps": args.steps,
                    "machine": machine(),
                    "runs": runs,
                    "targets": {"cpu_tiny_rtf_max": 1.0, "memory": "peak RSS flat in length"},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
