"""The architecture of a ResNet as one frozen record, :class:`ResNetSpec`: resolved once from the
caller's options, a weights file and the defaults, validated, and kept by the model it builds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import BackboneOptionError, check_choice
from ..specs import DEPTHS, STAGE_NAMES
from ..weights import Weights
from .blocks import BLOCK_TYPES, DEFORM_BLOCK_TYPES, STEM_TYPES, ResidualBlock
from .plugins import PluginSpec, plugin_specs, plugins_in_state

# Output strides (BACKBONES.OUTPUT_STRIDE) and the dilation of res2..res5 that gives each: the
# dilated stages keep their resolution (DeepLab; MMDetection's `strides`/`dilations`).
OUTPUT_STRIDES = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}


@dataclass(frozen=True)
class ResNetSpec:
    """What a ResNet is: the options that decide its tensors' shapes and its forward.

    Build options stay out (``norm``, ``out_features``, ``freeze_at``, ``memory_format``,
    ``zero_init_residual``, ``drop_path_rate``, ``grad_checkpointing``, ``weights``): they choose
    how the same network is initialised, trained or run, and one weights file serves any of them
    (an R-50 file fills a FrozenBN detector and a BN pretraining alike).

    Fields are :func:`~backbones.make_resnet`'s keywords, so ``make_resnet(**spec.as_dict())``
    rebuilds the network. On creation ``block_type`` and ``res2_out_channels`` left None take
    their defaults (the depth's block type, or bottleneck for ``stage_blocks``; the block type's
    res2 width), a depth left None with no ``stage_blocks`` is 50, and the whole is validated.

    Attributes:
        depth: a row of ``specs.DEPTHS``; None with ``stage_blocks``.
        stage_blocks: blocks of res2..res5 (a depth beyond the table); None with ``depth``.
        block_type: a key of ``BLOCK_TYPES``.
        in_channels: input image channels.
        num_groups, width_per_group: ResNeXt's groups and 3x3 width per group in res2.
        stem_type, stem_width, stem_out_channels: a key of ``STEM_TYPES``, the deep stem's inner
            width, the stem's output channels.
        res2_out_channels: doubled at each stage.
        stride_in_1x1: the stride in the first 1x1 (MSRA) rather than the 3x3 (torchvision).
        avg_down: ResNet-D's average-pool projection shortcuts.
        residual: False for the paper's plain net (no shortcuts).
        output_stride: 32, 16 (res5 dilated by 2) or 8 (res4 by 2, res5 by 4).
        deform_on_per_stage, deform_modulated, deform_num_groups: deformable 3x3 convs in
            res2..res5 (DCNv1, or DCNv2's modulated ones) and their offset groups.
        plugins: context blocks (:class:`~backbones.modeling.plugins.PluginSpec`; mappings with
            its keys are taken) placed by stage and position; () for none.
    """

    depth: int | None = None
    stage_blocks: tuple[int, ...] | None = None
    block_type: str | None = None
    in_channels: int = 3
    num_groups: int = 1
    width_per_group: int = 64
    stem_type: str = "basic"
    stem_width: int = 32
    stem_out_channels: int = 64
    res2_out_channels: int | None = None
    stride_in_1x1: bool = True  # as MSRA's weights, Detectron2's default
    avg_down: bool = False
    residual: bool = True
    output_stride: int = 32
    deform_on_per_stage: tuple[bool, ...] = (False, False, False, False)
    deform_modulated: bool = False
    deform_num_groups: int = 1
    plugins: tuple[PluginSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "plugins", plugin_specs(self.plugins))
        for name in ("stage_blocks", "deform_on_per_stage"):  # lists from configs and JSON
            value = getattr(self, name)
            if isinstance(value, Iterable) and not isinstance(value, (str, tuple)):
                object.__setattr__(self, name, tuple(value))
        if self.depth is None and self.stage_blocks is None:
            object.__setattr__(self, "depth", 50)
        object.__setattr__(self, "block_type", self._block_type())
        if self.res2_out_channels is None:
            width = BLOCK_TYPES[self.block_type].default_res2_out_channels
            object.__setattr__(self, "res2_out_channels", width)
        self.validate()

    def _block_type(self) -> str:
        """The block type, checked against ``depth`` / ``stage_blocks``."""
        if self.stage_blocks is not None:
            if self.depth is not None:
                raise BackboneOptionError(
                    "stage_blocks", self.stage_blocks, "None", f"depth={self.depth} is given too"
                )
            counts = self.stage_blocks
            if (
                not isinstance(counts, tuple)
                or len(counts) != 4
                or not all(_positive(n) for n in counts)
            ):
                raise BackboneOptionError(
                    "stage_blocks", counts, "four positive integers (res2, res3, res4, res5)"
                )
            kind = self.block_type or "bottleneck"
            check_choice("block_type", kind, BLOCK_TYPES)
            return kind
        check_choice("depth", self.depth, DEPTHS)
        row = DEPTHS[self.depth]
        if self.block_type is not None:
            check_choice(
                "block_type", self.block_type, (row.block,), f"depth {self.depth}'s blocks"
            )
        return row.block

    def validate(self) -> None:
        """Check every field, each error naming the option and the allowed values.

        Raises:
            BackboneOptionError: a value out of its choices, or an option the block type does
                not support (``num_groups`` without a grouped conv, dilation, ...).
        """
        self._block_type()
        check_choice("stem_type", self.stem_type, STEM_TYPES)
        for option in ("avg_down", "residual", "stride_in_1x1", "deform_modulated"):
            check_choice(option, getattr(self, option), (False, True))
        check_choice("output_stride", self.output_stride, OUTPUT_STRIDES)
        flags = self.deform_on_per_stage
        if len(flags) != 4 or not all(isinstance(f, bool) for f in flags):
            raise BackboneOptionError(
                "deform_on_per_stage", list(flags), "four booleans (res2, res3, res4, res5)"
            )
        if any(flags) and self.block_type not in DEFORM_BLOCK_TYPES:
            raise BackboneOptionError(
                "deform_on_per_stage",
                list(flags),
                "[False, False, False, False]",
                f"{self.block_type} blocks have no deformable variant",
            )
        why = f"{self.block_type} blocks"
        for block_class in set(self.block_classes):  # an option it lacks keeps its neutral value
            if not block_class.grouped:
                check_choice("num_groups", self.num_groups, (1,), f"{why} have no grouped conv")
            if not block_class.dilatable:
                check_choice("output_stride", self.output_stride, (32,), f"{why} have no dilation")
            if not block_class.avg_down_shortcut:
                check_choice(
                    "avg_down", self.avg_down, (False,), f"{why} have no avg-down shortcut"
                )
            if not block_class.optional_shortcut:
                check_choice("residual", self.residual, (True,), f"{why} keep their shortcut")
        for plugin in self.plugins:
            for stage in plugin.stages:
                block_class = self.block_classes[STAGE_NAMES.index(stage)]
                check_choice(
                    "plugins position",
                    plugin.position,
                    block_class.plugin_positions,
                    f"{block_class.__name__} in {stage} (a {plugin.type!r} plugin)",
                )
        for option in (
            "in_channels",
            "num_groups",
            "width_per_group",
            "stem_width",
            "stem_out_channels",
            "res2_out_channels",
            "deform_num_groups",
        ):
            if not _positive(getattr(self, option)):
                raise BackboneOptionError(option, getattr(self, option), "a positive integer")

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        """Blocks of res2..res5: ``stage_blocks``, or the depth's row of ``specs.DEPTHS``."""
        if self.stage_blocks is not None:
            return self.stage_blocks
        return DEPTHS[self.depth].blocks_per_stage

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of res2..res5 for ``output_stride``."""
        return OUTPUT_STRIDES[self.output_stride]

    @property
    def block_classes(self) -> tuple[type[ResidualBlock], ...]:
        """The block class of res2..res5: the deformable variant where ``deform_on_per_stage``
        asks for it."""
        return tuple(
            DEFORM_BLOCK_TYPES[self.block_type] if deform else BLOCK_TYPES[self.block_type]
            for deform in self.deform_on_per_stage
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (ints, strings, booleans, tuples, None; ``plugins`` as a
        tuple of dicts): what a weights file records, and ``make_resnet``'s keywords."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ResNetSpec:
        """The spec :meth:`as_dict` gave (lists for tuples are accepted, as JSON gives them).

        Raises:
            BackboneOptionError: a key that is not a field, or a value a field cannot take.
        """
        for key, value in fields.items():
            if key not in SPEC_FIELDS:
                raise BackboneOptionError(
                    key, value, ", ".join(SPEC_FIELDS), "not a ResNetSpec field"
                )
        return cls(**fields)

    @classmethod
    def from_weights(
        cls,
        weights: Weights | None = None,
        *,
        res5_dilation: int = 1,
        width: int | None = None,
        **options: Any,
    ) -> ResNetSpec:
        """The one resolution of a ResNet's architecture: each option as the caller gives it
        (None: not given), else what ``weights`` shows (its architecture, and the stride
        placement of its source), else the defaults.

        Args:
            weights: a file read with :func:`~backbones.read_weights`, or None.
            res5_dilation: Detectron2's ``MODEL.RESNETS.RES5_DILATION`` (1, or 2 for output
                stride 16); with an ``output_stride`` it must agree.
            width: the channels of a thinner (or wider) ResNet, 64 for the paper's: the stem's
                output, res2's (x4 for bottlenecks) and the bottleneck's inner width, scaled
                together (:func:`width_channels`); None keeps those options as given.
            **options: fields of :class:`ResNetSpec`.

        Raises:
            BackboneOptionError: a value not allowed, or a given depth that the file
                contradicts (naming both).
            TypeError: a name that is not a field.
        """
        for name in options:
            if name not in SPEC_FIELDS:
                raise TypeError(f"ResNetSpec.from_weights() got an unexpected keyword {name!r}")
        if width is not None:
            options.update(_width_options(width, options, weights))
        resolved = _resolve(options, weights)
        if resolved["stage_blocks"] is not None and options.get("depth") is None:
            resolved["depth"] = None  # the file's depth gives way to the caller's stage_blocks
        for name in NOT_FROM_WEIGHTS:
            if options.get(name) is not None:
                resolved[name] = options[name]
        resolved["output_stride"] = _output_stride(options.get("output_stride"), res5_dilation)
        try:
            return cls(**resolved)
        except BackboneOptionError as error:
            if error.option == "output_stride" and options.get("output_stride") is None:
                # The stride came from res5_dilation: name the option the caller gave.
                raise BackboneOptionError(
                    "res5_dilation", res5_dilation, "1", error.reason
                ) from None
            raise


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ResNetSpec))
# Architecture a weights file does not decide: Detectron2's DC5 and DCN models start from the
# plain ImageNet files. The other fields, and their defaults, are those a file decides when the
# caller leaves them None.
NOT_FROM_WEIGHTS = ("output_stride", "deform_on_per_stage", "deform_modulated", "deform_num_groups")
ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(ResNetSpec) if f.name not in NOT_FROM_WEIGHTS
}


WIDTH_OPTIONS = ("stem_out_channels", "res2_out_channels", "width_per_group")


def width_channels(width: int, block_type: str) -> dict[str, int]:
    """The channel options of a ResNet of ``width`` (64: the paper's): the stem's output
    ``width``, res2's ``width`` for basic blocks (x4 for bottlenecks: their expansion), the
    bottleneck's inner width (``width_per_group``) ``width``; doubled at each stage as always."""
    block = BLOCK_TYPES[block_type]
    channels = {
        "stem_out_channels": width,
        "res2_out_channels": width * (block.default_res2_out_channels // 64),
    }
    if block.bottleneck:  # a basic block has no inner width: width_per_group stays as it is
        channels["width_per_group"] = width
    return channels


def _width_options(
    width: Any, options: Mapping[str, Any], weights: Weights | None
) -> dict[str, int]:
    """:func:`width_channels` for the block type the other options (or the file) give.

    Raises:
        BackboneOptionError: a width that is not a positive integer, one given with a channel
            option it sets, or with ResNeXt's groups.
    """
    if not _positive(width):
        raise BackboneOptionError("width", width, "a positive integer (64: the paper's ResNet)")
    for name in WIDTH_OPTIONS:
        if options.get(name) is not None:
            raise BackboneOptionError(
                "width",
                width,
                "None",
                f"{name} is given too; width sets it ({', '.join(WIDTH_OPTIONS)})",
            )
    if options.get("num_groups") not in (None, 1):
        raise BackboneOptionError(
            "width", width, "None", "width scales the plain ResNet; a ResNeXt takes width_per_group"
        )
    architecture = weights.architecture if weights is not None else {}
    depth = options.get("depth") or architecture.get("depth")
    block_type = options.get("block_type") or architecture.get("block_type")
    if block_type is None:
        block_type = DEPTHS[depth].block if depth in DEPTHS else "bottleneck"
    check_choice("block_type", block_type, BLOCK_TYPES)
    return width_channels(width, block_type)


def _resolve(given: Mapping[str, Any], weights: Weights | None) -> dict[str, Any]:
    """Each field of ``ARCHITECTURE_DEFAULTS``: the caller's where given (not None), else what
    ``weights`` shows (its architecture, and the stride placement of its source), else the
    default.

    Raises:
        BackboneOptionError: a given depth that is not the file's.
    """
    from_file: dict[str, Any] = dict(weights.architecture) if weights is not None else {}
    if weights is not None and weights.input is not None:
        from_file["stride_in_1x1"] = weights.input.stride_in_1x1
    if weights is not None and "plugins" not in from_file:
        from_file["plugins"] = plugins_in_state(weights.resnet_state())  # SE-ResNets, GCNets
    depth = given.get("depth")
    if depth is not None and from_file.get("depth") not in (None, depth):
        raise BackboneOptionError(
            "depth",
            depth,
            str(from_file["depth"]),
            f"{weights.path} holds a ResNet-{from_file['depth']} "
            f"(blocks per stage {tuple(from_file['blocks_per_stage'])})",
        )
    return {
        name: given[name] if given.get(name) is not None else from_file.get(name, default)
        for name, default in ARCHITECTURE_DEFAULTS.items()
    }


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _output_stride(output_stride: int | None, res5_dilation: int) -> int:
    """``output_stride``, or the one ``res5_dilation`` gives; a contradiction is an error."""
    check_choice("res5_dilation", res5_dilation, (1, 2))
    if output_stride is None:
        return 16 if res5_dilation == 2 else 32
    check_choice("output_stride", output_stride, OUTPUT_STRIDES)
    dilation = OUTPUT_STRIDES[output_stride][3]
    if res5_dilation != 1 and res5_dilation != dilation:
        raise BackboneOptionError(
            "output_stride",
            output_stride,
            ", ".join(str(s) for s in OUTPUT_STRIDES if OUTPUT_STRIDES[s][3] in (1, res5_dilation)),
            f"res5_dilation={res5_dilation} (MODEL.RESNETS.RES5_DILATION) gives res5 another "
            f"dilation than output stride {output_stride} does ({dilation}); set one of them",
        )
    return output_stride
