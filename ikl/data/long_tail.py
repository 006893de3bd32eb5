"""Class groups of a long-tailed training set and the per-group accuracy evaluated on them.

The long-tailed recognition literature (OLTR, Liu et al. 2019; the decoupling paper, Kang et al.
2020) splits the classes by how many *training* images they have: many-shot (more than 100),
medium-shot (20 to 100) and few-shot (fewer than 20). The official IKL code for ImageNet-LT
(``jiequancui/DKL`` ``DKLv1/Imbalanced_KD-dkl/utils.py`` ``shot_acc``, called from
``imagenetlt_distill_dkl.py`` ``validate``) uses exactly these thresholds,
``many_shot_thr=100, low_shot_thr=20``: ``count > 100`` is many, ``count < 20`` is few, anything
else (20..100 inclusive) is medium. A group's accuracy is the **mean of its classes' accuracies**
over the classes that occur in the evaluated set (not the pooled accuracy of its images; the two
agree on a class-balanced test set such as ImageNet-LT's 50 images per class).

One difference from ``shot_acc``: a group with no evaluated class is left out (no metric) instead
of being reported as accuracy 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

# The standard thresholds (training images per class) and the group names, in display order.
MANY_SHOT_THRESHOLD = 100
FEW_SHOT_THRESHOLD = 20
GROUPS = ("many", "medium", "few")

ClassGroups = Mapping[str, Sequence[int]]


def class_counts(targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Images per class (``num_classes`` entries, zeros for absent classes)."""
    labels = np.asarray(targets, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes)


def shot_groups(
    train_counts: Sequence[int],
    *,
    many_threshold: int = MANY_SHOT_THRESHOLD,
    few_threshold: int = FEW_SHOT_THRESHOLD,
) -> dict[str, tuple[int, ...]]:
    """``{"many", "medium", "few"}`` → class indices, from the training images per class.

    many: ``count > many_threshold``; few: ``count < few_threshold``; medium: the rest (official
    ``shot_acc``). Classes without training images fall in "few".
    """
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold {few_threshold} must not exceed many_threshold {many_threshold}")
    counts = np.asarray(train_counts)
    many = np.flatnonzero(counts > many_threshold)
    few = np.flatnonzero(counts < few_threshold)
    medium = np.flatnonzero((counts >= few_threshold) & (counts <= many_threshold))
    return {name: tuple(int(c) for c in idx) for name, idx in zip(GROUPS, (many, medium, few), strict=True)}


def group_accuracies(
    correct: torch.Tensor | Sequence[float],
    total: torch.Tensor | Sequence[float],
    groups: ClassGroups,
) -> dict[str, float]:
    """Accuracy (%) per group: the mean over its classes with ``total > 0`` of ``correct / total``.

    ``correct[c]`` / ``total[c]``: correctly classified and evaluated images of class ``c``. Groups
    none of whose classes was evaluated are omitted.
    """
    correct_t = torch.as_tensor(correct, dtype=torch.float64).cpu()
    total_t = torch.as_tensor(total, dtype=torch.float64).cpu()
    if correct_t.shape != total_t.shape or correct_t.ndim != 1:
        raise ValueError(f"correct and total must be equal-length vectors, got {correct_t.shape} and {total_t.shape}")
    out: dict[str, float] = {}
    for name, members in groups.items():
        idx = torch.as_tensor(list(members), dtype=torch.long)
        if idx.numel() and int(idx.max()) >= len(total_t):
            raise ValueError(f"group {name!r} names class {int(idx.max())} but there are {len(total_t)} classes")
        seen = idx[total_t[idx] > 0]
        if seen.numel():
            out[name] = 100.0 * float((correct_t[seen] / total_t[seen]).mean())
    return out
