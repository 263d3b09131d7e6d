"""Speed of our ResNet-FPN against Detectron2's built-in one, same weights, same process (used by
tools/benchmark_backbone.py and tools/check_gpu.py)."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from torch import nn

from .modeling import backbones_build_resnet_fpn_backbone

# Config overrides that make Detectron2's defaults (a C4 model) return the FPN's features.
FPN_FEATURES = "['res2', 'res3', 'res4', 'res5']"
FPN_OPTS = ["MODEL.RESNETS.OUT_FEATURES", FPN_FEATURES, "MODEL.FPN.IN_FEATURES", FPN_FEATURES]


@dataclass
class Timing:
    """Median seconds per iteration of each backbone, and the ratio built-in / ours."""

    mode: str
    detectron2_s: float
    ours_s: float

    @property
    def speedup(self) -> float:
        return self.detectron2_s / self.ours_s


def median_time(step, iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``iters`` calls of ``step()`` after ``warmup`` untimed ones."""
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
    amp: str = "",
) -> list[Timing]:
    """Time both backbones built from ``cfg`` (ours gets the built-in's weights).

    Args:
        cfg: a cfg with ``add_backbones_config`` applied; ``MODEL.RESNETS.*``/``MODEL.FPN.*`` pick
            the network, ``BACKBONES.MEMORY_FORMAT`` our layout.
        batch, size: input batch and (height, width).
        iters, warmup: timed and untimed iterations; the median is reported.
        modes: ``"inference"`` (eval, no grad) and/or ``"train"`` (forward + backward).
        device: torch device string.
        amp: "" (float32), "bf16" or "fp16": autocast to that dtype.

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
                    with _autocast(dev, amp):
                        loss = sum(f.float().mean() for f in model(x).values())
                    loss.backward()

            else:

                def step(model=model):
                    with torch.no_grad(), _autocast(dev, amp):
                        model(x)

            seconds.append(median_time(step, iters, warmup, dev))
        timings.append(Timing(mode, *seconds))
    return timings


def _autocast(device: torch.device, amp: str):
    if not amp:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def _synthetic_batch(
    batch: int, size: tuple[int, int], num_classes: int, device: torch.device, seed: int = 0
) -> list[dict]:
    """Images with 8 random boxes (and box-shaped masks) each, as Detectron2's loader gives them."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    inputs = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(8, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3]) + 16
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(num_classes, (8,), generator=gen)
        instances.gt_masks = PolygonMasks(  # a rectangle per box, for Mask R-CNN
            [
                [[x0, y0, x1, y0, x1, y1, x0, y1]]
                for x0, y0, x1, y1 in instances.gt_boxes.tensor.tolist()
            ]
        )
        image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
        inputs.append({"image": image.to(device), "instances": instances.to(device)})
    return inputs


def detector_pair(cfg: CfgNode, device: str = "cpu") -> tuple[nn.Module, nn.Module]:
    """Detectron2's built-in R-CNN and ours from ``cfg`` (which names our FPN builder), with
    the same random weights, in eval mode.

    Random convs under FrozenBN (the COCO recipes' norm, statistics 0 and 1) grow activations
    through ~100 layers until the RPN's boxes overflow; a zero scale in each block's last norm
    makes every block start as the identity (Goyal et al., 2017), with the same compute.
    """
    cfg = cfg.clone()  # a composed config is frozen
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    builtin_cfg = cfg.clone()
    builtin_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    reference = build_model(builtin_cfg).eval()
    ours = build_model(cfg).eval()
    state = reference.state_dict()
    last = "conv3" if any(".conv3.norm.weight" in k for k in state) else "conv2"
    for name in state:
        if re.fullmatch(rf"backbone\.bottom_up\.res\d\.\d+\.{last}\.norm\.weight", name):
            state[name].zero_()
    reference.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    return reference, ours


def set_candidate_threshold(
    models: Sequence[nn.Module], image: torch.Tensor, candidates: int
) -> float:
    """Set the R-CNNs' box score threshold (their ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``) to the
    class score above which ``candidates`` (proposal, class) candidates of ``models[0]`` lie on
    ``image``, so that that many enter the per-class NMS; returns it.

    Random weights score every class about 1 / (classes + 1), all under the recipes' 0.05 (no
    detection, no NMS) or all over 0 (every candidate, 80,000 on COCO, in the NMS); neither is
    the work of a trained model, whose count we set instead. Set it before exporting: a trace
    keeps the threshold it ran with.
    """
    logits = []
    hook = models[0].roi_heads.box_predictor.register_forward_hook(
        lambda module, inputs, outputs: logits.append(outputs[0])
    )
    try:
        with torch.no_grad():
            models[0].eval()([{"image": image}])
    finally:
        hook.remove()
    scores = torch.softmax(logits[0].float(), dim=-1)[:, :-1].flatten()
    threshold = float(scores.topk(min(candidates, scores.numel())).values[-1])
    for model in models:
        model.roi_heads.box_predictor.test_score_thresh = threshold
    return threshold


def benchmark_detector(
    cfg: CfgNode,
    *,
    batch: int = 2,
    size: tuple[int, int] = (800, 1216),
    iters: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    amp: str = "",
    prepare: Callable[[nn.Module], Any] | None = None,
) -> list[Timing]:
    """Time a whole R-CNN training step (forward, losses, backward, SGD step) on synthetic
    COCO-sized inputs, with our backbone and with Detectron2's built-in one (same weights).

    ``cfg`` must name our FPN builder; the built-in model swaps in ``build_resnet_fpn_backbone``.
    Data loading is not included: this is the GPU's share of an iteration.

    ``prepare(model)``, if given, is applied to our model before timing (e.g. to add hooks).

    Returns:
        one :class:`Timing` (mode "detector train step").
    """
    dev = torch.device(device)
    reference, ours = detector_pair(cfg, device)
    reference.train()
    ours.train()
    if prepare is not None:
        prepare(ours)
    inputs = _synthetic_batch(batch, size, cfg.MODEL.ROI_HEADS.NUM_CLASSES, dev)
    seconds = []
    for model in (reference, ours):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, optimizer=optimizer):
            with _autocast(dev, amp):
                losses = model(inputs)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

        with EventStorage():  # the R-CNN heads log training statistics into one
            seconds.append(median_time(step, iters, warmup, dev))
    return [Timing("detector train step", *seconds)]
