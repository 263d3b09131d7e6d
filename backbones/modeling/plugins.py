"""Context blocks placed inside residual blocks by stage and position: squeeze-excitation (Hu et
al., 2018, "Squeeze-and-Excitation Networks"), global context (Cao et al., 2019, "GCNet") and
non-local (Wang et al., 2018, "Non-local Neural Networks"), as MMDetection's ResNet ``plugins``.

A plugin type is one :class:`Plugin` subclass plus one entry in :data:`PLUGIN_TYPES`; where it
goes is a :class:`PluginSpec` (``ResNetSpec.plugins``, ``BACKBONES.PLUGINS``). A block type runs
the positions it lists in ``ResidualBlock.plugin_positions``; the plugins of a position are a
``nn.Sequential`` named by it, each plugin by its type (``res4.0.after_conv3.gc.conv_mask``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BackboneOptionError, check_choice
from ..specs import PLUGIN_POSITIONS, STAGE_NAMES


class Plugin(nn.Module):
    """A module ``(N, C, H, W) -> (N, C, H, W)`` inserted into a residual block.

    Class attributes read by :class:`PluginSpec` and the docs:

    * ``default_ratio``: the inner width as a fraction of ``channels`` when none is given;
    * ``identity_at_init``: True where the paper zero-initialises the last layer so that the
      block computes what it computed without the plugin (a pretrained net starts unchanged);
    * ``inner_weight``: the name of a 1x1 conv weight of shape ``(inner, channels, 1, 1)``, from
      which :func:`plugins_in_state` reads the ratio of a weights file's plugins ("": none).
    """

    default_ratio: ClassVar[float] = 1 / 16
    identity_at_init: ClassVar[bool] = False
    inner_weight: ClassVar[str] = ""

    def __init__(self, channels: int, *, ratio: float):
        super().__init__()
        self.channels = channels

    @classmethod
    def inner_channels(cls, channels: int, ratio: float) -> int:
        """The width of the plugin's bottleneck for ``channels`` input channels."""
        return max(1, int(channels * ratio))


class SqueezeExcitation(Plugin):
    """Squeeze-and-excitation (Hu et al., 2018): the channels rescaled by a gate computed from
    their global average, ``x * sigmoid(fc2(relu(fc1(mean(x)))))``.

    Names and widths as timm's ``SEModule`` (``fc1``, ``fc2``: 1x1 convs with bias; the inner
    width ``channels * ratio`` rounded to a multiple of 8, at least 8), so timm's SE-ResNets
    load. Not an identity at initialisation (the gate starts near 0.5): the SE paper trains from
    scratch and does not zero-initialise it.
    """

    inner_weight = "fc1.weight"

    def __init__(self, channels: int, *, ratio: float = 1 / 16):
        super().__init__(channels, ratio=ratio)
        inner = self.inner_channels(channels, ratio)
        self.fc1 = nn.Conv2d(channels, inner, 1)
        self.fc2 = nn.Conv2d(inner, channels, 1)

    @classmethod
    def inner_channels(cls, channels: int, ratio: float) -> int:
        # timm's make_divisible(channels * ratio, 8, round_limit=0): the nearest multiple of 8.
        return max(8, int(channels * ratio + 4) // 8 * 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(F.relu(self.fc1(scale)))
        return x * scale.sigmoid()


class GlobalContext(Plugin):
    """The global context block of GCNet (Cao et al., 2019): attention pooling over all positions
    (``conv_mask``, a softmax over H x W), a bottleneck transform (1x1 conv, LayerNorm, ReLU, 1x1
    conv) and a broadcast addition: ``x + transform(context(x))``.

    Names as MMDetection's ``ContextBlock`` with ``fusion_types=("channel_add",)``
    (``conv_mask``, ``channel_add_conv.0/1/3``), inner width ``int(channels * ratio)``; the last
    conv is zero-initialised as in the paper, so the block starts as the identity.
    """

    identity_at_init = True
    inner_weight = "channel_add_conv.0.weight"

    def __init__(self, channels: int, *, ratio: float = 1 / 16):
        super().__init__(channels, ratio=ratio)
        inner = self.inner_channels(channels, ratio)
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(channels, inner, 1),
            nn.LayerNorm([inner, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, channels, 1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add_conv[3].weight)
        nn.init.zeros_(self.channel_add_conv[3].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        attention = self.conv_mask(x).flatten(1).softmax(dim=1)  # (N, HW)
        context = torch.matmul(x.flatten(2), attention.unsqueeze(2))  # (N, C, 1)
        return x + self.channel_add_conv(context.view(n, c, 1, 1))


class NonLocal(Plugin):
    """The embedded-Gaussian non-local block (Wang et al., 2018): every position attends to all
    others, ``x + conv_out(softmax(theta(x)^T phi(x) / sqrt(d)) g(x))``.

    Names as MMDetection's ``NonLocal2d`` layers (``g``, ``theta``, ``phi``, ``conv_out``; 1x1
    convs with bias), inner width ``int(channels * ratio)`` (default 1/2, the paper's), the
    scaled dot product of MMDetection's ``use_scale=True``. ``conv_out`` starts at zero (the
    paper zero-initialises the last scale), so the block starts as the identity. Its cost grows
    with ``(H W)^2``: a stage of low resolution (res4, res5) is the usual place.
    """

    default_ratio = 1 / 2
    identity_at_init = True
    inner_weight = "g.weight"

    def __init__(self, channels: int, *, ratio: float = 1 / 2):
        super().__init__(channels, ratio=ratio)
        inner = self.inner_channels(channels, ratio)
        self.inner = inner
        self.g = nn.Conv2d(channels, inner, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.conv_out = nn.Conv2d(inner, channels, 1)
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        theta = self.theta(x).flatten(2)  # (N, d, HW)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        attention = torch.matmul(theta.transpose(1, 2), phi) / math.sqrt(self.inner)
        attention = attention.softmax(dim=-1)  # (N, HW, HW): row p attends over positions q
        y = torch.matmul(g, attention.transpose(1, 2))  # (N, d, HW)
        return x + self.conv_out(y.view(n, self.inner, h, w))


# Plugin types by the name a PluginSpec (BACKBONES.PLUGINS' "type") gives.
PLUGIN_TYPES: dict[str, type[Plugin]] = {
    "se": SqueezeExcitation,
    "gc": GlobalContext,
    "non_local": NonLocal,
}

PLUGIN_KEYS = ("type", "stages", "position", "ratio")


@dataclass(frozen=True)
class PluginSpec:
    """Where a plugin goes: one plugin of ``type`` at ``position`` in every block of ``stages``.

    Attributes:
        type: a key of :data:`PLUGIN_TYPES` (``"se"``, ``"gc"``, ``"non_local"``).
        stages: stage names among ``res2``..``res5``.
        position: ``"after_conv1"``, ``"after_conv2"`` or ``"after_conv3"`` (``specs.
            PLUGIN_POSITIONS``; a basic block has no conv3).
        ratio: the inner width as a fraction of the channels there; None: the type's default
            (1/16 for se and gc, 1/2 for non_local).
    """

    type: str
    stages: tuple[str, ...]
    position: str = "after_conv3"
    ratio: float | None = None

    def __post_init__(self) -> None:
        check_choice("plugins type", self.type, PLUGIN_TYPES)
        check_choice("plugins position", self.position, PLUGIN_POSITIONS)
        stages = self.stages
        if isinstance(stages, str) or not isinstance(stages, (list, tuple)) or not stages:
            raise BackboneOptionError(
                "plugins stages", stages, "a non-empty list of res2, res3, res4, res5"
            )
        for name in stages:
            check_choice("plugins stages", name, STAGE_NAMES)
        if len(set(stages)) != len(stages):
            raise BackboneOptionError("plugins stages", list(stages), "each stage once")
        object.__setattr__(self, "stages", tuple(sorted(stages, key=STAGE_NAMES.index)))
        ratio = PLUGIN_TYPES[self.type].default_ratio if self.ratio is None else self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise BackboneOptionError("plugins ratio", self.ratio, "a number in (0, 1], or None")
        object.__setattr__(self, "ratio", float(ratio))

    @classmethod
    def from_value(cls, value: PluginSpec | Mapping[str, Any]) -> PluginSpec:
        """A spec from itself or a mapping with the keys of :data:`PLUGIN_KEYS` (a config's
        entry, JSON's lists for tuples).

        Raises:
            BackboneOptionError: not a mapping, a key that is not one of them, or a bad value.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise BackboneOptionError(
                "plugins",
                value,
                "a list of dicts with keys " + ", ".join(PLUGIN_KEYS),
                "an entry is not a dict",
            )
        for key in value:
            if key not in PLUGIN_KEYS:
                raise BackboneOptionError(
                    "plugins", dict(value), "keys " + ", ".join(PLUGIN_KEYS), f"unknown key {key!r}"
                )
        if "type" not in value or "stages" not in value:
            raise BackboneOptionError(
                "plugins", dict(value), "keys " + ", ".join(PLUGIN_KEYS), "type and stages needed"
            )
        return cls(**value)  # __post_init__ makes a list of stages a tuple

    def build(self, channels: int) -> Plugin:
        """The plugin module for a position with ``channels`` channels."""
        return PLUGIN_TYPES[self.type](channels, ratio=self.ratio)


def plugins_in_state(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plugins a ResNet's tensors (Detectron2 names, ``res4.0.after_conv3.gc.*``) hold, as
    :class:`PluginSpec` mappings: one per type and position, with the stages that have it and the
    ratio its ``inner_weight`` shows in the last of them (the widest, where rounding matters
    least); types not in :data:`PLUGIN_TYPES` are left out (their tensors stay unused)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for name in state:
        m = re.match(r"(res[2-5])\.\d+\.(after_conv[1-3])\.([A-Za-z_]\w*)\.", name)
        if not m or m.group(3) not in PLUGIN_TYPES:
            continue
        stage, position, kind = m.groups()
        entry = found.setdefault((kind, position), {"stages": set(), "widths": {}})
        entry["stages"].add(stage)
        if name.endswith("." + PLUGIN_TYPES[kind].inner_weight):
            shape = tuple(state[name].shape)
            entry["widths"][stage] = shape[0] / shape[1]
    plugins = []
    for (kind, position), entry in found.items():
        stages = sorted(entry["stages"], key=STAGE_NAMES.index)
        widths = entry["widths"]
        ratio = widths[max(widths, key=STAGE_NAMES.index)] if widths else None
        plugins.append(dict(type=kind, stages=tuple(stages), position=position, ratio=ratio))
    return plugins


def plugin_specs(plugins: Any) -> tuple[PluginSpec, ...]:
    """``plugins`` (None, or a sequence of :class:`PluginSpec` or mappings) as a tuple of specs,
    each checked; one type twice at a position of a stage is refused (its module name would be
    taken twice).

    Raises:
        BackboneOptionError: naming the entry and the key at fault.
    """
    if plugins is None:
        return ()
    if isinstance(plugins, (str, Mapping)) or not isinstance(plugins, (list, tuple)):
        raise BackboneOptionError(
            "plugins", plugins, "a list of dicts with keys " + ", ".join(PLUGIN_KEYS)
        )
    specs = tuple(PluginSpec.from_value(p) for p in plugins)
    seen: set[tuple[str, str, str]] = set()
    for spec in specs:
        for stage in spec.stages:
            place = (stage, spec.position, spec.type)
            if place in seen:
                raise BackboneOptionError(
                    "plugins",
                    [dict(type=s.type, stages=list(s.stages), position=s.position) for s in specs],
                    "one plugin of a type per position of a stage",
                    f"{spec.type!r} twice at {spec.position} in {stage}",
                )
            seen.add(place)
    return specs
