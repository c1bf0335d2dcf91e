"""Clean-speech corpora, noise and RIR banks: audio I/O, scanning, manifests and rejects, demo data.

Note: this top-level package is named ``datasets`` and shadows Hugging Face ``datasets`` inside the project's
virtual environment; install hires into its own ``.venv`` (``make demo`` / ``make test`` do).
"""
