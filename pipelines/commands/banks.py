"""``hires banks rir|noise``: generated RIR and noise banks with their manifests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.commands import non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    banks = sub.add_parser("banks", help="generate RIR and noise banks (real banks: corpus scan --kind)")
    banks.set_defaults(_parser=banks)
    bsub = banks.add_subparsers(dest="banks_command", metavar="COMMAND")

    rir = bsub.add_parser(
        "rir",
        help="simulate shoebox-room impulse responses (pyroomacoustics, 48 kHz)",
        description="Image-source simulation of shoebox rooms (car cabins, booths, small and large rooms) with "
        "frequency-dependent materials, aimed at mid-band RT60 0.05-1.3 s; the manifest records the measured "
        "rt60, drr, c50, rt60_mid and rt60_8k of every response and its room_type.",
    )
    rir.add_argument("--out", required=True, type=Path)
    rir.add_argument("--count", type=positive_int, default=50, help="number of rooms (default 50)")
    rir.add_argument("--seed", type=non_negative_int, default=0)
    rir.set_defaults(func=run_rir)

    noise = bsub.add_parser(
        "noise", help="write a demo noise bank (white/pink/brown, babble, hum, clicks, wind)"
    )
    noise.add_argument("--out", required=True, type=Path)
    noise.add_argument("--minutes", type=positive_float, default=2.0, help="total noise (default 2)")
    noise.add_argument("--seed", type=non_negative_int, default=0)
    noise.set_defaults(func=run_noise)


def run_rir(args: argparse.Namespace) -> int:
    from datasets.banks import make_rir_bank
    from datasets.manifest import read_manifest

    df = read_manifest(make_rir_bank(args.out, count=args.count, seed=args.seed, progress=not args.quiet))
    print(
        json.dumps(
            {
                "manifest": str(args.out / "manifest.parquet"),
                "rirs": len(df),
                "rt60_s": [round(float(df.rt60.min()), 3), round(float(df.rt60.max()), 3)],
            },
            indent=2,
        )
    )
    return 0


def run_noise(args: argparse.Namespace) -> int:
    from datasets.banks import make_noise_bank
    from datasets.manifest import read_manifest

    df = read_manifest(
        make_noise_bank(args.out, minutes=args.minutes, seed=args.seed, progress=not args.quiet)
    )
    print(
        json.dumps(
            {
                "manifest": str(args.out / "manifest.parquet"),
                "files": len(df),
                "minutes": round(float(df.duration_s.sum()) / 60, 2),
                "types": sorted(df.noise_type.unique().tolist()),
            },
            indent=2,
        )
    )
    return 0
