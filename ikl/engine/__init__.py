"""The one training loop, evaluation, checkpoints, the metric sink and distributed helpers."""
