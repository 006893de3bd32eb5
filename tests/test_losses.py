"""The loss family against Theorem 1, naive oracles, a golden file and numerical edge cases."""

from __future__ import annotations

import itertools
import json
import pathlib

import pytest
import torch

from ikl.losses import (
    DKDLoss,
    DKLLoss,
    IKLLoss,
    KDLoss,
    KLLoss,
    dkd_loss,
    dkl_loss,
    ikl_loss,
    kd_loss,
    kl_div,
    soft_cross_entropy,
    trades_robust_loss,
    weighted_pairwise_mse,
)
from tests import oracles

TOL = dict(rtol=1e-10, atol=1e-10)


def logits(b: int, c: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def grads(loss_fn, *inputs):
    loss = loss_fn(*inputs)
    return loss, torch.autograd.grad(loss, inputs, allow_unused=True)


@pytest.mark.parametrize("b,c", [(1, 2), (7, 2), (16, 10), (5, 100), (3, 1000)])
def test_theorem1_dkl_gradients_equal_kl_for_both_inputs(b, c):
    student, target = logits(b, c, 0), logits(b, c, 1)
    _, kl_grads = grads(kl_div, student, target)
    _, dkl_grads = grads(dkl_loss, student, target)
    torch.testing.assert_close(dkl_grads[0], kl_grads[0], **TOL)
    torch.testing.assert_close(dkl_grads[1], kl_grads[1], **TOL)


def test_dkl_value_is_not_kl_but_weights_scale_terms():
    student, target = logits(4, 6, 2), logits(4, 6, 3)
    both = dkl_loss(student, target, wmse_weight=2.0, sce_weight=3.0)
    wmse_only = dkl_loss(student, target, wmse_weight=1.0, sce_weight=0.0)
    sce_only = dkl_loss(student, target, wmse_weight=0.0, sce_weight=1.0)
    torch.testing.assert_close(both, 2 * wmse_only + 3 * sce_only, **TOL)
    torch.testing.assert_close(sce_only, oracles.soft_ce(student, target), **TOL)


FLAGS = list(itertools.product([True, False], [True, False], [1.0, 0.5, 0.0, 2.0]))


@pytest.mark.parametrize("break_asymmetry,normalize,weight_power", FLAGS)
@pytest.mark.parametrize("b,c", [(6, 2), (8, 13), (2, 1000)])
def test_ikl_closed_form_matches_pairwise_oracle(b, c, break_asymmetry, normalize, weight_power):
    student, target = logits(b, c, 10 + c), logits(b, c, 20 + c)
    weights = torch.softmax(logits(b, c, 30 + c).detach() / 2, dim=1)
    flags = dict(break_asymmetry=break_asymmetry, normalize=normalize, weight_power=weight_power)
    kw = dict(wmse_weight=1.7, sce_weight=0.6, temperature=2.5)
    ours, our_grads = grads(lambda s, t: ikl_loss(s, t, weights, **kw, **flags), student, target)
    ref, ref_grads = grads(lambda s, t: oracles.pairwise_ikl(s, t, weights, **kw, **flags), student, target)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(our_grads[0], ref_grads[0], **TOL)
    torch.testing.assert_close(our_grads[1], ref_grads[1], **TOL)


def test_asymmetry_flag_controls_the_student_gradient_of_the_wmse():
    student, target = logits(4, 7, 40), logits(4, 7, 41)
    weights = torch.softmax(target.detach(), 1)
    asym = torch.autograd.grad(
        weighted_pairwise_mse(student, target, weights, break_asymmetry=False), student, allow_unused=True
    )[0]
    ba = torch.autograd.grad(weighted_pairwise_mse(student, target, weights, break_asymmetry=True), student)[0]
    assert asym is None or torch.count_nonzero(asym) == 0
    assert ba.abs().sum() > 1e-3


def test_wmse_never_builds_bxcxc(monkeypatch):
    """The closed form's largest intermediate is B×C; a B×C×C tensor would be 8e9 floats here."""
    student, target = torch.randn(8, 1000), torch.randn(8, 1000)
    weights = torch.softmax(torch.randn(8, 1000), 1)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.numel()) or t, lambda t: t):
        weighted_pairwise_mse(student.requires_grad_(), target, weights).backward()
    assert max(seen) <= 8 * 1000


def test_golden_file():
    golden = json.loads((pathlib.Path(__file__).parent / "golden" / "losses.json").read_text())
    x = {k: torch.tensor(v, dtype=torch.float64 if k != "labels" else torch.long) for k, v in golden["inputs"].items()}
    s, t, y, w = x["student"], x["target"], x["labels"], x["weights"]
    ours = {
        "kl_div": kl_div(s, t),
        "kd_loss_T4": kd_loss(s, t, 4.0),
        "soft_cross_entropy_T2": soft_cross_entropy(s, t, 2.0),
        "wmse_v1": weighted_pairwise_mse(s, t, w),
        "wmse_gkl_gamma0.5_normalized": weighted_pairwise_mse(s, t, w, weight_power=0.5, normalize=True),
        "ikl_w20_s5": ikl_loss(s, t, w, wmse_weight=20.0, sce_weight=5.0),
        "dkd_a1_b8_T4": dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
    }
    assert set(golden["outputs"]) == set(ours), "golden keys and computed keys differ"
    for key, value in golden["outputs"].items():
        assert ours[key].item() == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("c", [2, 10, 100])
def test_dkd_matches_mdistiller_formula(c):
    student, teacher = logits(6, c, 50), logits(6, c, 51)
    labels = torch.arange(6) % c
    ours, our_grads = grads(
        lambda s: dkd_loss(s, teacher.detach(), labels, alpha=1.0, beta=8.0, temperature=4.0), student
    )
    ref, ref_grads = grads(lambda s: oracles.mdistiller_dkd(s, teacher.detach(), labels, 1.0, 8.0, 4.0), student)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(our_grads[0], ref_grads[0], **TOL)


def test_kd_loss_is_t_squared_kl_and_trades_is_kl_nat_adv():
    student, target = logits(5, 10, 60), logits(5, 10, 61)
    torch.testing.assert_close(kd_loss(student, target, 4.0), 16 * kl_div(student, target, 4.0), **TOL)
    p = torch.softmax(target, 1)
    ref = (p * (torch.log_softmax(target, 1) - torch.log_softmax(student, 1))).sum(1).mean()
    torch.testing.assert_close(trades_robust_loss(student, target), ref, **TOL)
    assert torch.autograd.grad(trades_robust_loss(student, target), target)[0].abs().sum() > 0


LOSSES = {
    "kl": lambda s, t, y: kl_div(s, t),
    "kd": lambda s, t, y: kd_loss(s, t, 4.0),
    "dkl": lambda s, t, y: dkl_loss(s, t),
    "ikl": lambda s, t, y: ikl_loss(s, t, torch.softmax(t.detach().float(), 1), wmse_weight=20.0, sce_weight=5.0),
    "dkd": lambda s, t, y: dkd_loss(s, t, y),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("scale,c", [(1e4, 10), (1e4, 2), (1.0, 2)])
def test_extreme_logits_stay_finite(name, scale, c):
    student = (torch.randn(8, c) * scale).requires_grad_()
    target = (torch.randn(8, c) * scale).requires_grad_()
    labels = torch.arange(8) % c
    loss = LOSSES[name](student, target, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all() and torch.isfinite(target.grad).all()


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast_is_finite_and_float32(name, dtype):
    student = (torch.randn(8, 100) * 5).to(dtype).requires_grad_()
    target = (torch.randn(8, 100) * 5).to(dtype).requires_grad_()
    labels = torch.arange(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LOSSES[name](student, target, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad.float()).all()
    full = LOSSES[name](student.detach().float(), target.detach().float(), labels)
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_partial_last_batch_is_averaged_over_its_own_size(name):
    student, target = logits(11, 7, 70).detach(), logits(11, 7, 71).detach()
    labels = torch.arange(11) % 7
    whole = LOSSES[name](student, target, labels)
    first = LOSSES[name](student[:8], target[:8], labels[:8])
    last = LOSSES[name](student[8:], target[8:], labels[8:])
    torch.testing.assert_close(whole * 11, first * 8 + last * 3, **TOL)


def test_modules_return_their_weighted_terms():
    student, target = logits(4, 5, 80), logits(4, 5, 81)
    labels = torch.tensor([0, 1, 1, 4])
    assert KLLoss(kl_weight=2.0)(student, target)["loss_kl"].item() == pytest.approx(2 * kl_div(student, target).item())
    assert KDLoss(kd_weight=0.9, temperature=4.0)(student, target)["loss_kd"].item() == pytest.approx(
        0.9 * kd_loss(student, target).item()
    )
    assert DKDLoss(beta=2.0)(student, target, labels)["loss_dkd"].item() == pytest.approx(
        dkd_loss(student, target, labels, beta=2.0).item()
    )
    dkl_terms = DKLLoss(wmse_weight=1.0, sce_weight=1.0)(student, target)
    assert sum(dkl_terms.values()).item() == pytest.approx(dkl_loss(student, target).item())


def test_ikl_module_sample_wise_and_class_wise_weights():
    student, target = logits(4, 5, 90), logits(4, 5, 91)
    labels = torch.tensor([0, 1, 1, 4])
    sample_wise = IKLLoss(
        num_classes=5, wmse_weight=3.0, sce_weight=2.0, temperature=2.0, prior_temperature=4.0, class_wise=False
    )
    weights = torch.softmax(target.detach().float() / 4.0, 1)
    expected = ikl_loss(student, target, weights, wmse_weight=3.0, sce_weight=2.0, temperature=2.0)
    assert sum(sample_wise(student, target, labels).values()).item() == pytest.approx(expected.item(), rel=1e-6)

    class_wise = IKLLoss(num_classes=5, wmse_weight=3.0, sce_weight=2.0, prior_temperature=4.0, class_wise=True)
    uniform = torch.full((4, 5), 0.2, dtype=torch.float64)
    expected_uniform = ikl_loss(student, target, uniform, wmse_weight=3.0, sce_weight=2.0)
    assert sum(class_wise(student, target, labels).values()).item() == pytest.approx(expected_uniform.item(), rel=1e-6)
    class_wise.observe(target, labels)
    class_wise.end_epoch()
    gi_weights = class_wise.prior.weights(labels).double()
    expected_gi = ikl_loss(student, target, gi_weights, wmse_weight=3.0, sce_weight=2.0)
    assert sum(class_wise(student, target, labels).values()).item() == pytest.approx(expected_gi.item(), rel=1e-6)
    adversary = class_wise.terms(student, target, labels, wmse_weight=0.0, sce_weight=1.0)
    assert set(adversary) == {"loss_sce"}
