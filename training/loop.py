"""The training loop: :func:`train_func` runs on every Ray Train worker; :func:`run` is the loop itself.

``train_func(config)`` reads the loop config built by the driver (``stage``, ``stage_config``, ``config_name``,
``data``, ``steps``, ``seed``, ``models``, ``run_dir``, ``run_name``, ``mlflow``, ``lineage``; see
``training/launcher.py``) and drives one stage (:mod:`training.stages`):

1. frozen upstream models (``stage.requires``/``stage.optional``) are loaded with :func:`load_model`; the stage
   builds its trainable modules (same seed on every rank; DDP broadcasts rank 0's weights anyway), ``models.init``
   loads starting weights into the inference module of a fresh run;
2. each trainable module goes through ``ray.train.torch.prepare_model`` separately (DDP only when world > 1) and
   gets its own AdamW + schedule (:class:`training.optim.TrainOptimizers`; EMA where ``train.ema`` asks);
3. a checkpoint from ``ray.train.get_checkpoint()`` restores everything (weights, optimisers, EMA, scaler, step,
   data position, per-rank RNG states, stage state); a fresh run calls ``stage.setup`` instead;
4. the step: ``grad_accum`` micro-batches (gradients synchronised on the last only), each ``stage.train_step``
   under autocast (bf16 on GPU, fp32 on CPU), then clip + optimiser steps + EMA;
5. every ``log_every`` steps rank 0 logs the window's losses (averaged over ranks), grad norms, lr, samples/s and
   ``data/skipped`` with ``step=`` the global step; every ``eval_every`` steps rank 0 evaluates (EMA weights) and
   logs metrics, three audio examples and spectrogram PNGs; every ``checkpoint_every`` steps every rank calls
   ``ray.train.report`` (a barrier) and rank 0 attaches the full state;
6. at the end rank 0 evaluates, writes ``{run_dir}/model/`` (:mod:`training.model_dir`) and every rank reports
   ``done: 1`` and ``final_step`` with the final checkpoint.

The loop talks to Ray only through a :class:`Context` (rank, world, device, wrapping, reporting, checkpoints,
batches), so tests drive it in-process or in plain ``torch.distributed`` processes with an in-memory batch source.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from datasets import storage
from datasets.errors import DataError, IncompatibleError, UsageError
from training import checkpoint as ckpt
from training.config import StageConfig
from training.model_dir import load_model, save_model_dir
from training.optim import TrainOptimizers
from training.stages import Stage, get_stage, unwrap
from training.tracking import RankZeroLogger, flatten

log = logging.getLogger(__name__)

TrainBatches = Callable[[int, int, dict], Iterable[dict]]  # (epoch, start_batch, stats) -> batches
EvalBatches = Callable[[int], Iterable[dict]]  # (max_samples) -> batches
N_EXAMPLES = 3


class _NullLogger:
    """Stands in for :class:`training.tracking.RankZeroLogger` where tracking is off or unavailable."""

    def log_params(self, flat: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_audio(self, path_in_run: str, wave: np.ndarray, sr: int) -> None: ...
    def log_image(self, path_in_run: str, png_bytes: bytes) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def close(self) -> None: ...


@dataclass
class Context:
    """What the loop needs from its environment (Ray Train in :func:`train_func`, plain processes in tests).

    ``report(metrics, state)`` is a barrier every rank calls the same number of times; ``state`` (the full
    training state, rank 0 only, else ``None``) becomes the checkpoint. ``load_checkpoint()`` returns the
    latest state or ``None``.
    """

    rank: int
    world: int
    device: torch.device
    train_batches: TrainBatches
    eval_batches: EvalBatches
    prepare_model: Callable[[nn.Module], nn.Module]
    report: Callable[[dict, dict | None], None]
    load_checkpoint: Callable[[], dict | None]
    logger: Any = field(default_factory=_NullLogger)


# ----- helpers -------------------------------------------------------------------------------------------------
def data_spec_dict(config: dict, stage_cfg: StageConfig, streams: tuple[str, ...]) -> dict:
    """The DataSpec dict for a stage: the driver's ``data`` entry with the stage's own batch, crop, streams,
    loudness and thread settings (the stage config is the one source of those)."""
    t = stage_cfg.train
    data = dict(config.get("data") or {})
    data.setdefault("seed", int(config.get("seed", 0)))
    data.update(
        streams=tuple(streams),
        batch_size=t.batch_size,
        crop_samples=t.crop_samples,
        input_loudness_lufs=t.input_loudness_lufs,
        num_threads=t.num_threads,
    )
    return data


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _reduce_device(device: torch.device) -> torch.device:
    return device if _is_dist() and dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce_mean(values: dict[str, float], device: torch.device, world: int) -> dict[str, float]:
    """Mean of each value over ranks (every rank must hold the same keys)."""
    if world <= 1 or not _is_dist() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}


def _all_reduce_sum(value: float, device: torch.device, world: int) -> float:
    if world <= 1 or not _is_dist():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_reduce_device(device))
    dist.all_reduce(t)
    return float(t.item())


def _gather_rng(world: int) -> dict[int, dict]:
    """Every rank's RNG states, on rank 0 (others get their own only; only rank 0 saves)."""
    mine = ckpt.rng_state()
    if world <= 1 or not _is_dist():
        return {0: mine}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return {r: g for r, g in enumerate(gathered)}


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _spectrogram_png(panels: list[tuple[str, np.ndarray, bool]], sr: int) -> bytes:
    """One PNG with a row per panel: ``(title, data, is_mel)``; waveforms become log-magnitude STFTs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), squeeze=False)
    for ax, (title, data, is_mel) in zip(axes[:, 0], panels, strict=True):
        if is_mel:
            image = data
        else:
            wave = torch.from_numpy(np.asarray(data, dtype=np.float32))
            n_fft = 1024 if sr >= 32000 else 512
            spec = torch.stft(
                wave, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True, center=True
            )
            image = (20 * torch.log10(spec.abs() + 1e-5)).numpy()
        ax.imshow(image, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def log_examples(logger: Any, result: Any, step: int) -> None:
    """Audio (clean, degraded, output) and a spectrogram PNG per evaluation example."""
    for i, ex in enumerate(result.examples[:N_EXAMPLES]):
        base = f"eval/step_{step:08d}/{i}_{_safe_name(ex.key)}"
        logger.log_audio(f"{base}_clean.wav", ex.clean, ex.sample_rate)
        logger.log_audio(f"{base}_degraded.wav", ex.degraded, ex.sample_rate)
        panels = [("clean", ex.clean, False), ("degraded", ex.degraded, False)]
        if ex.output is not None:
            logger.log_audio(f"{base}_output.wav", ex.output, ex.sample_rate)
            panels.append(("output", ex.output, False))
        if getattr(ex, "output_mel", None) is not None:
            panels.append(("output (log-mel)", ex.output_mel, True))
        try:
            logger.log_image(f"{base}_spectrogram.png", _spectrogram_png(panels, ex.sample_rate))
        except Exception as e:  # a plotting failure must not stop training
            log.warning("could not draw the spectrograms of %s: %s", ex.key, e)


def flat_params(config: dict, stage_cfg: StageConfig, world: int) -> dict[str, Any]:
    """The resolved configuration as flat MLflow parameters."""
    params = {k: v for k, v in config.items() if k not in ("stage_config", "mlflow")}
    params["stage_config"] = stage_cfg.model_dump(mode="json")
    params["world_size"] = world
    return flatten(params)


# ----- loading ----------------------------------------------------------------------------------------------------
def load_frozen(stage_cls: type[Stage], config: dict) -> dict[str, Any]:
    """The frozen upstream models a stage needs, from ``config["models"]`` (UsageError naming a missing one)."""
    models = config.get("models") or {}
    tracking_uri = (config.get("mlflow") or {}).get("tracking_uri")
    missing = [name for name in stage_cls.requires if not models.get(name)]
    if missing:
        raise UsageError(
            f"stage {stage_cls.name} needs a trained {' and '.join(missing)} model: pass "
            + " ".join(f"--{name} MODEL" for name in missing)
        )
    frozen: dict[str, Any] = {}
    for name in stage_cls.requires:
        frozen[name] = load_model(models[name], tracking_uri)
    for name in getattr(stage_cls, "optional", ()):
        if models.get(name):
            frozen[name] = load_model(models[name], tracking_uri)
    return frozen


def load_init(stage: Stage, modules: dict[str, nn.Module], source: str, tracking_uri: str | None) -> None:
    """Start a fresh run from the weights of a model directory of the same stage (``--init``)."""
    loaded = load_model(source, tracking_uri)
    if loaded.stage != stage.name:
        raise IncompatibleError(
            f"--init {source} is a model of stage {loaded.stage}, this run trains {stage.name}"
        )
    names = stage.inference_modules
    if len(names) != 1:
        raise IncompatibleError(f"--init: stage {stage.name} has {len(names)} inference modules, expected 1")
    try:
        unwrap(modules[names[0]]).load_state_dict(loaded.network.state_dict(), strict=True)
    except RuntimeError as e:
        raise IncompatibleError(
            f"--init {source}: network {loaded.config.model.name!r} does not fit this run's "  # type: ignore[attr-defined]
            f"{stage.cfg.model.name!r} config ({str(e).splitlines()[-1].strip()[:200]})"  # type: ignore[attr-defined]
        ) from None


def inference_state_dict(stage: Stage, opt: TrainOptimizers) -> dict[str, torch.Tensor]:
    """The weights that go into ``weights.safetensors``: one inference module unprefixed, several prefixed."""
    names = stage.inference_modules or tuple(opt.modules)
    if len(names) == 1:
        return opt.inference_state_dict(names[0])
    return {f"{n}.{k}": v for n in names for k, v in opt.inference_state_dict(n).items()}


def _code_version(config: dict) -> str:
    lineage = config.get("lineage") or {}
    if lineage.get("code_version"):
        return str(lineage["code_version"])
    try:
        from datasets.code_version import code_version

        return code_version(["training.loop"])
    except Exception:  # noqa: BLE001 - lineage is informative; never fail a finished run on it
        return "unknown"


# ----- the loop ---------------------------------------------------------------------------------------------------
class _Batches:
    """The data position and an iterator continuing from it across epochs.

    ``epoch``/``batch`` is the position of the next batch to train on (what checkpoints keep); :meth:`peek` reads
    batches ahead without consuming them (ldm's scale factor is measured on the first training batches, read
    once: a second, abandoned iterator would stall a Ray Data streaming split in online mode).
    """

    def __init__(self, source: TrainBatches, epoch: int, batch: int, stats: dict) -> None:
        self.source, self.epoch, self.batch, self.stats = source, epoch, batch, stats
        self._read_epoch, self._read_batch = epoch, batch
        self._it: Iterator[dict] | None = None
        self._ahead: collections.deque[tuple[int, int, dict]] = collections.deque()

    def _read(self) -> tuple[int, int, dict]:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.source(self._read_epoch, self._read_batch, self.stats))
            try:
                item = next(self._it)
            except StopIteration:
                self._it = None
                if self._read_batch == 0:
                    break
                self._read_epoch, self._read_batch = self._read_epoch + 1, 0
                continue
            self._read_batch += 1
            return self._read_epoch, self._read_batch, item
        raise DataError(
            f"epoch {self._read_epoch} has no batches for this rank: the training data is smaller than one batch "
            "per worker (fewer samples, a smaller batch_size or fewer workers)"
        )

    def peek(self, n: int) -> list[dict]:
        while len(self._ahead) < n:
            self._ahead.append(self._read())
        return [item for _, _, item in list(self._ahead)[:n]]

    def next(self) -> dict:
        epoch, batch, item = self._ahead.popleft() if self._ahead else self._read()
        self.epoch, self.batch = epoch, batch
        return item

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._it = None


def _full_state(
    stage: Stage, modules: dict[str, nn.Module], opt: TrainOptimizers, data: _Batches, world: int, extra: dict
) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "step": opt.step_count,
        "epoch": data.epoch,
        "batch": data.batch,
        "world": world,
        "modules": {n: unwrap(m).state_dict() for n, m in modules.items()},
        "optim": opt.state_dict(),
        "stage_state": stage.state_dict(),
        **extra,
    }


def _evaluate(stage: Stage, opt: TrainOptimizers, ctx: Context, max_samples: int) -> Any:
    batches = (_to_device(b, ctx.device) for b in ctx.eval_batches(max_samples))
    with opt.eval_weights(), opt.autocast():
        return stage.evaluate(batches, max_examples=N_EXAMPLES)


def run(config: dict, ctx: Context) -> dict[str, Any]:
    """The training loop (see the module docstring); returns a summary (``final_step``, final metrics)."""
    cfg = StageConfig.model_validate(config["stage_config"])
    if config.get("stage", cfg.stage) != cfg.stage:
        raise UsageError(f"loop config: stage {config['stage']!r} but stage_config is for {cfg.stage!r}")
    steps = int(config.get("steps") or cfg.train.steps)
    if steps != cfg.train.steps:  # the schedule spans the steps this run actually takes
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps})})
    t = cfg.train
    seed = int(config.get("seed", 0))
    stage_cls = get_stage(cfg.stage)
    tracking_uri = (config.get("mlflow") or {}).get("tracking_uri")

    ckpt.seed_everything(seed)  # identical initial weights on every rank
    frozen = load_frozen(stage_cls, config)
    stage = stage_cls(cfg, ctx.device, frozen)
    modules = stage.trainable()
    state = ctx.load_checkpoint()
    init = (config.get("models") or {}).get("init")
    if state is None and init:
        load_init(stage, modules, str(init), tracking_uri)
    wrapped = {name: ctx.prepare_model(m) for name, m in modules.items()}
    stage.bind(wrapped)
    opt = TrainOptimizers(
        wrapped,
        {name: stage.optimizer_config(name) for name in wrapped},
        t,
        ctx.device.type,
        stage.ema_modules,
    )
    stats: dict[str, Any] = {"skipped": 0}
    if state is not None:
        if state.get("stage") != stage.name:
            raise IncompatibleError(
                f"checkpoint is of stage {state.get('stage')!r}, this run is {stage.name}"
            )
        for name, m in wrapped.items():
            unwrap(m).load_state_dict(state["modules"][name])
        opt.load_state_dict(state["optim"])
        stage.load_state_dict(state.get("stage_state") or {})
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if int(state.get("world", ctx.world)) != ctx.world and batch > 0:
            # an elastic resize: shares (and batches per epoch) depend on the world size, so the position inside
            # the interrupted epoch means nothing now; go on with the next epoch (its remainder is skipped once)
            log.warning(
                "world size %s -> %s: resuming at epoch %d instead of epoch %d batch %d",
                state.get("world"),
                ctx.world,
                epoch + 1,
                epoch,
                batch,
            )
            epoch, batch = epoch + 1, 0
        data = _Batches(ctx.train_batches, epoch, batch, stats)
        rngs = state.get("rng") or {}
        if ctx.rank in rngs and int(state.get("world", 0)) == ctx.world:
            ckpt.set_rng_state(rngs[ctx.rank])
        else:  # another world size (elastic resize): fresh, distinct streams from here
            ckpt.seed_everything(seed * 1_000_003 + 7919 * opt.step_count + ctx.rank)
        last_metrics = dict(state.get("metrics") or {})
        skipped_before = float(state.get("data_skipped", 0.0))
    else:
        ckpt.seed_everything(seed * 1_000_003 + ctx.rank)  # distinct noise/dropout per rank
        data = _Batches(ctx.train_batches, 0, 0, stats)
        n_setup = stage.setup_batches
        stage.setup([_to_device(b, ctx.device) for b in data.peek(n_setup)] if n_setup else [])
        last_metrics = {}
        skipped_before = 0.0

    def skipped_total() -> float:
        """Corrupt samples skipped by every rank since the run began (a collective: every rank calls it)."""
        return skipped_before + _all_reduce_sum(float(stats.get("skipped", 0)), ctx.device, ctx.world)

    logger = ctx.logger
    if ctx.rank == 0:
        logger.log_params(flat_params(config, cfg, ctx.world))
        lineage = config.get("lineage") or {}
        logger.set_tags(
            {
                "hires.stage": stage.name,
                "hires.code_version": _code_version(config),
                "hires.shards_index_sha256": lineage.get("shards_index_sha256") or "",
            }
        )

    def report(metrics: dict, with_state: bool) -> None:
        """Barrier on every rank; rank 0 attaches the full state (RNG states gathered from every rank)."""
        rng = _gather_rng(ctx.world) if with_state else None
        skipped = skipped_total() if with_state else 0.0
        full = None
        if with_state and ctx.rank == 0:
            extra = {"rng": rng, "metrics": dict(metrics), "data_skipped": skipped}
            full = _full_state(stage, wrapped, opt, data, ctx.world, extra)
        ctx.report(dict(metrics), full)

    window: dict[str, float] = {}
    counts: dict[str, int] = {}
    step_metrics: dict[str, float] = {}
    window_steps = 0
    window_start = time.perf_counter()
    samples_per_step = t.batch_size * t.grad_accum * ctx.world
    skipped_logged = 0.0

    try:
        while opt.step_count < steps:
            step = opt.step_count
            for micro in range(t.grad_accum):
                batch = _to_device(data.next(), ctx.device)
                sync = micro == t.grad_accum - 1
                with contextlib.ExitStack() as stack:
                    if not sync:  # gradients are all-reduced once per optimiser step
                        for m in wrapped.values():
                            if hasattr(m, "no_sync"):
                                stack.enter_context(m.no_sync())
                    with opt.autocast():
                        out = stage.train_step(batch, step, opt)
                for k, v in out.items():
                    step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / t.grad_accum
            step_metrics.update(opt.step())
            # a key is averaged over the steps that produced it (e.g. a discriminator that starts mid-window)
            for k, v in step_metrics.items():
                window[k] = window.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            window_steps += 1
            step = opt.step_count
            loss = step_metrics.get("loss", 0.0)
            step_metrics = {}
            # fp16 skips non-finite steps through its scaler; elsewhere a NaN would silently poison the weights
            if not math.isfinite(loss) and opt.precision != "fp16":
                raise FloatingPointError(f"{stage.name}: loss is {loss} at step {step}")

            if step % t.log_every == 0 or step == steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                means = {k: v / counts[k] for k, v in window.items()}
                means = _all_reduce_mean(means, ctx.device, ctx.world)
                skipped = skipped_total()
                means["samples_per_s"] = samples_per_step * window_steps / elapsed
                means["steps_per_s"] = window_steps / elapsed
                means["data/skipped"] = skipped
                means["epoch"] = float(data.epoch)
                if ctx.rank == 0:
                    logger.log_metrics(means, step=step)
                    if skipped > skipped_logged:
                        log.warning("%d corrupt training sample(s) skipped so far", int(skipped))
                        skipped_logged = skipped
                last_metrics = {k: v for k, v in means.items() if not k.startswith(("lr/", "grad_norm/"))}
                window, counts, window_steps, window_start = {}, {}, 0, time.perf_counter()

            if step % t.eval_every == 0 and step < steps and ctx.rank == 0:
                result = _evaluate(stage, opt, ctx, t.eval_samples)
                logger.log_metrics({f"eval/{k}": v for k, v in result.metrics.items()}, step=step)
                log_examples(logger, result, step)

            if step % t.checkpoint_every == 0 and step < steps:
                report({**last_metrics, "step": step, "epoch": data.epoch}, with_state=True)
    finally:
        data.close()

    # ----- the end: final evaluation, model directory, final report ---------------------------------------------
    final_metrics: dict[str, float] = {}
    model_path = None
    if ctx.rank == 0:
        result = _evaluate(stage, opt, ctx, t.eval_samples)
        final_metrics = dict(result.metrics)
        logger.log_metrics({f"eval/{k}": v for k, v in final_metrics.items()}, step=opt.step_count)
        log_examples(logger, result, opt.step_count)
        if config.get("run_dir"):
            model_path = storage.join(str(config["run_dir"]), "model")
            lineage = config.get("lineage") or {}
            meta = {
                "step": opt.step_count,
                "code_version": _code_version(config),
                "shards": {"index_sha256": lineage.get("shards_index_sha256"), "path": lineage.get("shards")},
                "metrics": final_metrics,
                "run_name": config.get("run_name"),
                "config_name": config.get("config_name"),
                "world_size": ctx.world,
                "scale_factor": None,
                **stage.model_meta(),
            }
            save_model_dir(model_path, stage.name, cfg, inference_state_dict(stage, opt), meta)
        logger.log_metrics({"done": 1.0}, step=opt.step_count)
    report(
        {
            **last_metrics,
            **{f"eval/{k}": v for k, v in final_metrics.items()},
            "step": opt.step_count,
            "epoch": data.epoch,
            "done": 1,
            "final_step": opt.step_count,
        },
        with_state=True,
    )
    logger.close()
    return {"final_step": opt.step_count, "metrics": final_metrics, "model_dir": model_path, "stage": stage}


# ----- Ray Train ----------------------------------------------------------------------------------------------------
def ray_context(config: dict, stage_cfg: StageConfig) -> Context:
    """The :class:`Context` of a Ray Train V2 worker: shards (or the online dataset) through training.data."""
    import ray.train
    import ray.train.torch

    from training import data as data_mod

    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    spec = data_mod.DataSpec.from_dict(data_spec_dict(config, stage_cfg, get_stage(stage_cfg.stage).streams))

    def train_batches(epoch: int, start: int, stats: dict) -> Iterable[dict]:
        return data_mod.train_batches(spec, rank, world, epoch, start_batch=start, stats=stats)

    def eval_batches(max_samples: int) -> Iterable[dict]:
        # rank 0 evaluates alone (the other ranks go on to the next collective and wait there)
        return data_mod.eval_batches(spec, 0, 1, max_samples)

    def prepare(module: nn.Module) -> nn.Module:
        # DDP only when world > 1 (prepare_model's own rule); every parameter takes part in each step of its
        # module, so find_unused_parameters stays off
        return ray.train.torch.prepare_model(module, move_to_device=device)

    def report(metrics: dict, state: dict | None) -> None:
        if state is None:
            ray.train.report(metrics)
            return
        tmp = tempfile.mkdtemp(prefix="hires-ckpt-")
        try:
            ckpt.save_state(tmp, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_checkpoint() -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return ckpt.load_state(d)

    logger: Any = RankZeroLogger(config.get("mlflow"), rank=rank) if rank == 0 else _NullLogger()
    return Context(rank, world, device, train_batches, eval_batches, prepare, report, load_checkpoint, logger)


def train_func(config: dict) -> None:
    """Ray Train V2 worker entry point (``TorchTrainer(train_func, train_loop_config=config)``)."""
    cfg = StageConfig.model_validate(config["stage_config"])
    ctx = ray_context(config, cfg)
    run(config, ctx)
