"""Adversaries used in training and evaluation: L∞ PGD and its objectives (torch + ikl.losses only).

``pgd_linf(model, x, objective, eps=, step_size=, steps=, random_start=)`` maximises
``objective(adv_logits)``; the objectives are factories (``ce_objective``, ``cw_objective``,
``trades_objective``, ``ikl_objective``). ``robust_accuracy``/``robust_counts`` evaluate PGD-k and
CW-k (paper Table 11).
"""

from ikl.attacks.evaluate import (
    RobustCounts,
    accuracies_from_counts,
    pgd_correct,
    robust_accuracy,
    robust_counts,
)
from ikl.attacks.pgd import (
    ce_objective,
    cw_objective,
    eval_mode,
    ikl_objective,
    pgd_linf,
    trades_objective,
)

__all__ = [
    "RobustCounts",
    "accuracies_from_counts",
    "ce_objective",
    "cw_objective",
    "eval_mode",
    "ikl_objective",
    "pgd_correct",
    "pgd_linf",
    "robust_accuracy",
    "robust_counts",
    "trades_objective",
]
