"""Inference: a predictor for single images, the demo over image and video files (drawn
predictions and ``predictions.json``), and ground truth drawn next to predictions."""

from .demo import (
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    VIDEO_EXTENSIONS,
    DemoResult,
    InputFile,
    find_inputs,
    run_demo,
)
from .predictor import (
    Predictor,
    drawing_scale,
    predictions_metadata,
    with_score_threshold,
)
from .visualize import visualize_predictions

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "VIDEO_EXTENSIONS",
    "DemoResult",
    "InputFile",
    "Predictor",
    "drawing_scale",
    "find_inputs",
    "predictions_metadata",
    "run_demo",
    "visualize_predictions",
    "with_score_threshold",
]
