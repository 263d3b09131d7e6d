"""ResNet weights of every source: reading files safely, telling their source, renaming to
Detectron2's names, the architecture they hold, writing Detectron2 checkpoints, and loading them
into a module.

Layout: ``formats`` (files), ``sources`` (the table of sources: one :class:`Source` record each,
:func:`register_source` adds one; :data:`PUBLISHED_WEIGHTS`, the published files by address),
``naming`` (the built-in naming schemes: recognising and renaming), ``self_supervised`` (the
schemes of MoCo, DenseCL, SwAV and DINO checkpoints), ``architecture``
(make_resnet arguments from tensors), ``read`` (:class:`Weights`, :func:`read_weights`),
``convert`` (writing), ``load`` (:func:`load_weights`).
"""

from .architecture import find_resnet, infer_architecture, resnet_prefix
from .convert import config_lines, write_detectron2_checkpoint
from .formats import UnsafeWeightsError, WeightsFormatError, atomic_write, read_file
from .load import LoadReport, WeightsShapeError, load_weights, summarise_names
from .read import Weights, read_weights, weights_from_object
from .sources import (
    KNOWN_URLS,
    PUBLISHED_WEIGHTS,
    SOURCES,
    InputSettings,
    PublishedWeights,
    Renamed,
    Source,
    claiming_sources,
    convert_state_dict,
    detect_source,
    published_weights,
    register_source,
    source_of_url,
)

__all__ = [
    "KNOWN_URLS",
    "PUBLISHED_WEIGHTS",
    "SOURCES",
    "InputSettings",
    "LoadReport",
    "PublishedWeights",
    "Renamed",
    "Source",
    "UnsafeWeightsError",
    "Weights",
    "WeightsFormatError",
    "WeightsShapeError",
    "atomic_write",
    "claiming_sources",
    "config_lines",
    "convert_state_dict",
    "detect_source",
    "infer_architecture",
    "load_weights",
    "published_weights",
    "read_file",
    "read_weights",
    "register_source",
    "find_resnet",
    "resnet_prefix",
    "source_of_url",
    "summarise_names",
    "weights_from_object",
    "write_detectron2_checkpoint",
]
