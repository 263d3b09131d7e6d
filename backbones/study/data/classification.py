"""Image classification data for pretraining the ResNets (He et al., 2015: ImageNet, Sec. 3.4;
CIFAR-10, Sec. 4.2): the embedded synthetic set, an ImageFolder tree (ImageNet as users have it)
and CIFAR-10's python batches, each with its augmentation.

Every dataset yields ``(image, label)``: a uint8 ``(3, H, W)`` tensor in BGR order on 0-255
pixels, Detectron2's input convention (the model subtracts the mean and divides by the std), so
the weights pretrained on it need the same input settings in a detector. A training sample is
asked for as ``dataset[(index, seed)]``: the seed fixes its random crop and flip, so an epoch's
augmentation depends on the seed only, with or without loader workers, resumed or not.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, has_file_allowed_extension, make_dataset
from torchvision.transforms.v2 import functional as TF

from ...errors import check_choice
from ...weights.formats import WeightsFormatError, read_file
from .synthetic_classes import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_CLASSES,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    ensure_synthetic_split,
)

# The channel order of every image this module yields (Detectron2's INPUT.FORMAT default).
CHANNEL_ORDER = "BGR"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_LAYOUT = (
    "DIR/train/<class>/<image> and DIR/val/<class>/<image>, one folder per class with at least "
    f"one image ({', '.join(IMAGE_EXTENSIONS)}), the val classes among the train classes "
    "(ImageNet's layout, as torchvision's ImageFolder reads it)"
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_LAYOUT = (
    "DIR/data_batch_1 .. DIR/data_batch_5 and DIR/test_batch: CIFAR-10's python version "
    "(the cifar-10-batches-py folder of cifar-10-python.tar.gz)"
)
CIFAR10_CLASSES = tuple("airplane automobile bird cat deer dog frog horse ship truck".split())
# ImageFolder evaluation: resize the short side to size / 0.875, then a centre crop
# (224 from 256: torchvision's and He et al.'s single-crop testing).
CENTER_CROP_FRACTION = 0.875


class ClassificationDataError(ValueError):
    """A classification data folder or file that cannot be used; names the path and what is
    expected there."""


# ---------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class Transform:
    """uint8 RGB image (``(H, W, 3)`` array, ``(3, H, W)`` tensor or PIL image) -> uint8 BGR
    ``(3, size, size)`` tensor.

    Attributes:
        size: output side, pixels.
        crop: ``"resized"``: a random crop of ``scale`` of the area and aspect ratio in
            ``ratio``, resized to ``size`` (Szegedy et al., 2015; torchvision's
            RandomResizedCrop); ``"pad"``: pad by ``padding`` (zeros) and crop ``size`` at random
            (He et al., 2015, CIFAR); ``"center"``: resize the short side to
            ``size / 0.875`` and crop the centre; ``"resize"``: resize to ``size`` (nothing if
            it is the image's).
        flip: horizontal flip with probability 1/2.
    """

    size: int
    crop: str = "resize"
    flip: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int = 4

    def __post_init__(self) -> None:
        check_choice("crop", self.crop, ("resized", "pad", "center", "resize"))

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image).permute(2, 0, 1)
        random = self.crop in ("resized", "pad") or self.flip
        if random and generator is None:
            raise ValueError("a training transform needs the sample's random generator")
        size = [self.size, self.size]
        if self.crop == "resized":
            top, left, height, width = self._resized_crop_box(*_hw(image), generator)
            image = TF.resized_crop(image, top, left, height, width, size, antialias=True)
        elif self.crop == "pad":
            image = TF.pad(_as_tensor(image), [self.padding])
            height, width = _hw(image)
            top = int(torch.randint(0, height - self.size + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - self.size + 1, (1,), generator=generator))
            image = TF.crop(image, top, left, self.size, self.size)
        elif self.crop == "center":
            image = TF.resize(image, round(self.size / CENTER_CROP_FRACTION), antialias=True)
            image = TF.center_crop(image, size)
        elif list(_hw(image)) != size:
            image = TF.resize(image, size, antialias=True)
        if self.flip and bool(torch.rand(1, generator=generator) < 0.5):
            image = TF.horizontal_flip(image)
        return _as_tensor(image).flip(0).contiguous()  # RGB -> BGR

    def _resized_crop_box(
        self, height: int, width: int, generator: torch.Generator
    ) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params, drawn from ``generator``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
            w = int(round((target * aspect) ** 0.5))
            h = int(round((target / aspect) ** 0.5))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        # Fallback: the whole image's centre, clamped to the ratio range.
        ratio = width / height
        w, h = width, height
        if ratio < min(self.ratio):
            h = int(round(w / min(self.ratio)))
        elif ratio > max(self.ratio):
            w = int(round(h * max(self.ratio)))
        return (height - h) // 2, (width - w) // 2, h, w


def _hw(image: Any) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[-2]), int(image.shape[-1])


def _as_tensor(image: Any) -> torch.Tensor:
    return TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image


# ---------------------------------------------------------------------------------------------
# Datasets


class ClassificationDataset(Dataset):
    """Images with integer labels; ``dataset[i]`` for evaluation, ``dataset[(i, seed)]`` for a
    training sample whose augmentation ``seed`` draws."""

    def __init__(self, labels: np.ndarray, transform: Transform, classes: list[str]) -> None:
        self.labels = labels
        self.transform = transform
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement load")

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        return self.transform(self.load(index), generator), int(self.labels[index])


class ArrayDataset(ClassificationDataset):
    """uint8 RGB images in one ``(N, H, W, 3)`` array (memory-mapped from ``.npy``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> None:
        super().__init__(np.asarray(labels, dtype=np.int64), **kwargs)
        self.images = images

    def load(self, index: int) -> np.ndarray:
        return np.array(self.images[index])  # a copy: torch wants writable memory


class ImageFolderDataset(ClassificationDataset):
    """Image files of an ImageFolder tree, read with PIL as RGB."""

    def __init__(self, files: list[str], labels: list[int], **kwargs: Any) -> None:
        super().__init__(np.asarray(labels, dtype=np.int64), **kwargs)
        self.files = files

    def load(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ClassificationDataError(
                f"{path}: cannot read this image ({e}); replace or remove the file "
                f"(expected layout: {FOLDER_LAYOUT})"
            ) from None


# ---------------------------------------------------------------------------------------------
# Sources: what --data / --cifar / the synthetic set give


@dataclass(frozen=True)
class DataSpec:
    """Which classification data, and at what input size.

    Attributes:
        kind: ``"synthetic"`` (the embedded set, generated on first use), ``"folder"`` (an
            ImageFolder tree at ``path``) or ``"cifar10"`` (CIFAR-10's python batches at
            ``path``).
        path: the folder; for the synthetic set, the cache root (None:
            ``$DETECTRON2_DATASETS/synthetic_classes``).
        num_classes, num_train, num_val, image_size, seed: the synthetic set's parameters.
        input_size: the side of the images fed to the network; None for the images' own size
            (synthetic, CIFAR-10) or 224 (folders).
    """

    kind: str = "synthetic"
    path: str | None = None
    num_classes: int = DEFAULT_NUM_CLASSES
    num_train: int = DEFAULT_NUM_TRAIN
    num_val: int = DEFAULT_NUM_VAL
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    input_size: int | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, DATA_LOADERS)
        if self.kind != "synthetic" and not self.path:
            raise ClassificationDataError(f"{self.kind} data needs its folder (path)")

    def describe(self) -> str:
        if self.kind == "synthetic":
            return (
                f"synthetic classes ({self.num_classes} classes, {self.image_size} px, "
                f"{self.num_train} train / {self.num_val} val, seed {self.seed})"
            )
        return f"{self.kind} {self.path}"


@dataclass
class ClassificationData:
    """A training and a validation set with their class names."""

    train: ClassificationDataset
    val: ClassificationDataset
    classes: list[str]
    input_size: int
    description: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _synthetic(spec: DataSpec) -> ClassificationData:
    size = spec.input_size or spec.image_size
    splits = {}
    for split, num_images in (("train", spec.num_train), ("val", spec.num_val)):
        folder = ensure_synthetic_split(
            spec.path,
            split,
            num_images=num_images,
            num_classes=spec.num_classes,
            image_size=spec.image_size,
            seed=spec.seed,
        )
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        classes = json.loads((folder / "classes.json").read_text())["classes"]
        splits[split] = (images, labels, str(folder))
    # A crop of at least 35% of the area keeps most of the object (75%+ of it at most scales).
    train = Transform(size, crop="resized", flip=True, scale=(0.35, 1.0))
    return ClassificationData(
        ArrayDataset(*splits["train"][:2], transform=train, classes=classes),
        ArrayDataset(*splits["val"][:2], transform=Transform(size), classes=classes),
        classes,
        size,
        spec.describe(),
        {"train": splits["train"][2], "val": splits["val"][2]},
    )


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], dict[str, list]]:
    """Check an ImageFolder tree and list its images with torchvision's ``find_classes`` and
    ``make_dataset`` (``ImageFolder``'s scan), hidden files left out.

    Returns:
        ``(classes, {"train": [(file, label), ...], "val": [...]})``, classes sorted by name.

    Raises:
        ClassificationDataError: a missing folder, ``train/`` or ``val/``; a split without class
            folders; a class folder without images; val classes that train lacks. Each names
            the path and the expected layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClassificationDataError(f"{root}: no such folder; expected {FOLDER_LAYOUT}")
    found: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise ClassificationDataError(
                f"{folder}: missing; an ImageFolder tree has train/ and val/: {FOLDER_LAYOUT}"
            )
        try:
            found[split] = find_classes(folder)[0]
        except FileNotFoundError:
            raise ClassificationDataError(
                f"{folder}: no class folders in it; expected {FOLDER_LAYOUT}"
            ) from None
    extra = sorted(set(found["val"]) - set(found["train"]))
    if extra:
        shown = ", ".join(extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
        raise ClassificationDataError(
            f"{root / 'val'}: classes not in {root / 'train'}: {shown}; the network learns the "
            f"train classes only (expected {FOLDER_LAYOUT})"
        )
    index = {name: i for i, name in enumerate(found["train"])}
    samples = {}
    for split, classes in found.items():
        samples[split] = make_dataset(
            root / split, {c: index[c] for c in classes}, is_valid_file=_is_image, allow_empty=True
        )
        empty = sorted(set(classes) - {found["train"][label] for _, label in samples[split]})
        if empty:
            raise ClassificationDataError(
                f"{root / split / empty[0]}: a class folder with no images; put at least one "
                f"image in it or remove it (expected {FOLDER_LAYOUT})"
            )
    return found["train"], samples


def _is_image(path: str) -> bool:
    return has_file_allowed_extension(path, IMAGE_EXTENSIONS) and not Path(path).name[0] == "."


def _folder(spec: DataSpec) -> ClassificationData:
    classes, samples = scan_image_folder(spec.path)
    size = spec.input_size or 224

    def dataset(split: str, transform: Transform) -> ImageFolderDataset:
        files, labels = zip(*samples[split])
        return ImageFolderDataset(list(files), list(labels), transform=transform, classes=classes)

    return ClassificationData(
        dataset("train", Transform(size, crop="resized", flip=True)),
        dataset("val", Transform(size, crop="center")),
        classes,
        size,
        spec.describe(),
    )


def read_cifar10(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's python batches, read without running code (numpy arrays only).

    Args:
        folder: ``cifar-10-batches-py``, or a folder holding it.

    Returns:
        ``{"train": (images, labels), "val": (images, labels)}``: uint8 ``(N, 32, 32, 3)``
        RGB and int64 labels; train is ``data_batch_1..5`` (50,000), val ``test_batch``
        (10,000).

    Raises:
        ClassificationDataError: a missing or unreadable file (named, with the layout).
    """
    folder = Path(folder)
    if (folder / "cifar-10-batches-py").is_dir() and not (folder / "test_batch").exists():
        folder = folder / "cifar-10-batches-py"
    batches = {}
    for name in CIFAR10_FILES:
        path = folder / name
        if not path.is_file():
            raise ClassificationDataError(f"{path}: missing; expected {CIFAR10_LAYOUT}")
        try:
            batch = _str_keys(read_file(path))
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch["labels"], dtype=np.int64)
            images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
        except (WeightsFormatError, KeyError, TypeError, ValueError) as e:
            raise ClassificationDataError(
                f"{path}: not a CIFAR-10 python batch (a pickled dict with 'data', "
                f"N x 3072 uint8, and 'labels'): {e}; expected {CIFAR10_LAYOUT}"
            ) from None
        if len(labels) != len(images) or labels.min() < 0 or labels.max() >= 10:
            raise ClassificationDataError(
                f"{path}: {len(images)} images but {len(labels)} labels in 0..9; "
                f"expected {CIFAR10_LAYOUT}"
            )
        batches[name] = (np.ascontiguousarray(images), labels)
    train = [batches[n] for n in CIFAR10_FILES[:-1]]
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "val": batches["test_batch"],
    }


def _str_keys(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar10(spec: DataSpec) -> ClassificationData:
    splits = read_cifar10(spec.path)
    size = spec.input_size or 32
    classes = list(CIFAR10_CLASSES)
    # He et al., 2015, Sec. 4.2: 4 pixels padded on each side, a random 32x32 crop, a flip.
    train = Transform(size, crop="pad", flip=True) if size == 32 else None
    if train is None:
        train = Transform(size, crop="resized", flip=True, scale=(0.35, 1.0))
    return ClassificationData(
        ArrayDataset(*splits["train"], transform=train, classes=classes),
        ArrayDataset(*splits["val"], transform=Transform(size), classes=classes),
        classes,
        size,
        spec.describe(),
    )


# kind -> DataSpec -> ClassificationData: another kind of data is one entry here.
DATA_LOADERS: dict[str, Callable[[DataSpec], ClassificationData]] = {
    "synthetic": _synthetic,
    "folder": _folder,
    "cifar10": _cifar10,
}


def load_classification_data(spec: DataSpec) -> ClassificationData:
    """The training and validation sets ``spec`` names (the synthetic set generated first if
    it is not cached)."""
    return DATA_LOADERS[spec.kind](spec)
