"""train_at end to end and the pieces of the official AT recipe: ε/step schedule, IKL-AT loss,
AWP, online weight averaging, resume, and AutoAttack on a trained checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from ikl.cli import train_at
from ikl.engine.checkpoint import load_checkpoint
from ikl.losses import IKLLoss, KLLoss, kl_div
from ikl.tasks.at import AdversarialTask, AWPConfig, WeightPerturbation, attack_schedule, ema_update_
from tests import oracles
from tests.runutils import TINY_DIGITS, compose_config, run_entry

TINY_AT = [
    *TINY_DIGITS,
    "model=resnet8",
    "monitor.samples=16",
    "monitor.steps=2",
    "compare_to_ce=false",
]


def test_as_run_budget_is_five_half_steps_in_every_epoch():
    for epoch in (1, 50, 120, 200):
        eps_e, steps, step = attack_schedule(epoch, 200, 8 / 255, budget="as_run")
        assert eps_e == pytest.approx(8 / 255 * epoch / 200)
        assert (steps, step) == (5, pytest.approx(eps_e / 2))


@pytest.mark.parametrize(
    "epoch,steps,fraction",
    [(1, 2, 1.0), (50, 2, 1.0), (51, 3, 2 / 3), (100, 3, 2 / 3), (101, 4, 0.5), (151, 5, 0.5), (200, 5, 0.5)],
)
def test_as_described_budget_is_the_staged_schedule(epoch, steps, fraction):
    eps_e, got_steps, step = attack_schedule(epoch, 200, 8 / 255, budget="as_described")
    assert got_steps == steps and step == pytest.approx(eps_e * fraction)


def test_low_budget_and_no_ramp():
    assert attack_schedule(3, 10, 0.1, budget="low", ramp=False) == (0.1, 2, 0.1)


def test_ikl_at_loss_is_the_official_formula_with_gradient_into_both():
    torch.manual_seed(0)
    criterion = IKLLoss(num_classes=5, wmse_weight=20.0, sce_weight=5.0, prior_temperature=4.0)
    criterion.observe(torch.randn(40, 5) * 3, torch.arange(40) % 5)
    criterion.end_epoch()
    task = AdversarialTask(
        nn.Linear(2, 5), criterion, epochs=10, eps=0.1, awp=None, ema_epoch_decay=None, ema_iter_decay=None
    )
    nat = (torch.randn(6, 5, dtype=torch.float64) * 3).requires_grad_()
    adv = (torch.randn(6, 5, dtype=torch.float64) * 3).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = sum(task.robust_terms(adv, nat, y, basic=6).values())
    weights = criterion.prior.prior[y].double()
    official = oracles.pairwise_ikl(adv, nat, weights, wmse_weight=20.0, sce_weight=5.0)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-10)
    g_ours = torch.autograd.grad(ours, (nat, adv))
    g_ref = torch.autograd.grad(oracles.pairwise_ikl(adv, nat, weights, wmse_weight=20.0, sce_weight=5.0), (nat, adv))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert g_ours[0].abs().sum() > 0 and g_ours[1].abs().sum() > 0


def test_two_view_loss_weights_the_augmented_half():
    criterion = KLLoss(kl_weight=6.0)
    task = AdversarialTask(
        nn.Linear(2, 3),
        criterion,
        epochs=1,
        eps=0.1,
        aug_weight=0.3,
        awp=None,
        ema_epoch_decay=None,
        ema_iter_decay=None,
    )
    nat, adv = torch.randn(8, 3), torch.randn(8, 3)
    y = torch.arange(8) % 3
    terms = task.robust_terms(adv, nat, y, basic=4)
    expected = 6.0 * (kl_div(adv[:4], nat[:4]) + 0.3 * kl_div(adv[4:], nat[4:]))
    torch.testing.assert_close(terms["loss_kl"], expected)


def _toy() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_awp_restores_the_weights_exactly_and_moves_by_gamma():
    model = _toy()
    before = copy.deepcopy(model.state_dict())
    awp = WeightPerturbation(model, AWPConfig(gamma=0.01))
    x, y = torch.rand(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    awp.perturb(model, lambda proxy: nn.functional.cross_entropy(proxy(x), y))
    for name in ("0.weight", "3.weight"):
        moved = (model.state_dict()[name] - before[name]).norm() / before[name].norm()
        assert moved.item() == pytest.approx(0.01, rel=1e-4)
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert torch.equal(model.state_dict()[name], before[name]), f"{name} must not be perturbed"
    awp.restore()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_awp_keeps_exactly_the_optimizer_update():
    model = _toy()
    reference = copy.deepcopy(model)
    awp = WeightPerturbation(model, AWPConfig(gamma=0.01))
    x, y = torch.rand(5, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    awp.perturb(model, lambda proxy: nn.functional.cross_entropy(proxy(x), y))
    update = {n: torch.randn_like(p) * 1e-3 for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.sub_(update[name])
    awp.restore()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], param - update[name], rtol=0, atol=1e-7)


def test_online_epoch_ema_equals_swa_py_over_saved_epoch_weights():
    model = _toy()
    task = AdversarialTask(model, KLLoss(), epochs=5, eps=0.1, awp=None, ema_iter_decay=None)
    saved = []
    for epoch in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(torch.randn(4))
            model[1].num_batches_tracked += 3
        saved.append(copy.deepcopy(model.state_dict()))
        task.on_epoch_end(epoch)
    average = {k: v.clone().double() for k, v in saved[0].items()}
    for state in saved[1:]:  # swa.py: theta_bar_e = 0.1 * theta_e + 0.9 * theta_bar_(e-1)
        for key, value in state.items():
            average[key] = 0.1 * value.double() + 0.9 * average[key] if value.is_floating_point() else value.double()
    for key, value in task.ema_epoch.state_dict().items():
        torch.testing.assert_close(value.double(), average[key], rtol=1e-5, atol=1e-6)


def test_ema_update_includes_buffers():
    a, b = _toy(), _toy()
    with torch.no_grad():
        b[1].running_var.fill_(3.0)
        a[1].running_var.fill_(1.0)
    ema_update_(a, b, 0.75)
    torch.testing.assert_close(a[1].running_var, torch.full((4,), 1.5))


@pytest.mark.parametrize("loss", ["ikl_at", "trades", "ce"])
@pytest.mark.parametrize("dataset", ["digits", "cifar10", "cifar100"])
def test_at_configs_compose(loss, dataset):
    cfg = compose_config("train_at", [f"loss={loss}", f"dataset={dataset}"])
    assert cfg.dataset.builder.normalize is False
    assert "${" not in json.dumps(train_at.compose.plain(cfg))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ikl_at", "trades", "ce"])
def test_one_epoch_of_each_at_loss(tmp_path, loss):
    summary = train_at.run(
        compose_config("train_at", [*TINY_AT, f"loss={loss}", f"run_dir={tmp_path}", "trainer.epochs=1"])
    )
    assert summary["epochs"] == 1 and "test_pgd_acc_last" in summary
    assert (tmp_path / "checkpoints" / "ema_epoch.pt").is_file()
    assert (tmp_path / "checkpoints" / "best_pgd.pt").is_file()


@pytest.mark.slow
def test_at_resume_gives_identical_weights_prior_and_ema(tmp_path):
    common = [*TINY_AT, "trainer.epochs=2", "awp.warmup_epoch=2", "ema.iter_start=0.5"]
    train_at.run(compose_config("train_at", [*common, f"run_dir={tmp_path / 'a'}"]))
    train_at.run(compose_config("train_at", [*common, f"run_dir={tmp_path / 'b'}", "trainer.stop_after=1"]))
    train_at.run(compose_config("train_at", [*common, f"run_dir={tmp_path / 'b'}", "resume=true"]))
    a, b = (
        load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt"),
        load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt"),
    )
    for part in ("model", "criterion", "ema_epoch", "ema_iter"):
        for key, value in a["task"][part].items():
            assert torch.equal(value, b["task"][part][key]), f"{part}.{key}"


@pytest.mark.slow
def test_autoattack_on_a_trained_checkpoint(tmp_path):
    train_at.run(compose_config("train_at", [*TINY_AT, f"run_dir={tmp_path / 'run'}", "trainer.epochs=1"]))
    proc = run_entry(
        "eval_autoattack.py",
        [
            f"checkpoint={tmp_path / 'run'}",
            "dataset=digits",
            "n_ex=16",
            "batch_size=16",
            "version=custom",
            "attacks=[apgd-ce]",
            "eps=32/255",
            "logger.mode=disabled",
            f"output_dir={tmp_path / 'aa'}",
            "results_dir=null",
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "aa" / "result.json").read_text())
    assert result["n_ex"] == 16 and result["comparable_to_leaderboard"] is False
    assert result["model"] == "resnet8" and 0 <= result["robust_acc"] <= result["clean_acc"] <= 100


def test_awp_proxy_follows_the_task_to_another_device_or_dtype():
    task = AdversarialTask(_toy(), KLLoss(), epochs=2, eps=0.1, awp=AWPConfig(), ema_iter_decay=None)
    task.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in task.awp.proxy.parameters())
    assert all(p.dtype == torch.float64 for p in task.ema_epoch.parameters())
