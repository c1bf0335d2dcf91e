"""``hires corpus scan|demo``: manifests of real corpora and the generated demo corpus."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets.config import CONFIG_ROOT, dump_config
from datasets.errors import UsageError
from datasets.manifest import KINDS, rejects_path
from datasets.scan import CorpusConfigFile, load_scan_config, scan_to_manifest
from pipelines.commands import add_config_args, non_negative_int, positive_float, positive_int

DEFAULT_CONFIG = CONFIG_ROOT / "corpus.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="scan corpora into manifests; generate the demo corpus")
    corpus.set_defaults(_parser=corpus)
    csub = corpus.add_subparsers(dest="corpus_command", metavar="COMMAND")

    scan = csub.add_parser(
        "scan",
        help="scan folders of audio into a Parquet manifest + NAME.rejects.jsonl",
        usage="hires corpus scan [-h] ROOT [ROOT ...] --out NAME.parquet [options]",
        description="Walk ROOTs, check every audio file and write the manifest. Rejected files are listed "
        "with their reason in NAME.rejects.jsonl beside NAME.parquet. VCTK 0.92 is read with one microphone "
        "(--vctk-mic, default mic1). RIRs (--kind rir) are measured: rt60, drr and c50 in the manifest.",
    )
    # ROOT and --out are checked in run_scan(), so --print-config needs neither
    scan.add_argument("roots", nargs="*", metavar="ROOT", help="folders (or single files) to scan")
    scan.add_argument("--out", type=Path, help="manifest path (NAME.parquet; required)")
    scan.add_argument("--name", help="corpus name (default: detected layout or the root folder's name)")
    scan.add_argument("--kind", choices=KINDS, default="speech", help="what the files are (default: speech)")
    scan.add_argument("--verify", choices=["full", "header"], help="decode every file (full) or headers only")
    scan.add_argument("--workers", type=positive_int, help="parallel readers")
    scan.add_argument(
        "--min-sample-rate", type=positive_int, help="reject files below this rate (for --kind)"
    )
    scan.add_argument(
        "--vctk-mic",
        choices=["mic1", "mic2", "both"],
        help="VCTK 0.92 microphone(s) to keep (default from the config: mic1)",
    )
    add_config_args(scan, DEFAULT_CONFIG)
    scan.set_defaults(func=run_scan)

    demo = csub.add_parser(
        "demo",
        help="write the deterministic synthetic demo corpus (48 kHz FLAC)",
        description="Synthetic speech-like audio for tests and the demo. Real training "
        "uses real corpora (VCTK, EARS, HiFi-TTS ...) scanned with `hires corpus scan`.",
    )
    demo.add_argument("--out", required=True, type=Path, help="output folder")
    demo.add_argument("--minutes", type=positive_float, default=5.0, help="total audio (default 5)")
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--speakers", type=positive_int, default=8)
    demo.add_argument("--espeak", action="store_true", help="add espeak-ng voices (needs espeak-ng)")
    demo.set_defaults(func=run_demo)


def run_scan(args: argparse.Namespace) -> int:
    overrides = {"verify": args.verify, "workers": args.workers, "vctk_mic": args.vctk_mic}
    flags = {
        "verify": f"--verify {args.verify}",
        "workers": f"--workers {args.workers}",
        "vctk_mic": f"--vctk-mic {args.vctk_mic}",
    }
    if args.min_sample_rate is not None:
        key = f"min_sample_rate.{args.kind}"
        overrides[key] = args.min_sample_rate
        flags[key] = f"--min-sample-rate {args.min_sample_rate}"
    cfg = load_scan_config(args.config, overrides, flags)
    if args.print_config:  # as a file --config takes
        print(dump_config(CorpusConfigFile(scan=cfg)), end="")
        return 0
    missing = (["ROOT"] if not args.roots else []) + (["--out"] if args.out is None else [])
    if missing:
        raise UsageError(f"corpus scan: the following arguments are required: {', '.join(missing)}")
    if args.out.suffix != ".parquet":
        raise UsageError(f"--out {args.out}: manifest must be a .parquet file")
    from pipelines.synth_run import check_out

    check_out(args.out, directory=False)  # before a scan that may take hours
    result = scan_to_manifest(
        args.roots, args.out, kind=args.kind, name=args.name, cfg=cfg, progress=not args.quiet
    )
    summary = {
        "manifest": str(args.out),
        "rejects": str(rejects_path(args.out)),
        **result.summary(),
    }
    print(json.dumps(summary, indent=2))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from datasets.demo import make_demo_corpus
    from datasets.manifest import read_manifest

    manifest = make_demo_corpus(
        args.out,
        minutes=args.minutes,
        seed=args.seed,
        speakers=args.speakers,
        espeak=args.espeak,
        progress=not args.quiet,
    )
    df = read_manifest(manifest)
    print(
        json.dumps(
            {
                "manifest": str(manifest),
                "files": len(df),
                "speakers": int(df["speaker"].nunique()),
                "hours": round(float(df["duration_s"].sum()) / 3600, 4),
            },
            indent=2,
        )
    )
    return 0
