"""AutoAttack through ``pyautoattack`` 0.2.0, with a resume that works and an independent re-check.

Resume. ``pyautoattack`` 0.2.0 takes ``state_path`` in ``run_standard_evaluation``, but its state
cannot be resumed: ``EvaluationState.to_disk`` writes the attack *set* through ``json.dump(...,
default=str)`` as the string ``"{'apgd-ce', ...}"``, so a reload never equals the set and raises
"The state was created with a different set of attacks"; a resumed run would also hit an unbound
``y_adv`` and returns only the current run's adversarial examples. So we keep our own state:

* attacks run one at a time, each over the points still robust, in chunks of ``save_every``
  batches; each chunk is one ``run_standard_evaluation`` call with ``attacks_to_run=[attack]``.
  AutoAttack attacks every batch independently and reseeds each batch with ``seed``, and the chunk
  boundaries fall on batch boundaries, so the batches (and results) are those of one full run;
* after every chunk the state (attacks done, the attack in progress and its cursor, the robust
  mask, the adversarial examples of every point fooled so far, per-stage accuracies) is written
  atomically with :func:`ikl.engine.checkpoint.save_checkpoint`; a killed run loses at most one
  chunk, and a rerun skips the attacks already done;
* the state carries a fingerprint (ε, norm, version, attacks, seed, n_ex, SHA-256 of the data and
  of the weights); a state from a different evaluation is refused, never silently reused.

Log. Every accuracy we log is a count over all the evaluated examples (``count``). pyautoattack's
own records are held back while it runs (:func:`pyautoattack_warnings_only`): it sees one chunk of
still-robust points per call, so its "initial accuracy" (100 % by construction) and its per-attack
accuracies are re-based on that chunk. Its warnings (its model checks) pass, each once.

Re-verification. After the attacks, :func:`verify_adversarial` checks ‖x_adv − x‖ ≤ ε (+1e-6),
x_adv ∈ [0, 1], no NaN, and recomputes the robust accuracy from x_adv with the model. A
disagreement with AutoAttack's count is logged as an error and marked in the result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyautoattack
import torch
from pyautoattack import AutoAttack
from torch import Tensor, nn
from tqdm import tqdm

from ikl.engine.checkpoint import load_checkpoint, save_checkpoint
from ikl.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

STATE_FORMAT = "ikl-aa-state"
VERSIONS = ("standard", "plus", "rand", "custom")
NORMS = ("Linf", "L2", "L1")
KNOWN_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
LEADERBOARD_NOTE = "not comparable to the leaderboard"
EPS_SLACK = 1e-6


def fraction(mask: Tensor) -> float:
    """The share of True entries as an exact ratio of integers (NaN for an empty mask)."""
    return int(mask.sum()) / len(mask) if len(mask) else float("nan")


def count(mask: Tensor) -> str:
    """``"45.00% (9/20)"``: the share of True entries and the count behind it, over the whole mask."""
    return f"{100 * fraction(mask):.2f}% ({int(mask.sum())}/{len(mask)})"


class _WarningsOnce(logging.Filter):
    """Pass WARNING and above, each distinct message once; hold back everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno < logging.WARNING or message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextmanager
def pyautoattack_warnings_only() -> Iterator[None]:
    """While the block runs, pyautoattack's logger (``auto-attack``) emits only its warnings, once each."""
    logger, only = logging.getLogger("auto-attack"), _WarningsOnce()
    logger.addFilter(only)
    try:
        yield
    finally:
        logger.removeFilter(only)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int, device: torch.device | str) -> Tensor:
    """Predicted labels (on the CPU) for ``x``, in batches moved to ``device``."""
    labels = [model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 over the bytes of ``tensors`` (identifies the evaluated data in the state file)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_attack_config(version: str, attacks: Sequence[str] | None, norm: str) -> None:
    """Refuse an unknown version/norm/attack or an attack list with a non-custom version."""
    if version not in VERSIONS:
        raise ConfigError(f"version={version!r} is not one of {', '.join(VERSIONS)}")
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r} is not one of {', '.join(NORMS)}")
    if version == "custom" and not attacks:
        raise ConfigError("version=custom needs attacks=[...], e.g. attacks=[apgd-ce]")
    if version != "custom" and attacks:
        raise ConfigError(f"attacks= is only used with version=custom (version={version} fixes its own attacks)")
    unknown = [a for a in attacks or () if a not in KNOWN_ATTACKS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}; choose from {', '.join(KNOWN_ATTACKS)}")


@dataclass
class AttackState:
    """Progress of one AutoAttack evaluation: what is done, who is still robust, the examples found."""

    fingerprint: dict[str, Any]
    done: list[str]
    clean: Tensor
    robust: Tensor
    x_adv: Tensor
    stage_acc: dict[str, float]
    pending: dict[str, Any] | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        fooled = (self.clean & ~self.robust).nonzero().squeeze(1)
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "done": list(self.done),
            "clean": self.clean,
            "robust": self.robust,
            "adv_index": fooled,
            "adv_images": self.x_adv[fooled].clone(),
            "stage_acc": dict(self.stage_acc),
            "pending": self.pending,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], x: Tensor) -> AttackState:
        x_adv = x.clone()
        x_adv[saved["adv_index"]] = saved["adv_images"].to(x.dtype)
        return cls(
            fingerprint=saved["fingerprint"],
            done=list(saved["done"]),
            clean=saved["clean"].bool(),
            robust=saved["robust"].bool(),
            x_adv=x_adv,
            stage_acc=dict(saved["stage_acc"]),
            pending=saved.get("pending"),
        )


def _fingerprint_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            return f"{key}: {saved.get(key)!r} there vs {wanted.get(key)!r} now"
    return None


def load_or_start_state(
    state_path: Path | None,
    fingerprint: dict[str, Any],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    device: torch.device | str,
) -> AttackState:
    """The saved state when ``state_path`` holds one for this evaluation, else a fresh one."""
    if state_path is not None and state_path.is_file():
        saved = load_checkpoint(state_path)
        if saved.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"{state_path} is not an AutoAttack state file; delete it or choose another output_dir"
            )
        mismatch = _fingerprint_mismatch(saved["fingerprint"], fingerprint)
        if mismatch:
            raise ConfigError(
                f"state file {state_path} belongs to another evaluation ({mismatch}); delete it or use another output_dir"
            )
        state = AttackState.from_checkpoint(saved, x)
        log.info("resuming from %s: done %s, robust %s", state_path, state.done or "none", count(state.robust))
        return state
    clean = predict(model, x, batch_size=batch_size, device=device) == y
    state = AttackState(fingerprint, [], clean, clean.clone(), x.clone(), {"clean": fraction(clean)})
    log.info("clean accuracy: %s", count(clean))
    return state


def run_attack_chunk(adversary: AutoAttack, attack: str, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """One ``pyautoattack`` call: ``attack`` alone on (x, y); returns the adversarial inputs."""
    adversary.attacks_to_run = [attack]
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv.detach()


def _save(state: AttackState, state_path: Path | None) -> None:
    if state_path is not None:
        save_checkpoint(state.to_checkpoint(), state_path)


def run_stage(
    adversary: AutoAttack,
    model: nn.Module,
    attack: str,
    x: Tensor,
    y: Tensor,
    state: AttackState,
    *,
    batch_size: int,
    save_every: int,
    device: torch.device | str,
    state_path: Path | None,
) -> None:
    """Run ``attack`` on the points still robust, chunk by chunk, saving the state after each chunk."""
    pending = state.pending if state.pending and state.pending["attack"] == attack else None
    if pending is None:
        pending = {"attack": attack, "indices": state.robust.nonzero().squeeze(1), "cursor": 0}
    indices, chunk = pending["indices"], batch_size * save_every
    resumed_at = f", resumed after {pending['cursor']} of them" if pending["cursor"] else ""
    log.info("running %s on the %d of %d examples still robust%s", attack, len(indices), len(y), resumed_at)
    with tqdm(total=len(indices), initial=pending["cursor"], desc=attack, leave=False, disable=None) as bar:
        while pending["cursor"] < len(indices):
            idx = indices[pending["cursor"] : pending["cursor"] + chunk]
            adv = run_attack_chunk(adversary, attack, x[idx], y[idx], batch_size).cpu().to(x.dtype)
            fooled = predict(model, adv, batch_size=batch_size, device=device) != y[idx]
            state.robust[idx[fooled]] = False
            state.x_adv[idx[fooled]] = adv[fooled]
            pending["cursor"] += len(idx)
            state.pending = pending
            _save(state, state_path)
            bar.update(len(idx))
    state.pending = None
    state.done.append(attack)
    state.stage_acc[attack] = fraction(state.robust)
    _save(state, state_path)
    log.info("robust accuracy after %s: %s", attack.upper(), count(state.robust))


def _distance(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    if norm == "L2":
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(dim=1)


def verify_adversarial(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    robust: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    batch_size: int = 200,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Check the adversarial examples ourselves and recompute the robust accuracy from them.

    ``robust`` is the per-sample mask the attack reported. ``passed`` is False when a perturbation
    exceeds ε (+1e-6), an input leaves [0, 1], a NaN appears, or the recomputed mask differs.
    """
    nan_count = int(torch.isnan(x_adv).sum())
    distance = _distance(torch.nan_to_num(x_adv - x), norm) if len(x) else torch.zeros(1)
    recomputed = predict(model, x_adv, batch_size=batch_size, device=device) == y
    report = {
        "max_perturbation": float(distance.max()),
        "within_eps": bool(distance.max() <= eps + EPS_SLACK),
        "in_unit_range": bool(((x_adv >= 0) & (x_adv <= 1)).all()),
        "nan_count": nan_count,
        "robust_acc_reported": fraction(robust),
        "robust_acc_recomputed": fraction(recomputed),
        "n_disagree": int((recomputed != robust).sum()),
    }
    report["agrees"] = report["n_disagree"] == 0
    report["passed"] = report["within_eps"] and report["in_unit_range"] and nan_count == 0 and report["agrees"]
    if not report["passed"]:
        log.error("ADVERSARIAL EXAMPLES FAILED RE-VERIFICATION: %s", report)
    else:
        log.info(
            "re-verified: max %s perturbation %.6f <= %.6f, robust accuracy %s recomputed",
            norm,
            report["max_perturbation"],
            eps,
            count(recomputed),
        )
    return report


@contextmanager
def log_to_file(log_path: Path | None) -> Iterator[None]:
    """Copy our (INFO) and pyautoattack's (its warnings: :func:`pyautoattack_warnings_only`) log records
    into ``log_path`` while the block runs; the console and the file see the same lines."""
    if log_path is None:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [(logging.getLogger("auto-attack"), logging.WARNING), (logging.getLogger("ikl"), logging.INFO)]
    previous = [logger.level for logger, _ in loggers]
    for logger, level in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
    try:
        yield
    finally:
        for (logger, _), level in zip(loggers, previous, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def run_autoattack(
    model: nn.Module,
    x_test: Tensor,
    y_test: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 200,
    state_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    log_path: str | Path | None = None,
    model_id: str | None = None,
    save_every: int = 5,
) -> dict[str, Any]:
    """AutoAttack ``version`` at radius ``eps`` on (x_test, y_test), resumable through ``state_path``.

    ``model`` must already be in eval mode, frozen and on ``device`` (see :mod:`ikl.eval.preflight`);
    ``x_test`` in [0, 1] (kept on the CPU; batches move to ``device``). ``model_id`` (the weights'
    SHA-256) goes into the state fingerprint. Returns the JSON-ready summary plus two tensors,
    ``"x_adv"`` and ``"robust_mask"``, which callers drop before writing JSON.
    """
    check_attack_config(version, attacks, norm)
    attacks = list(attacks) if version == "custom" and attacks else None
    with pyautoattack_warnings_only():  # its "setting parameters for ... version" line
        adversary = AutoAttack(model, attacks=attacks, device=device, eps=eps, norm=norm, seed=seed, version=version)
    attack_list = list(adversary.attacks_to_run)
    x_test, y_test = x_test.detach().cpu(), y_test.detach().cpu()
    state_path = Path(state_path) if state_path is not None else None
    fingerprint = {
        "eps": repr(float(eps)),
        "norm": norm,
        "version": version,
        "attacks": attack_list,
        "seed": seed,
        "n_ex": len(y_test),
        "data_sha256": tensor_digest(x_test, y_test),
        "model_sha256": model_id,
    }
    started = time.perf_counter()
    with log_to_file(Path(log_path) if log_path is not None else None), pyautoattack_warnings_only():
        log.info(
            "AutoAttack %s (%s) at %s eps=%.6f on %d examples", version, ", ".join(attack_list), norm, eps, len(y_test)
        )
        state = load_or_start_state(
            state_path, fingerprint, model, x_test, y_test, batch_size=batch_size, device=device
        )
        _save(state, state_path)
        resumed = [attack for attack in attack_list if attack in state.done]
        for attack in attack_list:
            if attack in state.done:
                log.info("skipping %s: finished in a previous run (%s)", attack, state_path)
                continue
            run_stage(
                adversary,
                model,
                attack,
                x_test,
                y_test,
                state,
                batch_size=batch_size,
                save_every=save_every,
                device=device,
                state_path=state_path,
            )
        verification = verify_adversarial(
            model, x_test, y_test, state.x_adv, state.robust, eps=eps, norm=norm, batch_size=batch_size, device=device
        )
    comparable = version == "standard"
    return {
        "clean_acc": state.stage_acc["clean"],
        "robust_acc": fraction(state.robust),
        "robust_acc_by_stage": {k: state.stage_acc[k] for k in ["clean", *attack_list]},
        "attacks": attack_list,
        "version": version,
        "norm": norm,
        "eps": eps,
        "seed": seed,
        "n_ex": len(y_test),
        "batch_size": batch_size,
        "comparable_to_leaderboard": comparable,
        "note": None if comparable else f"version={version} ({', '.join(attack_list)}): {LEADERBOARD_NOTE}",
        "resumed_attacks": resumed,
        "state_path": str(state_path) if state_path is not None else None,
        "verification": verification,
        "seconds": time.perf_counter() - started,
        "pyautoattack_version": pyautoattack.__version__,
        "x_adv": state.x_adv,
        "robust_mask": state.robust,
    }
