"""Datasets, transforms and loaders: digits (scikit-learn), CIFAR-10/100, ImageNet folders, and
generated images (DM-AT ``.npz``, memory-mapped) mixed into the real training batches.

Builders (``digits_datasets``, ``cifar_datasets``, ``imagenet_datasets``, ``generated_datasets``) return a
:class:`Datasets` bundle and are what the Hydra dataset configs target. ``build_loaders`` makes
host-side DataLoaders; ``DeviceCIFARLoader`` keeps uint8 splits on the accelerator. Call
``set_epoch`` on the train loader every epoch.
"""

from .cifar import cifar_datasets
from .common import CropFlip, DataError, Datasets, UInt8ImageDataset, subset_indices
from .device_loader import DeviceCIFARLoader, crop_flip_batch
from .digits import digits_datasets, stratified_split
from .generated import GeneratedImages, MixedBatchSampler, MixedTrainSet, generated_datasets, open_npz_arrays
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
    "GeneratedImages",
    "MixedBatchSampler",
    "MixedTrainSet",
    "ShardedEvalSampler",
    "TwoView",
    "UInt8ImageDataset",
    "build_loaders",
    "cifar_datasets",
    "crop_flip_batch",
    "digits_datasets",
    "generated_datasets",
    "imagenet_datasets",
    "open_npz_arrays",
    "seed_worker",
    "set_epoch",
    "shuffled_shard",
    "stratified_split",
    "subset_indices",
]
