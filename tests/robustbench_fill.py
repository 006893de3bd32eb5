"""Deterministic weights for a state-dict layout: the same values for the same keys and shapes, whatever
the architecture's own initialisation (tests/fixtures/robustbench was generated with this function)."""

from __future__ import annotations

import math

import torch


def seeded_state(layout: list[tuple[str, list[int]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors for ``layout`` (key, shape), drawn in its order from one seeded generator, scaled so a
    deep network's activations stay O(1): fan-in-scaled weights, BN gamma ~1, running_var > 0."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
            continue
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        if key.endswith("running_var"):
            value = value.abs() + 0.5
        elif key.endswith("running_mean") or len(shape) == 1 and not key.endswith("weight"):
            value = 0.1 * value
        elif len(shape) == 1:  # a norm layer's scale
            value = 1 + 0.1 * value
        else:
            value = value / math.sqrt(math.prod(shape[1:]))
        state[key] = value.float()
    return state
