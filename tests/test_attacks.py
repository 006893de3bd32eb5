"""ikl.attacks: L∞ PGD, its objectives and robust-accuracy counting, on tiny in-file models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ikl.attacks import (
    RobustCounts,
    accuracies_from_counts,
    ce_objective,
    cw_objective,
    ikl_objective,
    pgd_linf,
    robust_accuracy,
    robust_counts,
    trades_objective,
)
from ikl.losses import IKLLoss

EPS = 8 / 255
STEP = 2 / 255


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyNet(nn.Module):
    """conv → BN → ReLU → dropout → pool → linear; records the mode and dtype of every forward."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, num_classes)
        self.seen: list[tuple[bool, torch.dtype, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.drop(F.relu(self.bn(self.conv(x))))
        logits = self.fc(hidden.mean(dim=(2, 3)))
        self.seen.append((self.training, logits.dtype, x.detach().clone()))
        return logits


def _data(n: int = 16, num_classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=gen)
    x[0].zero_()  # pixels at both ends of [0, 1]
    x[1].fill_(1.0)
    return x, torch.randint(0, num_classes, (n,), generator=gen)


def _model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


@pytest.mark.parametrize("random_start", ["normal", "uniform", None])
def test_pgd_stays_in_eps_ball_and_unit_box(random_start):
    model, (x, y) = _model(), _data()
    x_adv = pgd_linf(model, x, ce_objective(y), eps=EPS, step_size=STEP, steps=7, random_start=random_start)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.dtype == torch.float32 and not x_adv.requires_grad


def test_pgd_raises_objective_over_clean_and_random_noise():
    model, (x, y) = _model(), _data(64)
    objective = ce_objective(y)
    x_adv = pgd_linf(model, x, objective, eps=EPS, step_size=STEP, steps=10, random_start="uniform")
    noise = (x + EPS * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).mul(2).sub(1)).clamp(
        0, 1
    )
    with torch.no_grad():
        adv, clean, random = (objective(model(v)).item() for v in (x_adv, x, noise))
    assert adv > clean and adv > random


def test_pgd_leaves_parameter_grads_none_and_restores_training_flags():
    model, (x, y) = _model(), _data()
    model.train()
    model.bn.eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    pgd_linf(model, x, ce_objective(y), eps=EPS, step_size=STEP, steps=3)
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())
    assert model.seen and not any(training for training, _, _ in model.seen)  # attacked in eval mode


def test_pgd_runs_in_float32_with_autocast_enabled_outside():
    model, (x, y) = _model(), _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # autocast really is on out here
        model.seen.clear()
        x_adv = pgd_linf(model, x, ce_objective(y), eps=EPS, step_size=STEP, steps=2)
    assert {dtype for _, dtype, _ in model.seen} == {torch.float32}
    assert x_adv.dtype == torch.float32


@pytest.mark.parametrize(("eps", "steps"), [(0.0, 5), (EPS, 0)])
def test_zero_eps_or_steps_returns_a_clone(eps, steps):
    model, (x, y) = _model(), _data()
    x_adv = pgd_linf(model, x, ce_objective(y), eps=eps, step_size=STEP, steps=steps)
    assert torch.equal(x_adv, x) and x_adv.data_ptr() != x.data_ptr()


def _first_input(random_start: str, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    model = _model()
    flat = lambda logits: logits.sum() * 0  # noqa: E731 - zero gradient: only the start point matters
    pgd_linf(
        model,
        x,
        flat,
        eps=EPS,
        step_size=STEP,
        steps=1,
        random_start=random_start,
        generator=torch.Generator().manual_seed(seed),
    )
    return model.seen[0][2]


def test_normal_start_is_small_gaussian_and_not_clamped():
    x = torch.zeros(8, 3, 8, 8)
    start = _first_input("normal", x)
    assert start.min() < 0  # not clamped before the first step (official TRADES/DKL training)
    assert start.std().item() == pytest.approx(0.001, rel=0.1)
    assert torch.equal(start, _first_input("normal", x))  # the generator makes it reproducible
    assert not torch.equal(start, _first_input("normal", x, seed=1))


def test_uniform_start_fills_the_ball_and_is_clamped():
    x = torch.full((8, 3, 8, 8), 0.5)
    x[0].zero_()
    start = _first_input("uniform", x)
    assert start.min() >= 0 and (start - x).abs().max() <= EPS + 1e-7
    interior = start[1:] - x[1:]
    assert interior.std().item() == pytest.approx(EPS / 3**0.5, rel=0.1)  # U(−ε, ε)


def test_objective_values_match_the_official_formulas():
    gen = torch.Generator().manual_seed(0)
    adv, nat = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert ce_objective(y)(adv).item() == pytest.approx(F.cross_entropy(adv, y, reduction="sum").item(), rel=1e-6)
    official_kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(nat, dim=1), reduction="sum")
    assert trades_objective(nat)(adv).item() == pytest.approx(official_kl.item(), rel=1e-5)
    for kappa in (0.0, 0.5):
        naive = 0.0
        for b in range(6):
            other = max(adv[b, j].item() for j in range(5) if j != y[b])
            naive += -max(adv[b, y[b]].item() - other + kappa, 0.0)
        assert cw_objective(y, kappa)(adv).item() == pytest.approx(naive, abs=1e-5)


def _official_dkl(nat, adv, weights, *, wmse_weight, sce_weight):
    """The official ``dkl_loss`` as coded (PAPER.md §1.4), materialising B×C×C."""
    pair = weights.unsqueeze(2) * weights.unsqueeze(1)
    delta_nat = nat.unsqueeze(2) - nat.unsqueeze(1)
    delta_adv = adv.unsqueeze(2) - adv.unsqueeze(1)
    wmse = (pair * (delta_nat - delta_adv) ** 2).sum() / (4 * len(nat))
    sce = -(F.softmax(nat.detach(), dim=1) * F.log_softmax(adv, dim=1)).sum(1).mean()
    return wmse_weight * wmse + sce_weight * sce


@pytest.mark.parametrize(("wmse_weight", "sce_weight"), [(1.0, 1.0), (0.0, 1.0)])
def test_ikl_objective_equals_official_adversary_with_class_wise_weights(wmse_weight, sce_weight):
    gen = torch.Generator().manual_seed(3)
    num_classes = 5
    criterion = IKLLoss(num_classes=num_classes, wmse_weight=20.0, sce_weight=5.0, class_wise=True)
    prior = torch.rand(num_classes, num_classes, generator=gen)
    criterion.prior.prior.copy_(prior / prior.sum(dim=1, keepdim=True))
    nat = torch.randn(8, num_classes, generator=gen)
    adv = torch.randn(8, num_classes, generator=gen, requires_grad=True)
    y = torch.randint(0, num_classes, (8,), generator=gen)
    ours = ikl_objective(criterion, nat, y, wmse_weight=wmse_weight, sce_weight=sce_weight)(adv)
    weights = criterion.prior.prior[y]
    official = _official_dkl(nat, adv, weights, wmse_weight=wmse_weight, sce_weight=sce_weight)
    assert ours.item() == pytest.approx(official.item(), rel=1e-5)
    (g_ours,) = torch.autograd.grad(ours, adv)
    (g_official,) = torch.autograd.grad(official, adv)
    torch.testing.assert_close(g_ours, g_official, rtol=1e-5, atol=1e-6)


def test_ikl_objective_drives_a_pgd_attack():
    model, (x, y) = _model(), _data()
    criterion = IKLLoss(num_classes=5)
    with torch.no_grad():
        natural = model(x)
    objective = ikl_objective(criterion, natural, y, wmse_weight=1.0, sce_weight=1.0)
    x_adv = pgd_linf(model, x, objective, eps=EPS, step_size=EPS / 2, steps=5)  # official: 5 steps of ε/2
    with torch.no_grad():
        assert objective(model(x_adv)) > objective(model(x))


def _loader(n: int = 20, batch_size: int = 8) -> DataLoader:
    x, y = _data(n)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_robust_counts_with_zero_eps_equal_clean_counts():
    model = _model()
    counts = robust_counts(model, _loader(), eps=0.0, steps=5, step_size=STEP, device="cpu")
    x, y = _data(20)
    with torch.no_grad():
        expected = int((model(x).argmax(1) == y).sum())
    assert counts == RobustCounts(expected, expected, 20)


def test_robust_counts_add_up_over_shards_and_respect_max_samples():
    model, x, y = _model(), *_data(20)
    kwargs = {"eps": EPS, "steps": 3, "step_size": STEP, "device": "cpu", "random_start": None}
    full = robust_counts(model, DataLoader(TensorDataset(x, y), batch_size=8), **kwargs)
    halves = [
        robust_counts(model, DataLoader(TensorDataset(x[s], y[s]), batch_size=8), **kwargs)
        for s in (slice(0, 10), slice(10, 20))
    ]
    summed = RobustCounts.from_tensor(halves[0].as_tensor() + halves[1].as_tensor())  # what all_reduce does
    assert summed == full
    limited = robust_counts(model, DataLoader(TensorDataset(x, y), batch_size=8), max_samples=10, **kwargs)
    assert limited == halves[0]
    assert full.correct_robust <= full.correct_clean


def test_robust_accuracy_reports_ratios_and_attack_lowers_accuracy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()
    x, _ = _data(40)
    with torch.no_grad():
        y = model(x).argmax(1)  # every clean prediction is right
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    result = robust_accuracy(model, loader, eps=0.5, steps=10, step_size=0.1, objective="cw", device="cpu")
    assert result["clean_acc"] == 1.0 and result["n"] == 40
    assert result["robust_acc"] < 0.5
    assert accuracies_from_counts(RobustCounts(3, 1, 4)) == {"clean_acc": 0.75, "robust_acc": 0.25, "n": 4}


def _reference_pgd(model, x, y, *, objective, eps, step_size, steps):
    """Naive L∞ PGD from x (no random start), every quantity in the dtype of ``x``: the oracle."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if objective == "ce":
            loss = -logits.log_softmax(dim=1).gather(1, y[:, None]).sum()
        else:
            true = logits.gather(1, y[:, None]).squeeze(1)
            best_other = torch.stack(
                [torch.cat([row[:k], row[k + 1 :]]).max() for row, k in zip(logits, y, strict=True)]
            )
            loss = -(true - best_other).clamp_min(0).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("objective", ["ce", "cw"])
def test_float64_pgd_equals_a_float64_reference(objective):
    """The objectives keep float64 logits in float64. They used to cast them to float32: on this confident
    model (logits x100) a float32 softmax saturates, its cross-entropy gradient is exactly 0 where the
    float64 one is not, and float64 PGD-CE ended 0.0196 (5 steps of eps/32) away from the float64 oracle."""
    model, (x, y) = _model().double(), _data(32)
    with torch.no_grad():
        model.fc.weight.mul_(100)
        model.fc.bias.mul_(100)
    x = x.double()
    factory = ce_objective if objective == "ce" else cw_objective
    logits = torch.randn(4, 5, dtype=torch.float64)
    assert factory(torch.tensor([0, 1, 2, 3]))(logits).dtype == torch.float64
    kwargs = {"eps": EPS, "step_size": STEP / 8, "steps": 10}
    ours = pgd_linf(model, x, factory(y), random_start=None, **kwargs)
    reference = _reference_pgd(model, x, y, objective=objective, **kwargs)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
