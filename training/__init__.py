"""Training side of hires: audio features, the four networks and the diffusion module, stage configs.

Pure PyTorch below this package's ``features`` and ``models`` modules: no Ray, no MLflow, so everything here is
testable in a plain process and usable at inference time.
"""
