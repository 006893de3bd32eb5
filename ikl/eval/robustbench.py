"""RobustBench models as evaluation targets: ``checkpoint=robustbench:<model id>``.

``eval_autoattack.py checkpoint=robustbench:cifar100/Cui2023Decoupled_WRN-34-10`` (or
``robustbench:<model id>`` for an id on one board only) evaluates a RobustBench model-zoo entry with our evaluator and compares the result with the leaderboard. An id maps to

* our zoo architecture that loads its published state dict strictly (``model``); the DeepMind
  ``DMWideResNet`` entries are our ``wrn_<d>_<w>_swish``, which standardise their [0, 1] input inside
  with the same CIFAR-10/100 constants as RobustBench's class (chosen by the number of classes);
* its data set and threat model (CIFAR-10/100, L∞, ε = 8/255): the defaults of the evaluation unless
  ``dataset=``/``norm=``/``eps=`` are given (then stated, and not leaderboard-comparable);
* the published clean and AutoAttack accuracy (percent), which the result JSON and log compare with.

The weights come from RobustBench's own cache layout, ``<robustbench.dir>/<dataset>/Linf/<id>.pt``
(``robustbench.utils.load_model`` saves there; its ``model_dir`` default is ``./models``, and it
reads no environment variable), or from ``robustbench.file=<path>``. Nothing is downloaded: a missing
file is one line that says where to put it and the command that fetches it (RobustBench hosts the
files on Google Drive and downloads them with ``gdown``). The files load as RobustBench loads them
(``state_dict`` key or bare, ``module.`` and ``model.`` prefixes removed; TRADES' unused
``sub_block1`` dropped),
always with ``weights_only=True``. The ``robustbench`` package is not needed.

Which ids are here. Every L∞ CIFAR entry of RobustBench's model zoo (``SOURCE``) whose architecture
is one of RobustBench's own classes, used unchanged (no subclass with its own ``forward``, e.g. the
normalising ``Hendrycks2019UsingNet``), that is not an ensemble, that RobustBench itself loads
strictly (so not ``Wu2020Adversarial``, on its ``known_failing_models`` list), that was evaluated at
ε = 8/255 (so not the 0.031 entries, e.g. ``Zhang2019Theoretically``), and whose state-dict keys and
shapes equal one of our zoo models', with identical logits for the same weights. Checked here by
building each RobustBench class from its source (``robustbench/model_zoo/architectures/
wide_resnet.py``, ``resnet.py``, ``dm_wide_resnet.py``) next to ours, loading one's seeded weights
into the other and comparing logits (all equal to within 1e-6); ``tests/fixtures/robustbench`` keeps
the key layouts and a small instance's logits for the tests. ``WideResNet`` is our TRADES/AWP
``wrn_<d>_<k>``, ``ResNet18`` our ``resnet18``, ``PreActResNet(PreActBlockV2, bn_before_fc=True)``
our ``preact_resnet18``, and ``DMWideResNet`` (SiLU, or its custom ``Swish``: the same function, logits
equal to 1e-6) of depth/width 28-10, 34-10, 34-20, 70-16 our ``wrn_<d>_<w>_swish``. Not here, for want
of a zoo model: DMWideResNet 106-16, 94-16, 82-8, DMPreActResNet, WideResNet-34-15 and -70-16.

Comparison. The leaderboard numbers are AutoAttack ``standard`` on the first 10,000 test images;
a result is compared only when ours used the same protocol (``comparable_to_leaderboard``). The
clean accuracy must land within ``CLEAN_TOLERANCE_PP`` percentage points (RobustBench's own exact
clean-accuracy test uses 0.05), the AutoAttack accuracy within ``AUTOATTACK_TOLERANCE_PP`` (attack
randomness and GPU kernels move it by a few hundredths; RobustBench's leaderboard and the authors'
own logs differ by up to 0.04 for the Cui2023Decoupled entries, PAPER.md §5.1).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ikl.errors import CheckpointError, ConfigError

SOURCE = (
    "RobustBench/robustbench@78fcc9e48a07a861268f295a777b975f25155964 (2025-03-31): "
    "robustbench/model_zoo/cifar10.py and cifar100.py (architectures, Google Drive ids), "
    "model_info/<dataset>/Linf/<id>.json (clean_acc, autoattack_acc)"
)
PREFIX = "robustbench:"
DEFAULT_DIR = "./models"  # robustbench.utils.load_model(model_dir="./models")
THREAT_MODEL = "Linf"
EPS = "8/255"
N_EX = 10000  # the leaderboard's evaluation: the first 10,000 test images
CLEAN_TOLERANCE_PP = 0.05
AUTOATTACK_TOLERANCE_PP = 0.1
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True)
class Entry:
    """One RobustBench model-zoo entry: what it is, where its weights go, what it must score."""

    model_id: str
    dataset: str
    model: str  # our zoo name
    clean_acc: float  # percent, as published
    autoattack_acc: float  # percent, as published
    gdrive_id: str
    architecture: str  # the RobustBench constructor, as in its model zoo file
    threat_model: str = THREAT_MODEL
    eps: str = EPS

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    @property
    def reference(self) -> str:
        return f"{PREFIX}{self.dataset}/{self.threat_model}/{self.model_id}"

    @property
    def url(self) -> str:
        return f"https://drive.google.com/uc?id={self.gdrive_id}"

    def path(self, directory: str | Path = DEFAULT_DIR) -> Path:
        """RobustBench's cache layout: ``<directory>/<dataset>/<threat model>/<id>.pt``."""
        return Path(directory).expanduser() / self.dataset / self.threat_model / f"{self.model_id}.pt"


# (id, our zoo model, clean %, AutoAttack %, Google Drive id, RobustBench architecture), per data set.
# The architecture is the model zoo's constructor with num_classes (and DMWideResNet's mean/std) left out
# and default arguments written as keywords (Sehwag2021Proxy's WideResNet(34, 10, ...) is depth 34, widen 10).
_TABLE: dict[str, list[tuple[str, str, float, float, str, str]]] = {
    "cifar10": [
        (
            "Carmon2019Unlabeled",
            "wrn_28_10",
            89.69,
            59.53,
            "15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ",
            "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
        ),
        (
            "Sehwag2020Hydra",
            "wrn_28_10",
            88.98,
            57.14,
            "1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y",
            "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
        ),
        (
            "Wang2020Improving",
            "wrn_28_10",
            87.5,
            56.29,
            "1T939mU4kXYt5bbvM55aT4fLBvRhyzjiQ",
            "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
        ),
        (
            "Zhang2019You",
            "wrn_34_10",
            87.2,
            44.83,
            "1kB2qqPQ8qUNmK8VKuTOhT1X4GT46kAoA",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Zhang2020Attacks",
            "wrn_34_10",
            84.52,
            53.51,
            "1lBVvLG6JLXJgQP2gbsTxNHl6s3YAopqk",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Wu2020Adversarial_extra",
            "wrn_28_10",
            88.25,
            60.04,
            "1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp",
            "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
        ),
        (
            "Gowal2020Uncovering_70_16",
            "wrn_70_16_swish",
            85.29,
            57.2,
            "1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Gowal2020Uncovering_70_16_extra",
            "wrn_70_16_swish",
            91.1,
            65.88,
            "1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Gowal2020Uncovering_34_20",
            "wrn_34_20_swish",
            85.64,
            56.86,
            "1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O",
            "DMWideResNet(depth=34, width=20, activation_fn=Swish)",
        ),
        (
            "Gowal2020Uncovering_28_10_extra",
            "wrn_28_10_swish",
            89.48,
            62.8,
            "1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        (
            "Sehwag2021Proxy",
            "wrn_34_10",
            86.68,
            60.27,
            "1QFA5fPMj2Qw4aYNG33PkFqiv_RTDWvzm",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        ("Sehwag2021Proxy_R18", "resnet18", 84.59, 55.54, "1-ZgoSlD_AMhtXdnUElilxVXnzK2DcHuu", "ResNet18()"),
        (
            "Sitawarin2020Improving",
            "wrn_34_10",
            86.84,
            50.72,
            "12teknvo6dQGSWBaGnbNFwFO3-Y8j2eB6",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Zhang2020Geometry",
            "wrn_28_10",
            89.36,
            59.64,
            "1UoG1JhbAps1MdMc6PEFiZ2yVXl_Ii5Jk",
            "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
        ),
        (
            "Rebuffi2021Fixing_28_10_cutmix_ddpm",
            "wrn_28_10_swish",
            87.33,
            60.75,
            "1-0EChXbc6pOvx26O17av263bCeqIAz6s",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        (
            "Rebuffi2021Fixing_70_16_cutmix_ddpm",
            "wrn_70_16_swish",
            88.54,
            64.25,
            "1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Rebuffi2021Fixing_70_16_cutmix_extra",
            "wrn_70_16_swish",
            92.23,
            66.58,
            "1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Sridhar2021Robust",
            "wrn_28_10",
            89.46,
            59.66,
            "1muDMpOyRlgJ7n2rhS2NpfFGp3rzjuIu0",
            "WideResNet(depth=28, widen_factor=10, sub_block1=True)",
        ),
        (
            "Rade2021Helper_extra",
            "wrn_34_10_swish",
            91.47,
            62.83,
            "1GhAp-0C3ONRy9BxIe0J9vKc082vHvR7t",
            "DMWideResNet(depth=34, width=10, activation_fn=Swish)",
        ),
        (
            "Rade2021Helper_ddpm",
            "wrn_28_10_swish",
            88.16,
            60.97,
            "1AOF6LxnwgS5fCz_lVLYqs_wnUYuv6O7z",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        ("Addepalli2021Towards_RN18", "resnet18", 80.24, 51.06, "1-1DxecXz5U_xZ54DVdE-GVm71Tiox-Ri", "ResNet18()"),
        (
            "Addepalli2021Towards_WRN34",
            "wrn_34_10",
            85.32,
            58.04,
            "1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Gowal2021Improving_70_16_ddpm_100m",
            "wrn_70_16_swish",
            88.74,
            66.11,
            "10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Gowal2021Improving_28_10_ddpm_100m",
            "wrn_28_10_swish",
            87.5,
            63.44,
            "12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        (
            "Chen2021LTD_WRN34_10",
            "wrn_34_10",
            85.21,
            56.94,
            "1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        (
            "Chen2021LTD_WRN34_20",
            "wrn_34_20",
            86.03,
            57.71,
            "1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm",
            "WideResNet(depth=34, widen_factor=20, sub_block1=False)",
        ),
        (
            "Standard",
            "wrn_28_10",
            94.78,
            0.0,
            "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC",
            "WideResNet(depth=28, widen_factor=10)",
        ),
        (
            "Jia2022LAS-AT_34_10",
            "wrn_34_10",
            84.98,
            56.26,
            "1-3l7xKhIPyes3O4QSz0HU6L-hfOoS0xD",
            "WideResNet(depth=34, widen_factor=10)",
        ),
        (
            "Pang2022Robustness_WRN28_10",
            "wrn_28_10_swish",
            88.61,
            61.04,
            "16ChNkterCp17BXv-xxqpfedb4u2_CjjS",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        (
            "Pang2022Robustness_WRN70_16",
            "wrn_70_16_swish",
            89.01,
            63.35,
            "1uQZYUuUiL9BzaQUeXLhjr_RhoyFRrHe3",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        ("Addepalli2022Efficient_RN18", "resnet18", 85.71, 52.48, "1m5vhdzIUUKhDbsZdOG9z76Eyp6f4xe_f", "ResNet18()"),
        (
            "Addepalli2022Efficient_WRN_34_10",
            "wrn_34_10",
            88.71,
            57.81,
            "1--dVDtZhAk4D2zMtTDwIGnImuCGxTcBA",
            "WideResNet(depth=34, widen_factor=10)",
        ),
        (
            "Wang2023Better_WRN-28-10",
            "wrn_28_10_swish",
            92.44,
            67.31,
            "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI",
            "DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU)",
        ),
        (
            "Wang2023Better_WRN-70-16",
            "wrn_70_16_swish",
            93.25,
            70.69,
            "1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap",
            "DMWideResNet(depth=70, width=16, activation_fn=nn.SiLU)",
        ),
        (
            "Xu2023Exploring_WRN-28-10",
            "wrn_28_10_swish",
            93.69,
            63.89,
            "1k1uJI13ft0h0dfzuEihVpBvjBXwFRH2o",
            "DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU)",
        ),
        (
            "Cui2023Decoupled_WRN-28-10",
            "wrn_28_10_swish",
            92.16,
            67.73,
            "1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2",
            "DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU)",
        ),
        (
            "Cui2023Decoupled_WRN-34-10",
            "wrn_34_10",
            85.31,
            57.09,
            "1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        (
            "Chen2024Data_WRN_34_10",
            "wrn_34_10",
            86.54,
            57.3,
            "1-AzyMQaoUuwxec6O_Yri5OVtVqnNgR4R",
            "WideResNet(depth=34, widen_factor=10)",
        ),
        (
            "Chen2024Data_WRN_34_20",
            "wrn_34_20",
            86.1,
            58.09,
            "1-IbKAGtp79tAEm59N0i8QMvMZ3nxSD2-",
            "WideResNet(depth=34, widen_factor=20)",
        ),
    ],
    "cifar100": [
        (
            "Gowal2020Uncovering",
            "wrn_70_16_swish",
            60.86,
            30.03,
            "16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Gowal2020Uncovering_extra",
            "wrn_70_16_swish",
            69.15,
            36.88,
            "1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Cui2020Learnable_34_20_LBGAT6",
            "wrn_34_20",
            62.55,
            30.2,
            "1rN76st8q_32j6Uo8DI5XhcC2cwVhXBwK",
            "WideResNet(depth=34, widen_factor=20, sub_block1=True)",
        ),
        (
            "Cui2020Learnable_34_10_LBGAT0",
            "wrn_34_10",
            70.25,
            27.16,
            "1RnWbGxN-A-ltsfOvulr68U6i2L8ohAJi",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Cui2020Learnable_34_10_LBGAT6",
            "wrn_34_10",
            60.64,
            29.33,
            "1TfIgvW3BAkL8jL9J7AAWFSLW3SSzJ2AE",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Sehwag2021Proxy",
            "wrn_34_10",
            65.93,
            31.15,
            "1ejMNF2O4xkSdrjtZt2UXUeim-y9F7Req",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        (
            "Sitawarin2020Improving",
            "wrn_34_10",
            62.82,
            24.57,
            "1hbpwans776KM1SMbOxISkDx0KR0DW8EN",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Rebuffi2021Fixing_70_16_cutmix_ddpm",
            "wrn_70_16_swish",
            63.56,
            34.64,
            "1-GkVLo9QaRjCJl-by67xda1ySVhYxsLV",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Rebuffi2021Fixing_28_10_cutmix_ddpm",
            "wrn_28_10_swish",
            62.41,
            32.06,
            "1-P7cs82Tj6UVx7Coin3tVurVKYwXWA9p",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        (
            "Addepalli2021Towards_PARN18",
            "preact_resnet18",
            62.02,
            27.14,
            "1-FwVya1sDvdFXr0_ZBoXEJW9ukGC7hPK",
            "PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)",
        ),
        (
            "Addepalli2021Towards_WRN34",
            "wrn_34_10",
            65.73,
            30.35,
            "1-9GAld_105-jWBLXL73btmfOCwAqvz7Y",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Chen2021LTD_WRN34_10",
            "wrn_34_10",
            64.07,
            30.59,
            "1-I4NZyULdEWH46b4EaCTxuuRo4eFXsg_",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Pang2022Robustness_WRN28_10",
            "wrn_28_10_swish",
            63.66,
            31.08,
            "1VDDM_j5M4b6sZpt1Nnhkr8FER3kjE33M",
            "DMWideResNet(depth=28, width=10, activation_fn=Swish)",
        ),
        (
            "Pang2022Robustness_WRN70_16",
            "wrn_70_16_swish",
            65.56,
            33.05,
            "1F3kn8KIdBVls8QuTWc3BbB83htkQeVQD",
            "DMWideResNet(depth=70, width=16, activation_fn=Swish)",
        ),
        (
            "Jia2022LAS-AT_34_10",
            "wrn_34_10",
            64.89,
            30.77,
            "1-338K2PUf5FTwk4cbUUeTNz247GrXaMG",
            "WideResNet(depth=34, widen_factor=10, sub_block1=True)",
        ),
        (
            "Jia2022LAS-AT_34_20",
            "wrn_34_20",
            67.31,
            31.91,
            "1WhRq01Yl1v8O3skkrGUBuySlptidc5a6",
            "WideResNet(depth=34, widen_factor=20)",
        ),
        (
            "Addepalli2022Efficient_RN18",
            "resnet18",
            65.45,
            27.67,
            "1-2hnxC7lZOQDqQbum4yPbtRtTND86I5N",
            "ResNet(BasicBlock, [2, 2, 2, 2])",
        ),
        (
            "Addepalli2022Efficient_WRN_34_10",
            "wrn_34_10",
            68.75,
            31.85,
            "1-3c-iniqNfiwGoGPHC3nSostnG6J9fDt",
            "WideResNet(depth=34, widen_factor=10)",
        ),
        (
            "Cui2020Learnable_34_10_LBGAT9_eps_8_255",
            "wrn_34_10",
            62.99,
            31.2,
            "1TrUAN9opXBQa24WCTVtQTY-RkXK_3dmA",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        (
            "Wang2023Better_WRN-28-10",
            "wrn_28_10_swish",
            72.58,
            38.83,
            "1-jOu3wKWyw0XnBCXDGR32xn8Bw9GTJgh",
            "DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU)",
        ),
        (
            "Wang2023Better_WRN-70-16",
            "wrn_70_16_swish",
            75.22,
            42.67,
            "1-yYcT73GP13c0y9HrgtpyB3NAfkGKgjY",
            "DMWideResNet(depth=70, width=16, activation_fn=nn.SiLU)",
        ),
        (
            "Cui2023Decoupled_WRN-28-10",
            "wrn_28_10_swish",
            73.85,
            39.18,
            "15BwWdWbNfoarTEWWugicOVkTjh3nXH36",
            "DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU)",
        ),
        (
            "Cui2023Decoupled_WRN-34-10",
            "wrn_34_10",
            65.76,
            31.91,
            "1whziIioVu5SGI1fBKyc331IfG_1MgenN",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        (
            "Cui2023Decoupled_WRN-34-10_autoaug",
            "wrn_34_10",
            65.93,
            32.52,
            "18hjcLa1V3JTNUOshafLvw1ncxL2gu50M",
            "WideResNet(depth=34, widen_factor=10, sub_block1=False)",
        ),
        (
            "Chen2024Data_WRN_34_10",
            "wrn_34_10",
            64.32,
            31.13,
            "1-N5a0Z9o-8-oIrF4_EaVFVOOPI5-D-H2",
            "WideResNet(depth=34, widen_factor=10)",
        ),
    ],
}
ENTRIES: tuple[Entry, ...] = tuple(
    Entry(model_id, dataset, model, clean, robust, gdrive_id, architecture)
    for dataset, rows in _TABLE.items()
    for model_id, model, clean, robust, gdrive_id, architecture in rows
)


def is_reference(checkpoint: Any) -> bool:
    """Whether ``checkpoint`` names a RobustBench entry (``robustbench:...``)."""
    return isinstance(checkpoint, str) and checkpoint.startswith(PREFIX)


def _parse(checkpoint: str) -> tuple[str | None, str | None, str]:
    """``robustbench:<id>``, ``robustbench:<dataset>/<id>`` or ``robustbench:<dataset>/<threat>/<id>``."""
    parts = checkpoint[len(PREFIX) :].strip().split("/")
    if not parts[-1] or len(parts) > 3:
        raise ConfigError(
            f"checkpoint={checkpoint} is not a RobustBench reference; write checkpoint=robustbench:<model id> "
            "(or robustbench:<dataset>/<model id>), e.g. robustbench:cifar100/Cui2023Decoupled_WRN-34-10"
        )
    dataset = parts[0] if len(parts) >= 2 else None
    threat = parts[1] if len(parts) == 3 else None
    return dataset, threat, parts[-1]


def find_entry(checkpoint: str, dataset: str | None = None) -> Entry:
    """The entry ``checkpoint`` names; ``dataset`` (an explicit ``dataset=``) picks among several boards.

    A data set in the reference itself wins over ``dataset``; an id on several boards with neither,
    an unknown id, or a threat model other than L∞ is one ``ConfigError`` line.
    """
    ref_dataset, threat, model_id = _parse(checkpoint)
    if threat is not None and threat != THREAT_MODEL:
        raise ConfigError(f"checkpoint={checkpoint}: only RobustBench's {THREAT_MODEL} entries are here, not {threat}")
    matches = [e for e in ENTRIES if e.model_id == model_id]
    if not matches:
        close = difflib.get_close_matches(model_id, sorted({e.model_id for e in ENTRIES}), n=3, cutoff=0.6)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(
            f"checkpoint={checkpoint}: {model_id} is not among the {len({e.model_id for e in ENTRIES})} RobustBench "
            f"CIFAR L-inf ids our zoo can load{hint}; the list is ikl/eval/robustbench.py (ENTRIES)"
        )
    wanted = ref_dataset or dataset
    if wanted is not None and any(e.dataset == wanted for e in matches):
        return next(e for e in matches if e.dataset == wanted)
    if ref_dataset is not None:
        boards = " and ".join(e.dataset for e in matches)
        raise ConfigError(f"checkpoint={checkpoint}: {model_id} is on the {boards} board, not {ref_dataset}")
    if len(matches) > 1:
        boards = " and ".join(e.dataset for e in matches)
        options = " or ".join(f"checkpoint={PREFIX}{e.dataset}/{model_id}" for e in matches)
        raise ConfigError(f"{model_id} is on the {boards} RobustBench boards; say which: {options}")
    return matches[0]


def weight_file(entry: Entry, directory: str | Path = DEFAULT_DIR, file: str | Path | None = None) -> Path:
    """The entry's weight file: ``file`` if given, else RobustBench's cache path under ``directory``.

    A missing file is one ``CheckpointError`` line: where to put it and how to fetch it.
    """
    if file is not None:
        path = Path(file).expanduser()
        if path.is_dir():
            raise CheckpointError(f"robustbench.file={path} is a directory; pass the {entry.model_id}.pt file")
        if not path.is_file():
            raise CheckpointError(f"robustbench.file={path} does not exist; pass the {entry.model_id}.pt file")
        return path
    path = entry.path(directory)
    if not path.is_file():
        raise CheckpointError(
            f"the weights of RobustBench's {entry.model_id} ({entry.dataset}, {entry.threat_model}) are not at {path}; "
            f"put the file there (RobustBench's cache layout) or pass robustbench.file=<path>; to fetch it where "
            f"there is network: pip install gdown && gdown {entry.gdrive_id} -O {path} ({entry.url})"
        )
    return path


def compare_with_leaderboard(
    entry: Entry, clean_acc: float, robust_acc: float | None, *, comparable: bool, why_not: str | None = None
) -> dict[str, Any]:
    """Our clean/AutoAttack accuracy (fractions) beside the published percentages, with a verdict.

    ``within_tolerance`` is ``None`` when the evaluation did not follow the leaderboard's protocol
    (``comparable`` False; ``why_not`` says why), else whether both numbers land within the tolerances.
    """
    delta_clean = round(100 * clean_acc - entry.clean_acc, 4)
    delta_robust = None if robust_acc is None else round(100 * robust_acc - entry.autoattack_acc, 4)
    verdict = None
    if comparable and delta_robust is not None:
        verdict = abs(delta_clean) <= CLEAN_TOLERANCE_PP + 1e-9 and abs(delta_robust) <= AUTOATTACK_TOLERANCE_PP + 1e-9
    return {
        "model_id": entry.model_id,
        "reference": entry.reference,
        "dataset": entry.dataset,
        "threat_model": entry.threat_model,
        "eps": entry.eps,
        "architecture": entry.architecture,
        "published_clean_acc_pct": entry.clean_acc,
        "published_autoattack_acc_pct": entry.autoattack_acc,
        "delta_clean_pp": delta_clean,
        "delta_autoattack_pp": delta_robust,
        "tolerance_pp": {"clean": CLEAN_TOLERANCE_PP, "autoattack": AUTOATTACK_TOLERANCE_PP},
        "within_tolerance": verdict,
        "not_compared_because": None if comparable else why_not,
        "source": SOURCE,
    }


def summary_table(results: list[dict[str, Any]]) -> tuple[str, bool]:
    """A markdown table of evaluation results that carry a ``leaderboard`` block (ours vs published),
    and whether every one of them was compared and landed within the tolerances."""
    lines = [
        "| RobustBench id | data set | clean: ours / published (Δ pp) | AutoAttack: ours / published (Δ pp) | verdict |",
        "|---|---|---|---|---|",
    ]
    passed = bool(results)
    for result in results:
        board = result["leaderboard"]
        robust = result.get("robust_acc")
        verdict = board["within_tolerance"]
        passed = passed and verdict is True
        text = {True: "within tolerance", False: "**OUTSIDE the tolerance**"}.get(
            verdict, f"not compared ({board['not_compared_because']})"
        )
        robust_text = "n/a" if robust is None else f"{100 * robust:.2f} / {board['published_autoattack_acc_pct']:.2f}"
        if board["delta_autoattack_pp"] is not None:
            robust_text += f" ({board['delta_autoattack_pp']:+.2f})"
        lines.append(
            f"| {board['model_id']} | {board['dataset']} | {100 * result['clean_acc']:.2f} / "
            f"{board['published_clean_acc_pct']:.2f} ({board['delta_clean_pp']:+.2f}) | {robust_text} | {text} |"
        )
    return "\n".join(lines), passed
