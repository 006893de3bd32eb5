"""IKL-KD in your own PyTorch training loop: plain PyTorch and ``ikl.losses``, nothing else of ikl.

    pip install -e .                                 # once, in the repository (or pip install <repo>)
    python examples/ikl_kd_loop.py                   # a few seconds on a CPU
    python examples/ikl_kd_loop.py --data synthetic  # without scikit-learn

It distils a small MLP teacher into a smaller MLP student on scikit-learn's bundled *digits*
(8×8 images, 10 classes; ``--data synthetic``: Gaussian clusters, for an install without
scikit-learn). What it shows:

1. The teacher is frozen before distillation: ``eval()`` and ``requires_grad_(False)``. Here it is
   trained first with cross-entropy; in practice you load yours.
2. ``IKLLoss(num_classes=..., wmse_weight=..., sce_weight=..., temperature=..., prior_temperature=...,
   class_wise=True)`` is IKL-KD with the class-wise prior (GI, paper Eq. 9-10). Its
   ``forward(student_logits, teacher_logits, labels)`` returns the weighted terms
   ``{"loss_wmse": ..., "loss_sce": ...}``; the training loss is CE(student, labels) plus their sum.
   (``wmse_weight`` = paper α = official ``BETA``; ``sce_weight`` = paper β = official ``ALPHA``;
   ``prior_temperature`` = paper τ.)
3. The class prior's cycle: ``criterion.observe(teacher_logits, labels)`` on every training step
   adds softmax(teacher / τ) to its class's running sum; ``criterion.end_epoch()`` after every epoch
   turns the sums into the prior the next epoch uses (uniform 1/C before the first ``end_epoch``).
   The example prints the mean of the prior's diagonal: 1/C at first, then what the teacher puts on
   the true class.
4. ``criterion.state_dict()`` holds the prior and its accumulator: save it with the model and the
   optimizer, and a resumed run continues with the same prior.
5. The functional form ``ikl_loss(student_logits, teacher_logits, weights, wmse_weight=...,
   sce_weight=..., temperature=...)`` with ``weights = criterion.prior.weights(labels)`` (the prior
   rows of the labels, [B, C]) gives the same loss: checked on the first batch.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from ikl.losses import IKLLoss, ikl_loss
except ModuleNotFoundError as exc:  # run from a checkout without installing it
    if exc.name != "ikl":
        raise
    raise SystemExit("ikl is not installed: run `pip install -e .` in the repository (or PYTHONPATH=<repo>)") from exc


def load_data(kind: str, seed: int) -> tuple[TensorDataset, TensorDataset, int]:
    """(train, test, number of classes) as float features in [0, 1] and integer labels."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
    else:  # ten noisy prototypes in [0, 1]^64, overlapping enough that the task is not trivial
        centers = torch.rand(10, 64, generator=generator)
        y = torch.arange(1800) % 10
        x = (centers[y] + 0.6 * torch.randn(1800, 64, generator=generator)).clamp(0, 1)
    order = torch.randperm(len(y), generator=generator)
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), int(y.max()) + 1


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    x, y = data.tensors
    return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def train_teacher(train: TensorDataset, num_classes: int, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    teacher = mlp([train.tensors[0].shape[1], 256, 256, num_classes])
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        teacher.train()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(teacher(x), y).backward()
            optimizer.step()
    return teacher


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="IKL-KD in a plain PyTorch training loop")
    parser.add_argument("--data", choices=["digits", "synthetic"], default="digits")
    parser.add_argument("--epochs", type=int, default=6, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    train, test, num_classes = load_data(args.data, args.seed)

    # 1. the teacher: trained here, loaded in practice; frozen either way
    teacher = train_teacher(train, num_classes, args.teacher_epochs, args.seed)
    teacher.eval().requires_grad_(False)
    teacher_acc = accuracy(teacher, test)
    print(f"teacher test accuracy: {teacher_acc:.1f}%")

    # 2. the student, its optimizer and the IKL-KD criterion
    torch.manual_seed(args.seed)
    student = mlp([train.tensors[0].shape[1], 32, num_classes])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    criterion = IKLLoss(
        num_classes=num_classes,
        wmse_weight=2.0,
        sce_weight=1.0,
        temperature=4.0,
        prior_temperature=4.0,
        class_wise=True,
    )
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    prior_diagonal = [criterion.prior.prior.diagonal().mean().item()]
    print(f"class prior before training: mean diagonal {prior_diagonal[0]:.3f} (uniform 1/{num_classes})")

    for epoch in range(1, args.epochs + 1):
        student.train()
        sums = {"loss_ce": 0.0, "loss_wmse": 0.0, "loss_sce": 0.0}
        for step, (x, y) in enumerate(loader):
            with torch.no_grad():
                teacher_logits = teacher(x)
            student_logits = student(x)
            terms = criterion(student_logits, teacher_logits, y)  # {"loss_wmse": ..., "loss_sce": ...}
            loss_ce = F.cross_entropy(student_logits, y)
            loss = loss_ce + sum(terms.values())
            if epoch == 1 and step == 0:  # 5. the same loss through the functional form
                weights = criterion.prior.weights(y)  # [B, C]: the prior row of each sample's label
                functional = ikl_loss(
                    student_logits,
                    teacher_logits,
                    weights,
                    wmse_weight=criterion.wmse_weight,
                    sce_weight=criterion.sce_weight,
                    temperature=criterion.temperature,
                )
                assert torch.allclose(functional, sum(terms.values())), "module and functional form disagree"
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            criterion.observe(teacher_logits, y)  # 3. every step: feed the next epoch's prior
            for key, value in {"loss_ce": loss_ce, **terms}.items():
                sums[key] += value.item() / len(loader)
        criterion.end_epoch()  # 3. every epoch: the accumulated class means become the prior
        scheduler.step()
        prior_diagonal.append(criterion.prior.prior.diagonal().mean().item())
        shown = " ".join(f"{k} {v:.3f}" for k, v in sums.items())
        print(
            f"epoch {epoch:2d}/{args.epochs}: {shown}, student test accuracy {accuracy(student, test):.1f}%, "
            f"prior diagonal {prior_diagonal[-1]:.3f}"
        )
        if not all(math.isfinite(v) for v in sums.values()):
            raise SystemExit(f"non-finite loss in epoch {epoch}")

    # 4. what a checkpoint of this run holds
    checkpoint = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "criterion": criterion.state_dict(),
    }
    student_acc = accuracy(student, test)
    print(f"criterion state: {', '.join(checkpoint['criterion'])}")
    print(
        f"student test accuracy: {student_acc:.1f}% (teacher {teacher_acc:.1f}%), {time.perf_counter() - started:.1f} s"
    )
    return {"teacher_acc": teacher_acc, "student_acc": student_acc, "prior_diagonal": prior_diagonal[-1]}


if __name__ == "__main__":
    main()
