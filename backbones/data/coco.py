"""COCO-format data: the COCO 2017 layout Detectron2 expects, its check, and custom datasets.

Detectron2 registers ``coco_2017_{train,val}`` at import against
``$DETECTRON2_DATASETS/coco/{train2017,val2017}`` and
``$DETECTRON2_DATASETS/coco/annotations/instances_{train2017,val2017}.json``
(``DETECTRON2_DATASETS`` defaults to ``datasets``, relative to the working directory).
:func:`check_coco_layout` reports what of that is present, missing or inconsistent;
:func:`register_coco_dataset` and ``BACKBONES.COCO_DATASETS`` register a user's own
COCO-format data under a name that ``DATASETS.TRAIN`` / ``DATASETS.TEST`` can use.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..coco_json import COCO_LISTS, COCOFormatError, read_coco_json
from .coco_faults import FaultReport, Finding, find_coco_faults, find_image_faults

__all__ = [
    "COCO_SPLITS",
    "CocoLayoutReport",
    "SplitReport",
    "check_coco_dataset",
    "check_coco_layout",
    "coco_root",
    "datasets_root",
    "link_coco",
    "register_coco_dataset",
    "check_dataset_entry",
    "register_datasets_from_cfg",
]

logger = logging.getLogger(__name__)

COCO_SPLITS = ("train2017", "val2017")
# Names of missing or inconsistent items quoted in a report, per kind of problem.
_EXAMPLES = 5


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, or ``datasets`` (relative to the working directory)."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def coco_root() -> str:
    """The COCO folder Detectron2's builtin ``coco_2017_*`` datasets read:
    ``$DETECTRON2_DATASETS/coco``, or ``datasets/coco``."""
    return os.path.join(datasets_root(), "coco")


# ---------------------------------------------------------------------------------------------
# Layout check


@dataclass
class SplitReport:
    """What :func:`check_coco_dataset` found for one dataset or split, e.g. ``val2017``.

    Attributes:
        split: split or dataset name.
        image_dir: the image folder (``<root>/<split>`` in the COCO layout).
        json_file: the instances JSON (``<root>/annotations/instances_<split>.json``).
        present: what is there, one readable line each.
        missing: what is absent (folder, JSON, image files).
        inconsistent: what is there but wrong (JSON not readable as COCO, the error of
            :func:`~backbones.coco_json.read_coco_json`; dangling ids, malformed annotations,
            duplicate ids, unreadable images or sizes that differ from the JSON).
        num_images, num_annotations, num_categories: counts in the JSON (``None`` if unread).
        num_checked: listed images looked up on disk.
        num_missing_images: listed images that are not on disk.
        faults: with ``faults=True``, the data faults (:mod:`backbones.data.coco_faults`);
            unknown ids, malformed annotations and, with ``check_images``, unreadable images
            and wrong sizes are then findings there instead of ``inconsistent`` lines (which
            summarise the same findings).
    """

    split: str
    image_dir: Path
    json_file: Path
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    num_images: int | None = None
    num_annotations: int | None = None
    num_categories: int | None = None
    num_checked: int = 0
    num_missing_images: int = 0
    faults: FaultReport | None = None

    @property
    def ok(self) -> bool:
        """Nothing missing, nothing inconsistent, no fatal data fault."""
        faults_ok = self.faults is None or self.faults.ok
        return not self.missing and not self.inconsistent and faults_ok

    def format(self) -> str:
        """The report as indented text, one finding per line."""
        lines = [f"{self.split}: {'OK' if self.ok else 'INCOMPLETE'}"]
        for title, items in (
            ("present", self.present),
            ("missing", self.missing),
            ("inconsistent", self.inconsistent),
        ):
            lines += [f"  {title}: {item}" for item in items]
        if self.faults is not None:  # every finding: prepare_coco.py promises them all
            lines += [f"  {line}" for line in self.faults.format()]
        return "\n".join(lines)


@dataclass
class CocoLayoutReport:
    """What :func:`check_coco_layout` found under ``root``, split by split."""

    root: Path
    splits: list[SplitReport]

    @property
    def ok(self) -> bool:
        """Every split complete and consistent."""
        return all(s.ok for s in self.splits)

    @property
    def missing(self) -> list[str]:
        """Everything missing, prefixed with its split."""
        return [f"{s.split}: {m}" for s in self.splits for m in s.missing]

    @property
    def inconsistent(self) -> list[str]:
        """Everything inconsistent, prefixed with its split."""
        return [f"{s.split}: {m}" for s in self.splits for m in s.inconsistent]

    def format(self) -> str:
        """The whole report as text: a headline, then one block per split."""
        state = "OK" if self.ok else "INCOMPLETE"
        return "\n".join(
            [f"COCO layout at {self.root}: {state}", *(s.format() for s in self.splits)]
        )

    __str__ = format


def _examples(names: Iterable[Any]) -> str:
    names = list(names)
    shown = ", ".join(str(n) for n in names[:_EXAMPLES])
    return shown + (", ..." if len(names) > _EXAMPLES else "")


def _duplicates(ids: Iterable[Any]) -> list[Any]:
    return [i for i, n in Counter(ids).items() if n > 1]


def _read_coco_json(report: SplitReport) -> dict | None:
    """Parse the split's JSON and record its counts; ``None`` (and a finding) if unusable."""
    path = report.json_file
    if not path.is_file():
        report.missing.append(f"annotations {path}")
        return None
    try:
        coco = read_coco_json(path)
    except COCOFormatError as e:
        report.inconsistent.append(f"annotations {e}")
        return None
    report.num_images = len(coco["images"])
    report.num_annotations = len(coco["annotations"])
    report.num_categories = len(coco["categories"])
    report.present.append(
        f"annotations {path} ({report.num_images} images, {report.num_annotations} annotations, "
        f"{report.num_categories} categories)"
    )
    return coco


def _check_ids(report: SplitReport, coco: dict) -> None:
    """Duplicate ids (Detectron2's loader refuses duplicate annotation ids and keeps one image
    of those sharing an id), and annotations without one."""
    path = report.json_file
    try:
        for key in COCO_LISTS:
            dups = _duplicates(entry["id"] for entry in coco[key])
            if dups:
                report.inconsistent.append(
                    f"annotations {path}: {len(dups)} duplicate {key} ids ({_examples(dups)})"
                )
    except (KeyError, TypeError) as e:
        report.inconsistent.append(f"annotations {path}: an entry lacks the field {e}")


# Annotation faults summarised as one line each when check_coco_dataset is not asked for the
# fault report itself.
_ANNOTATION_SUMMARIES = {
    "unknown_image": "annotations with an unknown image_id",
    "unknown_category": "annotations with an unknown category_id",
    "malformed": "annotations that are not objects with image_id and category_id",
}


def _summarize_annotation_faults(report: SplitReport, findings: Sequence[Finding]) -> None:
    """The id faults of :func:`find_coco_faults` as one ``inconsistent`` line per kind."""
    for kind, what in _ANNOTATION_SUMMARIES.items():
        bad = [f.annotation_id for f in findings if f.kind == kind]
        if bad:
            report.inconsistent.append(
                f"annotations {report.json_file}: {len(bad)} {what} (annotation ids "
                f"{_examples(bad)})"
            )


def missing_image_files(coco: dict, image_root: str | os.PathLike) -> tuple[list[Any], int]:
    """The ``file_name`` of each image of ``coco`` that is not a file under ``image_root``, and
    the number of files in the folder: one directory listing (a set lookup per image, no stat);
    names with a folder part fall back to the filesystem.

    Raises:
        OSError: the folder cannot be listed.
    """
    root = Path(image_root)
    on_disk = {entry.name for entry in os.scandir(root) if entry.is_file()}
    missing = [
        image.get("file_name")
        for image in coco["images"]
        if image.get("file_name") not in on_disk
        and not (root / str(image.get("file_name"))).is_file()
    ]
    return missing, len(on_disk)


def _check_image_files(report: SplitReport, coco: dict, check_images: bool) -> None:
    """Listed images absent from ``image_dir``; with ``check_images``, also open each one
    (decoded, with findings, when ``report.faults`` is there)."""
    try:
        missing, num_files = missing_image_files(coco, report.image_dir)
    except OSError as e:
        report.inconsistent.append(f"images {report.image_dir}: cannot list the folder ({e})")
        return
    report.present.append(f"images {report.image_dir} ({num_files} files)")
    images = coco["images"]
    report.num_checked = len(images)
    report.num_missing_images = len(missing)
    if missing:
        report.missing.append(
            f"images: {len(missing)} of {len(images)} listed in {report.json_file.name} are not in "
            f"{report.image_dir} ({_examples(missing)})"
        )
    if check_images:
        absent = set(missing)
        present = [i for i in images if i.get("file_name") not in absent]
        if report.faults is not None:
            report.faults.findings += find_image_faults(present, report.image_dir, report.json_file)
        else:
            _summarize_image_faults(report, present)


def _summarize_image_faults(report: SplitReport, images: Sequence[dict]) -> None:
    """The image faults of :func:`find_image_faults` as one ``inconsistent`` line per kind."""
    names = {image["id"]: image.get("file_name") for image in images}
    findings = find_image_faults(images, report.image_dir, report.json_file)
    for kind, what in (
        ("unreadable_image", "cannot be read as images"),
        ("image_size", "differ in size from their JSON width/height"),
    ):
        bad = [names[f.image_id] for f in findings if f.kind == kind]
        if bad:
            report.inconsistent.append(
                f"images: {len(bad)} of {len(images)} {what} ({_examples(bad)})"
            )


def check_coco_dataset(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    name: str | None = None,
    check_images: bool = False,
    faults: bool = False,
) -> SplitReport:
    """Check one COCO-format dataset: its instances JSON and the folder of its images.

    Found problems are collected, never raised.

    Args:
        json_file: COCO instances JSON.
        image_root: folder the JSON's ``file_name`` entries are relative to.
        name: the name in the report; ``None`` means the JSON's file name.
        check_images: also decode every listed image (with a progress bar,
            :func:`~backbones.data.coco_faults.find_image_faults`) to find unreadable files and
            sizes that differ from the JSON; without it, only their presence in the folder is
            checked (all of them: one directory listing).
        faults: also find the data faults (``report.faults``,
            :func:`~backbones.data.coco_faults.find_coco_faults`, and the image faults as
            findings); fatal ones make the report not ``ok``.

    Returns:
        the report; ``report.ok`` is whether everything is there and consistent.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    report = SplitReport(name or json_file.name, image_root, json_file)
    image_dir_present = image_root.is_dir()
    if not image_dir_present:
        report.missing.append(f"images folder {image_root}")
    coco = _read_coco_json(report)
    if coco is not None:
        _check_ids(report, coco)
        found = find_coco_faults(coco, json_file)
        if faults:
            report.faults = found
        else:
            _summarize_annotation_faults(report, found.findings)
        if image_dir_present:
            _check_image_files(report, coco, check_images)
    return report


def check_coco_layout(
    root: str | os.PathLike | None = None,
    splits: Sequence[str] = COCO_SPLITS,
    *,
    check_images: bool = False,
    faults: bool = False,
) -> CocoLayoutReport:
    """Check a COCO folder as Detectron2's builtin datasets read it.

    Expected: ``root/<split>/`` with the images and ``root/annotations/instances_<split>.json``
    for every split, each checked by :func:`check_coco_dataset`.

    Args:
        root: the COCO folder; ``None`` means :func:`coco_root`.
        splits: the splits to check.
        check_images, faults: as in :func:`check_coco_dataset`.

    Returns:
        the report; ``report.ok`` is whether everything is there and consistent, ``str(report)``
        its text form.
    """
    root = Path(coco_root() if root is None else root)
    reports = []
    for split in splits:
        json_file = root / "annotations" / f"instances_{split}.json"
        if root.is_dir():
            report = check_coco_dataset(
                json_file, root / split, name=split, check_images=check_images, faults=faults
            )
        else:
            report = SplitReport(split, root / split, json_file, missing=[f"COCO folder {root}"])
        reports.append(report)
    return CocoLayoutReport(root, reports)


def link_coco(source: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Make ``root`` a symbolic link to an existing COCO folder ``source``.

    Args:
        source: a folder holding ``train2017/``, ``val2017/`` and ``annotations/``.
        root: where Detectron2 looks; ``None`` means :func:`coco_root`. Its parent folders are
            created. A link that already points at ``source`` is kept.

    Returns:
        ``root``.

    Raises:
        FileNotFoundError: if ``source`` is not a folder.
        FileExistsError: if ``root`` exists and is not a link to ``source``.
    """
    source = Path(source).absolute()
    root = Path(coco_root() if root is None else root)
    if not source.is_dir():
        raise FileNotFoundError(f"Cannot link {root} to {source}: no such folder")
    if root.is_symlink() and root.resolve() == source.resolve():
        return root
    if root.exists() or root.is_symlink():
        raise FileExistsError(f"Cannot link {root} to {source}: {root} already exists; remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    root.symlink_to(source, target_is_directory=True)
    return root


# ---------------------------------------------------------------------------------------------
# Custom datasets


def register_coco_dataset(
    name: str, json_file: str | os.PathLike, image_root: str | os.PathLike
) -> str:
    """Register a COCO-format instances dataset (Detectron2's ``register_coco_instances``).

    Paths are made absolute now, so later changes of the working directory do not matter. The
    JSON is read only when the dataset is first loaded; class names and the category id map
    are then set in its metadata.

    Args:
        name: the name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: COCO instances JSON.
        image_root: folder the JSON's ``file_name`` entries are relative to.

    Returns:
        ``name``.

    Raises:
        FileNotFoundError: if ``json_file`` or ``image_root`` does not exist.
        ValueError: if ``name`` is empty or already registered with other files (registering
            the same files again is a no-op).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A dataset name must be a non-empty string, got {name!r}")
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Dataset {name!r}: annotation file {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Dataset {name!r}: image folder {image_root} does not exist")
    if name in DatasetCatalog:
        # as_dict: reading a shapes dataset's json_file attribute would generate it.
        old = MetadataCatalog.get(name).as_dict()
        old_files = tuple(
            os.path.abspath(old[k]) if old.get(k) else None for k in ("json_file", "image_root")
        )
        if old_files == (json_file, image_root):
            return name
        raise ValueError(
            f"Dataset {name!r} is already registered with json_file={old_files[0]}, "
            f"image_root={old_files[1]}; cannot register it with json_file={json_file}, "
            f"image_root={image_root}. Choose another name."
        )
    register_coco_instances(name, {}, json_file, image_root)
    logger.info("Registered COCO-format dataset %r: %s, images in %s", name, json_file, image_root)
    return name


def check_dataset_entry(key: str, entry: Any) -> tuple[str, str, str]:
    """``entry`` as ``(name, json_file, image_root)``.

    Raises:
        ValueError: naming ``key``, if ``entry`` is not three strings.
    """
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != 3
        or not all(isinstance(v, str) for v in entry)
    ):
        raise ValueError(f"{key}={entry!r}: expected [name, json_file, image_root], three strings")
    return entry[0], entry[1], entry[2]


def register_datasets_from_cfg(cfg: CfgNode) -> list[str]:
    """Register every ``[name, json_file, image_root]`` of ``cfg.BACKBONES.COCO_DATASETS``.

    Returns:
        the registered names, in config order.

    Raises:
        ValueError, FileNotFoundError: as :func:`register_coco_dataset`, naming the config key.
    """
    names = []
    for index, entry in enumerate(cfg.BACKBONES.COCO_DATASETS):
        key = f"BACKBONES.COCO_DATASETS[{index}]"
        name, json_file, image_root = check_dataset_entry(key, entry)
        try:
            names.append(register_coco_dataset(name, json_file, image_root))
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{key}: {e}") from None
    return names
