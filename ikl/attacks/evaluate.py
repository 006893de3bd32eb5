"""Robust accuracy under PGD-k / CW-k: per-epoch monitoring and paper Table 11.

Table 11 (PAPER.md §5.4) reports PGD-10/20 and CW-10/20 at ε = 8/255 with step 2/255 and a
uniform random start. As in the TRADES/AWP evaluation scripts, a sample counts as robust when the
model classifies the attacked input correctly.

Counts (not ratios) are what a distributed caller all-reduces: :func:`robust_counts` returns them,
:func:`accuracies_from_counts` turns (reduced) counts into accuracies, and
:func:`robust_accuracy` does both for a single process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ikl.attacks.pgd import RandomStart, ce_objective, cw_objective, eval_mode, pgd_linf

ObjectiveName = Literal["ce", "cw"]
_OBJECTIVES = {"ce": ce_objective, "cw": cw_objective}


@dataclass(frozen=True)
class RobustCounts:
    """Correct predictions on clean and attacked inputs out of ``n`` samples (sum these across ranks)."""

    correct_clean: int
    correct_robust: int
    n: int

    def as_tensor(self, device: torch.device | str = "cpu") -> Tensor:
        """[correct_clean, correct_robust, n] as int64, ready for ``all_reduce``."""
        return torch.tensor([self.correct_clean, self.correct_robust, self.n], dtype=torch.int64, device=device)

    @classmethod
    def from_tensor(cls, counts: Tensor) -> RobustCounts:
        clean, robust, n = (int(v) for v in counts.tolist())
        return cls(clean, robust, n)


def accuracies_from_counts(counts: RobustCounts) -> dict[str, float | int]:
    """``{"clean_acc", "robust_acc", "n"}`` from counts (accuracies are NaN when n is 0)."""
    n = counts.n
    return {
        "clean_acc": counts.correct_clean / n if n else float("nan"),
        "robust_acc": counts.correct_robust / n if n else float("nan"),
        "n": n,
    }


def pgd_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    objective: ObjectiveName = "ce",
    random_start: RandomStart = "uniform",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample (clean_correct, robust_correct) bool masks for one batch under PGD/CW."""
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(_OBJECTIVES)}, got {objective!r}")
    with eval_mode(model):
        with torch.no_grad():
            clean = model(x).argmax(dim=1) == y
        x_adv = pgd_linf(
            model,
            x,
            _OBJECTIVES[objective](y),
            eps=eps,
            step_size=step_size,
            steps=steps,
            random_start=random_start,
            generator=generator,
        )
        with torch.no_grad():
            robust = model(x_adv).argmax(dim=1) == y
    return clean, robust


def robust_counts(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: float,
    steps: int,
    step_size: float,
    objective: ObjectiveName = "ce",
    random_start: RandomStart = "uniform",
    device: torch.device | str,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> RobustCounts:
    """Clean and PGD/CW-robust correct counts over ``loader`` (at most ``max_samples`` samples).

    ``loader`` yields (inputs in [0, 1], labels); batches are moved to ``device``. Use one shard per
    rank and all-reduce ``RobustCounts.as_tensor()`` for the global numbers.
    """
    clean_total = robust_total = seen = 0
    for x, y in tqdm(loader, desc=f"{objective}-{steps}", leave=False, disable=None):
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        x, y = x.to(device), y.to(device)
        clean, robust = pgd_correct(
            model,
            x,
            y,
            eps=eps,
            steps=steps,
            step_size=step_size,
            objective=objective,
            random_start=random_start,
            generator=generator,
        )
        clean_total += int(clean.sum())
        robust_total += int(robust.sum())
        seen += len(y)
    return RobustCounts(clean_total, robust_total, seen)


def robust_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    eps: float,
    steps: int,
    step_size: float,
    objective: ObjectiveName = "ce",
    random_start: RandomStart = "uniform",
    device: torch.device | str,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float | int]:
    """``{"clean_acc", "robust_acc", "n"}`` under PGD-``steps`` (``"ce"``) or CW-``steps`` (``"cw"``).

    Paper Table 11: ``eps=8/255, step_size=2/255, steps=20``, uniform random start.
    """
    counts = robust_counts(
        model,
        loader,
        eps=eps,
        steps=steps,
        step_size=step_size,
        objective=objective,
        random_start=random_start,
        device=device,
        max_samples=max_samples,
        generator=generator,
    )
    return accuracies_from_counts(counts)
