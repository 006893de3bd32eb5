"""Writes tests/golden/losses.json once, from the naive oracles. Refuses to overwrite.

Run by hand only: `python tests/golden/make_losses_golden.py`. Tests read the file and never
write it; a key missing from it fails the test.
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests import oracles  # noqa: E402

GOLDEN = pathlib.Path(__file__).with_name("losses.json")


def main() -> None:
    if GOLDEN.exists():
        raise SystemExit(f"{GOLDEN} exists; golden files are never rewritten")
    gen = torch.Generator().manual_seed(20240521)
    student = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3
    target = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.tensor([0, 3, 3, 1])
    prior = torch.softmax(torch.randn(5, 5, generator=gen, dtype=torch.float64), 1)
    weights = prior[labels]
    kl = (torch.softmax(target, 1) * (torch.log_softmax(target, 1) - torch.log_softmax(student, 1))).sum(1).mean()
    outputs = {
        "kl_div": kl.item(),
        "kd_loss_T4": (
            16
            * (torch.softmax(target / 4, 1) * (torch.log_softmax(target / 4, 1) - torch.log_softmax(student / 4, 1)))
            .sum(1)
            .mean()
        ).item(),
        "soft_cross_entropy_T2": oracles.soft_ce(student, target, 2.0).item(),
        "wmse_v1": oracles.pairwise_wmse(student, target, weights).item(),
        "wmse_gkl_gamma0.5_normalized": oracles.pairwise_wmse(
            student, target, weights, weight_power=0.5, normalize=True
        ).item(),
        "ikl_w20_s5": oracles.pairwise_ikl(student, target, weights, wmse_weight=20.0, sce_weight=5.0).item(),
        "dkd_a1_b8_T4": oracles.mdistiller_dkd(student, target, labels, 1.0, 8.0, 4.0).item(),
    }
    payload = {
        "inputs": {
            "student": student.tolist(),
            "target": target.tolist(),
            "labels": labels.tolist(),
            "weights": weights.tolist(),
        },
        "outputs": outputs,
    }
    GOLDEN.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
