"""Speed of our ResNet-FPN against Detectron2's built-in one, same weights, same process."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

from .registry import backbones_build_resnet_fpn_backbone


@dataclass
class Timing:
    """Median seconds per iteration of each backbone, and the ratio built-in / ours."""

    mode: str
    detectron2_s: float
    ours_s: float

    @property
    def speedup(self) -> float:
        return self.detectron2_s / self.ours_s


def _median_time(step, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def benchmark_fpn(
    cfg: CfgNode,
    *,
    batch: int = 2,
    size: tuple[int, int] = (512, 512),
    iters: int = 5,
    warmup: int = 2,
    modes: tuple[str, ...] = ("inference", "train"),
    device: str = "cpu",
) -> list[Timing]:
    """Time both backbones built from ``cfg`` (ours gets the built-in's weights).

    Args:
        cfg: a cfg with ``add_backbones_config`` applied; ``MODEL.RESNETS.*``/``MODEL.FPN.*`` pick
            the network, ``BACKBONES.MEMORY_FORMAT`` our layout.
        batch, size: input batch and (height, width).
        iters, warmup: timed and untimed iterations; the median is reported.
        modes: ``"inference"`` (eval, no grad) and/or ``"train"`` (forward + backward).
        device: torch device string.

    Returns:
        one :class:`Timing` per mode.
    """
    dev = torch.device(device)
    reference = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).to(dev)
    ours = backbones_build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).to(dev)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(batch, 3, *size, device=dev)
    timings = []
    for mode in modes:
        seconds = []
        for model in (reference, ours):
            model.train(mode == "train")
            if mode == "train":

                def step(model=model):
                    sum(f.float().mean() for f in model(x).values()).backward()

            else:

                def step(model=model):
                    with torch.no_grad():
                        model(x)

            seconds.append(_median_time(step, iters, warmup, dev))
        timings.append(Timing(mode, *seconds))
    return timings
