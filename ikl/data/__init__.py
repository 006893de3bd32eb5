"""Datasets, transforms and loaders: digits (scikit-learn), CIFAR-10/100, ImageNet folders, ImageNet-LT
(split files), and generated images (DM-AT ``.npz``, memory-mapped) mixed into the real training batches.

Builders (``digits_datasets``, ``cifar_datasets``, ``imagenet_datasets``, ``imagenet_lt_datasets``,
``generated_datasets``) return a
:class:`Datasets` bundle and are what the Hydra dataset configs target. ``build_loaders`` makes
host-side DataLoaders; ``DeviceCIFARLoader`` keeps uint8 splits on the accelerator. Call
``set_epoch`` on the train loader every epoch.
"""

from .cifar import cifar_datasets
from .common import CropFlip, DataError, Datasets, UInt8ImageDataset, data_fingerprint, subset_indices
from .device_loader import DeviceCIFARLoader, crop_flip_batch
from .digits import digits_datasets, stratified_split
from .generated import GeneratedImages, MixedBatchSampler, MixedTrainSet, generated_datasets, open_npz_arrays
from .imagenet import imagenet_datasets, imagenet_transforms
from .imagenet_lt import SplitFileDataset, imagenet_lt_datasets, read_split_file
from .loaders import (
    EpochRandomSampler,
    RepeatedAugmentationSampler,
    ShardedEvalSampler,
    build_loaders,
    seed_worker,
    set_epoch,
    shuffled_shard,
)
from .long_tail import class_counts, group_accuracies, shot_groups
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
    "RepeatedAugmentationSampler",
    "ShardedEvalSampler",
    "SplitFileDataset",
    "TwoView",
    "UInt8ImageDataset",
    "build_loaders",
    "cifar_datasets",
    "class_counts",
    "crop_flip_batch",
    "data_fingerprint",
    "digits_datasets",
    "generated_datasets",
    "group_accuracies",
    "imagenet_datasets",
    "imagenet_lt_datasets",
    "imagenet_transforms",
    "open_npz_arrays",
    "read_split_file",
    "seed_worker",
    "set_epoch",
    "shot_groups",
    "shuffled_shard",
    "stratified_split",
    "subset_indices",
]
