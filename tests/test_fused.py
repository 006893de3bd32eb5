"""The fused IKL/KL node (ikl.losses.fused) against the pairwise oracle for every flag and weight
source, both of its code paths, chunked against unchunked, and what it allocates."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ikl.losses import IKLLoss, dkl_loss, fused, ikl_loss, kl_div, soft_cross_entropy, weighted_pairwise_mse
from tests import oracles

TOL = dict(rtol=1e-10, atol=1e-10)


def logits(b: int, c: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=gen, dtype=torch.float64) * scale


@pytest.fixture(params=["small", "large"])
def path(request, monkeypatch):
    """Run each test through both variants of the sCE (log_softmax + exp / softmax + max)."""
    monkeypatch.setattr(fused, "SMALL_ELEMENTS", 1 << 30 if request.param == "small" else 0)
    return request.param


def oracle_and_ours(loss, oracle, student, target, grad_into):
    """(value, gradients) of ``loss`` and ``oracle`` for the inputs named in ``grad_into``."""
    inputs = {"student": student.clone().requires_grad_("student" in grad_into)}
    inputs["target"] = target.clone().requires_grad_("target" in grad_into)
    wanted = [inputs[name] for name in grad_into]
    results = []
    for fn in (loss, oracle):
        value = fn(inputs["student"], inputs["target"])
        results.append((value, torch.autograd.grad(value, wanted)))
    return results


def assert_same(ours, ref):
    torch.testing.assert_close(ours[0], ref[0], **TOL)
    for got, expected in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(got, expected, **TOL)


GRADS = {"kd": ("student",), "at": ("student", "target")}
FLAGS = list(itertools.product([1.0, 0.5, 0.0, 2.0], [False, True], [True, False]))


@pytest.mark.parametrize("weight_power,normalize,break_asymmetry", FLAGS)
@pytest.mark.parametrize("setting", ["kd", "at"])
def test_ikl_loss_matches_the_oracle_for_every_flag(path, weight_power, normalize, break_asymmetry, setting):
    chunk_size = 3 if (FLAGS.index((weight_power, normalize, break_asymmetry)) + len(setting)) % 2 else None
    student, target = logits(8, 13, 1), logits(8, 13, 2)
    weights = torch.softmax(logits(8, 13, 3) / 2, dim=1)
    flags = dict(weight_power=weight_power, normalize=normalize, break_asymmetry=break_asymmetry)
    kw = dict(wmse_weight=1.7, sce_weight=0.6, temperature=2.5, **flags)
    ours, ref = oracle_and_ours(
        lambda s, t: ikl_loss(s, t, weights, chunk_size=chunk_size, **kw),
        lambda s, t: oracles.pairwise_ikl(s, t, weights, **kw),
        student,
        target,
        GRADS[setting],
    )
    assert_same(ours, ref)


def _module(class_wise: bool, num_classes: int = 13, **kw) -> IKLLoss:
    return IKLLoss(num_classes=num_classes, class_wise=class_wise, **kw)


MODULES = {
    # the KD call as released (configs/loss/ikl.yaml): GI off, sample-wise softmax(t/100), T = 4
    "kd_as_released": dict(class_wise=False, wmse_weight=8.0, sce_weight=1.0, temperature=4.0, prior_temperature=100.0),
    # sample-wise weights at the sCE's own temperature (the one softmax serves both terms), DKLv2's
    # reduction (rows of a softmax sum to 1: D = B)
    "shared_softmax": dict(
        class_wise=False, wmse_weight=2.0, sce_weight=3.0, temperature=2.0, prior_temperature=2.0, normalize=True
    ),
    # DKLv2 KD with GI off: softmax(t/4)^γ, divided by Σ w_j w_k
    "gkl_sample_wise": dict(
        class_wise=False,
        wmse_weight=4.0,
        sce_weight=1.0,
        temperature=1.0,
        prior_temperature=4.0,
        weight_power=0.3,
        normalize=True,
    ),
    # AT as configs/loss/ikl_at.yaml: GI on (a built prior), T = 1
    "at_gi": dict(class_wise=True, wmse_weight=20.0, sce_weight=5.0, temperature=1.0, prior_temperature=4.0),
    # GKL: a power of the prior rows and the DKLv2 reduction, BA off
    "gkl_no_ba": dict(
        class_wise=True, wmse_weight=1.5, sce_weight=1.0, weight_power=0.3, normalize=True, break_asymmetry=False
    ),
}


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("setting", ["kd", "at"])
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("built", [True, False])
def test_ikl_module_matches_the_oracle_for_each_weight_source(path, name, setting, chunk_size, built):
    config = MODULES[name]
    loss = _module(chunk_size=chunk_size, **config)
    student, target = logits(8, 13, 4), logits(8, 13, 5)
    labels = torch.tensor([0, 3, 3, 12, 7, 0, 1, 3])
    if built:
        loss.observe(logits(40, 13, 6), torch.arange(40) % 13)
        loss.end_epoch()
    if config["class_wise"]:
        weights = loss.prior.weights(labels).double() if built else torch.full((8, 13), 1 / 13, dtype=torch.float64)
    else:
        weights = torch.softmax(target / config["prior_temperature"], dim=1)
    kw = {k: config.get(k, d) for k, d in [("wmse_weight", 1.0), ("sce_weight", 1.0), ("temperature", 1.0)]}
    flags = {k: config[k] for k in ("weight_power", "normalize", "break_asymmetry") if k in config}
    ours, ref = oracle_and_ours(
        lambda s, t: sum(loss(s, t, labels).values()),
        lambda s, t: oracles.pairwise_ikl(s, t, weights, **kw, **flags),
        student,
        target,
        GRADS[setting],
    )
    assert_same(ours, ref)


@pytest.mark.parametrize("setting", ["kd", "at"])
def test_each_module_term_has_its_own_gradient(path, setting):
    """The two outputs of the node are separately differentiable (and sum to the loss's gradient)."""
    loss = _module(**MODULES["at_gi"])
    student, target, labels = logits(6, 13, 7), logits(6, 13, 8), torch.arange(6)
    uniform = torch.full((6, 13), 1 / 13.0, dtype=torch.float64)
    for term, oracle, grad_into in [
        ("loss_sce", lambda s, t: 5.0 * oracles.soft_ce(s, t), ("student",)),  # sg: no gradient into t
        ("loss_wmse", lambda s, t: 20.0 * oracles.pairwise_wmse(s, t, uniform), GRADS[setting]),
    ]:
        ours, ref = oracle_and_ours(lambda s, t: loss(s, t, labels)[term], oracle, student, target, grad_into)  # noqa: B023
        assert_same(ours, ref)


@pytest.mark.parametrize("setting", ["kd", "at"])
@pytest.mark.parametrize("name", ["kd_as_released", "at_gi"])
def test_terms_weighted_differently_still_match_the_oracle(path, setting, name):
    """The backward's fast path assumes the two terms are summed; other combinations are exact too."""
    config = MODULES[name]
    loss = _module(**config)
    student, target, labels = logits(6, 13, 23), logits(6, 13, 24), torch.arange(6)
    weights = (
        torch.full((6, 13), 1 / 13.0, dtype=torch.float64)
        if config["class_wise"]
        else torch.softmax(target / config["prior_temperature"], dim=1)
    )
    temperature = config["temperature"]

    def ours(s, t):
        terms = loss(s, t, labels)
        return 0.3 * terms["loss_wmse"] - 2.0 * terms["loss_sce"]

    def oracle(s, t):
        wmse = config["wmse_weight"] * oracles.pairwise_wmse(s, t, weights)
        return 0.3 * wmse - 2.0 * config["sce_weight"] * oracles.soft_ce(s, t, temperature)

    assert_same(*oracle_and_ours(ours, oracle, logits(6, 13, 23), logits(6, 13, 24), GRADS[setting]))
    assert student.shape == target.shape


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_dkl_and_soft_ce_match_the_oracle(path, temperature, chunk_size):
    student, target = logits(7, 11, 9), logits(7, 11, 10)
    ours, ref = oracle_and_ours(
        lambda s, t: soft_cross_entropy(s, t, temperature, chunk_size=chunk_size),
        lambda s, t: oracles.soft_ce(s, t, temperature),
        student,
        target,
        ("student",),
    )
    assert_same(ours, ref)
    ours, ref = oracle_and_ours(
        lambda s, t: dkl_loss(s, t, wmse_weight=2.0, sce_weight=0.5, chunk_size=chunk_size),
        lambda s, t: (
            2.0 * oracles.pairwise_wmse(s, t, torch.softmax(t.detach(), 1), break_asymmetry=False)
            + 0.5 * oracles.soft_ce(s, t)
        ),
        student,
        target,
        ("student", "target"),
    )
    assert_same(ours, ref)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("setting", ["kd", "at"])
def test_chunked_kl_div_equals_the_plain_formula(temperature, setting):
    student, target = logits(9, 17, 11), logits(9, 17, 12)
    for chunk_size in (1, 4, 9, 100):
        ours, ref = oracle_and_ours(
            lambda s, t: kl_div(s, t, temperature, chunk_size=chunk_size),  # noqa: B023
            lambda s, t: kl_div(s, t, temperature),
            student,
            target,
            GRADS[setting],
        )
        assert_same(ours, ref)


@pytest.mark.parametrize("setting", ["kd", "at"])
@pytest.mark.parametrize("name", ["kd_as_released", "at_gi", "gkl_no_ba"])
def test_chunked_equals_unchunked_in_float32(path, setting, name):
    """The auto-sized single chunk and many small chunks give the same values and gradients."""
    config = MODULES[name]
    whole, chunked = _module(**config), _module(chunk_size=5, **config)
    labels = torch.arange(37) % 13
    for loss in (whole, chunked):
        loss.observe(logits(50, 13, 13).float(), torch.arange(50) % 13)
        loss.end_epoch()
    student, target = logits(37, 13, 14).float(), logits(37, 13, 15).float()
    ours, ref = oracle_and_ours(
        lambda s, t: sum(chunked(s, t, labels).values()),
        lambda s, t: sum(whole(s, t, labels).values()),
        student,
        target,
        GRADS[setting],
    )
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-6, atol=1e-6)
    # the gradients are row-wise, the same arithmetic in any chunk; only normalize's global
    # Σ_b S_b² is summed in another order
    exact = dict(rtol=1e-6, atol=1e-8) if config.get("normalize") else dict(rtol=0, atol=0)
    for got, expected in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(got, expected, **exact)


class Allocations(TorchDispatchMode):
    """The number of values of every tensor an op allocates (outputs in storage of no input)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        known = {x.untyped_storage().data_ptr() for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)}
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in known:
                self.sizes.append(value.numel())
        return out


@pytest.mark.parametrize("setting", ["kd", "at"])
def test_automatic_chunks_bound_the_temporaries(monkeypatch, setting):
    """Beyond a chunk, the forward allocates only the gradients it saves (one per term and input
    side), the backward only the gradients it returns."""
    chunk = 64 * 50
    monkeypatch.setitem(fused.CHUNK_ELEMENTS, "cpu", chunk)  # 64 rows of C = 50 a chunk
    monkeypatch.setitem(fused.CHUNK_ELEMENTS_PER_THREAD, "cpu", 1)
    batch, classes = 1000, 50
    student = logits(batch, classes, 16).float().requires_grad_()
    target = logits(batch, classes, 17).float().requires_grad_(setting == "at")
    loss = _module(**{**MODULES["kd_as_released" if setting == "kd" else "at_gi"]}, num_classes=classes)
    labels = torch.arange(batch) % classes
    loss.observe(target.detach(), labels)
    loss.end_epoch()
    with Allocations() as forward:
        total = sum(loss(student, target, labels).values())
    with Allocations() as backward:
        total.backward()
    full = batch * classes
    assert max(size for size in forward.sizes if size != full) <= chunk
    assert forward.sizes.count(full) == 2  # q − p and S·w ⊙ c
    assert max(backward.sizes) == full and backward.sizes.count(full) == len(GRADS[setting])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_get_half_gradients_and_float32_losses(dtype):
    student = (torch.randn(8, 30) * 5).to(dtype).requires_grad_()
    target = (torch.randn(8, 30) * 5).to(dtype).requires_grad_()
    loss = ikl_loss(student, target, torch.softmax(target.float(), 1), wmse_weight=2.0, sce_weight=1.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad.dtype == dtype and target.grad.dtype == dtype
    reference = ikl_loss(
        student.detach().double(), target.detach().double(), torch.softmax(target.double(), 1), wmse_weight=2.0,
        sce_weight=1.0,
    )  # fmt: skip
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_no_gradient_work_without_grad():
    """Under no_grad (evaluation, the adversary's natural logits) the node saves nothing."""
    student, target = torch.randn(6, 9, requires_grad=True), torch.randn(6, 9)
    with torch.no_grad():
        value = ikl_loss(student, target, torch.softmax(target, 1), wmse_weight=1.0, sce_weight=1.0)
    assert value.grad_fn is None
    torch.testing.assert_close(
        value, ikl_loss(student.detach(), target, torch.softmax(target, 1), wmse_weight=1.0, sce_weight=1.0)
    )


def test_wmse_alone_and_zero_weights():
    student, target = logits(5, 7, 18).requires_grad_(), logits(5, 7, 19).requires_grad_()
    weights = torch.rand(5, 7, dtype=torch.float64)
    weights[2] = 0.0  # a row without weight contributes nothing (and no NaN)
    value = weighted_pairwise_mse(student, target, weights)
    reference = oracles.pairwise_wmse(student, target, weights)
    torch.testing.assert_close(value, reference, **TOL)
    grads = torch.autograd.grad(value, (student, target))
    ref_grads = torch.autograd.grad(reference, (student, target))
    for got, expected in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, expected, **TOL)
    assert torch.isfinite(grads[0]).all()


def test_logits_of_1e4_keep_the_wmse_exact_in_float32(path):
    """Centring on the weighted mean: a common offset of 1e4 between target and student changes
    neither value nor gradient beyond float32 rounding of t − s."""
    gen = torch.Generator().manual_seed(20)
    noise_s, noise_t = torch.randn(16, 50, generator=gen), torch.randn(16, 50, generator=gen)
    weights = torch.softmax(torch.randn(16, 50, generator=gen), 1)
    student = noise_s.clone().requires_grad_()
    shifted = (noise_t + 1e4).requires_grad_()
    value = weighted_pairwise_mse(student, shifted, weights)
    (grad,) = torch.autograd.grad(value, student)
    exact = weighted_pairwise_mse(noise_s.double().requires_grad_(), noise_t.double(), weights.double())
    exact_student = noise_s.double().requires_grad_()
    (exact_grad,) = torch.autograd.grad(
        weighted_pairwise_mse(exact_student, noise_t.double(), weights.double()), exact_student
    )
    assert value.item() == pytest.approx(exact.item(), rel=1e-3)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=0, atol=2e-3 * exact_grad.abs().max().item())


def test_kl_div_chunked_stays_finite_at_1e4():
    student = (torch.randn(8, 10) * 1e4).requires_grad_()
    target = (torch.randn(8, 10) * 1e4).requires_grad_()
    value = kl_div(student, target, chunk_size=3)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all() and torch.isfinite(target.grad).all()
    torch.testing.assert_close(value, kl_div(student.detach(), target.detach()), rtol=1e-4, atol=1e-2)


def test_bad_chunk_size_and_shapes_are_refused():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="chunk_size"):
        ikl_loss(s, t, torch.softmax(t, 1), wmse_weight=1.0, sce_weight=1.0, chunk_size=0)
    with pytest.raises(ValueError, match="one shape"):
        ikl_loss(s, t[:3], torch.softmax(t, 1), wmse_weight=1.0, sce_weight=1.0)
    with pytest.raises(ValueError, match="weights"):
        ikl_loss(s, t, torch.softmax(t[:3], 1), wmse_weight=1.0, sce_weight=1.0)


def test_kl_grad_of_one_input_only():
    student, target = logits(4, 6, 21), logits(4, 6, 22)
    for grad_into in (("student",), ("target",)):
        ours, ref = oracle_and_ours(
            lambda s, t: kl_div(s, t, 2.0, chunk_size=2), lambda s, t: kl_div(s, t, 2.0), student, target, grad_into
        )
        assert_same(ours, ref)


def test_non_contiguous_inputs(path):
    """Column slices and transposes (not contiguous) give the same values and gradients."""
    wide_s, wide_t = logits(13, 16, 25), logits(13, 16, 26)
    weights = torch.softmax(logits(8, 13, 27), 1)
    ours, ref = oracle_and_ours(
        lambda s, t: ikl_loss(s.t()[:, :13], t.t()[:, :13], weights, wmse_weight=2.0, sce_weight=1.0, temperature=2.0),
        lambda s, t: oracles.pairwise_ikl(
            s.t()[:, :13], t.t()[:, :13], weights, wmse_weight=2.0, sce_weight=1.0, temperature=2.0
        ),
        wide_s[:, :8],
        wide_t[:, :8],
        ("student", "target"),
    )
    assert_same(ours, ref)


def test_cached_scale_factors_survive_inference_mode_and_match_python_floats():
    """The CPU path multiplies by cached 0-dim factors: one made under inference_mode must still
    serve a later call with autograd, and the products equal those with the Python float."""
    fused._SCALARS.clear()
    s = torch.randn(6, 7, requires_grad=True)
    t = torch.randn(6, 7)
    weights = torch.softmax(t, dim=1)
    with torch.inference_mode():
        frozen = ikl_loss(s.detach(), t, weights, wmse_weight=3.0, sce_weight=2.0, temperature=1.7)
    assert fused._SCALARS and not any(f.is_inference() for f in fused._SCALARS.values())
    value = ikl_loss(s, t, weights, wmse_weight=3.0, sce_weight=2.0, temperature=1.7)
    value.backward()
    assert torch.equal(frozen, value.detach()) and torch.isfinite(s.grad).all()
    x = torch.randn(5, 3)
    assert torch.equal(fused._scaled(x, 1 / 3), x * (1 / 3))
