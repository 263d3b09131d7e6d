"""A pytest plugin that runs Detectron2's own tests offline, with its ResNet builders answered by
ours or left stock (used by dev/run_detectron2_tests.py).

Load it with ``-p detectron2_swap_plugin`` (``dev/`` on ``PYTHONPATH``); environment variables:

- ``BACKBONES_SWAP``: ``stock`` (default; Detectron2's built-in ResNet and ResNet-FPN) or ``ours``
  (every call of ``build_resnet_backbone`` / ``build_resnet_fpn_backbone``, through the registry
  or a name imported from Detectron2's modules, builds our backbone from a copy of the cfg with
  our ``BACKBONES`` node added);
- ``BACKBONES_MEMORY_FORMAT``: ``channels_last`` (default) or ``contiguous``, our
  ``BACKBONES.MEMORY_FORMAT`` when ``ours``.

In both modes nothing is downloaded: ``DetectionCheckpointer.load`` of a remote checkpoint
(``detectron2://``, ``http(s)://``, ...) fills the model with random tensors seeded by the URL and
each key's name (the same keys get the same values in every run, ours or stock),
``get_sample_coco_image`` returns seeded noise of the COCO image's size, and any other remote
path given to Detectron2's ``PathManager`` raises ``OSError`` at once.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections import Counter
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

SWAPS = ("stock", "ours")
MEMORY_FORMATS = ("channels_last", "contiguous")
REMOTE_PREFIXES = ("http://", "https://", "detectron2://", "manifold://", "s3://", "gs://")
# get_sample_coco_image's image: COCO train2017 000000000009.jpg, 480x640.
SAMPLE_IMAGE_SIZE = (480, 640)

# Calls answered by our builders in this session, by Detectron2's builder name.
BUILDS: Counter[str] = Counter()


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in allowed:
        raise pytest.UsageError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def is_remote(path: object) -> bool:
    return isinstance(path, str) and path.startswith(REMOTE_PREFIXES)


def seeded_state_dict(model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Random stand-ins for a checkpoint: one tensor per floating-point entry of the model's
    state dict, seeded by ``source`` and the key (integer buffers are kept).

    Drawn so that a random R-CNN gives detections to compare, with spread, unsaturated scores
    (measured on the zoo's RetinaNet, Mask R-CNN FPN and C4, Cascade R-CNN): norm variances
    0.5-1.5 and scales 0.5-1; conv weights of variance 1 / fan-in, fully connected ones 2 / fan-in
    (He); biases, shifts and means N(0, 0.1^2).
    """
    # MSRA-style configs feed 0-255 pixels (PIXEL_STD 1: the pretrained conv1 expects them); the
    # convs on the image's channels are scaled as if it were normalised (ImageNet's std 57.4).
    pixel_std = getattr(model, "pixel_std", None)
    image_scale = 1.0 if pixel_std is None else float(pixel_std.mean()) / 57.4
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(f"{source}#{key}".encode()))
        shape = value.shape
        if key.endswith("running_var"):
            tensor = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("norm.weight") and value.dim() == 1:
            tensor = torch.rand(shape, generator=gen) * 0.5 + 0.5
        elif value.dim() == 2:
            tensor = torch.randn(shape, generator=gen) * (2 / shape[1]) ** 0.5
        elif value.dim() > 2:
            tensor = torch.randn(shape, generator=gen) * value[0].numel() ** -0.5
            if shape[1] == 3:
                tensor *= image_scale
        else:
            tensor = torch.randn(shape, generator=gen) * 0.1
        state[key] = tensor.to(value.dtype)
    return state


def synthetic_coco_image(tensor: bool = True) -> torch.Tensor | np.ndarray:
    """Stands in for ``get_sample_coco_image``: seeded uint8 noise, BGR, 3xHxW (or HxWx3)."""
    image = np.random.default_rng(9).integers(0, 256, (*SAMPLE_IMAGE_SIZE, 3), dtype=np.uint8)
    if tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return image


def _stub_downloads() -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils import testing
    from detectron2.utils.file_io import PathManager

    load = DetectionCheckpointer.load

    def offline_load(self, path, *args, **kwargs):
        if not is_remote(path):
            return load(self, path, *args, **kwargs)
        self.model.load_state_dict(seeded_state_dict(self.model, path))
        return {}  # a remote checkpoint's other entries (optimizer, iteration) are not stubbed

    DetectionCheckpointer.load = offline_load
    testing.get_sample_coco_image = synthetic_coco_image

    def refuse_remote(method: Callable) -> Callable:
        def offline(path, *args, **kwargs):
            if is_remote(path):
                raise OSError(f"{path}: offline run, download refused by detectron2_swap_plugin")
            return method(path, *args, **kwargs)

        return offline

    PathManager.get_local_path = refuse_remote(PathManager.get_local_path)
    PathManager.open = refuse_remote(PathManager.open)


def _answered_by_ours(name: str, build: Callable, memory_format: str) -> Callable:
    from detectron2.config import CfgNode

    from backbones import add_backbones_config

    def build_ours(cfg: CfgNode, input_shape):
        cfg = cfg.clone()
        cfg.defrost()
        add_backbones_config(cfg)
        cfg.BACKBONES.MEMORY_FORMAT = memory_format
        BUILDS[name] += 1
        return build(cfg, input_shape)

    build_ours.__name__ = build_ours.__qualname__ = name
    return build_ours


def _swap_builders(memory_format: str) -> None:
    import detectron2.export  # noqa: F401  (imports the modules that may hold the names)
    import detectron2.model_zoo  # noqa: F401
    from detectron2.modeling.backbone import BACKBONE_REGISTRY

    from backbones import backbones_build_resnet_backbone, backbones_build_resnet_fpn_backbone

    for name, ours in (
        ("build_resnet_backbone", backbones_build_resnet_backbone),
        ("build_resnet_fpn_backbone", backbones_build_resnet_fpn_backbone),
    ):
        stock = BACKBONE_REGISTRY.get(name)
        wrapper = _answered_by_ours(name, ours, memory_format)
        # The registry refuses to register a name twice; its map is the one place to replace.
        BACKBONE_REGISTRY._obj_map[name] = wrapper
        # Names imported from Detectron2's modules, e.g. detectron2.modeling.backbone.fpn's
        # build_resnet_backbone (used by build_retinanet_resnet_fpn_backbone); the tests' own
        # `from detectron2... import build_resnet_backbone` run later and get the wrapper too.
        for module_name, module in list(sys.modules.items()):
            if module_name.split(".")[0] != "detectron2" or module is None:
                continue
            for attr in [a for a, value in vars(module).items() if value is stock]:
                setattr(module, attr, wrapper)


def pytest_configure(config: pytest.Config) -> None:
    swap = _choice("BACKBONES_SWAP", "stock", SWAPS)
    memory_format = _choice("BACKBONES_MEMORY_FORMAT", "channels_last", MEMORY_FORMATS)
    config.backbones_swap = swap if swap == "stock" else f"ours ({memory_format})"
    _stub_downloads()
    if swap == "ours":
        _swap_builders(memory_format)


def pytest_report_header(config: pytest.Config) -> str:
    import backbones

    return (
        f"backbones: {config.backbones_swap} (package at {os.path.dirname(backbones.__file__)}); "
        "downloads stubbed (seeded weights and image)"
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    builds = ", ".join(f"{name} x{count}" for name, count in sorted(BUILDS.items())) or "none"
    terminalreporter.write_line(f"backbones swap: {config.backbones_swap}; ours built: {builds}")
