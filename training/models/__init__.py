"""The networks of the four stages, their shared layers, the diffusion module and the registry.

``build(cfg)`` (re-exported from :mod:`training.models.registry`) turns a stage config into a network.
"""

from training.models.registry import STAGES, build, build_discriminator, names, register

__all__ = ["STAGES", "build", "build_discriminator", "names", "register"]
