"""``python -m pipelines`` is the ``hires`` command (what ``ray job submit`` entrypoints call)."""

import sys

from pipelines.cli import main

sys.exit(main())
