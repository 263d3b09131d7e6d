"""Reading COCO JSON files (Lin et al., 2014, "Microsoft COCO"): an instances file or a results
list, its structure checked, every problem a :class:`COCOFormatError` naming the file and entry.

The one reader of registration checks (``backbones.data.coco``), the data fault scan
(``backbones.data.coco_faults``) and evaluation (``backbones.evaluation.results``); standard
library only, so that both subpackages can import it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "COCO_LISTS",
    "COCOFormatError",
    "check_coco_instances",
    "json_type",
    "read_coco_json",
    "read_coco_results",
]

logger = logging.getLogger(__name__)

COCO_LISTS = ("images", "annotations", "categories")
# Files from this size on are announced before they are parsed: 0.5 s of json.loads and more
# (a 63 MB file of 200,000 box-and-polygon results takes 2.4 s on one core).
_ANNOUNCE_BYTES = 16 * 2**20
_SEE_FORMAT = "see docs/data.md for the format"


class COCOFormatError(ValueError):
    """A COCO JSON file, or an entry of one, that is not in the COCO format (or, raised by the
    data fault scan, has fatal data faults). The message names the file, the entry and the fix."""


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: ``object``, ``list``, ``string``, ``int``, ..."""
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    # Integral floats (640.0) too: some converters write them, and Detectron2 compares equal.
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
        and value == int(value)
    )


# What an image and a category must have (Detectron2's load_coco_json and COCOeval read them):
# key -> (check, what the value must be). Annotations are checked one by one by their readers
# (the fault scan names each bad one with its ids; COCOeval reads the ground truth's).
_ENTRY_KEYS = {
    "images": {
        "id": (_is_id, "an integer or a string"),
        "height": (_is_size, "a positive integer"),
        "width": (_is_size, "a positive integer"),
    },
    "categories": {
        "id": (_is_id, "an integer or a string"),
        "name": (lambda v: isinstance(v, str), "a string"),
    },
}


def check_coco_instances(coco: Any, source: str | os.PathLike) -> dict:
    """Check the structure of a parsed COCO instances file: an object with the lists
    ``images``, ``annotations`` and ``categories``; every image an object with ``id``,
    ``height`` and ``width``, every category one with ``id`` and ``name``.

    Args:
        coco: the parsed JSON.
        source: how errors name it (the file, or e.g. "ground truth").

    Returns:
        ``coco``.

    Raises:
        COCOFormatError: naming ``source`` and the first entry at fault.
    """
    if not isinstance(coco, dict):
        raise COCOFormatError(
            f"{source}: not COCO instances (a JSON {json_type(coco)}, not an object with lists "
            f"{', '.join(map(repr, COCO_LISTS))}); {_SEE_FORMAT}"
        )
    absent = [key for key in COCO_LISTS if not isinstance(coco.get(key), list)]
    if absent:
        raise COCOFormatError(
            f"{source}: not COCO instances (no list {', '.join(map(repr, absent))}); {_SEE_FORMAT}"
        )
    for key, needed in _ENTRY_KEYS.items():
        for index, entry in enumerate(coco[key]):
            if not isinstance(entry, dict):
                raise COCOFormatError(
                    f"{source}: {key}[{index}] is a JSON {json_type(entry)}, not an object; "
                    + _SEE_FORMAT
                )
            missing = [k for k in needed if k not in entry]
            if missing:
                raise COCOFormatError(
                    f"{source}: {key}[{index}] has no {', '.join(missing)} (each of {key} needs "
                    f"{', '.join(needed)}); {_SEE_FORMAT}"
                )
            for name, (check, what) in needed.items():
                if not check(entry[name]):
                    raise COCOFormatError(
                        f"{source}: {key}[{index}]: {name} {entry[name]!r} is not {what}; "
                        + _SEE_FORMAT
                    )
    return coco


def _read(path: str | os.PathLike, expected: str) -> Any:
    """The parsed JSON of ``path``; errors say that ``expected`` was expected."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise COCOFormatError(f"{path}: cannot read: {e}") from None
    if len(text) >= _ANNOUNCE_BYTES:
        logger.info(f"reading {path} ({len(text) / 2**20:.0f} MB of JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if not text.strip():
            raise COCOFormatError(f"{path}: the file is empty; expected {expected}") from None
        raise COCOFormatError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}; expected "
            f"{expected}"
        ) from None


def read_coco_json(path: str | os.PathLike) -> dict:
    """A COCO instances (ground-truth) file, its structure checked by
    :func:`check_coco_instances`.

    Args:
        path: the JSON file.

    Returns:
        the parsed object.

    Raises:
        COCOFormatError: naming ``path``: unreadable or empty file, invalid JSON (line and
            column), a missing list, an image or category without its keys.
    """
    return check_coco_instances(_read(path, "a COCO instances object"), path)


def read_coco_results(path: str | os.PathLike) -> list:
    """A COCO results file: a JSON list, its entries unchecked (they need the ground truth:
    ``backbones.evaluation.validate_results``).

    Args:
        path: the JSON file.

    Returns:
        the parsed list.

    Raises:
        COCOFormatError: naming ``path``: unreadable or empty file, invalid JSON, not a list.
    """
    data = _read(path, "a JSON list of results")
    if not isinstance(data, list):
        raise COCOFormatError(
            f"{path}: expected a JSON list of results, got a JSON {json_type(data)}"
        )
    return data
