"""Loading weights of any source into a module (a ResNet, an FPN, a whole detector), with a
short report."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..specs import PLUGIN_POSITIONS
from .architecture import find_resnet, resnet_prefix
from .formats import WeightsFormatError
from .read import Weights, read_weights
from .sources import SOURCES

logger = logging.getLogger(__name__)

# Where a detector keeps a stage of the ResNet outside its backbone: in Detectron2's C4 design
# (the paper's, Appendix A) the backbone stops at res4 and Res5ROIHeads runs res5 on every RoI as
# ``roi_heads.res5``; Detectron2 loads ImageNet res5 there, and so do we.
STAGE_HOMES: dict[str, tuple[str, ...]] = {"res5": ("roi_heads.res5",)}


class WeightsShapeError(WeightsFormatError):
    """A tensor whose shape differs between the weights file and the model."""


# ---------------------------------------------------------------------------------------------
# Loading into a model


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path, source: the file and its source (a key of ``weights.SOURCES``).
        loaded: model names that received a tensor.
        missing: model names the file lacks, by group (``backbone.fpn_lateral*``, ``roi_heads``).
        expected_missing: True where those are expected (an ImageNet file has no detector heads).
        new: the model's plugin tensors (context blocks, :mod:`backbones.modeling.plugins`) by
            plugin and position, of plugins the file has no tensor of: new layers, which keep
            their initialisation (zero where the plugin starts as the identity), not missing.
        unused: file names the model does not have (``fc.weight``, ...).
        skipped: names whose shape differs, skipped because the caller allowed it.
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    expected_missing: dict[str, bool] = field(default_factory=dict)
    new: dict[str, list[str]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A few lines for the log."""
        description = SOURCES[self.source].description
        out = [f"Loaded {len(self.loaded)} tensors from {self.path} ({description})"]
        for group, names in self.missing.items():
            note = (
                "not in an ImageNet checkpoint, expected"
                if self.expected_missing.get(group)
                else "NOT IN THE FILE: they keep their initialisation"
            )
            out.append(f"  {group}: {len(names)} tensors {note}")
        for group, names in self.new.items():
            out.append(
                f"  {group}: {len(names)} tensors of a plugin the file does not have: new, they "
                "start as the plugin initialises them"
            )
        if self.unused:
            out.append(f"  in the file, not in the model: {summarise_names(self.unused)}")
        if self.skipped:
            out.append(f"  skipped (shape differs, allowed): {', '.join(self.skipped)}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _group(name: str) -> str:
    parts = name.split(".")
    # backbone.fpn_lateral2.*, backbone.bottom_up.res2.* / .fc.* (the ResNet's own modules)
    depth = 3 if parts[:2] == ["backbone", "bottom_up"] else 2 if parts[0] == "backbone" else 1
    head = ".".join(parts[: min(depth, len(parts) - 1)] or parts[:1])
    return re.sub(r"\d+$", "*", head) + ".*"


def _plugin_group(name: str) -> str | None:
    """``backbone.bottom_up.res*.after_conv3.gc.*`` for a plugin tensor (a module named by a
    plugin position, then the plugin's type), None for other names."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-2]):
        if part in PLUGIN_POSITIONS and i >= 2:
            stage = re.sub(r"\d$", "*", parts[i - 2])
            return ".".join(parts[: i - 2] + [stage, part, parts[i + 1], "*"])
    return None


def summarise_names(names: Sequence[str], limit: int = 4) -> str:
    """``names`` as groups with counts (``fc.* (2 tensors), encoder_k.* (320 tensors)``), the
    first ``limit`` groups shown."""
    counts: dict[str, int] = {}
    for name in names:
        counts[_group(name)] = counts.get(_group(name), 0) + 1
    groups = [f"{group} ({n} tensor{'s' if n > 1 else ''})" for group, n in sorted(counts.items())]
    shown = ", ".join(groups[:limit])
    return shown + (f" (+{len(groups) - limit} more)" if len(groups) > limit else "")


def _align(weights: Weights, model_keys: set[str]) -> dict[str, torch.Tensor]:
    """The file's tensors under the model's names."""
    if weights.is_backbone_only:
        prefix = find_resnet(model_keys)
        if prefix is None:
            raise WeightsFormatError(
                f"{weights.path}: ImageNet ResNet weights, but the model has no ResNet module"
            )
        state = {}
        for name, value in weights.state.items():
            target = prefix + name
            if target not in model_keys:
                stage, _, rest = name.partition(".")
                homes = (f"{home}.{rest}" for home in STAGE_HOMES.get(stage, ()))
                target = next((home for home in homes if home in model_keys), target)
            state[target] = value
        return state
    # A detector checkpoint into a detector, a bare FPN (no "backbone.") or a bare ResNet.
    best: dict[str, torch.Tensor] = {}
    for strip in ("", "backbone.", resnet_prefix(weights.state)):
        state = {k[len(strip) :]: v for k, v in weights.state.items() if k.startswith(strip)}
        if len(model_keys & set(state)) > len(model_keys & set(best)):
            best = state
    return best or dict(weights.state)


def load_weights(
    model: nn.Module,
    weights: Weights | str | os.PathLike,
    *,
    trusted: bool = False,
    skip_mismatched: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> LoadReport:
    """Load a weights file of any supported source into ``model`` and report what happened.

    ImageNet files (torchvision, timm, Caffe2, Detectron2 backbone conversions) go into the
    model's ResNet wherever it sits (``backbone.bottom_up.`` in an R-CNN), and a stage the
    backbone lacks into its home in the detector (:data:`STAGE_HOMES`: res5 into
    ``roi_heads.res5`` of a C4 model); detector checkpoints load by name.

    Args:
        model: a Detectron2 model, an FPN or a ResNet of this package (or Detectron2's).
        weights: a path, or :class:`weights.Weights` already read.
        trusted: allow arbitrary pickled objects (runs code from the file).
        skip_mismatched: name prefixes whose shape mismatches are skipped (e.g.
            ``roi_heads.box_predictor`` when fine-tuning on other classes); elsewhere a shape
            mismatch raises.
        log: where the report lines go (default: this module's logger at INFO).

    Returns:
        a :class:`LoadReport`.

    Raises:
        WeightsShapeError: a tensor's shape differs (names the tensor and both shapes).
    """
    if not isinstance(weights, Weights):
        weights = read_weights(weights, trusted=trusted)
    target = model.state_dict()
    state = _align(weights, set(target))
    report = LoadReport(weights.path, weights.source, unused=list(weights.unused))
    loadable = {}
    for name, value in state.items():
        if name not in target:
            # FrozenBN has no num_batches_tracked counter: nothing is lost.
            if not name.endswith("num_batches_tracked"):
                report.unused.append(name)
            continue
        if tuple(value.shape) != tuple(target[name].shape):
            if any(name.startswith(p) for p in skip_mismatched):
                report.skipped.append(f"{name} {tuple(value.shape)} -> {tuple(target[name].shape)}")
                continue
            raise WeightsShapeError(
                f"{weights.path}: {name} has shape {tuple(value.shape)} in the file but "
                f"{tuple(target[name].shape)} in the model. Check the architecture options "
                "(depth, groups, widths), or skip it on purpose (skip_mismatched / "
                "BACKBONES.SKIP_MISMATCHED, e.g. roi_heads.box_predictor for other classes)."
            )
        loadable[name] = value
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    resnet = find_resnet(target) or ""
    missing: dict[str, list[str]] = defaultdict(list)
    plugins: dict[str, list[str]] = defaultdict(list)
    for name in target:
        if name not in loadable and not name.endswith("num_batches_tracked"):
            plugin = _plugin_group(name)
            if plugin is not None:
                plugins[plugin].append(name)
            else:
                missing[_group(name)].append(name)
    # A plugin the file has some tensors of, but not all, is missing; one it has none of is new.
    in_file = {_plugin_group(name) for name in loadable}
    for group, names in plugins.items():
        (missing if group in in_file else report.new)[group] = names
    report.missing = dict(missing)
    for group, names in report.missing.items():
        outside = not any(n.startswith(resnet) for n in names) if resnet else False
        report.expected_missing[group] = weights.is_backbone_only and outside
    for line in report.lines():
        (log or logger.info)(line)
    return report
