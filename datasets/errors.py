"""The project's error types: what a user can fix, as opposed to a bug.

The command line reports a :class:`HiresError` as one line (exit code 2); any other exception is a bug and gets
a one-line summary plus the path of the full traceback (exit code 1). Raise the narrowest class that fits and put
the file, key or field and what was expected in the message.
"""

from __future__ import annotations


class HiresError(Exception):
    """Base of every error the user can fix (bad input, bad config, bad flag)."""


class UsageError(HiresError):
    """A bad command-line flag or a bad combination of flags."""


class DataError(HiresError, ValueError):
    """Bad input data: a manifest, shard, index, audio file or model directory that cannot be used as is."""


class IncompatibleError(HiresError, ValueError):
    """Two inputs that must agree do not (a model and a config, two models, a shard set and a stage)."""
