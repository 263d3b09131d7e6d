"""Shared test helpers: configs for both backbones and weight randomisation."""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from backbones import load_cfg

FPN_FEATURES = ["res2", "res3", "res4", "res5"]


def make_cfg(**resnets) -> CfgNode:
    """A Detectron2 cfg (not frozen) with our node, the FPN features, and ``MODEL.RESNETS``
    overrides, composed by :func:`backbones.load_cfg`."""
    opts = [
        "MODEL.RESNETS.OUT_FEATURES", repr(FPN_FEATURES),
        "MODEL.FPN.IN_FEATURES", repr(FPN_FEATURES),
        "MODEL.BACKBONE.FREEZE_AT", "0",
        # A name only, never read: it silences the FrozenBN-from-scratch warning.
        "MODEL.WEIGHTS", "unused-by-the-builders.pkl",
        "BACKBONES.INPUT_FROM_WEIGHTS", "off",
    ]  # fmt: skip
    for key, value in resnets.items():
        opts += [f"MODEL.RESNETS.{key.upper()}", repr(value)]
    cfg = load_cfg(opts=opts)
    cfg.defrost()
    return cfg


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer and bias non-trivial values, so that equal outputs mean equal nets."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen, dtype=t.dtype) * (high - low) + low

    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)):
            module.weight.copy_(rand(module.weight, 0.5, 1.0))
            module.bias.copy_(rand(module.bias, -0.2, 0.2))
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            module.running_mean.copy_(rand(module.running_mean, -0.2, 0.2))
            module.running_var.copy_(rand(module.running_var, 0.8, 1.5))
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            module.bias.copy_(rand(module.bias, -0.2, 0.2))
    return model
