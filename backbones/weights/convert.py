"""Writing weights as Detectron2 checkpoints, with the config lines that go with them."""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Iterable

import torch

from ..specs import DEPTHS
from .formats import atomic_write
from .read import Weights


def config_lines(weights: Weights, weights_path: str) -> list[str]:
    """YAML lines that build the architecture of ``weights`` with its input settings."""
    arch, lines = weights.architecture, ["MODEL:", f'  WEIGHTS: "{weights_path}"']
    if weights.input is not None:
        lines.append(f"  PIXEL_MEAN: {_yaml_list(weights.input.pixel_mean)}")
        lines.append(f"  PIXEL_STD: {_yaml_list(weights.input.pixel_std)}")
    resnets = {"DEPTH": arch.get("depth")}
    # The tensors show a grouped-capable 3x3 after a 1x1 (infer_architecture reads num_groups
    # only then): the stride placement and the ResNeXt widths are the file's.
    if arch.get("depth") in DEPTHS and "num_groups" in arch:
        if weights.input is not None:
            resnets["STRIDE_IN_1X1"] = weights.input.stride_in_1x1
        resnets["NUM_GROUPS"] = arch.get("num_groups")
        resnets["WIDTH_PER_GROUP"] = arch.get("width_per_group")
    resnets["STEM_OUT_CHANNELS"] = arch.get("stem_out_channels")
    resnets["RES2_OUT_CHANNELS"] = arch.get("res2_out_channels")
    items = ", ".join(f"{k}: {v}" for k, v in resnets.items() if v is not None)
    lines.append(f"  RESNETS: {{{items}}}")
    if weights.input is not None:
        lines.append(f'INPUT: {{FORMAT: "{weights.input.format}"}}')
    if arch.get("stem_type") == "deep" or arch.get("avg_down"):
        lines.append(
            f'BACKBONES: {{STEM_TYPE: "{arch.get("stem_type", "basic")}", '
            f"STEM_WIDTH: {arch.get('stem_width', 32)}, AVG_DOWN: {bool(arch.get('avg_down'))}}}"
        )
    return lines


def _yaml_list(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def write_detectron2_checkpoint(
    weights: Weights, path: str | os.PathLike, *, progress: Callable | None = None
) -> list[str]:
    """Write ``weights`` as a Detectron2 checkpoint that any Detectron2 loads, atomically.

    ``.pkl``: the model-zoo layout (numpy arrays, ``__author__``, ``matching_heuristics``),
    which Detectron2's own ``DetectionCheckpointer`` places into ``backbone.bottom_up``;
    other suffixes: the same dict through ``torch.save``. The file's ``"backbones"`` entry holds
    the source, input settings, architecture and the config lines, which this package reads
    back.

    Args:
        weights: read by :func:`read_weights`.
        path: destination file.
        progress: optional ``iterable -> iterable`` wrapper over the tensors (a progress bar).

    Returns:
        the config lines that go with the file (also stored in it).
    """
    path = str(path)
    lines = config_lines(weights, path)
    items = list(weights.state.items())
    as_numpy = path.endswith(".pkl")
    model = {}
    for name, tensor in progress(items) if progress else items:
        model[name] = tensor.detach().cpu().numpy() if as_numpy else tensor.detach().cpu()
    data = {
        "model": model,
        "__author__": f"backbones (converted from {weights.source}: {weights.path})",
        "matching_heuristics": weights.is_backbone_only,
        "backbones": {
            "source": weights.source,
            "input": weights.input.as_dict() if weights.input else None,
            "architecture": {k: v for k, v in weights.architecture.items()},
            "config": "\n".join(lines),
        },
    }
    arch = data["backbones"]["architecture"]
    if "blocks_per_stage" in arch:
        arch["blocks_per_stage"] = list(arch["blocks_per_stage"])

    def write(f: Any) -> None:
        if as_numpy:
            pickle.dump(data, f, protocol=4)
        else:
            torch.save(data, f)

    atomic_write(path, write)
    return lines
