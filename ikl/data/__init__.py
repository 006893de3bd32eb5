"""Datasets, transforms and loaders: digits (scikit-learn), CIFAR-10/100, ImageNet folders.

Builders (``digits_datasets``, ``cifar_datasets``, ``imagenet_datasets``) return a
:class:`Datasets` bundle and are what the Hydra dataset configs target. ``build_loaders`` makes
host-side DataLoaders; ``DeviceCIFARLoader`` keeps uint8 splits on the accelerator. Call
``set_epoch`` on the train loader every epoch.
"""

from .cifar import cifar_datasets
from .common import CropFlip, DataError, Datasets, UInt8ImageDataset, subset_indices
from .device_loader import DeviceCIFARLoader, crop_flip_batch
from .digits import digits_datasets, stratified_split
from .imagenet import imagenet_datasets
from .loaders import (
    EpochRandomSampler,
    ShardedEvalSampler,
    build_loaders,
    seed_worker,
    set_epoch,
    shuffled_shard,
)
from .transforms import Cutout, TwoView

__all__ = [
    "CropFlip",
    "Cutout",
    "DataError",
    "Datasets",
    "DeviceCIFARLoader",
    "EpochRandomSampler",
    "ShardedEvalSampler",
    "TwoView",
    "UInt8ImageDataset",
    "build_loaders",
    "cifar_datasets",
    "crop_flip_batch",
    "digits_datasets",
    "imagenet_datasets",
    "seed_worker",
    "set_epoch",
    "shuffled_shard",
    "stratified_split",
    "subset_indices",
]
