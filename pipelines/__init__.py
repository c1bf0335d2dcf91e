"""Ray Data jobs and the ``hires`` command line: synthesis, shards, restore, evaluate, demo, retrain."""
