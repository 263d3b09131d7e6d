"""The family from keyword options, without any config: :func:`make_stages` and :func:`make_resnet`.

Every option is checked here, once, with an error naming it and the allowed values; the registered
builders (``build.py``) translate config keys to these keywords and rename the option in errors.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

from torch import nn

from ..errors import BackboneOptionError, check_choice
from ..specs import DEPTHS
from ..weights import Weights, architecture_options, load_weights, read_weights
from .blocks import BLOCK_TYPES, DEFORM_BLOCK_TYPES, STEM_TYPES, ResidualBlock
from .layers import NORMS, Norm
from .resnet import STAGE_NAMES, ResNet

# make_resnet's architecture options that a weights file decides when the caller passes None,
# and their values without weights (Detectron2's defaults; stride in the 1x1 as for MSRA weights).
ARCHITECTURE_DEFAULTS: dict[str, Any] = dict(
    depth=50,
    stage_blocks=None,  # blocks per stage instead of a depth of the table
    block_type=None,  # with stage_blocks: "bottleneck" unless given
    in_channels=3,
    num_groups=1,
    width_per_group=64,
    stem_type="basic",
    stem_width=32,
    stem_out_channels=64,
    res2_out_channels=None,  # 64 for basic blocks, 256 for bottlenecks
    stride_in_1x1=True,
    avg_down=False,
    residual=True,
)
# Output strides (BACKBONES.OUTPUT_STRIDE) and the dilation of res2..res5 that gives each: the
# dilated stages keep their resolution (DeepLab; MMDetection's `strides`/`dilations`).
OUTPUT_STRIDES = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}
# Warned by make_resnet; the registered builders, which load MODEL.WEIGHTS after building, warn
# with config keys instead.
UNTRAINED_FROZEN_BN = "norm='FrozenBN' with no weights"


def make_stages(
    block_class: type[ResidualBlock] | Sequence[type[ResidualBlock]],
    blocks_per_stage: Sequence[int],
    *,
    stem_out_channels: int,
    res2_out_channels: int,
    num_groups: int,
    width_per_group: int,
    stride_in_1x1: bool,
    norm: Norm,
    res5_dilation: int = 1,
    dilations: Sequence[int] | None = None,
    avg_down: bool = False,
    residual: bool = True,
    drop_path_rate: float = 0.0,
    block_options: Sequence[Mapping[str, Any]] | None = None,
) -> list[list[ResidualBlock]]:
    """The blocks of res2..res5 (widths double at every stage), each from
    ``block_class.from_stage`` (Detectron2's ``ResNet.make_stage`` takes a block class too).

    Args:
        block_class: one block type for every stage, or one per stage.
        dilations: of each stage (a dilated stage keeps its input's resolution); default
            ``(1, 1, 1, res5_dilation)``.
        drop_path_rate: stochastic depth rate of the last block; block ``i`` of ``n`` gets
            ``rate * i / (n - 1)`` (Huang et al., 2016; timm's schedule).
        block_options: extra keywords of each stage's ``from_stage`` (e.g. the deformable
            block's ``modulated``).
        (the rest: as in :func:`make_resnet`)
    """
    num_stages = len(blocks_per_stage)
    classes = [block_class] * num_stages if isinstance(block_class, type) else list(block_class)
    dilations = list(dilations or (1, 1, 1, res5_dilation))
    block_options = list(block_options or [{}] * num_stages)
    total = sum(blocks_per_stage)
    in_channels, out_channels = stem_out_channels, res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    stages, index = [], 0
    for stage, num_blocks in enumerate(blocks_per_stage):
        # A dilated stage replaces its stride (R-FCN / Deformable ConvNets' res5 dilation).
        first_stride = 1 if stage == 0 or dilations[stage] > 1 else 2
        blocks: list[ResidualBlock] = []
        for block_index in range(num_blocks):
            block = classes[stage].from_stage(
                in_channels,
                out_channels,
                stride=first_stride if block_index == 0 else 1,
                dilation=dilations[stage],
                bottleneck_channels=bottleneck_channels,
                num_groups=num_groups,
                stride_in_1x1=stride_in_1x1,
                norm=norm,
                avg_down=avg_down,
                residual=residual,
                **block_options[stage],
            )
            block.drop_path = drop_path_rate * index / max(total - 1, 1)
            blocks.append(block)
            in_channels = out_channels
            index += 1
        stages.append(blocks)
        out_channels *= 2
        bottleneck_channels *= 2
    return stages


def make_resnet(
    depth: int | None = None,
    *,
    stage_blocks: Sequence[int] | None = None,
    block_type: str | None = None,
    in_channels: int | None = None,
    num_groups: int | None = None,
    width_per_group: int | None = None,
    stem_type: str | None = None,
    stem_width: int | None = None,
    stem_out_channels: int | None = None,
    res2_out_channels: int | None = None,
    stride_in_1x1: bool | None = None,
    res5_dilation: int = 1,
    output_stride: int | None = None,
    norm: Norm = "FrozenBN",
    out_features: Sequence[str] = STAGE_NAMES,
    freeze_at: int = 0,
    memory_format: str = "channels_last",
    zero_init_residual: bool = False,
    avg_down: bool | None = None,
    residual: bool | None = None,
    drop_path_rate: float = 0.0,
    grad_checkpointing: bool | Sequence[str] = False,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    weights: str | os.PathLike | Weights | None = None,
) -> ResNet:
    """Build a ResNet / ResNeXt of the given depth without any config, optionally with weights.

    The architecture options left at None take the values that ``weights`` shows (depth or
    blocks per stage, widths, groups, deep stem, avg-down, shortcuts; the stride placement of its
    source: in the 3x3 for torchvision and timm, in the 1x1 for MSRA), and otherwise the
    defaults in :data:`ARCHITECTURE_DEFAULTS` (Detectron2's).

    Args:
        depth: one of ``specs.DEPTHS`` (18, 34: basic blocks; 26, 50, 101, 152, 200: bottleneck).
        stage_blocks: blocks of res2..res5, e.g. ``(2, 3, 4, 2)``, instead of ``depth``, for
            depth ablations beyond the table.
        block_type: ``"basic"`` or ``"bottleneck"`` (``blocks.BLOCK_TYPES``): the block of
            ``stage_blocks`` (default bottleneck); with ``depth``, it must be the depth's.
        in_channels: input image channels.
        num_groups, width_per_group: ResNeXt's cardinality and the 3x3 width per group in res2
            (32 and 4 for X-50-32x4d); 1 and 64 is the plain ResNet. Bottleneck depths only.
        stem_type: ``"basic"`` (one 7x7 conv, Detectron2 / torchvision) or ``"deep"`` (three
            3x3 convs ``stem.conv1..3``, ResNet-C/D, timm's ``stem_type="deep"``).
        stem_width: channels of the deep stem's first two convs (32 in timm's ResNet-D).
        stem_out_channels: channels of the stem.
        res2_out_channels: output channels of res2 (doubled at each stage); default 64 for basic
            blocks, 256 for bottlenecks.
        stride_in_1x1: put the stage stride in the first 1x1 conv (MSRA/Caffe2 weights) rather
            than in the 3x3 (torchvision weights). Bottleneck depths only.
        res5_dilation: 1, or 2 for a stride-16 res5 with dilated 3x3 convs (Detectron2's DC5).
        output_stride: 32, 16 (res5 dilated by 2) or 8 (res4 by 2, res5 by 4); None: from
            ``res5_dilation``. A ``res5_dilation`` that contradicts it is an error.
        norm: one of ``blocks.NORMS`` or a callable ``channels -> nn.Module``.
        out_features: features to return, among ``stem``, ``res2``..``res5``.
        freeze_at: number of leading stages to freeze (stem = 1).
        memory_format: ``"channels_last"`` (faster) or ``"contiguous"``.
        zero_init_residual: start each block as identity by zeroing its last norm's scale
            (a trainable norm is needed: not FrozenBN).
        avg_down: ResNet-D's projection shortcuts: a 2x2 average pool, then a stride-1 1x1 conv
            (timm's ``avg_down=True``); the keys stay ``resN.0.shortcut.*``.
        residual: False builds the paper's plain network (Sec. 4.1, "Plain Networks"): the same
            convs and norms, with no shortcut at all (no ``shortcut`` parameters exist).
        drop_path_rate: stochastic depth (Huang et al., 2016): the last block's residual branch
            is dropped at this rate in training, earlier blocks at linearly smaller rates.
        grad_checkpointing: recompute the blocks of these stages (True: all) in the backward
            pass instead of keeping their activations: less memory, the same gradients.
        deform_on_per_stage: deformable 3x3 convs in res2..res5 (bottleneck only; Detectron2's
            ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``).
        deform_modulated: DCNv2's modulated deformable convs instead of DCNv1's.
        deform_num_groups: deformable groups (offset sets) of each deformable conv.
        weights: a weights file of any source in :mod:`backbones.weights` (torchvision, timm,
            Detectron2, MSRA/FAIR Caffe2), or a :class:`~backbones.weights.Weights` already read
            (``read_weights(path, trusted=True)`` for a pickle that needs more than arrays).
            Loaded with a report in the log; a shape mismatch raises.

    Returns:
        a :class:`ResNet`; its ``output_shape()`` gives channels and strides per feature.
    """
    if weights is not None and not isinstance(weights, Weights):
        weights = read_weights(weights)
    given = dict(
        depth=depth,
        stage_blocks=stage_blocks,
        block_type=block_type,
        in_channels=in_channels,
        num_groups=num_groups,
        width_per_group=width_per_group,
        stem_type=stem_type,
        stem_width=stem_width,
        stem_out_channels=stem_out_channels,
        res2_out_channels=res2_out_channels,
        stride_in_1x1=stride_in_1x1,
        avg_down=avg_down,
        residual=residual,
    )
    arch = architecture_options(given, ARCHITECTURE_DEFAULTS, weights)
    kind, blocks_per_stage = _blocks(depth, arch)
    block_class = BLOCK_TYPES[kind]
    why = f"{kind} blocks"
    if isinstance(norm, str):
        check_choice("norm", norm, NORMS)
    check_choice("stem_type", arch["stem_type"], STEM_TYPES)
    for option in ("avg_down", "residual", "stride_in_1x1"):
        check_choice(option, arch[option], (False, True))
    if not block_class.grouped:
        check_choice("num_groups", arch["num_groups"], (1,), f"{why} have no grouped conv")
    dilations = _dilations(output_stride, res5_dilation)
    if not block_class.dilatable:
        check_choice("res5_dilation", res5_dilation, (1,), f"{why} have no dilation")
        check_choice("output_stride", output_stride, (None, 32), f"{why} have no dilation")
    res2_out_channels = arch["res2_out_channels"] or block_class.default_res2_out_channels
    for option, value in (
        ("num_groups", arch["num_groups"]),
        ("width_per_group", arch["width_per_group"]),
        ("stem_width", arch["stem_width"]),
        ("stem_out_channels", arch["stem_out_channels"]),
        ("res2_out_channels", res2_out_channels),
        ("deform_num_groups", deform_num_groups),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BackboneOptionError(option, value, "a positive integer")
    _check_training_options(
        arch["residual"], norm, zero_init_residual, drop_path_rate, weights is None
    )
    classes, block_options = _deformable(kind, deform_on_per_stage, deform_modulated)
    for options in block_options:
        if options:
            options["deform_num_groups"] = deform_num_groups
    stem = STEM_TYPES[arch["stem_type"]].from_options(
        arch["in_channels"], arch["stem_out_channels"], width=arch["stem_width"], norm=norm
    )
    stages = make_stages(
        classes,
        blocks_per_stage,
        stem_out_channels=arch["stem_out_channels"],
        res2_out_channels=res2_out_channels,
        num_groups=arch["num_groups"],
        width_per_group=arch["width_per_group"],
        stride_in_1x1=arch["stride_in_1x1"],
        dilations=dilations,
        norm=norm,
        avg_down=arch["avg_down"],
        residual=arch["residual"],
        drop_path_rate=drop_path_rate,
        block_options=block_options,
    )
    if zero_init_residual:
        for block in (block for stage in stages for block in stage):
            if not isinstance(getattr(block.last_norm, "weight", None), nn.Parameter):
                raise BackboneOptionError(
                    "zero_init_residual", True, "False", f"norm {norm!r} has no trainable scale"
                )
            nn.init.zeros_(block.last_norm.weight)
    model = ResNet(
        stem,
        stages,
        out_features=out_features,
        freeze_at=freeze_at,
        memory_format=memory_format,
        grad_checkpointing=grad_checkpointing,
    )
    if weights is not None:
        load_weights(model, weights)
    return model


def _blocks(depth: int | None, arch: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
    """The block type and the blocks per stage: from ``stage_blocks`` where given (by the
    caller or the weights file), else from the depth's row of ``specs.DEPTHS``."""
    stage_blocks, block_type = arch["stage_blocks"], arch["block_type"]
    if stage_blocks is not None:
        if depth is not None:
            raise BackboneOptionError(
                "stage_blocks", tuple(stage_blocks), "None", f"depth={depth} is given too"
            )
        counts = tuple(stage_blocks)
        if len(counts) != 4 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts
        ):
            raise BackboneOptionError(
                "stage_blocks", stage_blocks, "four positive integers (res2, res3, res4, res5)"
            )
        kind = block_type or "bottleneck"
        check_choice("block_type", kind, BLOCK_TYPES)
        return kind, counts
    check_choice("depth", arch["depth"], DEPTHS)
    spec = DEPTHS[arch["depth"]]
    if block_type is not None:
        check_choice("block_type", block_type, (spec.block,), f"depth {arch['depth']}'s blocks")
    return spec.block, spec.blocks_per_stage


def _dilations(output_stride: int | None, res5_dilation: int) -> tuple[int, ...]:
    check_choice("res5_dilation", res5_dilation, (1, 2))
    if output_stride is None:
        return (1, 1, 1, res5_dilation)
    check_choice("output_stride", output_stride, OUTPUT_STRIDES)
    dilations = OUTPUT_STRIDES[output_stride]
    if res5_dilation != 1 and res5_dilation != dilations[3]:
        raise BackboneOptionError(
            "output_stride",
            output_stride,
            ", ".join(str(s) for s in OUTPUT_STRIDES if OUTPUT_STRIDES[s][3] in (1, res5_dilation)),
            f"res5_dilation={res5_dilation} (MODEL.RESNETS.RES5_DILATION) gives res5 another "
            f"dilation than output stride {output_stride} does ({dilations[3]}); set one of them",
        )
    return dilations


def _check_training_options(
    residual: bool, norm: Norm, zero_init_residual: bool, drop_path_rate: float, no_weights: bool
) -> None:
    if not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
        raise BackboneOptionError("drop_path_rate", drop_path_rate, "a number in [0, 1)")
    if not residual and drop_path_rate > 0:
        raise BackboneOptionError(
            "drop_path_rate", drop_path_rate, "0", "a plain net (residual=False) has no shortcut"
        )
    if zero_init_residual and not residual:
        raise BackboneOptionError(
            "zero_init_residual",
            zero_init_residual,
            "False",
            "a plain net (residual=False) has no shortcut: zeroing a block's last scale would "
            "cut the signal",
        )
    if zero_init_residual and norm == "FrozenBN":
        raise BackboneOptionError(
            "zero_init_residual",
            zero_init_residual,
            "False",
            "FrozenBN's scale is a fixed buffer; use a trainable norm (BN, SyncBN, GN)",
        )
    if norm == "FrozenBN" and no_weights:
        warnings.warn(
            f"make_resnet: {UNTRAINED_FROZEN_BN}: frozen batch norm keeps its initial statistics "
            "(mean 0, variance 1) and training from scratch diverges; pass weights=, or use "
            "norm='BN', 'SyncBN' or 'GN' to train from scratch",
            stacklevel=3,
        )


def _deformable(
    kind: str, deform_on_per_stage: Sequence[bool], modulated: bool
) -> tuple[list[type[ResidualBlock]], list[dict[str, Any]]]:
    """The block class of each stage and its extra options: the deformable variant of ``kind``
    where ``deform_on_per_stage`` asks for it."""
    flags = list(deform_on_per_stage)
    if len(flags) != 4 or not all(isinstance(f, bool) for f in flags):
        raise BackboneOptionError(
            "deform_on_per_stage", flags, "four booleans (res2, res3, res4, res5)"
        )
    check_choice("deform_modulated", modulated, (False, True))
    if any(flags) and kind not in DEFORM_BLOCK_TYPES:
        raise BackboneOptionError(
            "deform_on_per_stage",
            flags,
            "[False, False, False, False]",
            f"{kind} blocks have no deformable variant",
        )
    classes = [DEFORM_BLOCK_TYPES[kind] if f else BLOCK_TYPES[kind] for f in flags]
    options = [{"modulated": modulated} if f else {} for f in flags]
    return classes, options
