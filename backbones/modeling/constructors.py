"""The family from keyword options, without any config: :func:`make_resnet` over
:func:`build_resnet` (a :class:`ResNetSpec` and the build options) and :func:`make_stages`.

Every option is checked once, with an error naming it and the allowed values (the architecture by
``ResNetSpec.validate``, the build options here); the registered builders (``build.py``) give
config values to the same functions and rename the option in errors.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

from torch import nn

from ..errors import BackboneOptionError, check_choice
from ..weights import Weights, load_weights, read_weights
from .blocks import STEM_TYPES, ResidualBlock
from .layers import NORMS, Norm
from .plugins import PluginSpec
from .resnet import STAGE_NAMES, ResNet
from .spec import SPEC_FIELDS, ResNetSpec


def warn_untrained(norm: Norm, freeze_at: int, *, caller: str) -> None:
    """The warning for a model built without weights to load, in the caller's words.

    Args:
        norm, freeze_at: the build options.
        caller: ``"make_resnet"`` or ``"make_resnet_fpn"`` (the warning names its keywords), or
            ``"cfg"`` for the registered builders, which load ``MODEL.WEIGHTS`` after building
            (the warning names config keys, and a ``FREEZE_AT`` with no weights as well).
    """
    if norm == "FrozenBN" and caller == "cfg":
        message = (
            "MODEL.RESNETS.NORM='FrozenBN' with no MODEL.WEIGHTS: frozen batch norm keeps its "
            "random initial statistics and training from scratch diverges; use NORM 'BN', "
            "'SyncBN' or 'GN' (and MODEL.BACKBONE.FREEZE_AT 0), or load pretrained weights"
        )
    elif norm == "FrozenBN":
        message = (
            f"{caller}: norm='FrozenBN' with no weights: frozen batch norm keeps its initial "
            "statistics (mean 0, variance 1) and training from scratch diverges; pass weights=, "
            "or use norm='BN', 'SyncBN' or 'GN' to train from scratch"
        )
    elif freeze_at > 0 and caller == "cfg":
        message = (
            f"MODEL.BACKBONE.FREEZE_AT={freeze_at} with no MODEL.WEIGHTS freezes randomly "
            "initialised layers; set it to 0 to train from scratch"
        )
    else:
        return
    warnings.warn(message, stacklevel=3)


def make_stages(
    spec: ResNetSpec, *, norm: Norm, drop_path_rate: float = 0.0
) -> list[list[ResidualBlock]]:
    """The blocks of res2..res5 of ``spec`` (widths double at every stage), each block given
    the stage's options its class declares by its flags (``ResidualBlock.stage_keywords``).

    Args:
        spec: the architecture.
        norm: a norm name or ``channels -> nn.Module``.
        drop_path_rate: stochastic depth rate of the last block; block ``i`` of ``n`` gets
            ``rate * i / (n - 1)`` (Huang et al., 2016; timm's schedule).
    """
    total = sum(spec.blocks_per_stage)
    in_channels, out_channels = spec.stem_out_channels, spec.res2_out_channels
    bottleneck_channels = spec.num_groups * spec.width_per_group
    stages, index = [], 0
    for stage, num_blocks in enumerate(spec.blocks_per_stage):
        block_class, dilation = spec.block_classes[stage], spec.dilations[stage]
        keywords = block_class.stage_keywords(
            num_groups=spec.num_groups,
            dilation=dilation,
            stride_in_1x1=spec.stride_in_1x1,
            bottleneck_channels=bottleneck_channels,
            avg_down=spec.avg_down,
            residual=spec.residual,
        )
        if spec.deform_on_per_stage[stage]:
            keywords.update(
                modulated=spec.deform_modulated, deform_num_groups=spec.deform_num_groups
            )
        plugins = [p for p in spec.plugins if STAGE_NAMES[stage] in p.stages]
        # A dilated stage replaces its stride (R-FCN / Deformable ConvNets' res5 dilation).
        first_stride = 1 if stage == 0 or dilation > 1 else 2
        blocks: list[ResidualBlock] = []
        for block_index in range(num_blocks):
            stride = first_stride if block_index == 0 else 1
            block = block_class(in_channels, out_channels, stride=stride, norm=norm, **keywords)
            block.drop_path = drop_path_rate * index / max(total - 1, 1)
            block.add_plugins(plugins)
            blocks.append(block)
            in_channels = out_channels
            index += 1
        stages.append(blocks)
        out_channels *= 2
        bottleneck_channels *= 2
    return stages


def build_resnet(
    spec: ResNetSpec,
    *,
    norm: Norm = "FrozenBN",
    out_features: Sequence[str] = STAGE_NAMES,
    freeze_at: int = 0,
    memory_format: str = "channels_last",
    zero_init_residual: bool = False,
    drop_path_rate: float = 0.0,
    grad_checkpointing: bool | Sequence[str] = False,
) -> ResNet:
    """The :class:`ResNet` of ``spec``, with randomly initialised weights, keeping ``spec``.

    Args:
        spec: the architecture (:meth:`ResNetSpec.from_weights` resolves one).
        the rest: the build options, as in :func:`make_resnet`.
    """
    if isinstance(norm, str):
        check_choice("norm", norm, NORMS)
    _check_training_options(spec.residual, norm, zero_init_residual, drop_path_rate)
    _check_plugin_stages(spec, out_features)
    stem = STEM_TYPES[spec.stem_type].from_options(
        spec.in_channels, spec.stem_out_channels, width=spec.stem_width, norm=norm
    )
    stages = make_stages(spec, norm=norm, drop_path_rate=drop_path_rate)
    if zero_init_residual:
        for block in (block for stage in stages for block in stage):
            if not isinstance(getattr(block.last_norm, "weight", None), nn.Parameter):
                raise BackboneOptionError(
                    "zero_init_residual", True, "False", f"norm {norm!r} has no trainable scale"
                )
            nn.init.zeros_(block.last_norm.weight)
    return ResNet(
        stem,
        stages,
        out_features=out_features,
        freeze_at=freeze_at,
        memory_format=memory_format,
        grad_checkpointing=grad_checkpointing,
        spec=spec,
    )


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
    width: int | None = None,
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
    plugins: Sequence[PluginSpec | Mapping[str, Any]] | None = None,
    weights: str | os.PathLike | Weights | None = None,
) -> ResNet:
    """Build a ResNet / ResNeXt of the given depth without any config, optionally with weights.

    The architecture options left at None take the values that ``weights`` shows (depth or
    blocks per stage, widths, groups, deep stem, avg-down, shortcuts; the stride placement of its
    source: in the 3x3 for torchvision and timm, in the 1x1 for MSRA), and otherwise the
    defaults in :data:`ARCHITECTURE_DEFAULTS` (Detectron2's): :meth:`ResNetSpec.from_weights`,
    the one resolution, whose result the model keeps as ``model.spec``.

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
        width: a thinner or wider ResNet in one number, 64 being the paper's: the stem's output,
            res2's (x4 for bottlenecks) and the bottleneck's inner width, scaled together (e.g.
            16 for a quarter-width R-18 for CPU studies); not with the options it sets.
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
        plugins: context blocks by stage and position (:mod:`backbones.modeling.plugins`), e.g.
            ``[{"type": "gc", "stages": ("res3", "res4", "res5"), "position": "after_conv3",
            "ratio": 1 / 16}]``; types ``"se"``, ``"gc"``, ``"non_local"``. None: those the
            weights file holds (timm's SE-ResNets), else none.
        weights: a weights file of any source in :mod:`backbones.weights` (torchvision, timm,
            Detectron2, MSRA/FAIR Caffe2), or a :class:`~backbones.weights.Weights` already read
            (``read_weights(path, trusted=True)`` for a pickle that needs more than arrays).
            Loaded with a report in the log; a shape mismatch raises.

    Returns:
        a :class:`ResNet`; its ``output_shape()`` gives channels and strides per feature, its
        ``spec`` the architecture.
    """
    options = dict(locals())  # the arguments by name: no other local is defined yet
    if weights is not None and not isinstance(weights, Weights):
        weights = read_weights(weights)
    architecture = {name: options.pop(name) for name in SPEC_FIELDS}
    del options["weights"], options["res5_dilation"], options["width"]
    spec = ResNetSpec.from_weights(
        weights, res5_dilation=res5_dilation, width=width, **architecture
    )
    model = build_resnet(spec, **options)  # the build options: norm, out_features, ...
    if weights is None:
        warn_untrained(norm, freeze_at, caller="make_resnet")
    else:
        load_weights(model, weights)
    return model


def _check_plugin_stages(spec: ResNetSpec, out_features: Sequence[str]) -> None:
    """Refuse plugins in a stage that is not built (after the last of ``out_features``)."""
    built = [name for name in STAGE_NAMES if name in out_features]
    last = STAGE_NAMES.index(built[-1]) if built else -1
    for plugin in spec.plugins:
        for stage in plugin.stages:
            if STAGE_NAMES.index(stage) > last:
                raise BackboneOptionError(
                    "plugins stages",
                    list(plugin.stages),
                    ", ".join(STAGE_NAMES[: last + 1]) or "none",
                    f"{stage} is not built: out_features stop before it (a C4 detector runs "
                    f"res5 in roi_heads.res5, Detectron2's blocks, which take no plugins)",
                )


def _check_training_options(
    residual: bool, norm: Norm, zero_init_residual: bool, drop_path_rate: float
) -> None:
    if not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
        raise BackboneOptionError("drop_path_rate", drop_path_rate, "a number in [0, 1)")
    plain = "a plain net (residual=False) has no shortcut"
    if not residual and drop_path_rate > 0:
        raise BackboneOptionError("drop_path_rate", drop_path_rate, "0", plain)
    if zero_init_residual and not residual:
        why = f"{plain}: zeroing a block's last scale would cut the signal"
        raise BackboneOptionError("zero_init_residual", True, "False", why)
    if zero_init_residual and norm == "FrozenBN":
        why = "FrozenBN's scale is a fixed buffer; use a trainable norm (BN, SyncBN, GN)"
        raise BackboneOptionError("zero_init_residual", True, "False", why)
