"""Inference on image and video files: drawn predictions and a COCO-format ``predictions.json``.

``predictions.json`` is a COCO instances file whose ``annotations`` are the predictions in COCO
results format (``image_id``, ``category_id``, ``bbox`` as x, y, w, h, ``score``, and
``segmentation`` as RLE for mask models), each also given ``id``, ``area`` and ``iscrowd`` so that
``pycocotools.coco.COCO("predictions.json")`` opens the whole file; ``COCO.loadRes`` takes its
``annotations`` list. ``images`` lists every processed image or video frame: ``id``,
``file_name`` (the input path), ``height``, ``width``, ``visualization`` (the drawn file's name in
the output folder) and, for frames, ``frame`` (0-based index in the video).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.config import CfgNode
from detectron2.data import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image
from tqdm import tqdm

from ..errors import check_choice
from .predictor import (
    Predictor,
    _num_classes,
    _score_threshold,
    drawing_scale,
    predictions_metadata,
    with_score_threshold,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm", ".wmv")
# Formats of the drawn predictions.
IMAGE_FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class InputFile:
    """One input: ``kind`` is "image" or "video"; ``height``/``width`` of images or frames;
    ``num_frames`` is OpenCV's frame count of a video (an estimate for some codecs), else 1."""

    path: Path
    kind: str
    height: int
    width: int
    num_frames: int = 1


def _probe(path: Path) -> InputFile:
    """Check that ``path`` can be read, before any model runs; raise ``ValueError`` if not."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        capture = cv2.VideoCapture(str(path))
        try:
            ok, frame = capture.read() if capture.isOpened() else (False, None)
            if not ok:
                raise ValueError(f"Cannot read video {path}: OpenCV decodes no frame from it")
            num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            capture.release()
        return InputFile(path, "video", frame.shape[0], frame.shape[1], max(num_frames, 1))
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as e:
        raise ValueError(f"Cannot read image {path}: {e}") from None
    return InputFile(path, "image", height, width)


def find_inputs(specs: str | Sequence[str]) -> list[InputFile]:
    """The image and video files named by ``specs``, each checked to be readable.

    Args:
        specs: each an image or video file (videos by extension: :data:`VIDEO_EXTENSIONS`),
            a folder (its images and videos, by extension, sorted), or a glob pattern
            (``**`` recurses).

    Returns:
        the files in the order given, folders and patterns sorted, without repeats.

    Raises:
        FileNotFoundError: a spec that names nothing, or a folder or pattern without any
            image or video file.
        ValueError: a file that cannot be read as an image or video.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise FileNotFoundError("No input given")
    known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            paths.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known)
            if not found:
                raise FileNotFoundError(f"No image or video files ({', '.join(known)}) in {spec}")
            paths += found
        elif any(c in spec for c in "*?["):
            found = sorted(
                Path(p)
                for p in glob.glob(spec, recursive=True)
                if os.path.isfile(p) and Path(p).suffix.lower() in known
            )
            if not found:
                raise FileNotFoundError(f"No image or video files match {spec!r}")
            paths += found
        else:
            raise FileNotFoundError(f"Input {spec} does not exist")
    unique = list(dict.fromkeys(paths))
    return [_probe(p) for p in unique]


def _frames(item: InputFile, every: int) -> Iterator[tuple[int | None, np.ndarray]]:
    """``(frame index or None, uint8 RGB image)`` for an image, or every ``every``-th frame."""
    if item.kind == "image":
        try:
            yield None, read_image(str(item.path), format="RGB")
        except OSError as e:
            raise ValueError(f"Cannot read image {item.path}: {e}") from None
        return
    capture = cv2.VideoCapture(str(item.path))
    try:
        index = 0
        while True:
            ok = capture.grab()
            if not ok:
                break
            if index % every == 0:
                ok, frame = capture.retrieve()
                if not ok:
                    raise ValueError(f"Cannot decode frame {index} of video {item.path}")
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return name


def _category_map(metadata: Metadata, num_classes: int) -> tuple[dict[int, int], list[dict]]:
    """Contiguous class -> JSON category id (the dataset's when known), and the categories."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    to_dataset = {c: d for d, c in id_map.items()} if id_map else {i: i for i in range(num_classes)}
    names = metadata.get("thing_classes") or [str(i) for i in range(num_classes)]
    categories = [{"id": to_dataset[i], "name": names[i]} for i in range(num_classes)]
    return to_dataset, categories


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote: the drawn images (one per image or frame, in order), the
    predictions file, and counts."""

    visualizations: list[Path]
    predictions_json: Path
    num_images: int
    num_instances: int


def run_demo(
    cfg: CfgNode,
    inputs: str | Sequence[str],
    output_dir: str | os.PathLike,
    *,
    confidence_threshold: float | None = None,
    image_format: str = "png",
    every: int = 1,
    progress: bool = True,
    batch_size: int = 1,
) -> DemoResult:
    """Predict on image files and video frames; draw them and write ``predictions.json``.

    All inputs are checked before the model is built. Boxes, class names, scores and masks are
    drawn by Detectron2's ``Visualizer`` with :func:`predictions_metadata`; images whose shorter
    side is under 512 pixels are drawn upscaled to 512, so that the labels stay legible.

    Args:
        cfg: model config (``MODEL.WEIGHTS``; empty means random initialisation).
        inputs: see :func:`find_inputs`.
        output_dir: folder for ``<stem>.<image_format>`` per image, ``<stem>_<frame>.<format>``
            per video frame (6 digits), and ``predictions.json`` (created if needed; files of
            the same names are replaced).
        confidence_threshold: smallest kept score (:func:`with_score_threshold`); ``None``
            keeps the config's thresholds.
        image_format: "png" or "jpg".
        every: take every ``every``-th video frame, starting with the first.
        progress: show a tqdm progress bar over images and frames.
        batch_size: images or frames per forward (consecutive ones of one size: the
            predictions equal one at a time; :meth:`Predictor.batch`).

    Returns:
        the written files and counts.
    """
    check_choice("image_format", image_format, IMAGE_FORMATS)
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if confidence_threshold is not None:
        cfg = with_score_threshold(cfg, confidence_threshold)
    items = find_inputs(inputs)
    predictor = Predictor(cfg)
    metadata = predictions_metadata(cfg)
    to_dataset, categories = _category_map(metadata, _num_classes(cfg))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    total = sum(-(-item.num_frames // every) for item in items)
    images, annotations, written, used = [], [], [], set()

    def predict(pending: list[tuple[InputFile, int | None, np.ndarray]]) -> None:
        """Predict a batch of frames of one size, then draw and record each."""
        predicted = predictor.instances_batch([frame_rgb for _, _, frame_rgb in pending])
        for (item, frame, image_rgb), instances in zip(pending, predicted):
            image_id = len(images) + 1
            stem = item.path.stem if frame is None else f"{item.path.stem}_{frame:06d}"
            name = f"{_unique_name(stem, used)}.{image_format}"
            scale = drawing_scale(image_rgb)
            vis = Visualizer(image_rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
            drawn = vis.draw_instance_predictions(instances).get_image()
            Image.fromarray(drawn).save(output_dir / name)
            written.append(output_dir / name)
            entry = {
                "id": image_id,
                "file_name": str(item.path),
                "height": image_rgb.shape[0],
                "width": image_rgb.shape[1],
                "visualization": name,
            }
            if frame is not None:
                entry["frame"] = frame
            images.append(entry)
            for result in instances_to_coco_json(instances, image_id):
                result["category_id"] = to_dataset[result["category_id"]]
                result["id"] = len(annotations) + 1
                result["iscrowd"] = 0
                if "segmentation" in result:
                    result["area"] = float(mask_util.area(result["segmentation"]))
                else:
                    result["area"] = result["bbox"][2] * result["bbox"][3]
                annotations.append(result)
            bar.update()

    with tqdm(total=total, unit="img", desc="demo", disable=not progress) as bar:
        pending: list[tuple[InputFile, int | None, np.ndarray]] = []
        for item in items:
            for frame, image_rgb in _frames(item, every):
                # A batch holds frames of one size: then it equals one frame at a time.
                if pending and pending[0][2].shape != image_rgb.shape:
                    predict(pending)
                    pending = []
                pending.append((item, frame, image_rgb))
                if len(pending) == batch_size:
                    predict(pending)
                    pending = []
        if pending:
            predict(pending)
    if not images:
        raise ValueError(f"No images or frames could be read from {inputs}")

    predictions = {
        "info": {
            "description": "Predictions of backbones.inference.run_demo",
            "weights": cfg.MODEL.WEIGHTS,
            "score_threshold": _score_threshold(cfg),
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    predictions_json = output_dir / "predictions.json"
    predictions_json.write_text(json.dumps(predictions))
    logger.info(
        "%d instances on %d images/frames; wrote %s", len(annotations), len(images), output_dir
    )
    return DemoResult(written, predictions_json, len(images), len(annotations))
