"""ResNet weight files from torchvision, timm, Detectron2 and MSRA/FAIR Caffe2 pickles.

Reads a file without executing code, tells its source from its content, renames its tensors to
Detectron2's ResNet names (``stem.conv1.norm.weight``, ``res4.3.conv2.weight``, ...), and carries
the input settings (BGR/RGB, pixel mean and std, stride placement) that the weights were trained
with.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from .errors import BackboneOptionError
from .specs import DEPTHS

__all__ = [
    "SOURCES",
    "InputSettings",
    "Source",
    "UnsafeWeightsError",
    "Weights",
    "WeightsFormatError",
    "config_lines",
    "convert_state_dict",
    "detect_source",
    "read_file",
    "read_weights",
    "weights_from_object",
    "write_detectron2_checkpoint",
]

# Legacy (non-zip) torch.save files start with this pickled number (torch.serialization).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightsFormatError(ValueError):
    """A weights file that cannot be read or whose format is unknown; names the file."""


class UnsafeWeightsError(WeightsFormatError):
    """A weights file that needs code beyond tensors, arrays and containers to be unpickled."""


@dataclass(frozen=True)
class InputSettings:
    """How images must be prepared for a set of weights.

    Attributes:
        format: channel order, "RGB" or "BGR" (``INPUT.FORMAT``).
        pixel_mean, pixel_std: per channel in that order, on 0-255 pixels
            (``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``).
        stride_in_1x1: where bottleneck blocks put the stage stride
            (``MODEL.RESNETS.STRIDE_IN_1X1``).
    """

    format: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    stride_in_1x1: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(
            format=self.format,
            pixel_mean=list(self.pixel_mean),
            pixel_std=list(self.pixel_std),
            stride_in_1x1=self.stride_in_1x1,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSettings:
        return cls(
            format=str(d["format"]),
            pixel_mean=tuple(float(v) for v in d["pixel_mean"]),
            pixel_std=tuple(float(v) for v in d["pixel_std"]),
            stride_in_1x1=bool(d["stride_in_1x1"]),
        )


# ImageNet statistics on 0-255 pixels, RGB order (torchvision's and timm's transforms).
_IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
_IMAGENET_STD_RGB = (58.395, 57.12, 57.375)

TORCHVISION_INPUT = InputSettings("RGB", _IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB, False)
# MSRA's Caffe2 ResNets: BGR, mean subtracted, the std folded into conv1 (Detectron's configs).
MSRA_INPUT = InputSettings("BGR", _IMAGENET_MEAN_RGB[::-1], (1.0, 1.0, 1.0), True)
# FAIR's Caffe2 ResNeXts (X-101-32x8d): BGR with the std, stride in the 3x3 (Detectron2's configs).
FAIR_INPUT = InputSettings("BGR", _IMAGENET_MEAN_RGB[::-1], _IMAGENET_STD_RGB[::-1], False)


@dataclass(frozen=True)
class Source:
    """Where a weights file comes from and the input settings that go with it (None: unknown)."""

    name: str
    description: str
    input: InputSettings | None


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "torchvision", "torchvision ResNet/ResNeXt/Wide ResNet state_dict", TORCHVISION_INPUT
        ),
        Source(
            "timm", "timm ResNet state_dict (deep stem / avg-down: ResNet-D)", TORCHVISION_INPUT
        ),
        Source("msra", "MSRA Caffe2 ResNet pickle (Detectron's R-50.pkl, R-101.pkl)", MSRA_INPUT),
        Source("fair", "FAIR Caffe2 ResNeXt pickle (X-101-32x8d.pkl)", FAIR_INPUT),
        Source("detectron2", "Detectron2 checkpoint (Detectron2 names)", None),
    )
}

# Detectron2 model-zoo addresses whose source is known without downloading them.
KNOWN_URLS: dict[str, str] = {
    "detectron2://ImageNetPretrained/MSRA/": "msra",
    "detectron2://ImageNetPretrained/FAIR/": "fair",
    "detectron2://ImageNetPretrained/torchvision/": "torchvision",
}


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


# ---------------------------------------------------------------------------------------------
# Reading files without running code


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and scalars, and containers; anything else is refused."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            # Protocol 5 pickles rebuild arrays from their bytes with _frombuffer.
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
            # Python 3 writes bytes for Python 2 readers as _codecs.encode(str, "latin1").
            ("_codecs", "encode"),
        }
    )

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file, encoding="latin1")  # Detectron's pickles come from Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeWeightsError(
            f"{self._path}: refusing to unpickle '{module}.{name}': a weights pickle needs only "
            "numpy arrays and containers, and unpickling anything else can run code. If you "
            "trust this file, load it with trusted=True (BACKBONES.TRUST_WEIGHTS_FILE True, or "
            "--trusted in tools/convert_weights.py)."
        )


def _numpy_safe_globals() -> list[Any]:
    from numpy import dtypes

    multiarray = getattr(np, "_core", None) or np.core
    found = [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray]
    return found + [np.dtype] + [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]


def _torch_load(f: Any, path: str, trusted: bool) -> Any:
    if trusted:
        return torch.load(f, map_location="cpu", weights_only=False)
    try:
        # Detectron2 and older tools store numpy arrays in .pth files: admit those, nothing else.
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"'{match.group(1)}'" if match else "objects other than tensors"
        raise UnsafeWeightsError(
            f"{path}: refusing to load {what} with torch.load(weights_only=True): loading it "
            "could run code. If you trust this file, load it with trusted=True "
            "(BACKBONES.TRUST_WEIGHTS_FILE True, or --trusted in tools/convert_weights.py)."
        ) from None


def read_file(
    path: str | os.PathLike, *, trusted: bool = False, progress: Callable | None = None
) -> Any:
    """The object stored in a weights file, read without executing code unless ``trusted``.

    torch files (zip or legacy) go through ``torch.load(weights_only=True)`` with numpy arrays
    admitted; plain pickles through an unpickler that admits only numpy arrays, scalars and
    containers; ``.safetensors`` through safetensors.

    Args:
        path: a local file.
        trusted: allow arbitrary pickled objects (runs code from the file: trusted files only).
        progress: optional ``file -> seekable binary file`` applied to the open file, e.g. one
            that reads it into memory behind a progress bar.

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightsError: the file needs other objects and ``trusted`` is False.
        WeightsFormatError: truncated, empty, or not a weights file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    if os.path.getsize(path) == 0:
        raise WeightsFormatError(f"{path}: the file is empty")
    with open(path, "rb") as raw:
        head = raw.read(16)
    if path.endswith(".safetensors") or (len(head) > 9 and head[8:10] == b'{"'):
        return _read_safetensors(path)
    try:
        with open(path, "rb") as raw:
            f = progress(raw) if progress else raw
            if zipfile.is_zipfile(f):
                f.seek(0)
                return _torch_load(f, path, trusted)
            f.seek(0)
            if trusted:
                first = pickle.Unpickler(f, encoding="latin1").load()
            else:
                first = _ArraysOnlyUnpickler(f, path).load()
            if isinstance(first, int) and first == _TORCH_LEGACY_MAGIC:
                f.seek(0)
                return _torch_load(f, path, trusted)
            return first
    except WeightsFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsFormatError(
            f"{path}: not a readable weights file (truncated or not a torch/pickle file): {e}"
        ) from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise WeightsFormatError(
            f"{path}: reading .safetensors needs `pip install safetensors`"
        ) from e
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise WeightsFormatError(f"{path}: not a readable .safetensors file: {e}") from None


# ---------------------------------------------------------------------------------------------
# Telling the source from the content


def _unwrap(obj: Any, path: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The tensor dict inside a checkpoint, and its other top-level entries."""
    if not isinstance(obj, Mapping):
        raise WeightsFormatError(
            f"{path}: expected a dict of tensors or a checkpoint dict, found {type(obj).__name__}"
        )
    # Detectron2 / torch training loops, timm / torchvision scripts, Caffe2, pycls (.pyth).
    for key in ("model", "state_dict", "blobs", "model_state"):
        if isinstance(obj.get(key), Mapping):
            meta = {k: v for k, v in obj.items() if k != key and not isinstance(v, Mapping)}
            if key == "blobs":
                meta["caffe2"] = True
            if isinstance(obj.get("backbones"), Mapping):
                meta["backbones"] = dict(obj["backbones"])
            return obj[key], meta
    return obj, {}


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    # DistributedDataParallel / DataParallel checkpoints prefix every name with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _is_caffe2(keys: Iterable[str]) -> bool:
    return any(k in ("conv1_w", "res_conv1_bn_s") or k.startswith("res2_0_branch") for k in keys)


def _is_torchvision_like(keys: set[str]) -> bool:
    return "layer1.0.conv1.weight" in keys


def _is_detectron2(keys: set[str]) -> bool:
    return any(re.match(r"(.*\.)?(stem\.conv1|res2\.0\.conv1)\.weight$", k) for k in keys)


def detect_source(obj: Any, path: str = "<weights>") -> tuple[str, Mapping[str, Any], dict]:
    """Tell the source of an object read by :func:`read_file`.

    Returns:
        (source name in :data:`SOURCES`, the tensor dict with its original names, metadata).

    Raises:
        WeightsFormatError: the names match no known ResNet format.
    """
    state, meta = _unwrap(obj, path)
    state = _strip_module_prefix(state)
    keys = set(state)
    if meta.get("caffe2") or _is_caffe2(keys):
        # Only FAIR released ResNeXt (grouped 3x3) Caffe2 pickles; MSRA's are plain ResNets.
        conv = state.get("res2_0_branch2b_w")
        grouped = conv is not None and np.shape(conv)[0] // np.shape(conv)[1] > 1
        return ("fair" if grouped else "msra"), state, meta
    if _is_torchvision_like(keys) or "conv1.0.weight" in keys:
        # timm's ResNet-D has a 3-conv stem (conv1.0/.3/.6); plain timm ResNets have
        # torchvision's names and training statistics, so they read as torchvision.
        deep = "conv1.0.weight" in keys
        return ("timm" if deep else "torchvision"), state, meta
    if _is_detectron2(keys):
        return "detectron2", state, meta
    sample = ", ".join(sorted(keys)[:5]) or "no tensors"
    raise WeightsFormatError(
        f"{path}: unknown weights format (names: {sample}, ...). Known: torchvision and timm "
        "ResNet state_dicts, Detectron2 checkpoints (.pth/.pkl with 'model'), MSRA/FAIR Caffe2 "
        "pickles."
    )


# ---------------------------------------------------------------------------------------------
# Renaming to Detectron2's ResNet names


def _torchvision_name(name: str, deep_stem: bool, avg_down: bool) -> str | None:
    """torchvision/timm name -> Detectron2 name, None for tensors without a ResNet counterpart."""
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
    return None


# timm deep-stem layer index -> (our stem conv number, is its norm).
_DEEP_STEM_LAYERS = {0: (1, False), 1: (1, True), 3: (2, False), 4: (2, True), 6: (3, False)}

_CAFFE2_LEAF = {
    "w": "weight",
    "b": "bias",
    "s": "weight",
    "rm": "running_mean",
    "riv": "running_var",
}


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


def _to_tensor(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (np.generic, int, float)):
        return torch.as_tensor(value)
    return value


def convert_state_dict(
    source: str, state: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """Rename a state dict of ``source`` to Detectron2's names.

    Returns:
        (tensors by Detectron2 name, original names with no ResNet counterpart (``fc.*``),
        architecture facts only the original names show, e.g. ``{"avg_down": True}``).
    """
    converted: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    facts: dict[str, Any] = {}
    if source == "detectron2":
        converted = {k: _to_tensor(v) for k, v in state.items()}
        return converted, unused, facts
    if source in ("msra", "fair"):
        rename = _caffe2_name
    else:
        deep = "conv1.0.weight" in state
        # timm's avg-down shortcut is [pool, conv, bn]: its conv sits at index 1.
        avg_down = any(re.fullmatch(r"layer\d\.0\.downsample\.2\.weight", k) for k in state)
        if deep or avg_down:
            facts.update(stem_type="deep" if deep else "basic", avg_down=avg_down)

        def rename(name: str) -> str | None:
            return _torchvision_name(name, deep, avg_down)

    for name, value in state.items():
        new = rename(name)
        if new is None:
            unused.append(name)
        else:
            converted[new] = _to_tensor(value)
    if source in ("msra", "fair"):
        # Caffe2 folded BN into an affine scale/bias: the statistics that make FrozenBN apply
        # exactly that affine map are mean 0 and variance 1 - eps (Detectron2's FrozenBN eps).
        for name in [k for k in converted if k.endswith(".norm.weight")]:
            base, weight = name[: -len("weight")], converted[name]
            converted.setdefault(base + "running_mean", torch.zeros_like(weight))
            converted.setdefault(base + "running_var", torch.full_like(weight, 1.0 - 1e-5))
    return converted, unused, facts


# ---------------------------------------------------------------------------------------------
# Architecture from the tensors


def resnet_prefix(state: Mapping[str, Any]) -> str:
    """The prefix under which a checkpoint holds the ResNet ("" or ``backbone.bottom_up.``...)."""
    for key in state:
        m = re.match(r"(.*?)(stem\.conv1\.weight)$", key)
        if m:
            return m.group(1)
    return ""


def infer_architecture(resnet_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`backbones.make_resnet` arguments read from the shapes of ResNet-named tensors.

    Returns:
        a dict with what the tensors show: ``depth``, ``in_channels``, ``stem_out_channels``,
        ``res2_out_channels``, bottleneck ``num_groups`` / ``width_per_group``, deep-stem
        ``stem_type`` / ``stem_width``. Empty where the names are not a ResNet's.
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
    if bottleneck:
        conv2 = resnet_state["res2.0.conv2.weight"]
        groups = int(conv2.shape[0]) // int(conv2.shape[1])
        arch.update(num_groups=groups, width_per_group=int(conv2.shape[0]) // groups)
        arch["res2_out_channels"] = int(resnet_state["res2.0.conv3.weight"].shape[0])
    elif "res2.0.conv2.weight" in resnet_state:
        arch["res2_out_channels"] = int(resnet_state["res2.0.conv2.weight"].shape[0])
    arch["blocks_per_stage"] = counts
    return arch


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


def architecture_options(
    given: Mapping[str, Any], defaults: Mapping[str, Any], weights: Weights | None
) -> dict[str, Any]:
    """Constructor options: the caller's where given (not None), else what ``weights`` shows
    (its architecture, and the stride placement of its source), else ``defaults``.

    Raises:
        BackboneOptionError: a given depth that is not the file's.
    """
    from_file: dict[str, Any] = dict(weights.architecture) if weights is not None else {}
    if weights is not None and weights.input is not None:
        from_file["stride_in_1x1"] = weights.input.stride_in_1x1
    depth = given.get("depth")
    if depth is not None and from_file.get("depth") not in (None, depth):
        raise BackboneOptionError(
            "depth",
            depth,
            str(from_file["depth"]),
            f"{weights.path} holds a ResNet-{from_file['depth']} "
            f"(blocks per stage {tuple(from_file['blocks_per_stage'])})",
        )
    return {
        name: given[name] if given.get(name) is not None else from_file.get(name, default)
        for name, default in defaults.items()
    }


def source_of_url(url: str) -> str | None:
    """The source of a known Detectron2 model-zoo address, without downloading it."""
    for prefix, source in KNOWN_URLS.items():
        if url.startswith(prefix):
            return source
    return None


# ---------------------------------------------------------------------------------------------
# Writing Detectron2 checkpoints


def config_lines(weights: Weights, weights_path: str) -> list[str]:
    """YAML lines that build the architecture of ``weights`` with its input settings."""
    arch, lines = weights.architecture, ["MODEL:", f'  WEIGHTS: "{weights_path}"']
    if weights.input is not None:
        lines.append(f"  PIXEL_MEAN: {_yaml_list(weights.input.pixel_mean)}")
        lines.append(f"  PIXEL_STD: {_yaml_list(weights.input.pixel_std)}")
    resnets = {"DEPTH": arch.get("depth")}
    depth_spec = DEPTHS.get(arch.get("depth"))
    if depth_spec is not None and depth_spec.block == "bottleneck":
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
            f'STEM_WIDTH: {arch.get("stem_width", 32)}, AVG_DOWN: {bool(arch.get("avg_down"))}}}'
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


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Write through ``write(binary file)`` into a temporary file next to ``path``, then rename
    it over ``path``: a crash or a full disk never leaves a truncated file under the real name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
