"""Robustness evaluation: exact ε, pre-flight checks, checkpoint resolution, resumable AutoAttack.

``evaluate(EvalSpec(...), test_set)`` is the whole evaluation with plain arguments; the pieces are
``check_eps``/``parse_eps`` (ε), ``preflight``/``NormalizedModel`` (the model contract),
``load_eval_model`` (every checkpoint layout) and ``run_autoattack`` (pyautoattack 0.2.0 with our
own resume and re-verification).
"""

from ikl.eval.autoattack import check_attack_config, run_autoattack, verify_adversarial
from ikl.eval.checkpoints import ModelSource, find_weight_file, load_eval_model, sha256_file
from ikl.eval.eps import check_eps, eps_looks_mistyped, format_eps, parse_eps
from ikl.eval.preflight import NormalizedModel, preflight, prepare_for_evaluation
from ikl.eval.runner import EvalSpec, evaluate

__all__ = [
    "EvalSpec",
    "ModelSource",
    "NormalizedModel",
    "check_attack_config",
    "check_eps",
    "eps_looks_mistyped",
    "evaluate",
    "find_weight_file",
    "format_eps",
    "load_eval_model",
    "parse_eps",
    "preflight",
    "prepare_for_evaluation",
    "run_autoattack",
    "sha256_file",
    "verify_adversarial",
]
