"""Write a small image data set in the real on-disk formats, for smoke runs and tests.

    python scripts/make_image_tree.py imagenet_lt <root> [--classes 8 --most 40 --fewest 3 --test 4]
    python scripts/make_image_tree.py image_folder <root> [--classes 6 --train 8 --val 4]

``imagenet_lt``: an ImageNet-style tree (``train/<wnid>/<wnid>_<i>.JPEG``,
``val/<wnid>/ILSVRC2012_val_<n>.JPEG``, every fifth file a PNG) and the three ImageNet-LT split
files ``ImageNet_LT_{train,val,test}.txt`` (``<path relative to root> <label>`` per line, labels in
the sorted-wnid order). Train images per class fall geometrically from ``--most`` to ``--fewest``
(a long tail); val and test hold ``--test`` images per class each, drawn from ``val/``.
``image_folder``: ``train/<class>/`` and ``val/<class>/`` trees for ImageFolder.

Each image is a class colour with noise and a random bright square (so a small model can learn
something), of a random size around ``--size``. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def wnid(k: int) -> str:
    return f"n{k:08d}"


def _image(rng: np.random.Generator, label: int, classes: int, size: int) -> Image.Image:
    h, w = (int(size * f) for f in rng.uniform(0.8, 1.25, size=2))
    hue = np.array([np.sin(2 * np.pi * label / classes + s) for s in (0.0, 2.1, 4.2)]) * 90 + 128
    pixels = hue + rng.normal(0, 30, size=(h, w, 3))
    y, x = rng.integers(0, max(h // 2, 1)), rng.integers(0, max(w // 2, 1))
    pixels[y : y + h // 3, x : x + w // 3] = 255 - hue
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save(image: Image.Image, path: Path, png: bool) -> Path:
    path = path.with_suffix(".png" if png else ".JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG" if png else "JPEG", quality=90)
    return path


def long_tail_counts(classes: int, most: int, fewest: int) -> list[int]:
    """Images per class, falling geometrically from ``most`` (class 0) to ``fewest`` (the last)."""
    if classes == 1:
        return [most]
    return [int(round(most * (fewest / most) ** (k / (classes - 1)))) for k in range(classes)]


def write_imagenet_lt(
    root: str | Path, *, classes: int = 8, most: int = 40, fewest: int = 3, test: int = 4, size: int = 40, seed: int = 0
) -> dict[str, list[tuple[str, int]]]:
    """The tree and split files described in the module docstring; returns each split's entries in file order."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    val_index = 0
    for label, count in enumerate(long_tail_counts(classes, most, fewest)):
        for i in range(count):
            path = _save(
                _image(rng, label, classes, size), root / "train" / wnid(label) / f"{wnid(label)}_{i}", i % 5 == 4
            )
            splits["train"].append((path.relative_to(root).as_posix(), label))
        for split in ("val", "test"):
            for _ in range(test):
                val_index += 1
                name = f"ILSVRC2012_val_{val_index:08d}"
                path = _save(_image(rng, label, classes, size), root / "val" / wnid(label) / name, val_index % 5 == 0)
                splits[split].append((path.relative_to(root).as_posix(), label))
    splits["train"] = [splits["train"][i] for i in rng.permutation(len(splits["train"]))]  # files list it shuffled
    for split, entries in splits.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("".join(f"{path} {label}\n" for path, label in entries))
    return splits


def write_image_folder(
    root: str | Path, *, classes: int = 6, train: int = 8, val: int = 4, size: int = 40, seed: int = 0
) -> Path:
    """``root/train/<class>/`` and ``root/val/<class>/`` with ``train`` / ``val`` images per class."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", train), ("val", val)):
        for label in range(classes):
            for i in range(count):
                _save(_image(rng, label, classes, size), root / split / wnid(label) / f"{split}_{i}", i % 5 == 4)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["imagenet_lt", "image_folder"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--most", type=int, default=40, help="imagenet_lt: train images of the largest class")
    parser.add_argument("--fewest", type=int, default=3, help="imagenet_lt: train images of the smallest class")
    parser.add_argument("--test", type=int, default=4, help="imagenet_lt: val and test images per class")
    parser.add_argument("--train", type=int, default=8, help="image_folder: train images per class")
    parser.add_argument("--val", type=int, default=4, help="image_folder: val images per class")
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "imagenet_lt":
        splits = write_imagenet_lt(
            args.root,
            classes=args.classes,
            most=args.most,
            fewest=args.fewest,
            test=args.test,
            size=args.size,
            seed=args.seed,
        )
        print(f"wrote {args.root}: " + ", ".join(f"{len(v)} {k}" for k, v in splits.items()))
    else:
        write_image_folder(
            args.root, classes=args.classes, train=args.train, val=args.val, size=args.size, seed=args.seed
        )
        print(f"wrote {args.root}: {args.classes} classes x ({args.train} train, {args.val} val)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
