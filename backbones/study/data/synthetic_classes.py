"""The embedded synthetic classification set: an "ImageNet-like" task of 100 classes, generated on
first use and cached as uint8 arrays.

A class is a shape drawn with a texture (10 shapes x 10 textures: "star/stripes",
"ring/checker", ...); colour carries no information. Each image holds one large object of its
class at a random place, scale (45-85% of the side), rotation and aspect, with two random colours,
over a low-contrast textured background with smooth clutter, next to 0-3 small distractor objects
of any shape and texture (one may overlap the main object), then brightness, contrast and
saturation jitter, an occasional blur and pixel noise. Telling the textures apart takes a
receptive field of several stripes, telling the shapes apart one of the whole object; the small
distractors carry the other classes' cues.

Image ``i`` of a split depends on ``(seed, split, i)`` only, so a larger split starts with the
images of a smaller one, and label ``i % num_classes`` balances the classes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ...data.shapes import default_root, generation_lock, publish_generated, read_params

SHAPES = tuple("disk ring triangle square hexagon star cross crescent arrow heart".split())
TEXTURES = tuple("solid stripes checker dots grid rings gradient waves speckle halves".split())
# Class c is SHAPES[c % 10] drawn with TEXTURES[c // 10]: the first 10 classes are the 10 shapes.
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
DEFAULT_NUM_CLASSES = 100
DEFAULT_NUM_TRAIN = 50_000
DEFAULT_NUM_VAL = 5_000
DEFAULT_IMAGE_SIZE = 64
SPLITS = {"train": 1, "val": 2}  # the split's entry in the random streams

_FORMAT_VERSION = 1
_GENERATOR = __name__
logger = logging.getLogger(__name__)


def class_names(num_classes: int = DEFAULT_NUM_CLASSES) -> list[str]:
    """``"shape/texture"`` of each class, in label order."""
    return [f"{SHAPES[c % len(SHAPES)]}/{TEXTURES[c // len(SHAPES)]}" for c in range(num_classes)]


# ---------------------------------------------------------------------------------------------
# Shapes: polygons in a unit frame (radius about 1), holes drawn as a second polygon


def _circle(n: int = 32, r: float = 1.0, dx: float = 0.0) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([dx + r * np.cos(a), r * np.sin(a)], 1)


def _regular(n: int, start: float = -np.pi / 2) -> np.ndarray:
    a = start + np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(a), np.sin(a)], 1)


def _star() -> np.ndarray:
    a = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], 1) / 16.5


_CROSS = np.array(
    [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
     (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)]
)  # fmt: skip
_ARROW = np.array([(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)])
# name -> (outline, hole or None)
_POLYGONS: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
    "disk": (_circle(), None),
    "ring": (_circle(), _circle(r=0.55)),
    "triangle": (_regular(3) * 1.1 + (0, 0.15), None),
    "square": (_regular(4, np.pi / 4) * 1.05, None),
    "hexagon": (_regular(6), None),
    "star": (_star() * 1.1, None),
    "cross": (_CROSS, None),
    "crescent": (_circle(), _circle(r=0.85, dx=0.45)),
    "arrow": (_ARROW, None),
    "heart": (_heart(), None),
}
_SUBPIXEL = 4  # cv2.fillPoly fractional bits


def _transform(points: np.ndarray, center, scale: float, angle: float, aspect: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0] * aspect, points[:, 1] / aspect
    xy = np.stack([c * x - s * y, s * x + c * y], 1) * scale + center
    return np.round(xy * (1 << _SUBPIXEL)).astype(np.int32)


def _mask(shape: str, size: int, center, scale: float, angle: float, aspect: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape, float32 (size, size)."""
    outline, hole = _POLYGONS[shape]
    mask = np.zeros((size, size), np.uint8)
    args = (center, scale, angle, aspect)
    cv2.fillPoly(mask, [_transform(outline, *args)], 255, cv2.LINE_AA, _SUBPIXEL)
    if hole is not None:
        cv2.fillPoly(mask, [_transform(hole, *args)], 0, cv2.LINE_AA, _SUBPIXEL)
    return mask.astype(np.float32) * (1 / 255)


# ---------------------------------------------------------------------------------------------
# Textures: a mixing weight in [0, 1] between an object's two colours, over the image grid


def _texture(name: str, rng: np.random.Generator, size: int, center, scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = xx - center[0], yy - center[1]
    theta = rng.uniform(0, np.pi)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    # Periods in pixels scale with the object, so a texture looks the same at every size.
    period = max(3.0, scale * rng.uniform(0.35, 0.55))
    phase = rng.uniform(0, period)
    if name == "solid":
        return np.zeros((size, size), np.float32)
    if name == "stripes":
        return (np.mod(u + phase, period) < period / 2).astype(np.float32)
    if name == "checker":
        cells = np.floor((u + phase) / (period / 2)) + np.floor((v + phase) / (period / 2))
        return np.mod(cells, 2).astype(np.float32)
    if name == "dots":
        du = np.mod(u + phase, period) - period / 2
        dv = np.mod(v + phase, period) - period / 2
        return (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)
    if name == "grid":
        width = max(1.0, 0.22 * period)
        lines = np.minimum(np.mod(u + phase, period), np.mod(v + phase, period))
        return (lines < width).astype(np.float32)
    if name == "rings":
        return (np.mod(np.hypot(x, y) + phase, period) < period / 2).astype(np.float32)
    if name == "gradient":
        return np.clip(0.5 + u / (1.6 * scale), 0, 1).astype(np.float32)
    if name == "waves":
        bend = np.sin(2 * np.pi * v / (1.2 * period)) * 0.3 * period
        return (np.mod(u + bend + phase, period) < period / 2).astype(np.float32)
    if name == "speckle":
        cells = max(2, int(round(size / max(2.0, period / 3))))
        noise = (rng.random((cells, cells)) < 0.5).astype(np.float32)
        return cv2.resize(noise, (size, size), interpolation=cv2.INTER_NEAREST)
    if name == "halves":
        return (u > 0).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}; known: {', '.join(TEXTURES)}")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours in [0, 255] whose brightness differs by at least 70."""
    while True:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(a.mean() - b.mean()) >= 70:
            return a.astype(np.float32), b.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    grid = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _paint(canvas, rng, size, shape, texture, center, scale) -> None:
    """Composite one textured object onto ``canvas`` (float32 HxWx3) in place."""
    angle = rng.uniform(0, 2 * np.pi)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    alpha = _mask(shape, size, center, scale / 2, angle, aspect)[..., None]
    mix = _texture(texture, rng, size, center, scale)[..., None]
    first, second = _colours(rng)
    fill = first * (1 - mix) + second * mix
    canvas *= 1 - alpha
    canvas += alpha * fill


def render_image(
    rng: np.random.Generator, label: int, size: int = DEFAULT_IMAGE_SIZE
) -> np.ndarray:
    """One image of class ``label``, RGB uint8 ``(size, size, 3)``."""
    shape, texture = SHAPES[label % len(SHAPES)], TEXTURES[label // len(SHAPES)]
    # Background: a low-contrast texture of its own, plus smooth colour clutter.
    canvas = np.empty((size, size, 3), np.float32)
    base, other = _colours(rng)
    other = base + (other - base) * rng.uniform(0.15, 0.35)
    mix = _texture(TEXTURES[rng.integers(len(TEXTURES))], rng, size, (size / 2, size / 2), size)
    canvas[:] = base * (1 - mix[..., None]) + other * mix[..., None]
    canvas += _smooth_noise(rng, size, int(rng.integers(3, 7)), 3) * rng.uniform(10, 30)
    # Small distractors (any class's shape and texture), some drawn over the main object.
    num_distractors = int(rng.integers(0, 4))
    on_top = num_distractors > 0 and rng.random() < 0.3
    for k in range(num_distractors):
        if on_top and k == num_distractors - 1:
            break
        _paint_distractor(canvas, rng, size)
    scale = size * rng.uniform(0.45, 0.85)
    center = rng.uniform(0.3 * scale, size - 0.3 * scale, 2)
    _paint(canvas, rng, size, shape, texture, center, scale)
    if on_top:
        _paint_distractor(canvas, rng, size)
    # Photometric jitter: brightness, contrast, saturation; sometimes blur; always noise.
    gray = canvas.mean(axis=2, keepdims=True)
    canvas = gray + (canvas - gray) * rng.uniform(0.5, 1.3)
    canvas = (canvas - 128) * rng.uniform(0.7, 1.2) + 128 + rng.uniform(-30, 30)
    if rng.random() < 0.25:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 1.0))
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0, 8)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _paint_distractor(canvas, rng, size) -> None:
    scale = size * rng.uniform(0.15, 0.3)
    center = rng.uniform(0, size, 2)
    shape = SHAPES[rng.integers(len(SHAPES))]
    _paint(canvas, rng, size, shape, TEXTURES[rng.integers(len(TEXTURES))], center, scale)


def render_classes(
    split: str,
    *,
    num_images: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one split.

    Args:
        out: where to draw (e.g. a memory-mapped ``.npy``), uint8
            ``(num_images, image_size, image_size, 3)``; None for a new array.

    Returns:
        ``(images, labels)``: uint8 ``(num_images, image_size, image_size, 3)`` RGB and int64
        ``(num_images,)``, label ``i % num_classes``.
    """
    _check_args(split, num_images, num_classes, image_size, seed)
    shape = (num_images, image_size, image_size, 3)
    images = np.empty(shape, np.uint8) if out is None else out
    if images.shape != shape or images.dtype != np.uint8:
        raise ValueError(f"out: expected uint8 {shape}, got {images.dtype} {images.shape}")
    labels = np.arange(num_images, dtype=np.int64) % num_classes
    for i in range(num_images):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        images[i] = render_image(rng, int(labels[i]), image_size)
    return images, labels


def _check_args(split: str, num_images: int, num_classes: int, image_size: int, seed: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {', '.join(SPLITS)}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}; allowed: 2..{MAX_CLASSES}")
    if num_images < 1:
        raise ValueError(f"num_images={num_images}; allowed: a positive number of images")
    if image_size < 32:
        raise ValueError(f"image_size={image_size}; allowed: 32 pixels or more")
    if seed < 0:
        raise ValueError(f"seed={seed}; allowed: 0 or more")


# ---------------------------------------------------------------------------------------------
# The cache on disk: <root>/c<classes>-<size>px-seed<seed>/<split>-<num images>/


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/synthetic_classes``, or ``datasets/synthetic_classes``."""
    return default_root("synthetic_classes")


def synthetic_split_dir(
    root: str | os.PathLike | None,
    split: str,
    *,
    num_images: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> Path:
    """Where a split with these parameters is cached (each set of parameters has its folder)."""
    root = Path(default_synthetic_root() if root is None else root)
    return root / f"c{num_classes}-{image_size}px-seed{seed}" / f"{split}-{num_images}"


def ensure_synthetic_split(
    root: str | os.PathLike | None,
    split: str,
    *,
    num_images: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> Path:
    """The folder of a cached split, generated first if it is not on disk.

    The split is drawn into a temporary folder next to its place and renamed into it, so an
    interrupted generation never leaves a partial split; of processes asking at once, one draws
    it (under :func:`~backbones.data.shapes.generation_lock`) and the others wait for it.

    Returns:
        the folder, holding ``images.npy`` (uint8 N x S x S x 3, RGB), ``labels.npy`` (int64)
        and ``params.json``.
    """
    params = dict(
        generator=_GENERATOR,
        format_version=_FORMAT_VERSION,
        split=split,
        num_images=num_images,
        num_classes=num_classes,
        image_size=image_size,
        seed=seed,
    )
    _check_args(split, num_images, num_classes, image_size, seed)
    target = synthetic_split_dir(root, split, **{k: params[k] for k in _SIZE_KEYS})
    if read_params(target) == params and (target / "labels.npy").is_file():
        return target
    # One process draws the split; the others wait, then find it complete.
    with generation_lock(target, f"the synthetic {split} split"):
        if read_params(target) == params and (target / "labels.npy").is_file():
            return target
        _generate(target, params)
    return target


def _generate(target: Path, params: dict) -> None:
    """Draw the split of ``params`` into a temporary folder, then publish it as ``target``."""
    num_images, split = params["num_images"], params["split"]
    num_classes, image_size = params["num_classes"], params["image_size"]
    logger.info(f"Generating {num_images} synthetic {split} images into {target} ...")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # Drawn straight into the file: the whole set is never in memory.
        shape = (num_images, image_size, image_size, 3)
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        _, labels = render_classes(split, **{k: params[k] for k in _SIZE_KEYS}, out=images)
        images.flush()
        del images
        np.save(tmp / "labels.npy", labels)
        names = {"classes": class_names(num_classes)}
        (tmp / "classes.json").write_text(json.dumps(names, indent=1) + "\n")
        # Written last: a folder with params.json is complete.
        (tmp / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        publish_generated(tmp, target, generator=_GENERATOR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"Generated {target} in {time.perf_counter() - start:.0f} s")


_SIZE_KEYS = ("num_images", "num_classes", "image_size", "seed")
