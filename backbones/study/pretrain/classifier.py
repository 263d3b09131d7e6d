"""The ImageNet classifier of He et al. (2015, Sec. 3.4) around our ResNet: ``res5``, global
average pooling and a linear layer, returning a loss dict as Detectron2's models do, with a
weights file's names in its state dict; its options from ``KEY VALUE`` pairs."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.utils.events import get_event_storage
from torch import nn

from ...errors import BackboneOptionError
from ...modeling import ARCHITECTURE_DEFAULTS, BLOCK_TYPES, ResNet, make_resnet
from ...specs import DEPTHS
from ...weights.sources import TORCHVISION_INPUT

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


def resnet_option_names() -> tuple[str, ...]:
    """The keywords of :func:`backbones.make_resnet` that ``KEY VALUE`` pairs may set."""
    parameters = inspect.signature(make_resnet).parameters
    return tuple(name for name in parameters if name not in RESERVED_OPTIONS)


def parse_resnet_options(
    pairs: Sequence[str], allowed: Sequence[str] | None = None
) -> dict[str, Any]:
    """``["num_groups", "32", "stem_type", "deep"]`` -> ``{"num_groups": 32, "stem_type":
    "deep"}``: values through ``ast.literal_eval``, kept as strings where that fails.

    ``allowed``: the keys allowed (default: :func:`resnet_option_names`).

    Raises:
        BackboneOptionError: an odd number of items, or a key that is not allowed (named, with
            the keys allowed).
    """
    pairs = list(pairs)
    what = "not a keyword of backbones.make_resnet" if allowed is None else "not an option here"
    allowed = resnet_option_names() if allowed is None else tuple(allowed)
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
            reason = RESERVED_OPTIONS.get(key, what)
            raise BackboneOptionError(key, value, ", ".join(allowed), reason)
        options[key] = value
    return options


class Classifier(nn.Module):
    """A ResNet's ``res5``, globally average-pooled, then a linear layer (torchvision's
    ``avgpool`` and ``fc``), called as Detectron2 calls a meta-architecture: on a training batch
    ``(images, labels)`` it returns ``{"loss_cls": cross-entropy}``, in eval mode the logits.
    Takes BGR images on 0-255 pixels (uint8 or float) and normalises them itself, as Detectron2's
    detectors do with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``.

    Its state dict is a weights file's: the ResNet's tensors under their own names (``stem.*``,
    ``res2.*``, ...) and the head's under ``fc.*``. So every checkpoint of a pretraining loads
    with ``make_resnet(weights=...)`` and as ``MODEL.WEIGHTS`` as an ImageNet file does (the
    head reported unused), and resumes into the classifier.

    Args:
        backbone: the ResNet; its last output feature (``res5``) is pooled.
        num_classes: the linear layer's outputs.
        pixel_mean, pixel_std: per channel, BGR, on 0-255 pixels.
        label_smoothing: of the training loss (Szegedy et al., 2016); 0 for none.
        architecture: the ``make_resnet`` arguments that rebuild ``backbone``
            (:func:`build_classifier`'s), stored in the checkpoints.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        *,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        label_smoothing: float = 0.0,
        architecture: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # The deepest feature the backbone returns: res5 of an ImageNet ResNet, res4 of a CIFAR one.
        self.feature = backbone._out_features[-1]
        self.fc = nn.Linear(backbone.output_shape()[self.feature].channels, num_classes)
        self.label_smoothing = label_smoothing
        self.architecture = dict(architecture or {})
        # Not in the state dict: the checkpoints record them as input settings instead.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)
        self.register_state_dict_post_hook(_resnet_names)
        self.register_load_state_dict_pre_hook(_module_names)

    def forward(
        self, batch: tuple[torch.Tensor, torch.Tensor] | torch.Tensor
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """
        Args:
            batch: ``(images, labels)`` as the loaders give them (``(N, 3, H, W)`` BGR pixels,
                ``(N,)`` class indices), or the images alone in eval mode.

        Returns:
            in training, ``{"loss_cls"}``; otherwise the logits, ``(N, num_classes)``.
        """
        images, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        device = self.pixel_mean.device
        x = (images.to(device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
        logits = self.fc(torch.flatten(self.backbone(x)[self.feature].mean(dim=(2, 3)), 1))
        if not self.training:
            return logits
        if labels is None:
            raise ValueError("Classifier: a training batch is (images, labels)")
        labels = labels.to(device, non_blocking=True)
        # This process's top-1 error (%), as Detectron2's heads log their accuracy; the
        # evaluations average it over the processes and the last iterations.
        wrong = (logits.detach().argmax(dim=1) != labels).float().mean()
        get_event_storage().put_scalar("cls_error", 100 * float(wrong))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return {"loss_cls": loss}


def _resnet_names(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook of :class:`Classifier`: ``backbone.res2.0.*`` -> ``res2.0.*``."""
    inner = prefix + "backbone."
    items = list(state_dict.items())
    state_dict.clear()
    for key, value in items:
        state_dict[prefix + key[len(inner) :] if key.startswith(inner) else key] = value


def _module_names(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of :class:`Classifier`: ``res2.0.*`` -> ``backbone.res2.0.*``
    (the head's ``fc.*`` and names already under ``backbone.`` are kept)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix) :]
        if not name.startswith(("backbone.", "fc.")):
            state_dict[f"{prefix}backbone.{name}"] = state_dict.pop(key)


def build_classifier(
    depth: int,
    num_classes: int,
    resnet_options: dict[str, Any] | None = None,
    *,
    label_smoothing: float = 0.0,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> tuple[Classifier, dict[str, Any]]:
    """A :class:`Classifier` on ``make_resnet(depth, **PRETRAIN_RESNET_DEFAULTS,
    **resnet_options)``, with ``label_smoothing`` in its loss and its input normalisation.

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
    # The spec the ResNet was built from (the options, the weights file, the defaults: resolved
    # once), as a weights file records it.
    architecture = {
        name: value
        for name, value in backbone.spec.as_dict().items()
        if name in ARCHITECTURE_DEFAULTS and value is not None
    }
    if not BLOCK_TYPES[DEPTHS[depth].block].grouped:  # basic blocks: no grouped 3x3 to describe
        architecture.pop("num_groups", None)
        architecture.pop("width_per_group", None)
    norm = options.get("norm")
    if isinstance(norm, str):
        architecture["norm"] = norm
    classifier = Classifier(
        backbone,
        num_classes,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        label_smoothing=label_smoothing,
        architecture=architecture,
    )
    return classifier, architecture
