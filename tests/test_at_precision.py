"""The training adversary's precision switch (``attack.precision``) and the AWP proxy's memory format.

``fp32`` is the official float32 adversary whatever the trainer's autocast; ``amp`` runs the
adversary's forwards under the caller's autocast while its objective, iterate and result stay
float32. Evaluation (``robust_counts``) is float32 either way. CPU bf16 autocast stands in for the
GPU's; resnet8 on 4 images of 32×32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ikl.attacks import ce_objective, pgd_linf, robust_counts
from ikl.cli import train_at
from ikl.errors import ConfigError
from ikl.losses import IKLLoss
from ikl.models import create_model
from ikl.tasks.at import AdversarialTask, AWPConfig, WeightPerturbation
from tests.runutils import compose_config

EPS = 8 / 255
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", 10)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 3])


def _task(model: nn.Module, precision: str = "fp32", awp: AWPConfig | None = None) -> AdversarialTask:
    criterion = IKLLoss(num_classes=10, wmse_weight=1.0, sce_weight=1.0)
    return AdversarialTask(
        model,
        criterion,
        epochs=1,
        eps=EPS,
        attack_precision=precision,
        awp=awp,
        ema_epoch_decay=None,
        ema_iter_decay=None,
    )


def _record_conv_dtypes(model: nn.Module) -> list[tuple[torch.dtype, bool]]:
    """(output dtype, grad enabled) of every Conv2d forward from now on."""
    seen: list[tuple[torch.dtype, bool]] = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, out: seen.append((out.dtype, torch.is_grad_enabled())))
    return seen


def _check_in_ball(x_adv: torch.Tensor, x: torch.Tensor) -> None:
    assert x_adv.dtype == torch.float32 and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_amp_adversary_runs_the_model_in_bf16_and_returns_float32_in_the_ball():
    model, (x, y) = _model(), _batch()
    task = _task(model, "amp")
    seen = _record_conv_dtypes(model)
    with BF16:
        x_adv = task.attack(x, y, epoch=1)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(seen) == convs * (1 + 5)  # the natural forward and 5 PGD steps (budget as_run)
    assert {dtype for dtype, _ in seen} == {torch.bfloat16}
    _check_in_ball(x_adv, x)


def test_fp32_adversary_stays_float32_under_an_outer_autocast():
    model, (x, y) = _model(), _batch()
    task = _task(model)  # the default precision
    assert task.attack_precision == "fp32"
    seen = _record_conv_dtypes(model)
    with BF16:
        assert model(x).dtype == torch.bfloat16  # autocast really is on out here
        seen.clear()
        x_adv = task.attack(x, y, epoch=1)
    assert seen and {dtype for dtype, _ in seen} == {torch.float32}
    _check_in_ball(x_adv, x)


def test_amp_objective_sees_float32_logits_with_autocast_off():
    model, (x, y) = _model(), _batch()
    seen = []
    base = ce_objective(y)

    def objective(logits: torch.Tensor) -> torch.Tensor:
        seen.append((logits.dtype, torch.is_autocast_enabled("cpu")))
        return base(logits)

    with BF16:
        x_adv = pgd_linf(model, x, objective, eps=EPS, step_size=EPS / 4, steps=2, autocast=True)
    assert seen == [(torch.float32, False)] * 2
    _check_in_ball(x_adv, x)


def test_amp_without_autocast_is_the_fp32_adversary():
    (x, y), results = _batch(), []
    for precision in ("fp32", "amp"):
        task = _task(_model(), precision)
        torch.manual_seed(1)  # the random start
        results.append(task.attack(x, y, epoch=1))
    assert torch.equal(*results)


def test_evaluation_stays_float32_under_an_outer_autocast():
    model, (x, y) = _model(), _batch()
    seen = _record_conv_dtypes(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with BF16:
        counts = robust_counts(model, loader, eps=EPS, steps=2, step_size=EPS / 2, device="cpu")
    attack_dtypes = [dtype for dtype, grad in seen if grad]  # PGD forwards; the clean/final ones use no_grad
    assert counts.n == 4
    assert len(attack_dtypes) == 2 * sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert set(attack_dtypes) == {torch.float32}


def test_precision_config_composes_and_reaches_the_task():
    assert compose_config("train_at", []).attack.precision == "fp32"
    cfg = compose_config("train_at", ["attack.precision=amp", "dataset=cifar10"])
    train_at.compose.validate(cfg)
    assert train_at.build_task(cfg, _model(), 10).attack_precision == "amp"


def test_an_unknown_precision_is_one_clear_error():
    cfg = compose_config("train_at", ["attack.precision=bf16", "dataset=cifar10"])
    with pytest.raises(ConfigError, match=r"^attack.precision='bf16' is not one of fp32, amp$"):
        train_at.compose.validate(cfg)  # before anything is built or written
    with pytest.raises(ValueError, match="is not one of fp32, amp"):
        _task(_model(), "half")


def _spatial_conv_weights(module: nn.Module) -> list[torch.Tensor]:
    """4-D weights whose two memory formats differ (not 1×1 kernels)."""
    return [p for p in module.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)]


def test_awp_proxy_follows_a_channels_last_model_and_restores_exactly():
    model, (x, y) = _model(), _batch()
    awp = WeightPerturbation(model, AWPConfig(gamma=0.01))  # made before the conversion, as a library user may
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in _spatial_conv_weights(awp.proxy))
    before = copy.deepcopy(model.state_dict())
    awp.perturb(model, lambda proxy: nn.functional.cross_entropy(proxy(x), y))
    weights = _spatial_conv_weights(awp.proxy)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    optimized = {id(p) for group in awp.proxy_optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in awp.proxy.parameters()}  # the ascent step still moves the proxy
    moved = (model.conv1.weight - before["conv1.weight"]).norm() / before["conv1.weight"].norm()
    assert moved.item() == pytest.approx(0.01, rel=1e-4)
    awp.restore()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_awp_proxy_of_a_default_format_model_stays_default():
    model, (x, y) = _model(), _batch()
    awp = WeightPerturbation(model, AWPConfig(gamma=0.01))
    awp.perturb(model, lambda proxy: nn.functional.cross_entropy(proxy(x), y))
    awp.restore()
    assert all(w.is_contiguous() for w in _spatial_conv_weights(awp.proxy))


def test_amp_training_step_with_awp_on_a_channels_last_model():
    model, (x, y) = _model(), _batch()
    task = _task(model, "amp", awp=AWPConfig(gamma=0.01, warmup_epoch=1)).train()
    model.to(memory_format=torch.channels_last)
    with BF16:
        out = task(x.contiguous(memory_format=torch.channels_last), y, epoch=1)
    out["loss"].backward()
    task.after_optimizer_step(0)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _spatial_conv_weights(task.awp.proxy))
