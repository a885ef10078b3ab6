"""Continual trainer of the :mod:`model` package: training loop, optimizers, progressive validation, checkpoints,
training-only baselines and offline evaluation."""
