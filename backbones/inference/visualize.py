"""Ground truth next to predictions for the first images of a dataset, drawn into PNG files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

logger = logging.getLogger(__name__)


def visualize_predictions(
    cfg: CfgNode,
    weights: str,
    dataset_name: str,
    output_dir: str | os.PathLike,
    num_images: int = 8,
    score_thresh: float = 0.5,
) -> list[Path]:
    """Draw ground truth (left) and predictions (right) for the first images of a dataset.

    Boxes, masks, class names and scores are drawn by Detectron2's ``Visualizer`` with the
    dataset's metadata; images smaller than 512 pixels are upscaled for legible labels.

    Args:
        cfg: model config; its ``MODEL.WEIGHTS`` is replaced by ``weights``.
        weights: checkpoint file.
        dataset_name: a dataset registered in ``DatasetCatalog``.
        output_dir: folder for ``<image file stem>.png`` (created if needed).
        num_images: how many images, from the start of the dataset.
        score_thresh: smallest score of a drawn prediction.

    Returns:
        the written files.
    """
    # inference builds its models with this module's Trainer: imported here, not at the top.
    from ..inference import Predictor, drawing_scale, with_score_threshold

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    predictor = Predictor(with_score_threshold(cfg, score_thresh))
    metadata = MetadataCatalog.get(dataset_name)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    written = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image_rgb = read_image(record["file_name"], format="RGB")
        instances = predictor.instances(image_rgb)
        scale = drawing_scale(image_rgb)
        gt = Visualizer(image_rgb, metadata, scale=scale).draw_dataset_dict(record).get_image()
        pred = Visualizer(image_rgb, metadata, scale=scale)
        pred = pred.draw_instance_predictions(instances).get_image()
        gap = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        path = output_dir / f"{Path(record['file_name']).stem}.png"
        Image.fromarray(np.concatenate([gt, gap, pred], axis=1)).save(path)
        written.append(path)
    logger.info("Wrote %d visualisations of %s into %s", len(written), dataset_name, output_dir)
    return written
