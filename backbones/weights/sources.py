"""Weight sources (torchvision, timm, MSRA/FAIR Caffe2, Detectron2) as one table of records: how
each source's files are recognised and renamed to Detectron2's ResNet names, the input settings its
weights were trained with, and the model-zoo addresses known to hold it.

Adding a weight source means one :class:`Source` record, passed to :func:`register_source` (or
written into :data:`SOURCES` below for a built-in one), and nothing else: reading, loading, the
config's input settings and ``tools/convert_weights.py`` all go through the table. A record needs
a ``name`` and a one-line ``description``; the ``input`` settings its weights were trained with
(None where they vary); ``detect(state, metadata)``, True for its files and for no file of another
source (:func:`detect_source` refuses a file two records claim); ``rename(state)``, giving a
:class:`Renamed` (tensors under Detectron2's names, ready to load, the names with no ResNet
counterpart, and the architecture facts only the original names show); and optionally ``urls``,
the address prefixes known to hold its weights. The built-in schemes' functions are in
:mod:`.naming`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .formats import WeightsFormatError
from .naming import (
    Renamed,
    detect_detectron2,
    detect_fair,
    detect_msra,
    detect_timm,
    detect_torchvision,
    keep_names,
    rename_caffe2,
    rename_torchvision,
)


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


# (unwrapped tensor dict, checkpoint metadata) -> True for the files of one source.
Detect = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
# tensor dict -> the tensors under Detectron2's names, unused names, architecture facts.
Rename = Callable[[Mapping[str, Any]], Renamed]


@dataclass(frozen=True)
class Source:
    """One weight source: how its files are recognised and renamed, and how images must be
    prepared for its weights.

    Attributes:
        name: its key in :data:`SOURCES` (``Weights.source``, ``LoadReport.source``).
        description: one line for logs and error messages.
        input: the input settings its weights were trained with; None where they vary
            (Detectron2 checkpoints: the file's stored settings or the config's apply).
        detect: ``(state, metadata) -> bool``, True for this source's files and no other
            source's. ``state`` is the tensor dict unwrapped from the checkpoint (``model``,
            ``state_dict``, ``blobs``..., the ``module.`` prefix removed), ``metadata`` the
            checkpoint's other top-level entries (``caffe2``: True for a Caffe2 ``blobs`` dict).
        rename: ``state -> Renamed``: the tensors under Detectron2's names with everything they
            need to load into Detectron2's modules (Caffe2's FrozenBN statistics), the original
            names with no ResNet counterpart, and architecture facts (``avg_down``...).
        urls: address prefixes (Detectron2's model zoo) known to hold this source's weights,
            answered by :func:`source_of_url` without downloading.
    """

    name: str
    description: str
    input: InputSettings | None
    detect: Detect
    rename: Rename
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            raise TypeError(
                f"Source {self.name!r}: urls must be a tuple of address prefixes, not the string "
                f"{self.urls!r}; write urls=({self.urls!r},)"
            )
        object.__setattr__(self, "urls", tuple(self.urls))


# The one table of weight sources. No file is claimed by two records' detect (the built-in ones
# are told apart by name style: see naming.py; detect_source refuses a file two claim), so the
# order here is only the order in which they are listed.
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "torchvision",
            "torchvision ResNet/ResNeXt/Wide ResNet state_dict",
            TORCHVISION_INPUT,
            detect_torchvision,
            rename_torchvision,
            urls=("detectron2://ImageNetPretrained/torchvision/",),
        ),
        Source(
            "timm",
            "timm ResNet state_dict (deep stem / avg-down: ResNet-D)",
            TORCHVISION_INPUT,
            detect_timm,
            rename_torchvision,
        ),
        Source(
            "msra",
            "MSRA Caffe2 ResNet pickle (Detectron's R-50.pkl, R-101.pkl)",
            MSRA_INPUT,
            detect_msra,
            rename_caffe2,
            urls=("detectron2://ImageNetPretrained/MSRA/",),
        ),
        Source(
            "fair",
            "FAIR Caffe2 ResNeXt pickle (X-101-32x8d.pkl)",
            FAIR_INPUT,
            detect_fair,
            rename_caffe2,
            urls=("detectron2://ImageNetPretrained/FAIR/",),
        ),
        Source(
            "detectron2",
            "Detectron2 checkpoint (Detectron2 names)",
            None,
            detect_detectron2,
            keep_names,
        ),
    )
}


def register_source(source: Source) -> Source:
    """Add a weight source to :data:`SOURCES`; from then on its files are read, renamed and
    loaded everywhere (see the module docstring for what the record needs).

    Returns:
        ``source``.

    Raises:
        ValueError: its name, or one of its address prefixes, is already another record's.
    """
    if source.name in SOURCES:
        raise ValueError(
            f"weight source {source.name!r} is already registered "
            f"({SOURCES[source.name].description}); give the new record another name "
            f"(taken: {', '.join(SOURCES)})"
        )
    for prefix in source.urls:
        other = _url_table().get(prefix)
        if other is not None:
            raise ValueError(
                f"weight source {source.name!r}: the address prefix {prefix!r} already belongs "
                f"to {other!r}; a prefix names one source"
            )
    SOURCES[source.name] = source
    return source


def _url_table() -> dict[str, str]:
    return {prefix: s.name for s in SOURCES.values() for prefix in s.urls}


class _KnownUrls(Mapping[str, str]):
    """Address prefix -> source name, read from the ``urls`` of the records in SOURCES (records
    registered later included)."""

    def __getitem__(self, prefix: str) -> str:
        return _url_table()[prefix]

    def __iter__(self) -> Iterator[str]:
        return iter(_url_table())

    def __len__(self) -> int:
        return len(_url_table())

    def __repr__(self) -> str:
        return repr(_url_table())


# Detectron2 model-zoo addresses whose source is known without downloading them.
KNOWN_URLS: Mapping[str, str] = _KnownUrls()


def source_of_url(url: str) -> str | None:
    """The source of a known Detectron2 model-zoo address, without downloading it (the record
    with the longest matching prefix in its ``urls``), None for other addresses."""
    table = _url_table()
    matches = [prefix for prefix in table if url.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


# ---------------------------------------------------------------------------------------------
# Telling the source of a file


def unwrap(obj: Any, path: str = "<weights>") -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensor dict inside a checkpoint (``module.`` prefix removed) and its metadata.

    Returns:
        (tensors by their original names, the checkpoint's other top-level entries, plus
        ``caffe2: True`` for a Caffe2 ``blobs`` dict and our ``backbones`` entry).

    Raises:
        WeightsFormatError: ``obj`` is not a dict.
    """
    if not isinstance(obj, Mapping):
        raise WeightsFormatError(
            f"{path}: expected a dict of tensors or a checkpoint dict, found {type(obj).__name__}"
        )
    state, meta = obj, {}
    # Detectron2 / torch training loops, timm / torchvision scripts, Caffe2, pycls (.pyth).
    for key in ("model", "state_dict", "blobs", "model_state"):
        if isinstance(obj.get(key), Mapping):
            meta = {k: v for k, v in obj.items() if k != key and not isinstance(v, Mapping)}
            if key == "blobs":
                meta["caffe2"] = True
            if isinstance(obj.get("backbones"), Mapping):
                meta["backbones"] = dict(obj["backbones"])
            state = obj[key]
            break
    # DistributedDataParallel / DataParallel checkpoints prefix every name with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}, meta
    return dict(state), meta


def claiming_sources(state: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """The names of the records in :data:`SOURCES` whose ``detect`` claims these tensors (one,
    for every file a source describes)."""
    return [s.name for s in SOURCES.values() if s.detect(state, meta)]


def detect_source(obj: Any, path: str = "<weights>") -> tuple[str, dict[str, Any], dict]:
    """Tell the source of an object read by :func:`read_file`: the one record of
    :data:`SOURCES` whose ``detect`` claims its tensors.

    Returns:
        (source name in :data:`SOURCES`, the tensor dict with its original names, metadata).

    Raises:
        WeightsFormatError: no record claims the names (unknown format), or more than one does
            (names of several formats mixed, or overlapping ``detect`` functions).
    """
    state, meta = unwrap(obj, path)
    claims = claiming_sources(state, meta)
    if len(claims) == 1:
        return claims[0], state, meta
    sample = ", ".join(sorted(state)[:5]) or "no tensors"
    if claims:
        raise WeightsFormatError(
            f"{path}: the tensor names (names: {sample}, ...) match several weight sources: "
            f"{', '.join(claims)}. A file holds one source's names; if it does, the detect "
            "functions of those records overlap: each must claim only its own files."
        )
    known = "; ".join(f"{s.name} ({s.description})" for s in SOURCES.values())
    raise WeightsFormatError(
        f"{path}: unknown weights format (names: {sample}, ...). Known: {known}. Another naming "
        "scheme is one Source record added with backbones.weights.register_source."
    )


def convert_state_dict(source: str, state: Mapping[str, Any]) -> Renamed:
    """Rename a state dict of ``source`` to Detectron2's names with that record's ``rename``.

    Returns:
        :class:`Renamed`: (tensors by Detectron2 name, original names with no ResNet
        counterpart (``fc.*``), architecture facts only the original names show, e.g.
        ``{"avg_down": True}``).

    Raises:
        ValueError: ``source`` is not a key of :data:`SOURCES`.
    """
    record = SOURCES.get(source)
    if record is None:
        raise ValueError(f"unknown weight source {source!r}; known: {', '.join(SOURCES)}")
    return record.rename(state)
