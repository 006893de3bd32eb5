"""The DM-AT recipe switches of ``AdversarialTask`` (generated-data rows), each against an oracle
re-typed from DM-AT's code (wzekai99/DM-Improves-AT b390f25): label-smoothed CE
(``core/utils/utils.py`` SmoothCrossEntropyLoss), the train-mode adversary without BN updates and its
uniform start (``gowal21uncovering/utils/trades.py``), the EMA schedule, BN momentum 1 at the first step
and no weight decay on BN (``gowal21uncovering/utils/watrain.py``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ikl.attacks.pgd import batch_stats_mode, pgd_linf, trades_objective
from ikl.errors import ConfigError
from ikl.losses import IKLLoss, KLLoss
from ikl.models import create_model
from ikl.tasks.at import AdversarialTask, attack_schedule, dm_at_ema_decay


def _toy(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6, momentum=0.01),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, num_classes),
    )


def _batch(n: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def _task(**kwargs) -> AdversarialTask:
    defaults = {"epochs": 4, "eps": 8 / 255, "ema_epoch_decay": None, "ema_iter_decay": None}
    return AdversarialTask(_toy(), kwargs.pop("criterion", KLLoss(kl_weight=5.0)), **{**defaults, **kwargs})


def smooth_ce_oracle(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """DM-AT SmoothCrossEntropyLoss: (1 - s)·NLL + s·mean_j(−log p_j), batch mean."""
    logp = logits.log_softmax(dim=-1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    return ((1 - smoothing) * nll + smoothing * (-logp.mean(dim=-1))).mean()


def test_label_smoothing_is_dm_ats_smooth_cross_entropy():
    task = _task(label_smoothing=0.1, budget="fixed", attack_steps=1, attack_step_size=0.0)
    x, y = _batch()
    out = task(x, y, epoch=1)
    with torch.no_grad():
        nat = task.model(x)  # BN in train mode, as the step's natural forward
    torch.testing.assert_close(out["loss_ce"], smooth_ce_oracle(nat, y, 0.1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["loss_ce"], F.cross_entropy(nat, y))


def test_fixed_budget_ignores_the_epoch():
    for epoch in (1, 200, 400):
        assert attack_schedule(epoch, 400, 8 / 255, budget="fixed", ramp=False, steps=10, step_size=2 / 255) == (
            8 / 255,
            10,
            2 / 255,
        )
    with pytest.raises(ConfigError, match="attack.steps"):
        _task(budget="fixed")
    with pytest.raises(ConfigError, match="label_smoothing"):
        _task(label_smoothing=1.0)


def test_batch_stats_adversary_uses_batch_statistics_and_updates_nothing():
    model = _toy().train()
    x, _ = _batch()
    bn = model[1]
    bn.running_mean.fill_(3.0)  # far from the batch mean: eval mode would give other logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), batch_stats_mode(model):
        got = model(x)
        assert model.training and bn.track_running_stats is False
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert bn.track_running_stats is True and model.training
    reference = _toy().train()
    reference.load_state_dict(before)
    reference[1].track_running_stats = False
    reference[1].running_mean = reference[1].running_var = None  # batch statistics, no buffers at all
    with torch.no_grad():
        torch.testing.assert_close(got, reference(x))
        assert not torch.allclose(got, model.eval()(x))


def test_pgd_in_batch_stats_mode_keeps_the_running_stats_and_the_mode():
    model = _toy().train()
    x, _ = _batch()
    with torch.no_grad():
        natural = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = pgd_linf(model, x, trades_objective(natural), eps=8 / 255, step_size=2 / 255, steps=3, mode="batch_stats")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and (x_adv - x).abs().max() <= 8 / 255 + 1e-7
    with pytest.raises(ValueError, match="not one of"):
        pgd_linf(model, x, trades_objective(natural), eps=0.1, step_size=0.1, steps=1, mode="train")


def test_uniform_start_fills_the_eps_ball():
    """With a zero step the adversary returns its start: U(−ε, ε) (DM-AT) vs 0.001·N(0, 1) (DKL)."""
    x, y = _batch(64)
    x = x * 0.5 + 0.25  # away from the [0, 1] clamp
    uniform = _task(budget="fixed", attack_steps=1, attack_step_size=0.0, attack_random_start="uniform", eps_ramp=False)
    normal = _task(budget="fixed", attack_steps=1, attack_step_size=0.0, attack_random_start="normal", eps_ramp=False)
    spread_u = (uniform.attack(x, y, 1) - x).abs()
    spread_n = (normal.attack(x, y, 1) - x).abs()
    assert spread_u.max() <= 8 / 255 + 1e-7 and spread_u.mean() == pytest.approx(4 / 255, rel=0.05)
    assert spread_n.mean() < 0.002


def test_kl_objective_overrides_the_ikl_adversary():
    """attack.objective=kl: the TRADES KL adversary (DM-AT's trades_loss) for an IKL-trained model."""
    x, y = _batch()
    ikl = IKLLoss(num_classes=4, wmse_weight=12.0, sce_weight=5.0)
    kl_task, ikl_task, model = _task(criterion=ikl, attack_objective="kl"), _task(criterion=ikl), _toy()
    torch.manual_seed(3)
    got = kl_task.attack(x, y, 4)
    with torch.no_grad():
        natural = model.eval()(x)
    torch.manual_seed(3)
    want = pgd_linf(model, x, trades_objective(natural), eps=8 / 255, step_size=4 / 255, steps=5)
    torch.testing.assert_close(got, want)
    torch.manual_seed(3)
    assert not torch.equal(ikl_task.attack(x, y, 4), got)


def dm_at_ema_oracle(steps: int, warmup: float, tau: float) -> list[float]:
    """DM-AT watrain.ema_update decay after each of ``steps`` steps (global_step 1-based)."""
    out = []
    for global_step in range(1, steps + 1):
        factor = int(global_step >= warmup)
        delta = global_step - warmup
        decay = min(tau, (1.0 + delta) / (10.0 + delta)) if 10.0 + delta != 0 else tau
        out.append(decay * factor)
    return out


def test_dm_at_ema_decay_schedule():
    expected = dm_at_ema_oracle(3000, 24.5, 0.995)
    assert [dm_at_ema_decay(s, 24.5, 0.995) for s in range(1, 3001)] == pytest.approx(expected, abs=0)
    assert dm_at_ema_decay(24, 24.5, 0.995) == 0.0 and dm_at_ema_decay(25, 24.5, 0.995) == pytest.approx(1.5 / 10.5)
    assert dm_at_ema_decay(10**6, 0.0, 0.995) == 0.995


def test_dm_at_ema_averages_parameters_and_takes_the_models_bn_statistics():
    """6 steps, 3 per epoch, warm-up 0.5 · 2 epochs · 3 = 3 steps: the average follows the model for
    steps 1-2, then decays with (1+δ)/(10+δ); BN buffers are always the model's (DM-AT update_bn)."""
    task = _task(ema_iter_decay=0.995, ema_iter_start=0.5, ema_iter_schedule="dm_at", steps_per_epoch=3, epochs=2)
    assert task.ema_iter_warmup_steps == 3.0 and task.weight_files() == {}
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.5)
    oracle = {k: v.clone() for k, v in task.model.named_parameters()}
    decays = dm_at_ema_oracle(6, 3.0, 0.995)
    x, y = _batch()
    step = 0
    for epoch in (1, 2):
        task.on_epoch_start(epoch)
        for _ in range(3):
            optimizer.zero_grad()
            task(x, y, epoch=epoch)["loss"].backward()
            optimizer.step()
            task.after_optimizer_step(step)
            with torch.no_grad():
                for name, param in task.model.named_parameters():
                    oracle[name] = decays[step] * oracle[name] + (1 - decays[step]) * param
            step += 1
    average = task.ema_iter.state_dict()
    for name, value in oracle.items():
        torch.testing.assert_close(average[name], value, rtol=1e-6, atol=1e-7)
    for name in ("0.weight", "4.weight"):  # an average, not the model (the conv bias before BN never moves)
        assert not torch.allclose(average[name], dict(task.model.named_parameters())[name])
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(average[name], task.model.state_dict()[name])
    assert set(task.weight_files()) == {"ema_iter"}


def test_bn_momentum_is_one_for_the_first_step_only():
    task = _task(bn_momentum_first_step=1.0, budget="fixed", attack_steps=1, attack_step_size=0.0)
    bn = task.model[1]
    x, y = _batch()
    captured = []
    bn.register_forward_hook(lambda m, args, out: captured.append(args[0].mean(dim=(0, 2, 3)).detach()))
    task.train()
    task(x, y, epoch=1)  # adversary (no update), then the train-mode adv and natural forwards
    torch.testing.assert_close(bn.running_mean, captured[-1], rtol=1e-5, atol=1e-6)  # momentum 1: the last batch
    task.after_optimizer_step(0)
    assert bn.momentum == 0.01 and task.steps_done == 1
    before = bn.running_mean.clone()
    task(x + 0.5, y, epoch=1)
    assert not torch.allclose(bn.running_mean, captured[-1])  # momentum 0.01 from the second step on
    assert (bn.running_mean - before).abs().max() < 0.02 * (captured[-1] - before).abs().max() + 1e-6
    restored = _task(bn_momentum_first_step=1.0)
    restored.load_checkpoint_state(task.checkpoint_state())
    assert restored.steps_done == 1  # a resumed run does not apply it again


def test_no_weight_decay_on_batchnorm_is_dm_ats_name_rule_on_the_dm_wide_resnet():
    with torch.device("meta"):
        model = create_model("wrn_28_10_swish", 10)
    task = AdversarialTask.__new__(AdversarialTask)
    nn.Module.__init__(task)
    task.model, task.bn_weight_decay = model, False
    decay, no_decay = task.optimizer_param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert {names[id(p)] for p in no_decay["params"]} == {n for n in names.values() if "batchnorm" in n}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    task.bn_weight_decay = True
    assert len(task.optimizer_param_groups()) == len(names)
    groups = torch.optim.SGD(_task(bn_weight_decay=False).optimizer_param_groups(), lr=0.1, weight_decay=5e-4)
    assert [g["weight_decay"] for g in groups.param_groups] == [5e-4, 0.0]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"attack_random_start": "gauss"}, "random_start"),
        ({"attack_mode": "train"}, "attack mode"),
        ({"attack_objective": "ce"}, "objective"),
        ({"ema_iter_schedule": "cosine"}, "iter_schedule"),
        ({"ema_iter_schedule": "dm_at", "ema_iter_decay": 0.995}, "steps_per_epoch"),
    ],
)
def test_bad_switches_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        _task(**bad)


def test_one_cycle_schedule_is_dm_ats_cosinew():
    """OneCycleLR(max_lr, pct_start=0.025, total_steps=epochs) per epoch: lr/25 in epoch 1, the peak lr
    at epoch 0.025·E, then cosine to lr/25/1e4; momentum cycles 0.95 → 0.85 → 0.95."""
    from hydra.utils import instantiate

    from tests.runutils import compose_config

    cfg = compose_config("train_at", ["scheduler=one_cycle", "trainer.epochs=400", "optimizer.lr=0.2"])
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=cfg.optimizer.lr, momentum=0.9, nesterov=True)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    lrs, momenta = [], []
    for _ in range(cfg.trainer.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.2 / 25) and max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 9
    assert lrs[-1] < 1e-4 and momenta[0] == pytest.approx(0.95) and momenta[9] == pytest.approx(0.85)
    middle = 9 + (399 - 9) // 2
    assert lrs[middle] == pytest.approx(
        0.2 / 25 / 1e4 + (0.2 - 0.2 / 25 / 1e4) * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-3
    )
