"""Predictions of a Detectron2 model for single images (Detectron2's ``DefaultPredictor``), with
weights of any source, and the settings for drawing them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
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


class Predictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` with weights of any source, loaded by
    :class:`BackbonesCheckpointer`.

    ``predictor(image)`` works as ``DefaultPredictor``'s: a BGR ``(H, W, 3)`` image in, the
    model's output for it (``{"instances": Instances}``, on ``MODEL.DEVICE``) out; the image is
    resized as in testing (``ResizeShortestEdge`` to ``INPUT.MIN_SIZE_TEST``, at most
    ``INPUT.MAX_SIZE_TEST``) and given to the model in ``INPUT.FORMAT``. :meth:`instances` takes
    an RGB image and returns its instances on the CPU, as the demo draws them.
    """

    def __init__(self, cfg: CfgNode) -> None:
        check_choice("INPUT.FORMAT", cfg.INPUT.FORMAT, ("BGR", "RGB"))
        # Not DefaultPredictor.__init__: its DetectionCheckpointer reads Detectron2's formats
        # only and unpickles .pkl files with pickle (code may run), where BackbonesCheckpointer
        # reads every weight source (torchvision, timm, ...) without running code. The
        # attributes set are DefaultPredictor's.
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if cfg.MODEL.WEIGHTS:
            BackbonesCheckpointer(self.model, cfg=self.cfg).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialised model")
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT

    def model_input(self, image_bgr: np.ndarray) -> dict:
        """One image as the model takes it: resized as in testing, in ``INPUT.FORMAT``."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, original_image: np.ndarray) -> dict:
        """The model's output for one BGR image (DefaultPredictor's preprocessing, which
        :meth:`model_input` holds for one image and for batches)."""
        return self.batch([original_image])[0]

    def batch(self, images_bgr: Sequence[np.ndarray]) -> list[dict]:
        """The model's outputs for several BGR images in one forward, in their order.

        Equal to one image at a time (up to the float rounding of batched matrix products:
        scores within 1e-5, boxes within 1e-3 px in the tests) for images of one size (a video,
        a folder of one camera's pictures). Images of other sizes are padded to the largest in
        the batch, which can change the proposals near their bottom and right edges a little,
        so :func:`run_demo` batches images of one size together.
        """
        if not len(images_bgr):
            return []
        with torch.no_grad():
            return self.model([self.model_input(image) for image in images_bgr])

    def instances(self, image_rgb: np.ndarray) -> Instances:
        """Predictions for one uint8 RGB ``(H, W, 3)`` image, on the CPU, in its pixels."""
        return self(image_rgb[:, :, ::-1])["instances"].to("cpu")

    def instances_batch(self, images_rgb: Sequence[np.ndarray]) -> list[Instances]:
        """:meth:`instances` of several RGB images, in one forward (:meth:`batch`)."""
        outputs = self.batch([image[:, :, ::-1] for image in images_rgb])
        return [output["instances"].to("cpu") for output in outputs]


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
