"""Parameters and FLOPs (multiply-adds, the unit of Table 1 in He et al., 2015) with fvcore."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from torch import nn

from ...modeling import make_resnet
from ...weights.formats import atomic_write

# Table 1 of He et al. (2015): FLOPs (multiply-adds, x 10^9) at 224x224, classifier included.
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# fvcore counts a BatchNorm as one flop per element (GroupNorm five) and Detectron2's list of
# ignored ops does not override that; the paper counts convolutions and the classifier only,
# and a FrozenBN is folded into its convolution for free, so norms count nothing here.
NOT_COUNTED = ("aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm")
# The image whose test-time size stands for a detector's input: COCO's usual 640x480, 4:3.
REPRESENTATIVE_ASPECT = (3, 4)  # height, width
SEED = 0


def count_parameters(module: nn.Module) -> int:
    """The number of elements of ``module``'s parameters, frozen ones (``requires_grad=False``)
    included, as torchvision's counts. Buffers are not parameters: a ``FrozenBatchNorm2d`` keeps
    its scale and bias as buffers, so it adds nothing, where a ``BatchNorm2d`` adds two per
    channel."""
    return sum(p.numel() for p in module.parameters())


def _no_count(inputs: list, outputs: list) -> Counter:
    return Counter()


def count_gflops(module: nn.Module, inputs: tuple) -> float:
    """Billions of multiply-adds of one call ``module(*inputs)``, in the module's current mode.

    Detectron2's ``FlopCountAnalysis`` (fvcore's, taking any inputs, a detector's list of dicts
    included) traces the call; fvcore counts one multiply-add as one flop. Counted:
    convolutions, linears and matmuls, and fvcore's small per-element counts for adaptive
    pooling and upsampling; not counted: norms (:data:`NOT_COUNTED`), activations, additions,
    max pooling, ROIAlign and NMS.

    Args:
        module: any module; a detector should be in eval mode.
        inputs: the positional arguments of the call, e.g. ``(images,)`` or ``(batched_inputs,)``.

    Returns:
        the total divided by 1e9.
    """
    counter = FlopCountAnalysis(module, inputs)
    counter.set_op_handle(**{op: _no_count for op in NOT_COUNTED})
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with _quiet_tracing():
        total = counter.total()
    return total / 1e9


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing a detector warns about the Python values it records as constants, and
    Detectron2's ``is_fx_tracing`` call makes torch log a deprecation: expected here."""
    loggers = [logging.getLogger(name) for name in ("fvcore", "torch.fx._symbolic_trace")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class ImageNetClassifier(nn.Module):
    """A backbone's ``res5``, globally average-pooled, then a linear classifier: the head of
    He et al.'s ImageNet models (torchvision's ``avgpool`` and ``fc``)."""

    def __init__(self, backbone: nn.Module, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(backbone.output_shape()["res5"].channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.backbone(x)["res5"]), 1))


def resnet_complexity(
    depth: int,
    *,
    size: tuple[int, int] = (224, 224),
    classifier: bool = True,
    **resnet_options: Any,
) -> dict[str, Any]:
    """Parameters and FLOPs of ``make_resnet(depth, **resnet_options)`` on one image.

    ``norm`` defaults to ``"BN"``: its scale and bias are parameters, as in torchvision's
    models, so the counts with the classifier equal torchvision's (R-50: 25,557,032). The stride
    placement changes no parameter but changes the FLOPs of bottleneck depths: the default
    (``stride_in_1x1=True``, MSRA's) is the paper's; in the 3x3 (torchvision's) R-50 costs
    4.1 G instead of 3.9 G.

    Args:
        depth: one of ``specs.DEPTHS``.
        size: the input image's ``(height, width)``.
        classifier: add :class:`ImageNetClassifier` (1000 classes) on ``res5``, as the paper's
            Table 1 and torchvision's parameter counts do; otherwise the backbone alone.
        resnet_options: keyword arguments of :func:`backbones.make_resnet`.

    Returns:
        ``{"depth", "params", "gflops"}``: the depth, the parameter count (int) and billions
        of multiply-adds (float).
    """
    options = {"norm": "BN", "memory_format": "contiguous", **resnet_options}
    if classifier:
        options.setdefault("out_features", ("res5",))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model: nn.Module = make_resnet(depth, **options)
        if classifier:
            model = ImageNetClassifier(model)
    model.eval()
    in_channels = resnet_options.get("in_channels") or 3
    gflops = count_gflops(model, (torch.zeros(1, in_channels, *size),))
    return {"depth": depth, "params": count_parameters(model), "gflops": gflops}


def detector_test_size(cfg: CfgNode) -> tuple[int, int]:
    """The ``(height, width)`` a 4:3 landscape image (COCO's usual 640x480) has at test time:
    its short side resized to ``INPUT.MIN_SIZE_TEST`` within ``INPUT.MAX_SIZE_TEST``, as
    Detectron2's ``ResizeShortestEdge`` does (800x1067 for the defaults)."""
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        raise ValueError(
            f"INPUT.MIN_SIZE_TEST={cfg.INPUT.MIN_SIZE_TEST} keeps images at their own size: "
            "give the size, e.g. size=(800, 1067)"
        )
    return ResizeShortestEdge.get_output_shape(
        *REPRESENTATIVE_ASPECT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    )


def detector_complexity(cfg: CfgNode, *, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Parameters and FLOPs of the whole detector of ``cfg``, backbone and heads apart.

    The model is ``detectron2.modeling.build_model(cfg)`` on CPU, in eval mode, randomly
    initialised (seed 0; ``MODEL.WEIGHTS`` is not loaded) and run on one image of seeded noise.
    The heads' FLOPs grow with the number of boxes they see, which random weights would decide
    (they give one proposal and no detection), so they are counted at full load, the most a
    trained model runs them on: ``MODEL.RPN.POST_NMS_TOPK_TEST`` proposals (1000) and
    ``TEST.DETECTIONS_PER_IMAGE`` detections (100, for a mask head). For that, the heads'
    parameters are zeroed (proposals are then the anchors and detections the proposals, all
    with equal scores; values change no FLOP count), ``MODEL.RPN.NMS_THRESH`` and
    ``MODEL.ROI_HEADS.NMS_THRESH_TEST`` are 1 (nothing suppressed) and
    ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` is 0. The backbone (the FPN included) is counted
    alone on the preprocessed, padded image; the heads are the rest (RPN and ROI heads). A C4
    model keeps ``res5`` in its ROI heads, so there the heads include ``res5``, run on every
    proposal.

    Args:
        cfg: a config composed by :func:`backbones.load_cfg`; ``MODEL.DEVICE`` is ignored.
        size: the input image's ``(height, width)``; default :func:`detector_test_size`.

    Returns:
        ``{"depth", "params", "gflops", "backbone_params", "backbone_gflops", "heads_params",
        "heads_gflops"}``: ``MODEL.RESNETS.DEPTH``, parameter counts (int) and billions of
        multiply-adds (float); ``params == backbone_params + heads_params`` and likewise for
        the FLOPs.
    """
    height, width = size if size is not None else detector_test_size(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    # The heads at full load (see above).
    cfg.MODEL.RPN.NMS_THRESH = 1.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.freeze()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = build_model(cfg).eval()
        image = torch.rand(3, height, width) * 255
    backbone = set(model.backbone.parameters())
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter not in backbone:
                parameter.zero_()  # the heads at full load (see above)
    inputs = [{"image": image, "height": height, "width": width}]
    gflops = count_gflops(model, (inputs,))
    with torch.no_grad():
        images = model.preprocess_image(inputs).tensor
    backbone_gflops = count_gflops(model.backbone, (images,))
    params = count_parameters(model)
    backbone_params = count_parameters(model.backbone)
    return {
        "depth": cfg.MODEL.RESNETS.DEPTH,
        "params": params,
        "gflops": gflops,
        "backbone_params": backbone_params,
        "backbone_gflops": backbone_gflops,
        "heads_params": params - backbone_params,
        "heads_gflops": gflops - backbone_gflops,
    }


# How format_table writes a column, by the end of its key; other columns as str().
HEADERS = {
    "backbone_params": "backbone params",
    "backbone_gflops": "backbone GFLOPs",
    "heads_params": "heads params",
    "heads_gflops": "heads GFLOPs",
    "gflops": "GFLOPs",
    "paper_gflops": "paper GFLOPs",
    "added_params": "added params",
    "added_gflops": "added GFLOPs",
    "paper_difference": "difference",
}


def _format_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.endswith("params"):
        return f"{value:,}"
    if key.endswith("gflops"):  # three significant digits below 0.1 (a thin net at 32x32)
        return f"{value:.3g}" if 0 < abs(value) < 0.1 else f"{value:.2f}"
    if key.endswith("difference"):
        return f"{value:+.1%}"
    return str(value)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table, one column per key (in order of appearance):
    parameter counts with thousands separators, GFLOPs with two decimals (three significant
    digits below 0.1), ``*difference`` as a
    signed percentage; text columns left-aligned, numbers right-aligned."""
    columns = _columns(rows)
    cells = [[HEADERS.get(c, c) for c in columns]]
    cells += [[_format_value(c, row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    text = [
        all(isinstance(row.get(c), str) for row in rows) for c in columns
    ]  # left-aligned columns
    lines = [
        "  ".join(
            cell.ljust(width) if left else cell.rjust(width)
            for cell, width, left in zip(line, widths, text)
        ).rstrip()
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write the rows as CSV (a header of their keys, in order of appearance; full precision),
    atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode("utf-8")))
