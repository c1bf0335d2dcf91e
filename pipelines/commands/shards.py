"""``hires shards verify|list|inspect``: integrity check of a synthesis run, its sample keys, a look at one sample."""

from __future__ import annotations

import argparse
import json

from datasets.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    shards = sub.add_parser("shards", help="verify synthesised shards, list their samples or inspect one")
    shards.set_defaults(_parser=shards)
    ssub = shards.add_subparsers(dest="shards_command", metavar="COMMAND")

    verify = ssub.add_parser(
        "verify",
        help="check sha256s, counts, decoding and lengths against index.json",
        description="Check every shard listed in DIR/index.json: bytes and sha256, sample count, member names "
        "and order, every FLAC decodes at the indexed rate with clean/degraded of the segment length, every JSON "
        "names its key; no unlisted tar; plan and shards hold the same keys. Exit 1 when anything is wrong.",
    )
    verify.add_argument("dir", help="synthesis output directory or s3:// prefix")
    verify.add_argument("--workers", type=int, default=4, help="shards checked in parallel (default 4)")
    verify.set_defaults(func=run_verify)

    inspect = ssub.add_parser(
        "inspect",
        help="print one sample's metadata; optionally write its audio and spectrograms",
        description="Print the JSON metadata of sample KEY. With --out, also write KEY.clean.wav, "
        "KEY.degraded.wav and KEY.png (spectrograms of both) into that folder.",
    )
    inspect.add_argument("dir", help="synthesis output directory or s3:// prefix")
    inspect.add_argument("--key", required=True, help="sample key, {utterance id}_{segment:04d}")
    inspect.add_argument("--out", help="folder for the wav files and the spectrogram PNG")
    inspect.set_defaults(func=run_inspect)

    listing = ssub.add_parser(
        "list",
        help="list the sample keys (split, shard, source, operators) that `shards inspect` takes",
        description="One line per sample of DIR: key, split, shard, source utterance and the operators of its "
        "degradation chain in order (tab-separated, with a header line; --json for JSON lines).",
    )
    listing.add_argument("dir", help="synthesis output directory or s3:// prefix")
    listing.add_argument("--split", help="only this split (train, valid, test)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=run_list)

    stats = ssub.add_parser(
        "stats",
        help="histograms of a corpus's degradations (PNG + JSON report)",
        description="Measure every sample of DIR (or, before rendering, its plan) and write a report: stats.json "
        "(histograms of target and achieved SNR, effective bandwidth measured on the degraded audio, codec and "
        "bit rate, RT60/DRR, clipped fraction, loudness of target and degraded, operator counts and "
        "co-occurrence), samples.jsonl and PNG plots (overview.png and one per topic).",
    )
    stats.add_argument("dir", help="synthesis output directory or s3:// prefix")
    stats.add_argument("--out", help="report folder (default: ./<DIR name>-stats)")
    stats.add_argument("--split", help="only this split (train, valid, test)")
    stats.add_argument("--limit", type=int, help="only the first N samples")
    stats.add_argument("--workers", type=int, default=4, help="shards read in parallel (default 4)")
    stats.set_defaults(func=run_stats)


def run_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from datasets.shards import read_index
    from pipelines.shards import verify_shards

    total = len(read_index(args.dir)["shards"])
    with tqdm(total=total, unit="shard", disable=args.quiet, desc="verify") as bar:
        report = verify_shards(args.dir, workers=args.workers, on_shard=lambda _: bar.update(1))
    for problem in report.problems:
        print(problem)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problem(s))"
    print(f"{args.dir}: {report.shards} shards, {report.samples} samples: {status}")
    return 0 if report.ok else 1


def run_inspect(args: argparse.Namespace) -> int:
    from datasets.shards import decode_sample, find_raw_sample
    from pipelines.shards import write_inspection

    try:
        if args.out:
            sample, written = write_inspection(args.dir, args.key, args.out)
        else:
            sample, written = decode_sample(find_raw_sample(args.dir, args.key)), []
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    print(json.dumps({"shard": sample.shard, **sample.meta}, indent=2, sort_keys=True))
    for path in written:
        print(f"wrote {path}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from pipelines.shards import LIST_COLUMNS, list_samples

    rows = list_samples(args.dir, split=args.split)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print("\t".join(LIST_COLUMNS))
    for row in rows:
        print("\t".join([*(str(row[c]) for c in LIST_COLUMNS[:-1]), ",".join(row["ops"])]))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from pipelines.shard_stats import corpus_stats

    name = args.dir.rstrip("/").rsplit("/", 1)[-1] or "corpus"
    out = Path(args.out) if args.out else Path.cwd() / f"{name}-stats"
    with tqdm(unit="sample", disable=args.quiet, desc="stats") as bar:
        report = corpus_stats(
            args.dir, out, workers=args.workers, split=args.split, limit=args.limit, on_shard=bar.update
        )
    for line in report.lines():
        print(line)
    return 0
