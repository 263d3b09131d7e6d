"""Predictions of a Detectron2 model for single images, with weights of any source, and the settings
for drawing them."""

from __future__ import annotations

import logging

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..checkpoint import BackbonesCheckpointer
from ..errors import check_choice

logger = logging.getLogger(__name__)


# Shorter side, in pixels, below which drawings are upscaled (labels have a minimum font size).
_MIN_DRAWN_SIZE = 512


def with_score_threshold(cfg: CfgNode, threshold: float) -> CfgNode:
    """A copy of ``cfg`` that keeps detections scoring at least ``threshold``, in every head
    Detectron2 has a test threshold for (R-CNN, RetinaNet, panoptic FPN)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold
    cfg.freeze()
    return cfg


def drawing_scale(image: np.ndarray) -> float:
    """How much to enlarge an image for drawing: to at least ``_MIN_DRAWN_SIZE`` pixels on its
    shorter side, so that class names and scores stay legible on small images."""
    return max(1.0, _MIN_DRAWN_SIZE / min(image.shape[:2]))


class Predictor:
    """Detectron2's ``DefaultPredictor`` with weights loaded by :class:`BackbonesCheckpointer`.

    The model is Detectron2's ``build_model(cfg)`` in eval mode; images are resized as in testing
    (``ResizeShortestEdge`` to ``INPUT.MIN_SIZE_TEST``, at most ``INPUT.MAX_SIZE_TEST``) and
    given to the model in ``INPUT.FORMAT``.
    """

    def __init__(self, cfg: CfgNode) -> None:
        check_choice("INPUT.FORMAT", cfg.INPUT.FORMAT, ("BGR", "RGB"))
        weights = cfg.MODEL.WEIGHTS
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if weights:
            BackbonesCheckpointer(self.model, cfg=self.cfg).load(weights)
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialised model")
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, image_rgb: np.ndarray) -> Instances:
        """Predictions for one uint8 RGB ``(H, W, 3)`` image, on the CPU, in its pixels."""
        image = image_rgb if self.input_format == "RGB" else image_rgb[:, :, ::-1]
        height, width = image.shape[:2]
        image = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
        outputs = self.model([{"image": tensor, "height": height, "width": width}])[0]
        return outputs["instances"].to("cpu")


def _num_classes(cfg: CfgNode) -> int:
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


def predictions_metadata(cfg: CfgNode) -> Metadata:
    """Metadata for drawing and for category ids: that of ``DATASETS.TEST[0]`` if it is
    registered (a COCO-format dataset without class names yet is loaded to get them), else empty.

    Class names that do not match the model's number of classes are left out (with a warning).
    """
    if not cfg.DATASETS.TEST or cfg.DATASETS.TEST[0] not in DatasetCatalog:
        return Metadata(name="")
    name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(name)
    if metadata.get("thing_classes") is None:
        try:
            DatasetCatalog.get(name)  # load_coco_json sets thing_classes and the id map
        except Exception as e:  # drawing without class names beats failing
            logger.warning("Could not load %s for its class names: %s", name, e)
    classes = metadata.get("thing_classes")
    if classes is not None and len(classes) != _num_classes(cfg):
        logger.warning(
            "%s has %d classes but the model predicts %d: drawing class ids, not names",
            name,
            len(classes),
            _num_classes(cfg),
        )
        return Metadata(name="")
    return metadata


def _score_threshold(cfg: CfgNode) -> float:
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.SCORE_THRESH_TEST
    return cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
