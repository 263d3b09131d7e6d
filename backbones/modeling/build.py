"""Registry glue: the only code that reads a config. Registers the builders into Detectron2.

Registered names (``MODEL.BACKBONE.NAME``), prefixed so they never clash with Detectron2's own:
``backbones_build_resnet_backbone``, ``backbones_build_resnet_fpn_backbone`` and
``backbones_build_retinanet_resnet_fpn_backbone``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY

from ..errors import BackboneOptionError, check_choice
from .blocks import BLOCK_TYPES
from .constructors import build_resnet, warn_untrained
from .fpn import FPN, build_fpn
from .resnet import ResNet
from .spec import ResNetSpec

# Constructor argument -> the config key it comes from, to name the key in errors.
CFG_KEYS = {
    "depth": "MODEL.RESNETS.DEPTH",
    "num_groups": "MODEL.RESNETS.NUM_GROUPS",
    "width_per_group": "MODEL.RESNETS.WIDTH_PER_GROUP",
    "stem_out_channels": "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "res2_out_channels": "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
    "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
    "norm": "MODEL.RESNETS.NORM",
    "out_features": "MODEL.RESNETS.OUT_FEATURES",
    "freeze_at": "MODEL.BACKBONE.FREEZE_AT",
    "memory_format": "BACKBONES.MEMORY_FORMAT",
    "zero_init_residual": "BACKBONES.ZERO_INIT_RESIDUAL",
    "stem_type": "BACKBONES.STEM_TYPE",
    "stem_width": "BACKBONES.STEM_WIDTH",
    "avg_down": "BACKBONES.AVG_DOWN",
    "residual": "BACKBONES.RESIDUAL",
    "output_stride": "BACKBONES.OUTPUT_STRIDE",
    "drop_path_rate": "BACKBONES.DROP_PATH_RATE",
    "grad_checkpointing": "BACKBONES.GRAD_CHECKPOINTING",
    "stage_blocks": "BACKBONES.STAGE_BLOCKS",
    "block_type": "BACKBONES.BLOCK_TYPE",
    "deform_on_per_stage": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
    "deform_modulated": "MODEL.RESNETS.DEFORM_MODULATED",
    "deform_num_groups": "MODEL.RESNETS.DEFORM_NUM_GROUPS",
    "plugins": "BACKBONES.PLUGINS",
    "in_features": "MODEL.FPN.IN_FEATURES",
    "out_channels": "MODEL.FPN.OUT_CHANNELS",
    "fpn_norm": "MODEL.FPN.NORM",
    "fuse_type": "MODEL.FPN.FUSE_TYPE",
}


def build_resnet_from_cfg(
    cfg: CfgNode, input_shape: ShapeSpec, *, out_features: Sequence[str] | None = None
) -> ResNet:
    """The ResNet that ``cfg`` asks for (``MODEL.RESNETS.*`` with Detectron2's meaning and rules,
    ``BACKBONES.*``), through the same :class:`ResNetSpec` and :func:`build_resnet` as
    :func:`make_resnet`; ``out_features`` replaces ``MODEL.RESNETS.OUT_FEATURES`` (an FPN's
    inputs). ``MODEL.WEIGHTS`` is loaded after building, by the checkpointer.

    Raises:
        BackboneOptionError: naming the config key at fault (:data:`CFG_KEYS`).
    """
    if "BACKBONES" not in cfg:
        raise KeyError(
            "cfg has no BACKBONES node: call backbones.add_backbones_config(cfg) before "
            "merging a config that uses the backbones_* builders"
        )
    r, ours = cfg.MODEL.RESNETS, cfg.BACKBONES
    if not cfg.MODEL.WEIGHTS:
        warn_untrained(r.NORM, cfg.MODEL.BACKBONE.FREEZE_AT, caller="cfg")
    stage_blocks = tuple(ours.STAGE_BLOCKS) or None
    with _cfg_keys():
        spec = ResNetSpec.from_weights(
            None,
            res5_dilation=r.RES5_DILATION,
            depth=None if stage_blocks else r.DEPTH,
            stage_blocks=stage_blocks,
            block_type=ours.BLOCK_TYPE if stage_blocks else None,
            in_channels=input_shape.channels,
            num_groups=r.NUM_GROUPS,
            width_per_group=r.WIDTH_PER_GROUP,
            stem_type=ours.STEM_TYPE,
            stem_width=ours.STEM_WIDTH,
            stem_out_channels=r.STEM_OUT_CHANNELS,
            res2_out_channels=r.RES2_OUT_CHANNELS,
            stride_in_1x1=r.STRIDE_IN_1X1,
            avg_down=ours.AVG_DOWN,
            residual=ours.RESIDUAL,
            output_stride=ours.OUTPUT_STRIDE or None,
            deform_on_per_stage=tuple(r.DEFORM_ON_PER_STAGE),
            deform_modulated=r.DEFORM_MODULATED,
            deform_num_groups=r.DEFORM_NUM_GROUPS,
            plugins=tuple(ours.PLUGINS),
        )
        required = BLOCK_TYPES[spec.block_type].config_res2_out_channels
        if required is not None:  # Detectron2's R18/R34 rule: the default 256 is a bottleneck's
            which = f"depth {spec.depth}" if spec.depth else f"block type {spec.block_type!r}"
            # A thinner or wider net on purpose (STEM_OUT_CHANNELS changed) may have res2 as
            # wide as its stem, as make_resnet(width=...) builds it.
            allowed = sorted({required, spec.stem_out_channels})
            check_choice("res2_out_channels", spec.res2_out_channels, allowed, which)
        return build_resnet(
            spec,
            norm=r.NORM,
            out_features=tuple(r.OUT_FEATURES if out_features is None else out_features),
            freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
            memory_format=ours.MEMORY_FORMAT,
            zero_init_residual=ours.ZERO_INIT_RESIDUAL,
            drop_path_rate=ours.DROP_PATH_RATE,
            grad_checkpointing=tuple(ours.GRAD_CHECKPOINTING),
        )


@contextlib.contextmanager
def _cfg_keys() -> Iterator[None]:
    """An option error raised inside, renamed to the config key the option comes from (a key
    inside a value keeps its name: ``plugins position`` -> ``BACKBONES.PLUGINS position``)."""
    try:
        yield
    except BackboneOptionError as error:
        option, _, inner = error.option.partition(" ")
        key = CFG_KEYS.get(option, option)
        raise error.renamed(f"{key} {inner}" if inner else key) from None


@BACKBONE_REGISTRY.register()
def backbones_build_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet from ``MODEL.RESNETS.*`` (Detectron2's meaning) and ``BACKBONES.*``."""
    return build_resnet_from_cfg(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def backbones_build_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN (P2-P6, P6 by max-pool) from ``MODEL.RESNETS.*`` and ``MODEL.FPN.*``."""
    return _fpn_backbone(cfg, input_shape, top_block="maxpool")


@BACKBONE_REGISTRY.register()
def backbones_build_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN for RetinaNet (P3-P7 with the zoo's ``MODEL.FPN.IN_FEATURES``: P6 and P7 by
    strided 3x3 convs, P6 from res5): Detectron2's ``build_retinanet_resnet_fpn_backbone``, from
    ``MODEL.RESNETS.*`` and ``MODEL.FPN.*``."""
    return _fpn_backbone(cfg, input_shape, top_block="p6p7")


def _fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec, *, top_block: str) -> FPN:
    """The FPN of ``MODEL.FPN.*`` with ``top_block`` over the ResNet of the config, whose
    outputs are the FPN's inputs."""
    f = cfg.MODEL.FPN
    bottom_up = build_resnet_from_cfg(cfg, input_shape, out_features=f.IN_FEATURES)
    with _cfg_keys():
        return build_fpn(bottom_up, f.IN_FEATURES, f.OUT_CHANNELS, f.NORM, f.FUSE_TYPE, top_block)
