"""RoI heads for fine-tuning self-supervised ResNets: the C4 head with a norm after res5 (He et
al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning", section 4.2).

Registered in Detectron2's ``ROI_HEADS_REGISTRY`` (``MODEL.ROI_HEADS.NAME``) as
``backbones_Res5ROIHeadsExtraNorm``.
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn


# The registry names a class by its ``__name__``; the package prefix (as the builders in build.py
# carry) keeps it apart from MoCo's own ``Res5ROIHeadsExtraNorm`` (its detection/train_net.py),
# so that both can be imported in one process and a config says which one it builds.
@ROI_HEADS_REGISTRY.register()
class backbones_Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Detectron2's ``Res5ROIHeads`` whose res5 ends with a norm layer of
    ``MODEL.RESNETS.NORM`` over its output (``res5.norm``, after blocks ``res5.0``-``res5.2``).

    MoCo's detection transfer (facebookresearch/moco, detection/train_net.py): features learnt
    without labels are distributed otherwise than supervised ones, so MoCo fine-tunes with batch
    norm trained (its "feature normalization") and adds this norm after the res5 stage, on the
    per-RoI features that the box and mask predictors take. The parameter names equal MoCo's
    (``roi_heads.res5.norm.*``), so detectors fine-tuned by its code load strictly; ImageNet
    weights fill ``res5.0``-``res5.2`` and leave the norm at its initialisation (weight 1, bias 0).
    """

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        """Detectron2's arguments of ``Res5ROIHeads`` with a norm appended to its res5 (an
        ``nn.Sequential`` of 3 bottleneck blocks), through ``from_config``, the public hook of
        Detectron2's ``@configurable`` (its ``_build_res5_block`` is private: Detectron2 warns
        that it may change)."""
        ret = super().from_config(cfg, input_shape)
        res5: nn.Sequential = ret["res5"]
        # Detectron2's get_norm, as res5's blocks were built with (MoCo's extra norm is too).
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, res5[-1].out_channels))
        return ret
