"""The ImageNet classifier of He et al. (2015, Sec. 3.4) around our ResNet: ``res5``, global
average pooling and a linear layer; its options from ``KEY VALUE`` pairs, its input settings, and
the weights file it leaves for detectors."""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import BackboneOptionError
from ...modeling import ARCHITECTURE_DEFAULTS, BLOCK_TYPES, ResNet, make_resnet
from ...specs import DEPTHS
from ...weights import (
    InputSettings,
    architecture_options,
    read_weights,
    weights_from_object,
    write_detectron2_checkpoint,
)
from ...weights.sources import TORCHVISION_INPUT
from ..data.classification import CHANNEL_ORDER

# make_resnet options of a pretraining unless KEY VALUE pairs say otherwise: trainable batch
# norm, and the stride in the 3x3 (torchvision's "ResNet v1.5", more accurate than MSRA's 1x1).
PRETRAIN_RESNET_DEFAULTS: dict[str, Any] = dict(norm="BN", stride_in_1x1=False)
# make_resnet keywords the KEY VALUE pairs may not set, and why.
RESERVED_OPTIONS = {
    "depth": "give it with --depth",
    "out_features": "the classifier reads res5",
}
# ImageNet's statistics on 0-255 pixels (torchvision's), in the BGR order of the data.
PIXEL_MEAN = TORCHVISION_INPUT.pixel_mean[::-1]
PIXEL_STD = TORCHVISION_INPUT.pixel_std[::-1]
# The classifier head's names in the weights file: not a ResNet tensor, so loading reports them
# as unused and finds nothing of the ResNet missing.
HEAD_PREFIX = "fc."


def resnet_option_names() -> tuple[str, ...]:
    """The keywords of :func:`backbones.make_resnet` that ``KEY VALUE`` pairs may set."""
    parameters = inspect.signature(make_resnet).parameters
    return tuple(name for name in parameters if name not in RESERVED_OPTIONS)


def parse_resnet_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["num_groups", "32", "stem_type", "deep"]`` -> ``{"num_groups": 32, "stem_type":
    "deep"}``: values through ``ast.literal_eval``, kept as strings where that fails.

    Raises:
        BackboneOptionError: an odd number of items, or a key that is not a keyword of
            :func:`backbones.make_resnet` (named, with the keywords allowed).
    """
    pairs = list(pairs)
    allowed = resnet_option_names()
    flags = [p for p in pairs[::2] if p.startswith("-")]
    if flags:
        raise BackboneOptionError(
            flags[0], "(a flag)", "KEY VALUE pairs", "flags go before the KEY VALUE pairs"
        )
    if len(pairs) % 2:
        raise BackboneOptionError(
            pairs[-1], "(no value)", "KEY VALUE pairs, e.g. num_groups 32 stem_type deep"
        )
    options: dict[str, Any] = {}
    for key, text in zip(pairs[::2], pairs[1::2]):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if key not in allowed:
            reason = RESERVED_OPTIONS.get(key, "not a keyword of backbones.make_resnet")
            raise BackboneOptionError(key, value, ", ".join(allowed), reason)
        options[key] = value
    return options


class Classifier(nn.Module):
    """A ResNet's ``res5``, globally average-pooled, then a linear layer (torchvision's
    ``avgpool`` and ``fc``). Takes BGR images on 0-255 pixels (uint8 or float) and normalises
    them itself, as Detectron2's detectors do with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``."""

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        *,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.output_shape()["res5"].channels, num_classes)
        # Not in the state dict: the weights file records them as input settings instead.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.pixel_mean) / self.pixel_std
        features = self.backbone(x)["res5"]
        return self.fc(torch.flatten(features.mean(dim=(2, 3)), 1))

    def weights_state(self) -> dict[str, torch.Tensor]:
        """The ResNet's tensors under its own names (``stem.*``, ``res2.*``..) and the head's
        under ``fc.*``: what the weights file holds."""
        state = dict(self.backbone.state_dict())
        state.update({HEAD_PREFIX + k: v for k, v in self.fc.state_dict().items()})
        return state


def build_classifier(
    depth: int, num_classes: int, resnet_options: dict[str, Any] | None = None
) -> tuple[Classifier, dict[str, Any]]:
    """A :class:`Classifier` on ``make_resnet(depth, **PRETRAIN_RESNET_DEFAULTS,
    **resnet_options)``.

    Returns:
        ``(classifier, architecture)``: the make_resnet arguments that rebuild the ResNet
        (depth, widths, groups, stem, avg-down, residual, stride placement, norm), as the weights
        file records them.
    """
    options = {**PRETRAIN_RESNET_DEFAULTS, **(resnet_options or {})}
    for key in options:
        if key in RESERVED_OPTIONS:
            raise BackboneOptionError(key, options[key], "not set here", RESERVED_OPTIONS[key])
    backbone = make_resnet(depth, out_features=("res5",), **options)
    weights = options.get("weights")
    if weights is not None and not hasattr(weights, "architecture"):
        weights = read_weights(weights)
    given = {name: options.get(name) for name in ARCHITECTURE_DEFAULTS}
    given["depth"] = depth
    architecture = architecture_options(given, ARCHITECTURE_DEFAULTS, weights)
    # What the built tensors show wins (res2_out_channels' default by block type...).
    architecture.update(weights_from_object(backbone.state_dict()).architecture)
    architecture.pop("blocks_per_stage", None)
    if not BLOCK_TYPES[DEPTHS[depth].block].grouped:  # basic blocks: no grouped 3x3 to describe
        architecture.pop("num_groups", None)
        architecture.pop("width_per_group", None)
    norm = options.get("norm")
    if isinstance(norm, str):
        architecture["norm"] = norm
    return Classifier(backbone, num_classes), architecture


def pretrain_input_settings(architecture: dict[str, Any]) -> InputSettings:
    """How images were prepared for the classifier: BGR 0-255 pixels minus :data:`PIXEL_MEAN`,
    divided by :data:`PIXEL_STD`, and the stride placement of its ResNet."""
    return InputSettings(
        CHANNEL_ORDER, PIXEL_MEAN, PIXEL_STD, bool(architecture.get("stride_in_1x1", False))
    )


def write_pretrained_weights(
    classifier: Classifier,
    path: str | os.PathLike,
    *,
    architecture: dict[str, Any],
    description: str,
) -> list[str]:
    """Write the classifier's weights as a Detectron2 checkpoint (``write_detectron2_checkpoint``,
    as ``tools/convert_weights.py`` does), atomically: the ResNet under Detectron2's names, the
    head under ``fc.*``, and under ``"backbones"`` the architecture and the input settings, so
    that ``make_resnet(weights=path)`` and a detector's ``MODEL.WEIGHTS`` rebuild and prepare
    images as the pretraining did.

    Args:
        classifier: the trained classifier (not wrapped in DDP).
        path: the file (``.pth``; ``.pkl`` for Detectron2's model-zoo layout).
        architecture: from :func:`build_classifier`.
        description: what trained it, on what (the file's ``__author__``).

    Returns:
        the config lines that go with the file (also stored in it).
    """
    state = {k: v.detach().cpu() for k, v in classifier.weights_state().items()}
    weights = weights_from_object(state, description)
    weights.input = pretrain_input_settings(architecture)
    weights.architecture.update(architecture)
    return write_detectron2_checkpoint(weights, path)
