"""Weight sources (torchvision, timm, MSRA/FAIR Caffe2, Detectron2, and the self-supervised
ResNet-50s of MoCo v1/v2/v3, DenseCL, SwAV and DINO) as one table of records: how each source's
files are recognised and renamed to Detectron2's ResNet names, the input settings its weights were
trained with, and the model-zoo addresses known to hold it.

Adding a weight source means one :class:`Source` record, passed to :func:`register_source` (or
written into :data:`SOURCES` below for a built-in one), and nothing else: reading, loading, the
config's input settings and ``tools/convert_weights.py`` all go through the table. A record needs
a ``name`` and a one-line ``description``; the ``input`` settings its weights were trained with
(None where they vary); ``detect(state, metadata)``, True for its files and for no file of another
source (:func:`detect_source` refuses a file two records claim); ``rename(state)``, giving a
:class:`Renamed` (tensors under Detectron2's names, ready to load, the names with no ResNet
counterpart, and the architecture facts only the original names show); and optionally ``urls``,
the address prefixes known to hold its weights. The built-in schemes' functions are in
:mod:`.naming` and (the self-supervised checkpoints') :mod:`.self_supervised`.

Published files are known by their exact address in :data:`PUBLISHED_WEIGHTS` (one
:class:`PublishedWeights` record each: source, architecture, training recipe), so a config that
names one learns its input settings and architecture without downloading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from ..specs import DEPTHS
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
from .self_supervised import (
    SELF_SUPERVISED_FILES,
    detect_densecl,
    detect_dino,
    detect_moco_v1,
    detect_moco_v2,
    detect_moco_v3,
    detect_selfsup_detectron2,
    detect_swav,
    rename_densecl,
    rename_dino,
    rename_moco,
    rename_moco_v3,
    rename_selfsup_detectron2,
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
        urls: address prefixes known to hold this source's weights and nothing else, answered
            by :func:`source_of_url` without downloading (a published file of a built-in source
            is a :class:`PublishedWeights` record instead: an exact address).
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
# are told apart by name style and signature entries: see naming.py and self_supervised.py;
# detect_source refuses a file two claim), so the order here is only the order of the listing.
SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "torchvision",
            "torchvision ResNet/ResNeXt/Wide ResNet state_dict",
            TORCHVISION_INPUT,
            detect_torchvision,
            rename_torchvision,
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
        ),
        Source(
            "fair",
            "FAIR Caffe2 ResNeXt pickle (X-101-32x8d.pkl)",
            FAIR_INPUT,
            detect_fair,
            rename_caffe2,
        ),
        Source(
            "detectron2",
            "Detectron2 checkpoint (Detectron2 names)",
            None,
            detect_detectron2,
            keep_names,
        ),
        # Self-supervised torchvision ResNets (self_supervised.py): each trained on RGB images
        # normalised with ImageNet's mean and std (their main_*.py transforms), stride in the
        # 3x3. SwAV's std is (0.228, 0.224, 0.225): 0.4% from torchvision's red, kept as is.
        Source(
            "moco_v1",
            "MoCo v1 checkpoint (main_moco.py: query encoder taken)",
            TORCHVISION_INPUT,
            detect_moco_v1,
            rename_moco,
        ),
        Source(
            "moco_v2",
            "MoCo v2 checkpoint (main_moco.py --mlp: query encoder taken)",
            TORCHVISION_INPUT,
            detect_moco_v2,
            rename_moco,
        ),
        Source(
            "moco_v3",
            "MoCo v3 ResNet checkpoint (base encoder taken)",
            TORCHVISION_INPUT,
            detect_moco_v3,
            rename_moco_v3,
        ),
        Source(
            "densecl",
            "DenseCL checkpoint or extracted backbone (query backbone taken)",
            TORCHVISION_INPUT,
            detect_densecl,
            rename_densecl,
        ),
        Source(
            "swav",
            "SwAV / DeepCluster-v2 checkpoint (backbone taken, heads and prototypes unused)",
            TORCHVISION_INPUT,
            detect_swav,
            rename_torchvision,
        ),
        Source(
            "dino",
            "DINO ResNet checkpoint (teacher backbone taken)",
            TORCHVISION_INPUT,
            detect_dino,
            rename_dino,
        ),
        Source(
            "selfsup_detectron2",
            "MoCo's / OpenSelfSup's Detectron2 conversion (convert-pretrain-to-detectron2.py)",
            TORCHVISION_INPUT,
            detect_selfsup_detectron2,
            rename_selfsup_detectron2,
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


# Address prefixes whose source is known without downloading them (registered records' urls).
KNOWN_URLS: Mapping[str, str] = _KnownUrls()


# ---------------------------------------------------------------------------------------------
# Published files, known by their exact address


@dataclass(frozen=True)
class PublishedWeights:
    """One published ImageNet weights file: what it holds, known without downloading it.

    Attributes:
        url: its address, as a config's ``MODEL.WEIGHTS`` names it.
        source: the key in :data:`SOURCES` of the weights' origin, whose ``input`` settings they
            were trained with (Detectron2's converted torchvision R-50 is "torchvision").
        depth: a key of :data:`backbones.specs.DEPTHS`.
        num_groups, width_per_group: the bottleneck's 3x3 conv (ResNeXt, wide ResNet).
        recipe: how it was trained: torchvision's ``IMAGENET1K_V1`` / ``V2`` recipes ("V1",
            "V2"), MSRA's (He et al., 2015) or FAIR's Caffe2 training ("MSRA", "FAIR"), a
            self-supervised method and its epochs ("MoCo v2 800ep").
        name: the model's name at its publisher (torchvision's builder, Detectron2's file, the
            self-supervised file's name).
    """

    url: str
    source: str
    depth: int
    num_groups: int = 1
    width_per_group: int = 64
    recipe: str = "V1"
    name: str = ""

    @property
    def architecture(self) -> dict[str, Any]:
        """What :func:`~backbones.weights.infer_architecture` reads from the file's tensors."""
        spec = DEPTHS[self.depth]
        arch: dict[str, Any] = dict(in_channels=3, stem_out_channels=64, depth=self.depth)
        if spec.block == "bottleneck":
            arch.update(num_groups=self.num_groups, width_per_group=self.width_per_group)
        arch["res2_out_channels"] = 256 if spec.block == "bottleneck" else 64
        arch.update(blocks_per_stage=spec.blocks_per_stage, residual=True)
        return arch


def _torchvision(
    name: str, depth: int, v1: str, v2: str = "", groups: int = 1, width: int = 64
) -> list[PublishedWeights]:
    """torchvision's IMAGENET1K_V1 and V2 files of one builder, by the hashes in their names
    (``torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url``)."""
    return [
        PublishedWeights(
            f"https://download.pytorch.org/models/{name}-{digest}.pth",
            "torchvision",
            depth,
            groups,
            width,
            recipe,
            name,
        )
        for digest, recipe in ((v1, "V1"), (v2, "V2"))
        if digest
    ]


def _file_name(url: str) -> str:
    """The file name of an address, without its query (``.pth?download=true``)."""
    return url.split("?")[0].rsplit("/", 1)[-1]


_IMAGENET = "detectron2://ImageNetPretrained/"

# Published ImageNet files by address: Detectron2's four (its MODEL_ZOO.md, "ImageNet Pretrained
# Models"), torchvision's ResNet family (its weight enums, torchvision.models.*_Weights) and the
# self-supervised ResNets of MoCo, MoCo v3, SwAV, DINO and DenseCL (their READMEs).
PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    w.url: w
    for w in (
        PublishedWeights(f"{_IMAGENET}MSRA/R-50.pkl", "msra", 50, recipe="MSRA", name="R-50"),
        PublishedWeights(f"{_IMAGENET}MSRA/R-101.pkl", "msra", 101, recipe="MSRA", name="R-101"),
        PublishedWeights(
            f"{_IMAGENET}FAIR/X-101-32x8d.pkl", "fair", 101, 32, 8, "FAIR", "X-101-32x8d"
        ),
        # torchvision's resnet50 (V1), renamed to Detectron2's names by Detectron2.
        PublishedWeights(f"{_IMAGENET}torchvision/R-50.pkl", "torchvision", 50, name="R-50"),
        *_torchvision("resnet18", 18, "f37072fd"),
        *_torchvision("resnet34", 34, "b627a593"),
        *_torchvision("resnet50", 50, "0676ba61", "11ad3fa6"),
        *_torchvision("resnet101", 101, "63fe2227", "cd907fc2"),
        *_torchvision("resnet152", 152, "394f9c45", "f82ba261"),
        *_torchvision("resnext50_32x4d", 50, "7cdf4587", "1a0047aa", 32, 4),
        *_torchvision("resnext101_32x8d", 101, "8ba56ff5", "110c445d", 32, 8),
        *_torchvision("resnext101_64x4d", 101, "173b62eb", "", 64, 4),
        *_torchvision("wide_resnet50_2", 50, "95faca4d", "9ba9bcbe", width=128),
        *_torchvision("wide_resnet101_2", 101, "32ee1156", "d733dc28", width=128),
        # Self-supervised ResNets at their publishers' addresses (SELF_SUPERVISED_FILES), named
        # by their file name.
        *(
            PublishedWeights(url, source, depth, recipe=recipe, name=_file_name(url))
            for source, url, depth, recipe in SELF_SUPERVISED_FILES
        ),
    )
}


def published_weights(url: str) -> PublishedWeights | None:
    """The record of a published file by its exact address, None for other addresses."""
    return PUBLISHED_WEIGHTS.get(url)


def source_of_url(url: str) -> str | None:
    """The source of a weights address without downloading it: a published file's
    (:data:`PUBLISHED_WEIGHTS`), else the record with the longest matching prefix in its
    ``urls``; None for other addresses."""
    published = PUBLISHED_WEIGHTS.get(url)
    if published is not None:
        return published.source
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
