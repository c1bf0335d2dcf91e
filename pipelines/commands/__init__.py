"""Sub-command groups of the ``hires`` CLI; each module has ``register(subparsers)``."""
