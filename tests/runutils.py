"""Helpers to compose the real configs and run the real entry points on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

TINY_DIGITS = [
    "dataset.builder.max_train_samples=64",
    "dataset.builder.max_test_samples=48",
    "batch_size=16",
    "test_batch_size=16",
    "trainer.progress=false",
    "logger.mode=disabled",
]


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def save_teacher(
    path: Path, name: str = "resnet8", num_classes: int = 10, layout: str = "mdistiller", seed: int = 0
) -> dict:
    """A teacher file in a published layout: mdistiller/CRD dict, DataParallel prefixes, or bare."""
    from ikl.models import create_model

    torch.manual_seed(seed)
    state = create_model(name, num_classes).state_dict()
    if layout == "mdistiller":
        obj = {"model": state, "epoch": 240, "accuracy": 12.5, "optimizer": {"state": {}, "param_groups": []}}
    elif layout == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return state


def run_entry(
    script: str, overrides: list[str], *, env: dict | None = None, timeout: int = 600, launcher: list[str] | None = None
):
    """Run an entry point as a user would; returns the CompletedProcess."""
    cmd = (launcher or [sys.executable]) + [str(ROOT / script), *overrides]
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
