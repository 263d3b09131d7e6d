"""Config defaults for the ``backbones`` plugin: one node of its own, ``MODEL.BACKBONES``."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

MEMORY_FORMATS = ("channels_last", "contiguous")


def add_backbones_config(cfg: CN) -> CN:
    """Add the ``MODEL.BACKBONES`` node to ``cfg`` (in place; calling twice is harmless).

    ``MODEL.RESNETS.*`` and ``MODEL.FPN.*`` keep their Detectron2 meaning; only knobs that
    Detectron2 lacks live here.

    Returns:
        the same ``cfg``, for chaining.
    """
    if "BACKBONES" in cfg.MODEL:
        return cfg
    cfg.MODEL.BACKBONES = CN()
    # Memory format of the backbone's weights and activations. Options:
    #   "channels_last": NHWC, several times faster convolutions on CPU (oneDNN) and tensor cores;
    #   "contiguous": NCHW, Detectron2's default layout.
    # Outputs are numerically the same either way (to float rounding).
    cfg.MODEL.BACKBONES.MEMORY_FORMAT = "channels_last"
    # Zero-initialise the scale of the last norm layer in every residual block, so each block
    # starts as the identity (Goyal et al., 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
    # Helps training from scratch; no effect when weights are loaded. Options: True, False.
    cfg.MODEL.BACKBONES.ZERO_INIT_RESIDUAL = False
    return cfg
