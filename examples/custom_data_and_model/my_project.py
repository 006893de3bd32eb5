"""Your own data set and your own model with ikl's training entry points (docs/custom.md).

* ``shapes_datasets``: a data set builder. It returns an :class:`ikl.data.Datasets` bundle (the
  contract every ``dataset.builder._target_`` must follow); here three classes of coloured shapes
  drawn on the fly, held as uint8 arrays so even the device-resident loader can take them.
* ``TinyCNN``: a model. ``forward(x)`` returns the logits; the constructor takes ``num_classes``.

Two ways to train them (both run by tests/test_examples.py):

    # 1. configs: a _target_ for the data set and for the model, from your own config folder
    python train_kd.py --config-dir examples/custom_data_and_model/configs dataset=shapes student=tiny_cnn

    # 2. Python: register the model under a name, train a teacher, then distil it (two entry-point calls)
    PYTHONPATH=. python examples/custom_data_and_model/my_project.py

Run both from the repository root (the configs name ``examples.custom_data_and_model.my_project``;
``python train_kd.py`` puts the root on the import path, a plain script needs ``PYTHONPATH=.``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from ikl.data import CropFlip, DataError, Datasets, UInt8ImageDataset

CLASSES = ("square", "disc", "cross")


def _draw(shape: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size x size x 3`` uint8 image: a shape of random colour, position and scale on noise."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    r = rng.uniform(0.15, 0.3) * size
    if shape == 0:
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    elif shape == 1:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    else:
        mask = ((abs(yy - cy) < r / 3) & (abs(xx - cx) < r)) | ((abs(xx - cx) < r / 3) & (abs(yy - cy) < r))
    image = rng.normal(60, 20, size=(size, size, 3))
    image[mask] = rng.uniform(120, 255, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes_datasets(
    *,
    train_per_class: int = 60,
    test_per_class: int = 20,
    image_size: int = 32,
    normalize: bool = True,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Datasets:
    """The builder: every key of ``dataset.builder`` (except ``_target_``) arrives as a keyword.

    Returns train/test splits of ``(C x H x W float tensor, int label)``, the class count, the
    data set's mean/std (always the statistics, whether or not the transforms apply them),
    whether the transforms normalise, and the train augmentation when it is a plain crop/flip.
    A user's mistake is a :class:`ikl.data.DataError` (one line on stderr, exit status 2).
    """
    if train_per_class < 1 or test_per_class < 1:
        raise DataError(f"shapes needs at least one image per class, got {train_per_class} / {test_per_class}")
    rng = np.random.default_rng(seed)

    def split(per_class: int, limit: int | None) -> tuple[np.ndarray, list[int]]:
        labels = [c for c in range(len(CLASSES)) for _ in range(per_class)][:limit]
        return np.stack([_draw(c, image_size, rng) for c in labels]), labels

    train_x, train_y = split(train_per_class, max_train_samples)
    test_x, test_y = split(test_per_class, max_test_samples)
    mean = tuple(float(m) for m in train_x.reshape(-1, 3).mean(0) / 255)
    std = tuple(float(s) for s in train_x.reshape(-1, 3).std(0) / 255)
    tail = [T.ToTensor(), *([T.Normalize(mean, std)] if normalize else [])]
    train = UInt8ImageDataset(train_x, train_y, T.Compose([T.RandomCrop(image_size, padding=2), *tail]))
    test = UInt8ImageDataset(test_x, test_y, T.Compose(tail))
    return Datasets(train, test, len(CLASSES), mean, std, normalize, crop_flip=CropFlip(padding=2, flip=False))


class TinyCNN(nn.Module):
    """Two conv blocks and a linear classifier; ``forward`` returns logits, as every model must."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main(argv: list[str]) -> dict:
    """Register TinyCNN as ``tiny_cnn_py``, train a resnet8 teacher with plain CE, distil it into TinyCNN.

    ``argv``: further overrides for both runs (e.g. ``trainer.epochs=1 out_dir=/tmp/x``).
    """
    from hydra import compose, initialize_config_dir

    from ikl.cli import train_kd
    from ikl.cli.paths import CONFIGS
    from ikl.models import register_model

    register_model("tiny_cnn_py", TinyCNN)  # now create_model("tiny_cnn_py", num_classes) builds it
    here = Path(__file__).resolve().parent / "configs"

    def config(overrides: list[str]):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("train_kd", [f"hydra.searchpath=[file://{here}]", "dataset=shapes", *argv, *overrides])

    teacher = train_kd.run(config(["loss=ce", "student=resnet8"]))
    weights = Path(teacher["run_dir"]) / "checkpoints" / "final.pt"
    return train_kd.run(config(["student.name=tiny_cnn_py", "teacher=resnet8", f"teacher.checkpoint={weights}"]))


if __name__ == "__main__":
    main(sys.argv[1:])
