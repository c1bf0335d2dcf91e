"""Registry of networks: a stage config names a network, ``build`` instantiates it.

A network is an ``nn.Module`` class with two class attributes, ``stage`` (which training stage it serves) and
``Config`` (a :class:`~datasets.config.StrictModel` holding its hyper-parameters, with a ``name`` field), and a
constructor taking that config. Adding one is one new module plus ``@register("my_net")``::

    @register("ncsnpp_m")
    class NCSNppM(nn.Module):
        stage = "recovery"
        Config = NCSNppConfig
        def __init__(self, cfg: NCSNppConfig): ...

Networks trained adversarially also define ``build_discriminator(cfg) -> nn.Module`` as a static method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from torch import nn

from datasets.config import ConfigError, StrictModel, format_validation_error

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")

_NETWORKS: dict[str, type[nn.Module]] = {}

N = TypeVar("N", bound=type[nn.Module])


class NetworkConfig(StrictModel):
    """Base of every network's hyper-parameter model: ``name`` is the registry key."""

    name: str


def register(name: str) -> Callable[[N], N]:
    """Class decorator adding a network under ``name`` (the ``model.name`` of stage configs)."""

    def decorate(cls: N) -> N:
        if name in _NETWORKS and _NETWORKS[name] is not cls:
            raise ValueError(f"network {name!r} is already registered by {_NETWORKS[name].__qualname__}")
        stage = getattr(cls, "stage", None)
        if stage not in STAGES:
            raise TypeError(f"{cls.__qualname__}.stage must be one of {STAGES}, got {stage!r}")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, NetworkConfig)):
            raise TypeError(f"{cls.__qualname__}.Config must subclass NetworkConfig")
        _NETWORKS[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    # importing the modules runs their @register decorators
    from training.models import hifigan, ldm_unet, ncsnpp, vae  # noqa: F401


def names(stage: str | None = None) -> list[str]:
    """Registered network names, optionally only those of ``stage``."""
    _load_builtin()
    return sorted(n for n, cls in _NETWORKS.items() if stage is None or cls.stage == stage)


def network_class(name: str) -> type[nn.Module]:
    _load_builtin()
    try:
        return _NETWORKS[name]
    except KeyError:
        raise ConfigError(f"model.name: unknown network {name!r}; registered: {', '.join(names())}") from None


def config_class(name: str) -> type[NetworkConfig]:
    """The hyper-parameter model of network ``name``."""
    return network_class(name).Config  # type: ignore[attr-defined,no-any-return]


def _model_config(cfg: Any) -> StrictModel:
    """Accept a stage config (uses ``.model``), a network config, or a mapping with a ``name`` key."""
    if hasattr(cfg, "model") and isinstance(cfg.model, StrictModel):
        return cfg.model
    if isinstance(cfg, StrictModel):
        return cfg
    if isinstance(cfg, Mapping):
        if "name" not in cfg:
            raise ConfigError("model: missing 'name' (the registered network)")
        try:
            return config_class(str(cfg["name"])).model_validate(dict(cfg))
        except ValidationError as e:
            raise ConfigError(format_validation_error("<model>", e)) from None
    raise TypeError(f"build() takes a stage config, a network config or a mapping, got {type(cfg).__name__}")


def build(cfg: Any) -> nn.Module:
    """Instantiate the network a stage config / network config / mapping names.

    Wrap in ``with torch.device("meta"):`` to get shapes and parameter counts without allocating weights.
    """
    model_cfg = _model_config(cfg)
    cls = network_class(model_cfg.name)  # type: ignore[attr-defined]
    if not isinstance(model_cfg, cls.Config):  # type: ignore[attr-defined]
        raise ConfigError(
            f"model: config of type {type(model_cfg).__name__} does not belong to network {model_cfg.name!r}"
        )  # type: ignore[attr-defined]
    return cls(model_cfg)


def build_discriminator(cfg: Any) -> nn.Module | None:
    """The adversarial discriminator of the network ``cfg`` names, or ``None`` if it has none."""
    model_cfg = _model_config(cfg)
    factory = getattr(network_class(model_cfg.name), "build_discriminator", None)  # type: ignore[attr-defined]
    return factory(model_cfg) if factory is not None else None
