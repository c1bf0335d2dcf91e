"""Optimisation of a stage's trainable modules: AdamW, warm-up + decay schedule, EMA, clipping, accumulation, fp16.

:class:`TrainOptimizers` is the loop's implementation of :class:`training.stages.base.Optimizers`: a stage calls
``opt.backward(name, loss)`` for each loss of a micro-batch; after ``grad_accum`` micro-batches the loop calls
:meth:`TrainOptimizers.step`, which unscales (fp16), clips each module's gradients, steps the optimisers of the
modules that received a gradient, sets the next learning rate and updates the EMA copies.

The schedule is a pure function of the optimiser step (:func:`lr_factor`), so the learning rate after a resume is
exactly the one an uninterrupted run would use. The EMA follows the LDM/AudioLDM ``LitEma`` rule
``decay_n = min(decay, (1 + n) / (10 + n))`` over the ``n`` updates since ``ema.start_step``, which keeps the
average from being dominated by the random initialisation early on.

Everything in :meth:`TrainOptimizers.state_dict` is tensors and plain containers, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from training.stages.base import unwrap
from training.train_config import OptimizerConfig, ScheduleConfig, TrainConfig


def lr_factor(step: int, total_steps: int, sched: ScheduleConfig) -> float:
    """Multiplier of the base learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up from ``1 / (warmup + 1)`` to 1 over ``warmup_steps`` (the first step already moves), then
    ``decay`` from 1 to ``min_lr_ratio`` at ``total_steps`` (``exponential``: ``gamma ** k``, floored at
    ``min_lr_ratio``; ``constant``: 1).
    """
    warm = sched.warmup_steps
    if step < warm:
        return (step + 1) / (warm + 1)
    k = step - warm
    span = max(total_steps - warm, 1)
    progress = min(k / span, 1.0)
    floor = sched.min_lr_ratio
    if sched.decay == "constant":
        return 1.0
    if sched.decay == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    if sched.decay == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(sched.gamma**k, floor)  # exponential


class EMA:
    """Exponential moving average of a module's floating-point parameters (buffers are taken as they are)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone().float() for name, p in unwrap(module).named_parameters()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in unwrap(module).named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the module: {sorted(missing)[:5]}")
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)

    def averaged_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The module's state dict with EMA parameters (in the parameters' dtype) and its live buffers."""
        state = {k: v.detach().clone() for k, v in unwrap(module).state_dict().items()}
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype)
        return state

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA parameters into ``module`` (e.g. for evaluation), then restore them."""
        params = dict(unwrap(module).named_parameters())
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])


def _adamw(module: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    params = [p for p in unwrap(module).parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


class TrainOptimizers:
    """AdamW + schedule per trainable module, shared fp16 scaler, EMA for ``ema_modules`` (see module docstring).

    ``modules`` are the (possibly DDP-wrapped) trainable modules in update order; ``opt_configs`` their AdamW
    settings. ``device_type`` and ``train.precision`` decide autocast: bf16/fp16 on CUDA, fp32 elsewhere.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        opt_configs: dict[str, OptimizerConfig],
        train: TrainConfig,
        device_type: str,
        ema_modules: tuple[str, ...] = (),
    ) -> None:
        self.modules = dict(modules)
        self.train = train
        self.device_type = device_type
        self.optimizers = {name: _adamw(m, opt_configs[name]) for name, m in self.modules.items()}
        self.base_lr = {name: opt_configs[name].lr for name in self.modules}
        self.precision = train.precision if device_type == "cuda" else "fp32"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.ema = (
            {name: EMA(self.modules[name], train.ema.decay) for name in ema_modules if name in self.modules}
            if train.ema.enabled
            else {}
        )
        self.step_count = 0  # optimiser steps taken
        self._touched: set[str] = set()
        self._set_lr()

    # ----- the stage's side -------------------------------------------------------------------------------
    def backward(self, name: str, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (a scalar) of module ``name``, averaged over the accumulation window."""
        if name not in self.optimizers:
            raise KeyError(f"no optimiser for module {name!r}; trainable: {', '.join(self.optimizers)}")
        self._touched.add(name)
        self.scaler.scale(loss / self.train.grad_accum).backward()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context of the forward passes (no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    # ----- the loop's side --------------------------------------------------------------------------------
    def lr(self, name: str) -> float:
        return float(self.optimizers[name].param_groups[0]["lr"])

    def _set_lr(self) -> None:
        factor = lr_factor(self.step_count, self.train.steps, self.train.schedule)
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.base_lr[name] * factor

    def step(self) -> dict[str, float]:
        """Clip, step and zero every optimiser that received gradients; update EMA; returns grad norms and lr."""
        metrics: dict[str, float] = {}
        clip = self.train.grad_clip
        for name, opt in self.optimizers.items():
            if name not in self._touched:
                continue
            self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
            metrics[f"grad_norm/{name}"] = float(norm)
            metrics[f"lr/{name}"] = self.lr(name)
            self.scaler.step(opt)
        if self._touched:  # the fp16 scaler refuses an update without any step behind it
            self.scaler.update()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.step_count += 1
        self._touched.clear()
        if self.step_count > self.train.ema.start_step:
            for name, ema in self.ema.items():
                ema.update(self.modules[name])
        self._set_lr()
        return metrics

    def inference_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Weights of module ``name`` for inference: its EMA where kept, else the live weights."""
        if name in self.ema:
            return self.ema[name].averaged_state_dict(self.modules[name])
        return {k: v.detach().clone() for k, v in unwrap(self.modules[name]).state_dict().items()}

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """Context in which every EMA module carries its averaged weights."""
        stack = contextlib.ExitStack()
        for name, ema in self.ema.items():
            stack.enter_context(ema.swapped_in(self.modules[name]))
        return stack

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "ema": {n: e.state_dict() for n, e in self.ema.items()},
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["optimizers"]) != set(self.optimizers):
            raise KeyError(
                f"checkpoint has optimisers {sorted(state['optimizers'])}, stage has {sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, ema in self.ema.items():
            if name in state["ema"]:
                ema.load_state_dict(state["ema"][name])
            else:  # EMA switched on for a resumed run: start averaging from the current weights
                self.ema[name] = EMA(self.modules[name], self.train.ema.decay)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step_count = int(state["step"])
        self._set_lr()
