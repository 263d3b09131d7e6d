"""Rendering of the synthetic shapes images: occluding coloured shapes over textured backgrounds,
with COCO annotations of their visible regions."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from functools import lru_cache

import cv2
import numpy as np

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
DEFAULT_IMAGE_SIZE = 128


# Bump whenever the renderer's output changes, so that data on disk is regenerated.
_FORMAT_VERSION = 1
_MAX_OBJECTS = 6
_EMPTY_IMAGE_PROB = 0.03
_SIZE_RANGE = (0.1, 0.5)  # diameter of the circumscribed circle, as a fraction of the side
_MIN_VISIBLE_FRACTION = 0.4  # of an object's full area, once occluded
_MIN_VISIBLE_AREA = 24  # pixels
_MIN_CONTRAST = 80.0  # Euclidean RGB distance between an object and what lies around it
_PLACEMENT_TRIES = 8
_COLOUR_CANDIDATES = 12
_POLY_SHIFT = 4  # cv2.fillPoly fixed-point bits: sub-pixel vertex placement


logger = logging.getLogger(__name__)


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` saturated RGB colours (no greys, no near-black), float32 ``(n, 3)``."""
    hsv = np.stack(
        [rng.uniform(0, 180, n), rng.uniform(90, 255, n), rng.uniform(90, 255, n)], axis=-1
    )
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.float32)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    return xs, ys


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 ``(size, size, 3)`` RGB background: flat, gradient, smooth noise or stripes."""
    kind = rng.integers(4)
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.uniform(-80, 80, 3), 0, 255).astype(np.float32)
    if kind == 0:
        return np.broadcast_to(c0, (size, size, 3)).copy()
    if kind == 2:
        cells = rng.random((rng.integers(2, 9),) * 2).astype(np.float32)
        t = np.clip(cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    else:
        xs, ys = _grid(size)
        angle = rng.uniform(0, 2 * np.pi)
        proj = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
        if kind == 1:
            t = (proj - proj.min()) / np.ptp(proj)
        else:
            freq = np.float32(2 * np.pi / (rng.uniform(0.08, 0.3) * size))
            t = 0.5 + 0.5 * np.sin(proj * freq + np.float32(rng.uniform(0, 2 * np.pi)))
    return c0 + t[..., None] * (c1 - c0)


def _shape_vertices(category: str, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Polygon ``(n, 2)`` of one shape centred on the origin, with circumradius ``radius``."""
    if category == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(angles), rng.uniform(0.75, 1.0) * np.sin(angles)], axis=1)
    elif category == "square":
        angles = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif category == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(angles), rng.uniform(0.7, 1.3) * np.sin(angles)], axis=1)
    elif category == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.55))
        pts = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:
        raise ValueError(f"Unknown shape {category!r}; expected one of {SHAPES_CLASSES}")
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = pts / np.linalg.norm(pts, axis=1).max() * radius
    return pts @ rot.T


def _sample_shape(rng: np.random.Generator, size: int) -> tuple[int, np.ndarray, int, int]:
    """One shape at a random place, wholly inside the image.

    Returns:
        ``(category, mask, x0, y0)``: a bool mask of the shape's bounding box, whose top-left
        pixel is ``(x0, y0)``.
    """
    category = int(rng.integers(len(SHAPES_CLASSES)))
    radius = rng.uniform(*_SIZE_RANGE) * size / 2
    pts = _shape_vertices(SHAPES_CLASSES[category], rng, radius)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    # Whole shapes only: truncation by the border would make occlusion the only hard case.
    pts += rng.uniform(-lo, size - 1 - hi)
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 1
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = np.round((pts - (x0, y0)) * (1 << _POLY_SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_POLY_SHIFT)
    return category, mask.astype(bool), int(x0), int(y0)


def _has_hole(mask: np.ndarray) -> bool:
    """Whether a binary mask encloses background: COCO polygons cannot represent holes."""
    padded = np.pad(mask.astype(np.uint8), 1)
    _, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _pick_colour(rng: np.random.Generator, around: np.ndarray) -> np.ndarray:
    """A random colour far (at the 5th percentile) from the RGB pixels ``around`` ``(n, 3)``."""
    candidates = _random_colours(rng, _COLOUR_CANDIDATES)
    # Squared distances as |a|^2 - 2ab + |b|^2: one small matmul instead of an (n, 12, 3) array.
    sq = (around**2).sum(axis=1)[:, None] - 2 * around @ candidates.T + (candidates**2).sum(axis=1)
    k = len(around) // 20
    low = np.sqrt(np.maximum(np.partition(sq, k, axis=0)[k], 0))
    good = low >= _MIN_CONTRAST
    return candidates[int(np.argmax(good)) if good.any() else int(np.argmax(low))]


def _render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Draw one image; see :func:`render_shapes` for the returned values."""
    canvas = _background(rng, size)
    labels = np.zeros((size, size), np.int32)
    categories: list[int] = []
    full_area: list[int] = []
    visible_area: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []  # x0, y0, x1, y1 (exclusive) of the whole shape

    num = 0 if rng.random() < _EMPTY_IMAGE_PROB else int(rng.integers(1, _MAX_OBJECTS + 1))
    for _ in range(num):
        for _ in range(_PLACEMENT_TRIES):
            category, mask, x0, y0 = _sample_shape(rng, size)
            h, w = mask.shape
            area = int(np.count_nonzero(mask))
            box_labels = labels[y0 : y0 + h, x0 : x0 + w]
            covered = np.bincount(box_labels[mask], minlength=len(categories) + 1)[1:]
            if area < _MIN_VISIBLE_AREA or not _keeps_earlier(
                covered, mask, (x0, y0), labels, full_area, visible_area, boxes
            ):
                continue

            # Pick a colour that stands out from everything around and under the shape.
            around = canvas[max(y0 - 2, 0) : y0 + h + 2, max(x0 - 2, 0) : x0 + w + 2]
            colour = _pick_colour(rng, around.reshape(-1, 3)[::4])
            # A soft linear shading keeps the fill from being a single flat colour.
            ys, xs = np.nonzero(mask)
            angle = rng.uniform(0, 2 * np.pi)
            proj = xs * np.cos(angle) + ys * np.sin(angle)
            ramp = ((proj - proj.min()) / max(np.ptp(proj), 1.0) - 0.5).astype(np.float32)
            canvas[ys + y0, xs + x0] = colour + np.float32(rng.uniform(0, 40)) * ramp[:, None]

            for j in np.flatnonzero(covered):
                visible_area[j] -= int(covered[j])
            box_labels[mask] = len(categories) + 1
            categories.append(category)
            full_area.append(area)
            visible_area.append(area)
            boxes.append((x0, y0, x0 + w, y0 + h))
            break

    # Sensor-like grain, shared by the channels (a third of the cost of per-channel noise).
    sigma = np.float32(rng.uniform(0, 8))
    canvas += sigma * rng.standard_normal((size, size, 1), dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, labels, categories


def _keeps_earlier(
    covered: np.ndarray,
    mask: np.ndarray,
    origin: tuple[int, int],
    labels: np.ndarray,
    full_area: list[int],
    visible_area: list[int],
    boxes: list[tuple[int, int, int, int]],
) -> bool:
    """Whether a new shape leaves every earlier one visible enough and without holes."""
    x0, y0 = origin
    h, w = mask.shape
    for j in np.flatnonzero(covered):
        min_area = max(_MIN_VISIBLE_FRACTION * full_area[j], _MIN_VISIBLE_AREA)
        if visible_area[j] - covered[j] < min_area:
            return False
        bx0, by0, bx1, by1 = boxes[j]
        left = labels[by0:by1, bx0:bx1] == j + 1
        # Take away the new shape where the two boxes overlap.
        ix0, iy0, ix1, iy1 = max(bx0, x0), max(by0, y0), min(bx1, x0 + w), min(by1, y0 + h)
        new = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        left[iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0] &= ~new
        if _has_hole(left):
            return False
    return True


def render_shapes(
    split: str, *, num_images: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Draw the images of one split, deterministically, without touching the disk.

    The random stream is seeded by ``(seed, crc32(split))``, so splits differ for one seed and
    image ``i`` does not depend on ``num_images``.

    Yields:
        ``(image, labels, categories)`` per image: ``image`` is uint8 RGB
        ``(H, W, 3)``; ``labels`` is int32 ``(H, W)``, 0 for background and ``k`` where instance
        ``k`` (1-based, in drawing order) is visible; ``categories[k - 1]`` indexes
        :data:`SHAPES_CLASSES`.
    """
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    for _ in range(num_images):
        yield _render_image(rng, image_size)


def _outward_polygon(contour: np.ndarray, area_sign: float) -> np.ndarray:
    """Turn a contour through boundary-pixel centres into the outline of those pixels.

    ``cv2.findContours`` returns centres of boundary pixels, and a polygon through them loses
    about half of every boundary pixel when rasterised (IoU ~0.8 for 13 px shapes). Shifting to
    pixel-centre coordinates (+0.5) and offsetting each vertex by half a pixel along its outward
    mitred normal recovers the pixel outline exactly for axis-aligned edges.
    """
    pts = contour.reshape(-1, 2).astype(np.float64)
    if len(pts) < 3:
        return pts + 0.5

    def normals(edges: np.ndarray) -> np.ndarray:
        n = np.stack([edges[:, 1], -edges[:, 0]], axis=1) * area_sign
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)

    n_in = normals(pts - np.roll(pts, 1, axis=0))
    n_out = normals(np.roll(pts, -1, axis=0) - pts)
    bisector = n_in + n_out
    bisector /= np.maximum(np.linalg.norm(bisector, axis=1, keepdims=True), 1e-9)
    cos_half = np.sum(bisector * n_in, axis=1, keepdims=True)
    # Cap the miter so sharp star tips do not grow spikes.
    reach = np.minimum(0.5 / np.maximum(cos_half, 1e-3), 1.0)
    return pts + 0.5 + bisector * reach


def _annotation(mask: np.ndarray) -> dict | None:
    """COCO fields (``segmentation``, ``area``, ``bbox``) of one visible mask, or None if empty."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    height, width = mask.shape
    polygons = []
    for contour in contours:
        if len(contour) < 3:
            continue
        # findContours traces outer boundaries with a fixed orientation, but check it anyway.
        sign = -1.0 if cv2.contourArea(contour, oriented=True) < 0 else 1.0
        poly = _outward_polygon(contour, sign)
        poly[:, 0] = np.clip(poly[:, 0], 0, width)
        poly[:, 1] = np.clip(poly[:, 1], 0, height)
        polygons.append(np.round(poly, 2).ravel().tolist())
    if not polygons:
        return None
    x, y, w, h = cv2.boundingRect(mask)
    return {
        "segmentation": polygons,
        "area": int(np.count_nonzero(mask)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }
