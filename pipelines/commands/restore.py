"""``hires restore IN... --out DIR``: restore files and folders to 48 kHz 24-bit speech (see docs/restore.md).

Models come as one bundle folder (``--bundle``, written by ``hires models bundle``) or one flag per stage (a model
directory, ``s3://`` directory or ``models:/`` URI each); a stage flag replaces the bundle's entry. Without
``--address`` files are restored here (:mod:`pipelines.restore`); with it the same command runs as a Ray Data
batch job on that cluster (:mod:`pipelines.restore_ray`).

Exit codes: 0 every input restored (or already done), 3 some inputs rejected (listed in ``DIR/rejects.jsonl``),
2 a usage error (bad flag, bad bundle, unwritable ``--out``).
"""

from __future__ import annotations

import argparse
import sys

from pipelines.commands import non_negative_int, positive_int

STAGE_FLAGS = ("recovery", "autoencoder", "vocoder", "ldm")


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore speech files and folders to 48 kHz with the two-stage model",
        description="Restore audio files and folders (recursively; relative paths mirrored under --out) to 48 kHz "
        "24-bit mono FLAC or WAV: loudness normalisation, the recovery network at 16 kHz, then the latent "
        "diffusion model, VAE decoder and HiFi-GAN at 48 kHz, and the input's loudness restored. Any rate, "
        "channel count (downmixed to mono) and container that hires reads; any length (5.12 s windows with "
        "cross-fades, streamed). Inputs are never overwritten; a rerun skips finished outputs; unreadable inputs "
        "are listed in OUT/rejects.jsonl and the exit code is 3. Deterministic for a seed on a given device.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="audio files and/or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    models = p.add_argument_group(
        "models (a bundle, and/or one per stage: model dir, s3:// dir or models:/ URI)"
    )
    models.add_argument("--bundle", metavar="DIR", help="bundle folder written by `hires models bundle`")
    for stage in STAGE_FLAGS:
        models.add_argument(f"--{stage}", metavar="M", help=f"{stage} model (replaces the bundle's)")
    models.add_argument("--tracking-uri", metavar="U", help="MLflow registry of models:/ URIs")
    gen = p.add_argument_group("generation")
    gen.add_argument(
        "--steps", type=positive_int, help="DDIM steps (default: the ldm config's, 50 for paper)"
    )
    gen.add_argument(
        "--guidance", type=_guidance, help="classifier-free guidance scale (default: the config's)"
    )
    gen.add_argument(
        "--iterations", type=positive_int, default=1, help="apply the generative stage N times (default 1)"
    )
    gen.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    gen.add_argument("--recovery-only", action="store_true", help="stop after the recovery stage")
    gen.add_argument(
        "--keep-stages",
        action="store_true",
        help="also write OUT/.../NAME.recovery.EXT (the recovery output)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--format", choices=("flac", "wav"), default="flac", help="output format (default flac)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="windows per network call (default 1; more on a GPU)",
    )
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--address", metavar="A", help="run as a Ray Data batch job on the cluster at A")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    from training.restorer import RestoreOptions

    return RestoreOptions(
        steps=args.steps,
        guidance=args.guidance,
        iterations=args.iterations,
        seed=args.seed,
        recovery_only=args.recovery_only,
        keep_stages=args.keep_stages,
    )


def run(args: argparse.Namespace) -> int:
    from datasets.errors import UsageError

    if not args.bundle and not args.recovery:
        raise UsageError(
            "name the models: --bundle DIR, or --recovery M (and --autoencoder/--vocoder/--ldm M)"
        )
    options = options_from_args(args)

    def load_bundle():
        from training.restorer import Bundle

        return Bundle.load(
            args.bundle,
            recovery=args.recovery,
            autoencoder=args.autoencoder,
            vocoder=args.vocoder,
            ldm=args.ldm,
            tracking_uri=args.tracking_uri,
            need_generative=not args.recovery_only,
        )

    if args.address:
        from pipelines.restore_ray import run as run_on_ray

        return run_on_ray(args, options, load_bundle)

    import torch

    from pipelines.restore import EXIT_SOME_FAILED, restore_paths
    from training.restorer import Restorer

    if args.threads:
        torch.set_num_threads(args.threads)

    def load() -> Restorer:
        return Restorer(load_bundle(), device=args.device)

    summary = restore_paths(
        args.inputs,
        args.out,
        load,
        options,
        fmt=args.format,
        progress=not args.quiet,
        batch_size=args.batch_size,
    )
    print(summary.line(), file=sys.stderr if args.quiet else sys.stdout)
    for reject in summary.rejected:
        print(f"rejected: {reject['reason']}", file=sys.stderr)
    return 0 if summary.ok else EXIT_SOME_FAILED
