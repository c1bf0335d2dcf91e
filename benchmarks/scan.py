"""Corpus scan throughput: files per second in header and full verification modes, JSON on stdout.

Generates N short FLAC files (default 2000 x 3 s, 48 kHz, 24-bit) in a temp folder, then scans them.
Extrapolate to a corpus with: seconds = files / files_per_s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from datasets.scan import ScanConfig, scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(int(args.seconds * 48000))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        for i in range(args.files):
            d = root / f"spk{i % 50:02d}"
            d.mkdir(parents=True, exist_ok=True)
            sf.write(d / f"utt{i:06d}.flac", x, 48000, subtype="PCM_24")
        results = {}
        for mode in ("header", "full"):
            t = time.perf_counter()
            res = scan([root], cfg=ScanConfig(verify=mode), progress=False)
            wall = time.perf_counter() - t
            assert len(res.rows) == args.files
            results[mode] = {
                "files_per_s": round(args.files / wall, 1),
                "audio_x_realtime": round(args.files * args.seconds / wall, 1),
                "minutes_for_500k_files": round(500_000 / (args.files / wall) / 60, 1),
            }
    print(
        json.dumps(
            {
                "benchmark": "corpus_scan",
                "files": args.files,
                "seconds_per_file": args.seconds,
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
