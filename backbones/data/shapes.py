"""Synthetic "shapes" instance segmentation in COCO format, generated on first use.

Images hold 0-6 coloured shapes over flat, gradient, noise or stripe backgrounds. Shapes are drawn
in order, so later ones occlude earlier ones; each annotation describes the visible region only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes_render import (
    _FORMAT_VERSION,
    DEFAULT_IMAGE_SIZE,
    SHAPES_CLASSES,
    _annotation,
    render_shapes,
)

DEFAULT_NUM_TRAIN = 1000
DEFAULT_NUM_VAL = 100


_PARAMS_FILE = "params.json"

logger = logging.getLogger(__name__)


def _split_params(split: str, num_images: int, image_size: int, seed: int) -> dict:
    return {
        "generator": __name__,
        "format_version": _FORMAT_VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
    }


def _split_paths(split_dir: Path, split: str) -> tuple[Path, Path]:
    return split_dir / f"instances_{split}.json", split_dir / "images"


def _check_args(split: str, num_images: int, image_size: int, seed: int) -> None:
    if not split or os.sep in split or split.startswith("."):
        raise ValueError(f"Invalid split name {split!r}")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def generate_shapes(
    root: str | os.PathLike,
    split: str,
    *,
    num_images: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write the images and one COCO instances JSON of one split, replacing any earlier ones.

    The split is written to a temporary folder next to ``root/split`` and renamed into place, so an
    interrupted run never leaves a partial split behind.

    Args:
        root: dataset folder; the split goes to ``root/split``.
        split: split name, e.g. "train" or "val"; it also selects the random stream.
        num_images: number of images.
        image_size: side of the square images, pixels.
        seed: base random seed.

    Returns:
        ``(json_file, image_root)``: ``root/split/instances_{split}.json`` and
        ``root/split/images``.
    """
    _check_args(split, num_images, image_size, seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    params = _split_params(split, num_images, image_size, seed)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root))
    try:
        json_tmp, images_tmp = _split_paths(tmp_dir, split)
        images_tmp.mkdir()
        images, annotations = [], []
        drawn = render_shapes(split, num_images=num_images, image_size=image_size, seed=seed)
        for image_id, (image, labels, categories) in enumerate(drawn, start=1):
            file_name = f"{image_id:06d}.png"
            if not cv2.imwrite(str(images_tmp / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OSError(f"Could not write {images_tmp / file_name}")
            images.append(
                {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
            )
            for k, category in enumerate(categories, start=1):
                ann = _annotation((labels == k).astype(np.uint8))
                if ann is not None:
                    ann.update(id=len(annotations) + 1, image_id=image_id, category_id=category + 1)
                    annotations.append(ann)
        coco = {
            "info": {
                "description": "Synthetic shapes (backbones.data.shapes)",
                "version": str(_FORMAT_VERSION),
                **params,
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape"}
                for i, name in enumerate(SHAPES_CLASSES)
            ],
        }
        json_tmp.write_text(json.dumps(coco, separators=(",", ":")))
        (tmp_dir / _PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        _publish(tmp_dir, root / split)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return _split_paths(root / split, split)


def _publish(tmp_dir: Path, target: Path) -> None:
    """Rename a finished split folder into place, replacing an earlier generated one."""
    publish_generated(tmp_dir, target, generator=__name__)


def publish_generated(tmp_dir: Path, target: Path, *, generator: str) -> None:
    """Rename the finished folder ``tmp_dir`` to ``target``, replacing an empty one or one whose
    ``params.json`` names ``generator`` (an earlier or outdated generation of the same code);
    anything else is an error. Atomic for readers: ``target`` is the old folder or the new one.
    Shared by the generated datasets (shapes, synthetic classes)."""
    if target.exists():
        if any(target.iterdir()) and not _generated_by(target, generator):
            raise FileExistsError(
                f"Refusing to replace {target}: it was not written by {generator}; move it away"
            )
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            target.rename(stale / target.name)
        except FileNotFoundError:  # another process moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp_dir.rename(target)
    except OSError:
        # Another process published the same split in between: keep theirs, same content.
        if not target.is_dir():
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def generation_lock(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of generating ``target`` (a file lock, ``.<name>.lock`` beside it): one
    process generates a set while the others started at the same moment wait, with a message,
    then find it complete. Shared by the generated datasets (shapes, synthetic classes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(f"Waiting for another process that generates {what} in {target} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_params(split_dir: Path) -> dict | None:
    try:
        return json.loads((split_dir / _PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _generated_by(split_dir: Path, generator: str) -> bool:
    """Whether ``split_dir`` was written by ``generator`` (complete or not), so may be replaced."""
    params = read_params(split_dir)
    return isinstance(params, dict) and params.get("generator") == generator


def _is_complete(split_dir: Path, params: dict) -> bool:
    """Whether ``split_dir`` holds a finished split generated with ``params``."""
    json_file, image_root = _split_paths(split_dir, params["split"])
    if read_params(split_dir) != params or not json_file.is_file():
        return False
    try:
        num_files = sum(1 for entry in os.scandir(image_root) if entry.name.endswith(".png"))
    except OSError:
        return False
    return num_files == params["num_images"]


def default_root(name: str = "shapes") -> str:
    """``$DETECTRON2_DATASETS/name``, or ``datasets/name`` relative to the working directory."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), name)


class _ShapesMetadata(Metadata):
    """Metadata of a registered shapes split; reading ``json_file`` generates the split.

    Detectron2's ``COCOEvaluator`` opens ``json_file`` directly, possibly before anything loaded
    the dataset, so the path must point at a real file whenever it is read.
    """

    @property
    def json_file(self) -> str:
        return str(ensure_generated(self.name)[0])

    def as_dict(self) -> dict:
        out = super().as_dict()
        out["json_file"] = str(_split_paths(Path(self.image_root).parent, self.shapes_split)[0])
        return out


def ensure_generated(dataset_name: str) -> tuple[Path, Path]:
    """Generate a split registered by :func:`register_shapes` unless it is complete on disk.

    Returns:
        ``(json_file, image_root)`` of the split.
    """
    meta = MetadataCatalog.get(dataset_name) if dataset_name in MetadataCatalog else None
    if not isinstance(meta, _ShapesMetadata):
        raise KeyError(f"'{dataset_name}' is not a dataset registered by register_shapes()")
    config, split = meta.shapes_config, meta.shapes_split
    root = Path(config["root"])
    num_images = config[f"num_{split}"]
    params = _split_params(split, num_images, config["image_size"], config["seed"])
    if _is_complete(root / split, params):
        return _split_paths(root / split, split)
    # One process generates; the others wait, then find the split complete (never a folder
    # moved away under a reader).
    with generation_lock(root / split, f"'{dataset_name}'"):
        if _is_complete(root / split, params):
            return _split_paths(root / split, split)
        logger.info(f"Generating {num_images} images of '{dataset_name}' in {root / split} ...")
        return generate_shapes(
            root, split, num_images=num_images, image_size=config["image_size"], seed=config["seed"]
        )


def _load_split(dataset_name: str) -> list[dict]:
    json_file, image_root = ensure_generated(dataset_name)
    return load_coco_json(str(json_file), str(image_root), dataset_name)


def register_shapes(
    root: str | os.PathLike | None = None,
    *,
    name: str = "shapes",
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
) -> tuple[str, str]:
    """Register ``{name}_train`` and ``{name}_val`` with Detectron2's catalogs, lazily.

    Nothing is generated here: loading a split from ``DatasetCatalog`` or reading its
    ``MetadataCatalog`` ``json_file`` generates it if it is missing or was generated with other
    parameters. Registering again with the same arguments is a no-op.

    Args:
        root: dataset folder; ``None`` means :func:`default_root` of ``name``, resolved against
            the working directory now.
        name: prefix of the two dataset names.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: side of the square images, pixels.
        seed: base random seed.

    Returns:
        ``(f"{name}_train", f"{name}_val")``.

    Raises:
        ValueError: if a name is already registered with other parameters or by other code.
    """
    for split, num_images in (("train", num_train), ("val", num_val)):
        _check_args(split, num_images, image_size, seed)
    config = {
        "root": os.path.abspath(default_root(name) if root is None else root),
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
    }
    splits = {f"{name}_train": "train", f"{name}_val": "val"}
    todo = []
    for dataset_name, split in splits.items():
        if dataset_name not in DatasetCatalog:
            todo.append((dataset_name, split))
            continue
        meta = MetadataCatalog.get(dataset_name)
        old = meta.shapes_config if isinstance(meta, _ShapesMetadata) else None
        if old is None:
            raise ValueError(f"Dataset '{dataset_name}' is already registered by other code")
        diff = [f"{k}={old[k]!r} (now {config[k]!r})" for k in config if old[k] != config[k]]
        if diff:
            raise ValueError(
                f"Dataset '{dataset_name}' is already registered with different parameters: "
                + ", ".join(diff)
            )
    for dataset_name, split in todo:
        DatasetCatalog.register(dataset_name, partial(_load_split, dataset_name))
        MetadataCatalog[dataset_name] = _ShapesMetadata(
            name=dataset_name,
            thing_classes=list(SHAPES_CLASSES),
            # Set up front: COCOEvaluator needs it even if the dataset was never loaded.
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
            image_root=str(_split_paths(Path(config["root"]) / split, split)[1]),
            evaluator_type="coco",
            shapes_config=config,
            shapes_split=split,
        )
    return tuple(splits)
