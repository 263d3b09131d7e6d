"""make_resnet arguments read from the tensors of a weights file (depth, widths, groups, stem)."""

from __future__ import annotations

import collections
import re
from typing import Any, Iterable, Mapping

import torch

from ..specs import DEPTHS

# Every ResNet of the family has this tensor; its prefix tells where the ResNet sits.
STEM_KEY = "stem.conv1.weight"


def find_resnet(keys: Iterable[str]) -> str | None:
    """Where state-dict ``keys`` (of a checkpoint or a model, ours or Detectron2's: same names)
    hold a ResNet: "" for a bare ResNet, ``backbone.bottom_up.`` in an R-CNN; None without one."""
    for key in keys:
        if key == STEM_KEY or key.endswith("." + STEM_KEY):
            return key[: -len(STEM_KEY)]
    return None


def resnet_prefix(state: Mapping[str, Any]) -> str:
    """The prefix under which a checkpoint holds the ResNet ("" or ``backbone.bottom_up.``...;
    "" also without one)."""
    return find_resnet(state) or ""


def infer_architecture(resnet_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`backbones.make_resnet` arguments read from the shapes of ResNet-named tensors.

    Returns:
        a dict with what the tensors show: ``depth``, ``in_channels``, ``stem_out_channels``,
        ``res2_out_channels``, bottleneck ``num_groups`` / ``width_per_group``, deep-stem
        ``stem_type`` / ``stem_width``, ``residual`` (False: a plain net); ``stage_blocks`` and
        ``block_type`` for blocks per stage that no depth of the table has. Empty where the
        names are not a ResNet's.
    """
    arch: dict[str, Any] = {}
    if "stem.conv1.weight" not in resnet_state:
        return arch
    conv1 = resnet_state["stem.conv1.weight"]
    arch["in_channels"] = int(conv1.shape[1])
    if "stem.conv2.weight" in resnet_state:
        arch.update(stem_type="deep", stem_width=int(conv1.shape[0]))
        arch["stem_out_channels"] = int(resnet_state["stem.conv3.weight"].shape[0])
    else:
        arch["stem_out_channels"] = int(conv1.shape[0])
    blocks: dict[int, int] = collections.Counter()
    for key in resnet_state:
        m = re.match(r"res([2-5])\.(\d+)\.conv1\.weight$", key)
        if m:
            blocks[int(m.group(1))] += 1
    counts = tuple(blocks[s] for s in range(2, 6))
    bottleneck = "res2.0.conv3.weight" in resnet_state
    block = "bottleneck" if bottleneck else "basic"
    for depth, spec in DEPTHS.items():
        if spec.block == block and spec.blocks_per_stage == counts:
            arch["depth"] = depth
    if "depth" not in arch and all(counts):
        arch.update(stage_blocks=counts, block_type=block)  # a depth beyond the table
    if bottleneck:
        conv2 = resnet_state["res2.0.conv2.weight"]
        groups = int(conv2.shape[0]) // int(conv2.shape[1])
        arch.update(num_groups=groups, width_per_group=int(conv2.shape[0]) // groups)
        arch["res2_out_channels"] = int(resnet_state["res2.0.conv3.weight"].shape[0])
    elif "res2.0.conv2.weight" in resnet_state:
        arch["res2_out_channels"] = int(resnet_state["res2.0.conv2.weight"].shape[0])
    arch["blocks_per_stage"] = counts
    if "res3.0.conv1.weight" in resnet_state:
        # res3's first block changes the shape: a residual net projects its shortcut there.
        arch["residual"] = "res3.0.shortcut.weight" in resnet_state
    return arch
