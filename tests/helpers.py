"""Shared test helpers: configs for both backbones, weight randomisation, small COCO-format
datasets on disk and loading a script (a tool, a dev/ script) as a module."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from backbones import load_cfg

ROOT = Path(__file__).resolve().parents[1]
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


def caffe2_blobs(model: nn.Module) -> dict[str, np.ndarray]:
    """Write a Detectron2 ResNet (FrozenBN) in the naming of MSRA's Caffe2 pickles, BN folded
    into an affine scale and bias as Caffe2 stored it (written here independently of the
    converter under test)."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    blobs = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] in ("running_mean", "running_var") or parts[-2:] == ["norm", "bias"]:
            continue
        if parts[0] == "stem":
            c2 = "conv1" if parts[-2] == "conv1" else "res_conv1_bn"
        else:
            stage, block, module = parts[0][3:], parts[1], parts[2]
            branch = "branch1" if module == "shortcut" else "branch2" + "abc"[int(module[-1]) - 1]
            c2 = f"res{stage}_{block}_{branch}" + ("_bn" if parts[-2] == "norm" else "")
        if parts[-2] == "norm":
            base = key[: -len("weight")]
            scale = value / np.sqrt(state[base + "running_var"] + 1e-5)
            blobs[c2 + "_s"] = scale
            blobs[c2 + "_b"] = state[base + "bias"] - state[base + "running_mean"] * scale
        else:
            blobs[c2 + "_w"] = value
    blobs["fc1000_w"], blobs["fc1000_b"] = np.zeros((1000, 2048)), np.zeros(1000)
    return blobs


def load_script(path: Path, name: str) -> ModuleType:
    """A script (``tools/*.py``, ``datasets/*.py``) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_coco_split(
    image_dir: Path,
    json_file: Path,
    num_images: int = 3,
    *,
    polygons: bool = False,
    edit: Callable[[dict], object] | None = None,
) -> dict:
    """``num_images`` 24x16 (width x height) PNGs, ids 1, 2, ..., with one box each (annotation
    ids 11, 12, ..., category ids 5 and 7) and, with ``polygons``, a polygon on each; their COCO
    JSON, changed by ``edit(coco)`` before it is written. Returns the JSON written."""
    image_dir.mkdir(parents=True, exist_ok=True)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(1, num_images + 1):
        name = f"{i:04d}.png"
        cv2.imwrite(str(image_dir / name), np.full((16, 24, 3), 40 * i, np.uint8))
        images.append({"id": i, "file_name": name, "height": 16, "width": 24})
        annotation = {
            "id": 10 + i,
            "image_id": i,
            "category_id": 5 if i % 2 else 7,
            "bbox": [2, 2, 8, 6],
            "area": 48,
            "iscrowd": 0,
        }
        if polygons:
            annotation["segmentation"] = [[2, 2, 10, 2, 10, 8, 2, 8]]
        annotations.append(annotation)
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    if edit is not None:
        edit(coco)
    json_file.write_text(json.dumps(coco))
    return coco


def load_dev_script(name: str) -> ModuleType:
    """``dev/<name>.py`` imported as module ``name``, registered in ``sys.modules`` (its
    dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "dev" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def flatten(node: dict, stem: str = "") -> dict[str, object]:
    """``{"MODEL.RESNETS.DEPTH": 50, ...}``: every leaf key of a cfg with its value."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{stem}{key}."))
        else:
            flat[f"{stem}{key}"] = value
    return flat
