"""Adversarial training: IKL-AT and the TRADES baseline with AWP, the ε ramp and weight averaging.

Follows ``DKLv1/Adv-training-dkl/train_dkl_cifar100.py`` (PAPER.md §1.4, §2):

1. class weights W = prior rows of the labels (uniform in epoch 1);
2. adversary (model in eval mode): PGD from x + 0.001·N(0, 1) maximising the *attack* objective
   (IKL: wMSE·``attack_wmse_weight`` + sCE·``attack_sce_weight``; TRADES: KL(s_nat ‖ s_adv)), in
   float32 as the official code (``attack_precision="fp32"``) or under the trainer's autocast
   (``"amp"``, a speed deviation; see :meth:`AdversarialTask.attack`);
3. AWP from epoch ``awp.warmup_epoch``: one ascent step of a proxy copy on the training loss, the
   model's conv/fc weights moved by γ·‖θ‖·v/‖v‖ for this step only;
4. train-mode forwards of x_adv then x_nat; L = CE(z_nat, y) + robust(z_adv, z_nat, y), gradient
   into both logits; the prior is fed the basic-view natural logits at τ;
5. weight averaging: the epoch EMA of ``swa.py`` (decay 0.9 over epochs) and the iteration EMA
   (0.9996 from 3/4 of training), both online, both in the checkpoint.

The generated-data rows were trained with DM-AT's code instead (``wzekai99/DM-Improves-AT``
b390f25, ``gowal21uncovering/utils/watrain.py``, ``trades.py``; PAPER.md §2.2), whose switches are
options here (``configs/recipe/at_cifar*_generated.yaml`` turns them on):

* ``label_smoothing``: CE(z_nat, y) with label smoothing (DM-AT ``--ls 0.1``, ``SmoothCrossEntropyLoss``,
  the same formula as ``F.cross_entropy(label_smoothing=)``);
* ``budget="fixed"`` with ``attack_steps``/``attack_step_size`` (DM-AT: 10 steps of 2/255, no ε ramp),
  ``attack_random_start="uniform"`` (x + U(−ε, ε), clamped), ``attack_mode="batch_stats"`` (the
  adversary runs the model in train mode with BatchNorm on batch statistics, not updating them:
  ``track_bn_stats(model, False)``), ``attack_objective="kl"`` (the TRADES KL adversary whatever the
  training loss);
* ``ema_iter_schedule="dm_at"``: the iteration EMA of ``ema_update(..., dynamic_decay=True)``: the
  average follows the model until ``ema_iter_start`` of all steps (DM-AT: 2.5 %), then decays with
  min(τ, (1 + δ)/(10 + δ)) after δ more steps (τ = ``ema_iter_decay``, DM-AT ``--tau 0.995``), over
  the parameters only; BatchNorm statistics are the model's (DM-AT ``update_bn``);
* ``bn_momentum_first_step=1.0``: BatchNorm momentum 1 for the first optimisation step (DM-AT sets it
  "to make BN running mean and variance init same as Haiku"), the model's own momentum after;
* ``bn_weight_decay=False``: no weight decay on BatchNorm weights and biases
  (:meth:`AdversarialTask.optimizer_param_groups`; DM-AT ``group_weight``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ikl.attacks import ikl_objective, pgd_linf, robust_counts, trades_objective
from ikl.attacks.pgd import ATTACK_MODES, adversary_autocast
from ikl.engine.distributed import all_reduce_sum, unwrap
from ikl.errors import ConfigError
from ikl.losses import IKLLoss
from ikl.tasks.base import Task

BUDGETS = ("as_run", "as_described", "low", "fixed")
ATTACK_PRECISIONS = ("fp32", "amp")
RANDOM_STARTS = ("normal", "uniform")
ATTACK_OBJECTIVES = ("loss", "kl")
EMA_SCHEDULES = ("constant", "dm_at")


def attack_schedule(
    epoch: int,
    epochs: int,
    eps: float,
    *,
    budget: str = "as_run",
    ramp: bool = True,
    steps: int | None = None,
    step_size: float | None = None,
) -> tuple[float, int, float]:
    """(ε_e, steps, step size) of epoch ``epoch`` (1-based) in the official AT scripts.

    ``ramp``: ε_e = ε·e/E, else ε. ``budget``:
    - ``as_run``: what the official ``train_budget='high'`` actually does, because its schedule is
      a chain of ``if`` statements, not ``elif`` (PAPER.md §0.3): 5 steps of ε_e/2 in every epoch;
    - ``as_described``: the staged schedule that chain was meant to be: 2 steps of ε_e up to 1/4 of
      training, 3 of 2ε_e/3 up to 1/2, 4 of ε_e/2 up to 3/4, then 5 of ε_e/2;
    - ``low``: 2 steps of ε_e (official ``train_budget='low'``);
    - ``fixed``: ``steps`` steps of ``step_size`` in every epoch (DM-AT: 10 of 2/255).
    """
    eps_e = eps * epoch / epochs if ramp else eps
    if budget == "fixed":
        if steps is None or step_size is None:
            raise ValueError("attack budget 'fixed' needs attack steps and step_size")
        return eps_e, steps, step_size
    if budget == "low":
        return eps_e, 2, eps_e
    if budget == "as_run":
        return eps_e, 5, eps_e / 2
    if budget != "as_described":
        raise ValueError(f"attack budget {budget!r} is not one of {BUDGETS}")
    scale = epochs / 200.0
    for last_epoch, steps, step in ((50, 2, 1.0), (100, 3, 2 / 3), (150, 4, 0.5)):
        if epoch <= int(last_epoch * scale):
            return eps_e, steps, eps_e * step
    return eps_e, 5, eps_e / 2


def check_recipe(*, budget: str, steps: int | None, step_size: float | str | None, label_smoothing: float) -> None:
    """The cross-field checks of the AT switches, as one ConfigError line (before a run starts)."""
    if budget == "fixed" and (steps is None or step_size is None):
        raise ConfigError("attack.budget=fixed needs attack.steps and attack.step_size (DM-AT: 10 and 2/255)")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing={label_smoothing} must be in [0, 1)")


@torch.no_grad()
def ema_update_(average: nn.Module, model: nn.Module, decay: float, *, buffers: str = "average") -> None:
    """average ← decay·average + (1−decay)·model over every state entry, BN buffers included
    (as ``swa.py``); integer entries (``num_batches_tracked``) take the model's value.
    ``buffers="copy"``: only parameters are averaged, buffers take the model's values (DM-AT)."""
    target = average.state_dict()
    model = unwrap(model)
    params = {name for name, _ in model.named_parameters()} if buffers == "copy" else None
    for key, value in model.state_dict().items():
        if value.is_floating_point() and (params is None or key in params):
            target[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
        else:
            target[key].copy_(value)


def dm_at_ema_decay(step: int, warmup_steps: float, decay: float) -> float:
    """DM-AT's EMA decay after optimisation step ``step`` (1-based): 0 before ``warmup_steps`` (the
    average is the model), then min(decay, (1 + δ)/(10 + δ)) with δ = step − warmup_steps
    (``watrain.py`` ``ema_update(..., dynamic_decay=True)``)."""
    if step < warmup_steps:
        return 0.0
    delta = step - warmup_steps
    return min(decay, (1.0 + delta) / (10.0 + delta))


@torch.no_grad()
def copy_state_(average: nn.Module, model: nn.Module) -> None:
    for key, value in unwrap(model).state_dict().items():
        average.state_dict()[key].copy_(value)


def _is_channels_last(module: nn.Module) -> bool:
    """Whether ``module``'s 4-D (conv) weights are stored channels_last. The first one whose two formats
    differ decides (a 1×1 kernel is contiguous in both); no such weight means the default format."""
    for param in module.parameters():
        if param.dim() == 4:
            plain, last = param.is_contiguous(), param.is_contiguous(memory_format=torch.channels_last)
            if plain != last:
                return last
    return False


@dataclass
class AWPConfig:
    """Adversarial weight perturbation (Wu et al. 2020; ``utils_awp.py``): γ and the first epoch."""

    gamma: float = 0.005
    warmup_epoch: int = 10


class WeightPerturbation(nn.Module):
    """One AWP step: θ ← θ + γ·v for the conv/fc weights, undone after the optimizer step.

    v_l = (θ'_l − θ_l)·‖θ_l‖/‖θ'_l − θ_l‖ where θ' is a proxy after one SGD *ascent* step on the
    training loss (the lr cancels in the normalisation). Unlike the official ``restore`` (θ − γv,
    which leaves rounding residue) the restore here is exact: θ ← θ₀ + (θ − θ_perturbed), so the
    weights end as the unperturbed weights plus exactly the optimizer's update.
    """

    def __init__(self, model: nn.Module, config: AWPConfig) -> None:
        super().__init__()  # a module, so the proxy follows the task's .to(device)
        self.config = config
        self.proxy = copy.deepcopy(unwrap(model))
        self.proxy_optimizer = torch.optim.SGD(self.proxy.parameters(), lr=0.01)
        self.saved: list[tuple[nn.Parameter, Tensor, Tensor]] = []

    def follow_memory_format(self, model: nn.Module) -> None:
        """Store the proxy's conv weights channels_last exactly when ``model``'s are (``trainer.channels_last``
        may convert the model after this copy was made). ``load_state_dict`` copies values into the proxy's
        own tensors and keeps their format, so one conversion lasts; the parameters stay the same objects,
        so the proxy optimizer still holds them."""
        wanted = _is_channels_last(model)
        if _is_channels_last(self.proxy) != wanted:
            self.proxy.to(memory_format=torch.channels_last if wanted else torch.contiguous_format)

    def perturbed_names(self, model: nn.Module) -> list[str]:
        return [name for name, p in model.named_parameters() if p.dim() > 1 and name.endswith("weight")]

    def perturb(self, model: nn.Module, loss_fn) -> None:
        """Ascend the proxy on ``loss_fn(proxy)``, then move ``model``'s weights by γ·v."""
        model = unwrap(model)
        self.follow_memory_format(model)
        self.proxy.load_state_dict(model.state_dict())
        self.proxy.train()
        self.proxy_optimizer.zero_grad(set_to_none=True)
        (-loss_fn(self.proxy)).backward()
        self.proxy_optimizer.step()
        proxy_params = dict(self.proxy.named_parameters())
        own = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.perturbed_names(model):
                param = own[name]
                diff = proxy_params[name].detach() - param.detach()
                step = self.config.gamma * param.norm() / (diff.norm() + 1e-20) * diff
                original = param.detach().clone()
                param.add_(step)
                self.saved.append((param, original, param.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for param, original, perturbed in self.saved:
            param.copy_(original + (param - perturbed))
        self.saved.clear()


class AdversarialTask(Task):
    """IKL-AT (``criterion`` an ``IKLLoss``), TRADES (a ``KLLoss`` with weight β) or plain
    training (``criterion=None``, no adversary), all with the same recipe switches.

    ``attack_precision`` is the training adversary's precision (config ``attack.precision``):
    ``"fp32"`` (default, the official code) or ``"amp"`` (its forwards/backwards under the trainer's
    autocast; see :meth:`attack`). Evaluation (:meth:`evaluate`, AutoAttack) is float32 either way.
    The DM-AT switches (label smoothing through ``bn_weight_decay``) are described in the module
    docstring; their defaults are the DKL code's behaviour. ``steps_per_epoch`` is needed by
    ``ema_iter_schedule="dm_at"`` (its start is a fraction of all steps).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module | None,
        *,
        epochs: int,
        eps: float,
        eps_ramp: bool = True,
        budget: str = "as_run",
        attack_precision: str = "fp32",
        attack_wmse_weight: float = 1.0,
        attack_sce_weight: float = 1.0,
        aug_weight: float = 1.0,
        awp: AWPConfig | None = None,
        ema_epoch_decay: float | None = 0.9,
        ema_iter_decay: float | None = 0.9996,
        ema_iter_start: float = 0.75,
        eval_eps: float | None = None,
        eval_steps: int = 10,
        eval_step_size: float = 2 / 255,
        eval_samples: int | None = 1000,
        label_smoothing: float = 0.0,
        attack_steps: int | None = None,
        attack_step_size: float | None = None,
        attack_random_start: str = "normal",
        attack_mode: str = "eval",
        attack_objective: str = "loss",
        ema_iter_schedule: str = "constant",
        steps_per_epoch: int | None = None,
        bn_momentum_first_step: float | None = None,
        bn_weight_decay: bool = True,
    ) -> None:
        super().__init__()
        if budget not in BUDGETS:
            raise ValueError(f"attack budget {budget!r} is not one of {BUDGETS}")
        if attack_precision not in ATTACK_PRECISIONS:
            raise ValueError(f"attack precision {attack_precision!r} is not one of {', '.join(ATTACK_PRECISIONS)}")
        for value, choices, what in (
            (attack_random_start, RANDOM_STARTS, "attack random_start"),
            (attack_mode, tuple(ATTACK_MODES), "attack mode"),
            (attack_objective, ATTACK_OBJECTIVES, "attack objective"),
            (ema_iter_schedule, EMA_SCHEDULES, "ema iter_schedule"),
        ):
            if value not in choices:
                raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}")
        check_recipe(budget=budget, steps=attack_steps, step_size=attack_step_size, label_smoothing=label_smoothing)
        if ema_iter_schedule == "dm_at" and ema_iter_decay is not None and not steps_per_epoch:
            raise ValueError("ema iter_schedule 'dm_at' needs steps_per_epoch (its start is a fraction of all steps)")
        self.attack_precision = attack_precision
        self.label_smoothing = label_smoothing
        self.attack_steps, self.attack_step_size = attack_steps, attack_step_size
        self.attack_random_start, self.attack_mode, self.attack_objective = (
            attack_random_start,
            attack_mode,
            attack_objective,
        )
        self.ema_iter_schedule = ema_iter_schedule
        self.bn_momentum_first_step = bn_momentum_first_step
        self.bn_weight_decay = bn_weight_decay
        self.steps_done = 0
        self._bn_momenta: list[tuple[nn.Module, float | None]] = []
        self.model = model
        self.criterion = criterion
        self.epochs, self.eps, self.eps_ramp, self.budget = epochs, eps, eps_ramp, budget
        self.attack_wmse_weight, self.attack_sce_weight = attack_wmse_weight, attack_sce_weight
        self.aug_weight = aug_weight
        self.awp = WeightPerturbation(model, awp) if awp is not None and criterion is not None else None
        self.ema_epoch_decay, self.ema_iter_decay = ema_epoch_decay, ema_iter_decay
        self.ema_iter_start_epoch = max(1, int(ema_iter_start * epochs)) if ema_iter_schedule == "constant" else 1
        self.ema_iter_warmup_steps = ema_iter_start * epochs * (steps_per_epoch or 0)
        self.ema_epoch = self._frozen_copy(model) if ema_epoch_decay is not None else None
        self.ema_iter = self._frozen_copy(model) if ema_iter_decay is not None else None
        self.eval_eps = eps if eval_eps is None else eval_eps
        self.eval_steps, self.eval_step_size, self.eval_samples = eval_steps, eval_step_size, eval_samples
        self.epoch = 0

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        average = copy.deepcopy(unwrap(model)).eval()
        for param in average.parameters():
            param.requires_grad_(False)
        return average

    def train(self, mode: bool = True) -> AdversarialTask:
        super().train(mode)
        for average in (self.ema_epoch, self.ema_iter):
            if average is not None:
                average.eval()
        return self

    # ------------------------------------------------------------------ the step
    def robust_terms(self, adv_logits: Tensor, nat_logits: Tensor, y: Tensor, basic: int) -> dict[str, Tensor]:
        """Robust loss terms; with two views: terms(basic half) + aug_weight·terms(augmented half)."""
        terms = self.criterion(adv_logits[:basic], nat_logits[:basic], y[:basic])
        if basic < len(y):
            extra = self.criterion(adv_logits[basic:], nat_logits[basic:], y[basic:])
            terms = {k: v + self.aug_weight * extra[k] for k, v in terms.items()}
        return terms

    def attack(self, x: Tensor, y: Tensor, epoch: int) -> Tensor:
        """The training adversary's x_adv (official ``perturb_input``), in ``attack_precision``.

        ``"fp32"``: natural and PGD forwards in float32 with autocast off, whatever the trainer's
        ``amp`` (the official code). ``"amp"``: both under the caller's autocast (the trainer's
        ``amp``; identical to fp32 with ``amp=off``), about half a step's compute at reduced precision.
        The objective still sees float32 logits and x_adv stays float32 and within ε, but PGD follows
        sign ∇_x, which bf16 may flip for near-zero components, so x_adv is close to, not equal to,
        the float32 one (a deviation from the official code; evaluation is never affected).
        """
        eps, steps, step_size = attack_schedule(
            epoch,
            self.epochs,
            self.eps,
            budget=self.budget,
            ramp=self.eps_ramp,
            steps=self.attack_steps,
            step_size=self.attack_step_size,
        )
        model = unwrap(self.model)
        autocast = self.attack_precision == "amp"
        with torch.no_grad(), ATTACK_MODES[self.attack_mode](model), adversary_autocast(x.device.type, autocast):
            natural = model(x.float()).float()  # the objective works on float32 logits in either precision
        if isinstance(self.criterion, IKLLoss) and self.attack_objective == "loss":
            objective = ikl_objective(
                self.criterion, natural, y, wmse_weight=self.attack_wmse_weight, sce_weight=self.attack_sce_weight
            )
        else:
            objective = trades_objective(natural)
        return pgd_linf(
            model,
            x,
            objective,
            eps=eps,
            step_size=step_size,
            steps=steps,
            random_start=self.attack_random_start,
            autocast=autocast,
            mode=self.attack_mode,
        )

    def forward(self, x: Tensor, y: Tensor, *, epoch: int) -> dict[str, Any]:
        basic = len(y)
        if x.dim() == 5:  # two views [B, 2, C, H, W]: basic views first, then augmented ones
            x = torch.cat([x[:, 0], x[:, 1]])
            y = torch.cat([y, y])
        if self.training:
            self._first_step_bn_momentum()
        if self.criterion is None:
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            return {"loss": loss, "loss_ce": loss.detach(), "logits": logits, "time_attack": 0.0}
        tic = time.perf_counter()
        x_adv = self.attack(x, y, epoch) if self.training else x
        attack_time = time.perf_counter() - tic
        if self.training and self.awp is not None and epoch >= self.awp.config.warmup_epoch:
            self.awp.perturb(self.model, lambda proxy: self._awp_loss(proxy, x, x_adv, y))
        adv_logits = self.model(x_adv)
        nat_logits = self.model(x)
        loss_ce = F.cross_entropy(nat_logits.float(), y, label_smoothing=self.label_smoothing)
        terms = self.robust_terms(adv_logits, nat_logits, y, basic)
        if self.training and hasattr(self.criterion, "observe"):
            self.criterion.observe(nat_logits[:basic].detach(), y[:basic])
        loss = loss_ce + sum(terms.values())
        return {"loss": loss, "loss_ce": loss_ce.detach(), **terms, "logits": adv_logits, "time_attack": attack_time}

    def _awp_loss(self, proxy: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """The official AWP objective: CE + the robust loss over the whole (two-view) batch."""
        nat, adv = proxy(x), proxy(x_adv)
        ce = F.cross_entropy(nat.float(), y, label_smoothing=self.label_smoothing)
        return ce + sum(self.criterion(adv, nat, y).values())

    def _first_step_bn_momentum(self) -> None:
        """DM-AT: BatchNorm momentum ``bn_momentum_first_step`` for the very first step only."""
        if self.bn_momentum_first_step is None or self.steps_done != 0 or self._bn_momenta:
            return
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                self._bn_momenta.append((module, module.momentum))
                module.momentum = self.bn_momentum_first_step

    def optimizer_param_groups(self) -> list[Any]:
        """The parameters for the optimizer; with ``bn_weight_decay=False`` BatchNorm weights and
        biases form a second group with weight decay 0 (DM-AT ``group_weight``)."""
        params = list(self.model.parameters())
        if self.bn_weight_decay:
            return params
        norms = {
            id(p)
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)
        }
        return [
            {"params": [p for p in params if id(p) not in norms]},
            {"params": [p for p in params if id(p) in norms], "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def after_optimizer_step(self, step: int) -> None:
        if self.awp is not None:
            self.awp.restore()
        self.steps_done = step + 1
        for module, momentum in self._bn_momenta:
            module.momentum = momentum
        self._bn_momenta.clear()
        if self.ema_iter is not None and self.ema_iter_schedule == "dm_at":
            decay = dm_at_ema_decay(self.steps_done, self.ema_iter_warmup_steps, self.ema_iter_decay)
            ema_update_(self.ema_iter, self.model, decay, buffers="copy")
        elif self.ema_iter is not None and self.epoch >= self.ema_iter_start_epoch:
            if self.epoch == self.ema_iter_start_epoch:
                copy_state_(self.ema_iter, self.model)  # official: follow the model during the start epoch
            else:
                ema_update_(self.ema_iter, self.model, self.ema_iter_decay)

    def on_epoch_end(self, epoch: int) -> None:
        if hasattr(self.criterion, "end_epoch"):
            self.criterion.end_epoch()
        if self.ema_epoch is not None:
            if epoch == 1:
                copy_state_(self.ema_epoch, self.model)  # swa.py: the average starts at epoch 1's weights
            else:
                ema_update_(self.ema_epoch, self.model, self.ema_epoch_decay)

    def evaluate(self, loader: DataLoader, device: torch.device, epoch: int) -> dict[str, float]:
        """PGD-k accuracy of the model on a fixed test subset every epoch; clean accuracy of the EMA
        models every epoch and their PGD-k accuracy after the last epoch (the attack is the cost)."""
        metrics: dict[str, float] = {}
        models = {"": self.model, "ema_epoch_": self.ema_epoch, "ema_iter_": self.ema_iter}
        for prefix, model in models.items():
            if model is None or (prefix == "ema_iter_" and epoch < self.ema_iter_start_epoch):
                continue
            attack_it = prefix == "" or epoch == self.epochs
            generator = torch.Generator(device=device).manual_seed(1234)
            counts = robust_counts(
                unwrap(model),
                loader,
                eps=self.eval_eps,
                steps=self.eval_steps if attack_it else 0,
                step_size=self.eval_step_size,
                device=device,
                max_samples=self.eval_samples,
                generator=generator,
            )
            clean, robust, n = all_reduce_sum(counts.as_tensor().to(device, torch.float64)).tolist()
            if prefix:
                metrics[f"test/{prefix}acc"] = 100.0 * clean / max(n, 1)
            if attack_it:
                metrics[f"test/{prefix}pgd_acc"] = 100.0 * robust / max(n, 1)
                metrics["test/pgd_n"] = n
        return metrics

    def weight_files(self) -> dict[str, nn.Module]:
        files = {}
        if self.ema_epoch is not None and self.epoch >= 1:
            files["ema_epoch"] = self.ema_epoch
        if self.ema_iter is not None and self.epoch >= self.ema_iter_start_epoch:
            files["ema_iter"] = self.ema_iter
        return files

    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        for name in ("criterion", "ema_epoch", "ema_iter"):
            module = getattr(self, name)
            if module is not None:
                state[name] = module.state_dict()
        state["epoch"] = self.epoch
        state["steps_done"] = self.steps_done
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        for name in ("criterion", "ema_epoch", "ema_iter"):
            module = getattr(self, name)
            if module is not None:
                module.load_state_dict(state[name])
        self.epoch = int(state["epoch"])
        self.steps_done = int(state.get("steps_done", 0))
