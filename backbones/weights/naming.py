"""Tensor naming schemes of ResNet weights (torchvision/timm, MSRA/FAIR Caffe2, Detectron2): how
each is recognised from its names, and renamed to Detectron2's ResNet names.

Each ``detect_*`` function claims one source's files and none of the others', by name style:
a file with any Caffe2 blob name is Caffe2's (MSRA's or FAIR's by its res2 3x3); a file signed by
a publisher's script (:data:`SIGNATURES`, e.g. DenseCL's ``author`` entry) is that publisher's;
otherwise one with torchvision's names and only torchvision's top-level modules (``conv1``,
``bn1``, ``layer1``..``layer4``, ``fc``; timm's deep stem ``conv1.0``) is torchvision's or timm's
(by its stem); otherwise one with Detectron2's names is Detectron2's. The self-supervised
checkpoints' schemes (MoCo, DenseCL, SwAV, DINO) are in :mod:`.self_supervised`. Each
``rename_*`` function returns a :class:`Renamed`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch


class Renamed(NamedTuple):
    """A state dict renamed to Detectron2's names.

    Attributes:
        state: tensors by Detectron2 name, ready for Detectron2's modules.
        unused: original names with no ResNet counterpart (``fc.*``, ``fc1000_w``).
        facts: architecture facts only the original names show, e.g. ``{"avg_down": True}``
            (:func:`backbones.make_resnet` arguments).
    """

    state: dict[str, torch.Tensor]
    unused: list[str]
    facts: dict[str, Any]


def to_tensor(value: Any) -> Any:
    """A tensor for numpy arrays and scalars (Caffe2 pickles, Detectron2's .pkl); else as is."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        # ascontiguousarray makes a 0-d array 1-d: the reshape keeps a scalar a scalar (BN's
        # num_batches_tracked in Detectron2 conversions of torchvision BatchNorm).
        return torch.from_numpy(np.ascontiguousarray(value)).reshape(value.shape)
    if isinstance(value, (np.generic, int, float)):
        return torch.as_tensor(value)
    return value


# ---------------------------------------------------------------------------------------------
# torchvision and timm: conv1 / bn1 / layer1..4 / fc


def detect_torchvision(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """torchvision names with the single 7x7 stem conv (also timm's plain ResNets, which have
    torchvision's names and training statistics)."""
    return _torchvision_file(state, meta) and "conv1.0.weight" not in state


def detect_timm(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """timm's deep stem (``conv1.0/.3/.6``: ResNet-C/D), the name torchvision lacks."""
    return _torchvision_file(state, meta) and "conv1.0.weight" in state


# The top-level modules of torchvision's and timm's ResNets (timm's SE, attention and blur
# layers sit under layerN). A file with another top-level name holds more than a classifier
# ResNet (a SwAV projection head and prototypes, a MoCo encoder pair): another source's.
TORCHVISION_MODULES = frozenset({"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"})


def torchvision_names(state: Mapping[str, Any]) -> bool:
    """True where the tensors include a torchvision/timm ResNet's own names at the top level."""
    return "layer1.0.conv1.weight" in state or "conv1.0.weight" in state


def _torchvision_file(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    if _caffe2_file(state, meta) or signed_by(meta) is not None or not torchvision_names(state):
        return False
    return all(name.split(".", 1)[0] in TORCHVISION_MODULES for name in state)


# Checkpoint entries by which a publisher's script signs the files it writes -> the source they
# name: such a file is that source's whatever its tensor names (which are torchvision's or
# Detectron2's). DenseCL's tools/extract_backbone_weights.py writes {"state_dict", "author"};
# MoCo's and OpenSelfSup's (DenseCL's) detection/convert-pretrain-to-detectron2.py write
# {"model", "__author__", "matching_heuristics"}.
SIGNATURES: dict[tuple[str, str], str] = {
    ("author", "DenseCL"): "densecl",
    ("__author__", "MOCO"): "selfsup_detectron2",
    ("__author__", "OpenSelfSup"): "selfsup_detectron2",
}


def signed_by(meta: Mapping[str, Any]) -> str | None:
    """The source a checkpoint's signature entry names (:data:`SIGNATURES`), None if unsigned."""
    for (key, value), source in SIGNATURES.items():
        if meta.get(key) == value:
            return source
    return None


def rename_torchvision(state: Mapping[str, Any]) -> Renamed:
    """torchvision / timm names -> Detectron2 names; timm's deep stem and avg-down shortcut
    (read from the names) are reported as ``stem_type`` / ``avg_down`` facts. timm's SE-ResNets'
    ``layerN.M.se.*`` (applied after the last conv's norm, before the sum) become the SE plugin's
    ``resN+1.M.after_conv3.se.*`` (``after_conv2`` in basic blocks), which
    ``make_resnet(weights=...)`` reads back as its ``plugins``."""
    deep = "conv1.0.weight" in state
    # timm's avg-down shortcut is [pool, conv, bn]: its conv sits at index 1.
    avg_down = any(re.fullmatch(r"layer\d\.0\.downsample\.2\.weight", k) for k in state)
    last_conv = 3 if "layer1.0.conv3.weight" in state else 2
    facts: dict[str, Any] = {}
    if deep or avg_down:
        facts.update(stem_type="deep" if deep else "basic", avg_down=avg_down)
    return _rename_each(
        state, lambda name: _torchvision_name(name, deep, avg_down, last_conv), facts
    )


def _torchvision_name(name: str, deep_stem: bool, avg_down: bool, last_conv: int = 3) -> str | None:
    """torchvision/timm name -> Detectron2 name, None for tensors without a ResNet counterpart
    (``last_conv``: the block's last conv, after which timm applies SE)."""
    if deep_stem:
        # timm's deep stem: conv1 = [conv, bn, act, conv, bn, act, conv]; bn1 follows the last.
        m = re.fullmatch(r"conv1\.([0-6])\.(.+)", name)
        if m and int(m.group(1)) in _DEEP_STEM_LAYERS:
            conv, norm = _DEEP_STEM_LAYERS[int(m.group(1))]
            return f"stem.conv{conv}." + ("norm." if norm else "") + m.group(2)
        if name.startswith("bn1."):
            return "stem.conv3.norm." + name[len("bn1.") :]
    elif name == "conv1.weight":
        return "stem.conv1.weight"
    elif name.startswith("bn1."):
        return "stem.conv1.norm." + name[len("bn1.") :]
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", name)
    if not m:
        return None
    prefix, rest = f"res{int(m.group(1)) + 1}.{m.group(2)}.", m.group(3)
    m = re.fullmatch(r"(conv|bn)([1-3])\.(.+)", rest)
    if m:
        kind, index, leaf = m.groups()
        return prefix + f"conv{index}." + ("norm." if kind == "bn" else "") + leaf
    m = re.fullmatch(r"downsample\.([0-2])\.(.+)", rest)
    if m:
        # torchvision: downsample = [conv, bn]; timm's avg-down: [pool, conv, bn].
        index, leaf = int(m.group(1)) - int(avg_down), m.group(2)
        return prefix + "shortcut." + ("norm." if index == 1 else "") + leaf
    m = re.fullmatch(r"se\.(fc[12]\.(?:weight|bias))", rest)
    if m:  # timm's SEModule: fc1, fc2 (its bn is an Identity)
        return prefix + f"after_conv{last_conv}.se." + m.group(1)
    return None


# timm deep-stem layer index -> (our stem conv number, is its norm).
_DEEP_STEM_LAYERS = {0: (1, False), 1: (1, True), 3: (2, False), 4: (2, True), 6: (3, False)}


# ---------------------------------------------------------------------------------------------
# MSRA / FAIR Caffe2 pickles (Detectron's naming): conv1_w / res_conv1_bn_s / res2_0_branch2a_w


def detect_msra(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Caffe2 names with a plain 3x3 in res2: MSRA's ResNets (R-50.pkl, R-101.pkl)."""
    return _caffe2_file(state, meta) and not _caffe2_grouped(state)


def detect_fair(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Caffe2 names with a grouped 3x3 in res2: only FAIR released ResNeXt pickles."""
    return _caffe2_file(state, meta) and _caffe2_grouped(state)


def _caffe2_file(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    # Caffe2's "blobs" wrapper (set by the unwrapping in sources.py), or its blob names.
    return bool(meta.get("caffe2")) or any(
        k in ("conv1_w", "res_conv1_bn_s") or k.startswith("res2_0_branch") for k in state
    )


def _caffe2_grouped(state: Mapping[str, Any]) -> bool:
    conv = state.get("res2_0_branch2b_w")
    return conv is not None and np.shape(conv)[0] // np.shape(conv)[1] > 1


_CAFFE2_LEAF = {
    "w": "weight",
    "b": "bias",
    "s": "weight",
    "rm": "running_mean",
    "riv": "running_var",
}


def rename_caffe2(state: Mapping[str, Any]) -> Renamed:
    """MSRA/FAIR Caffe2 names -> Detectron2 names, with the FrozenBN statistics Caffe2 lacks."""
    renamed = _rename_each(state, _caffe2_name, {})
    converted = renamed.state
    # Caffe2 folded BN into an affine scale/bias: the statistics that make FrozenBN apply
    # exactly that affine map are mean 0 and variance 1 - eps (Detectron2's FrozenBN eps).
    for name in [k for k in converted if k.endswith(".norm.weight")]:
        base, weight = name[: -len("weight")], converted[name]
        converted.setdefault(base + "running_mean", torch.zeros_like(weight))
        converted.setdefault(base + "running_var", torch.full_like(weight, 1.0 - 1e-5))
    return renamed


def _caffe2_name(name: str) -> str | None:
    """MSRA/FAIR Caffe2 name -> Detectron2 name (Detectron's ResNet naming)."""
    if name == "conv1_w":
        return "stem.conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name)
    if m:
        return "stem.conv1.norm." + _CAFFE2_LEAF[m.group(1)]
    m = re.fullmatch(r"res(\d)_(\d+)_branch(1|2[abc])(_bn)?_(w|b|s|rm|riv)", name)
    if not m:
        return None
    stage, block, branch, bn, leaf = m.groups()
    module = "shortcut" if branch == "1" else "conv" + str("abc".index(branch[1]) + 1)
    return f"res{stage}.{block}.{module}." + ("norm." if bn else "") + _CAFFE2_LEAF[leaf]


# ---------------------------------------------------------------------------------------------
# Detectron2 checkpoints: stem.conv1 / res2.0.conv1, bare or under a detector's prefix


def detect_detectron2(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Detectron2's ResNet names (``stem.conv1``, ``res2.0.conv1``), under any prefix, in a file
    without Caffe2's or torchvision's names and signed by no publisher's converter (a signed one
    is that publisher's: :data:`SIGNATURES`)."""
    if _caffe2_file(state, meta) or torchvision_names(state) or signed_by(meta) is not None:
        return False
    return any(re.match(r"(.*\.)?(stem\.conv1|res2\.0\.conv1)\.weight$", k) for k in state)


def keep_names(state: Mapping[str, Any]) -> Renamed:
    """Detectron2 names already: every tensor kept under its name (numpy arrays as tensors)."""
    return Renamed({k: to_tensor(v) for k, v in state.items()}, [], {})


def _rename_each(
    state: Mapping[str, Any], rename: Callable[[str], str | None], facts: dict[str, Any]
) -> Renamed:
    """Rename tensor by tensor with ``rename(name) -> new name | None`` (None: unused)."""
    converted: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for name, value in state.items():
        new = rename(name)
        if new is None:
            unused.append(name)
        else:
            converted[new] = to_tensor(value)
    return Renamed(converted, unused, facts)
