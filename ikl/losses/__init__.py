"""The KL / DKL / IKL loss family and its baselines, all in O(B·C).

Every loss is a pure function (tensors in, scalar out) plus a thin ``nn.Module`` whose
``forward(student_logits, target_logits, labels)`` returns a dict of weighted terms; the sum of
the terms is the loss.
"""

from ikl.losses.dkd import DKDLoss, dkd_loss
from ikl.losses.ikl import DKLLoss, IKLLoss, dkl_loss, dkl_terms, ikl_loss, weighted_pairwise_mse
from ikl.losses.kl import KDLoss, KLLoss, kd_loss, kl_div, soft_cross_entropy, trades_robust_loss
from ikl.losses.prior import ClassPrior

__all__ = [
    "ClassPrior",
    "DKDLoss",
    "DKLLoss",
    "IKLLoss",
    "KDLoss",
    "KLLoss",
    "dkd_loss",
    "dkl_loss",
    "dkl_terms",
    "ikl_loss",
    "kd_loss",
    "kl_div",
    "soft_cross_entropy",
    "trades_robust_loss",
    "weighted_pairwise_mse",
]
