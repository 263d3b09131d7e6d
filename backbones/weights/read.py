"""A weights file read and renamed to Detectron2's names: the Weights record, read_weights."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .architecture import infer_architecture, resnet_prefix
from .formats import read_file
from .sources import SOURCES, InputSettings, convert_state_dict, detect_source


@dataclass
class Weights:
    """A weights file read and renamed to Detectron2's names.

    Attributes:
        path: the file.
        source: a key of :data:`SOURCES`.
        state: tensors by Detectron2 name; backbone-only files use the ResNet's own names
            (``stem.*``, ``res2.*``..), detector checkpoints keep their full names
            (``backbone.bottom_up.res2.*``, ``roi_heads.*``).
        input: the input settings of the source or stored in the file, None if unknown.
        architecture: :func:`backbones.make_resnet` arguments read from the tensors (depth,
            num_groups, width_per_group, stem/res2 widths, deep stem, avg-down where known).
        unused: names (original) the file has that have no ResNet counterpart (``fc.*``).
        metadata: what the file stores besides tensors (Detectron2's ``__author__``, ours).
    """

    path: str
    source: str
    state: dict[str, torch.Tensor]
    input: InputSettings | None
    architecture: dict[str, Any] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The source the tensors first came from (a converted file remembers it)."""
        stored = (self.metadata.get("backbones") or {}).get("source")
        return f"{stored}, converted" if stored and stored != self.source else self.source

    @property
    def is_backbone_only(self) -> bool:
        """True for ImageNet files (ResNet names only), False for detector checkpoints."""
        return not any(k.startswith(("backbone.", "roi_heads.")) for k in self.state)

    def resnet_state(self) -> dict[str, torch.Tensor]:
        """The ResNet's tensors under their ResNet-relative names (``stem.*``, ``res2.*``, ...)."""
        if self.is_backbone_only:
            return dict(self.state)
        prefix = resnet_prefix(self.state)
        return {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)}


def read_weights(
    path: str | os.PathLike, *, trusted: bool = False, progress: Callable | None = None
) -> Weights:
    """Read a ResNet weights file of any supported source, renamed to Detectron2's names.

    Args:
        path: a local torchvision / timm ``state_dict`` (.pth, .pt, .bin, .safetensors),
            Detectron2 checkpoint (.pth, or a zoo .pkl with a ``model`` dict) or MSRA/FAIR Caffe2
            pickle (.pkl with Caffe2 names, optionally under ``blobs``).
        trusted: allow arbitrary pickled objects (runs code from the file).
        progress: optional ``file -> file`` wrapper around reads.

    Returns:
        :class:`Weights`; its ``input`` holds the input settings of the source, or the settings
        stored in the file by ``tools/convert_weights.py`` and our training checkpoints.
    """
    path = str(path)
    return weights_from_object(read_file(path, trusted=trusted, progress=progress), path)


def weights_from_object(obj: Any, path: str = "<weights>") -> Weights:
    """:func:`read_weights` for an object already read by :func:`read_file` (or built in memory:
    a ``state_dict``, a checkpoint dict)."""
    source, state, meta = detect_source(obj, path)
    converted, unused, facts = convert_state_dict(source, state)
    settings = SOURCES[source].input
    ours = meta.get("backbones") or {}
    if ours.get("input"):
        settings = InputSettings.from_dict(ours["input"])
    weights = Weights(path, source, converted, settings, unused=unused, metadata=meta)
    arch = infer_architecture(weights.resnet_state())
    arch.update(facts)
    arch.update(ours.get("architecture") or {})
    weights.architecture = arch
    return weights
