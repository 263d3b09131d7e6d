"""The one COCO JSON reader (``backbones.coco_json``): structure checks, one error type, and the
registration check, the data fault scan and evaluation all reading through it."""

from __future__ import annotations

import copy
import json
import re

import pytest

from backbones.coco_json import (
    COCOFormatError,
    check_coco_instances,
    read_coco_json,
    read_coco_results,
)
from backbones.data import check_coco_dataset
from backbones.data.coco_faults import DataFaultError, scan_coco_file
from backbones.evaluation import COCOFormatError as EvaluationError
from backbones.evaluation import evaluate_results, load_gt_file, load_results_file

from helpers import write_coco_split

GOOD = {
    "images": [
        {"id": 1, "file_name": "a.png", "height": 16, "width": 24},
        {"id": 2, "file_name": "b.png", "height": 16.0, "width": 24.0},  # integral floats: fine
    ],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4]}],
    "categories": [{"id": 5, "name": "cat"}],
}


def _edited(edit) -> dict:
    coco = copy.deepcopy(GOOD)
    edit(coco)
    return coco


def test_a_good_file_is_returned_as_parsed(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GOOD))
    assert read_coco_json(path) == GOOD
    assert load_gt_file(path) == GOOD  # evaluation's name for the same reader
    results = [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 4], "score": 0.5}]
    path.write_text(json.dumps(results))
    assert read_coco_results(path) == results == load_results_file(path)


# case: (file text, what the message says after "<file>: ")
BAD_FILES = {
    "empty": ("", "the file is empty; expected a COCO instances object"),
    "blank": ("  \n", "the file is empty"),
    "invalid JSON": ('{"images": [}', "not valid JSON at line 1, column 13: Expecting value"),
    "a list": ("[]", "not COCO instances (a JSON list, not an object with lists 'images', "),
    "lists missing": ('{"images": []}', "not COCO instances (no list 'annotations', 'categories')"),
    "a list not a list": (
        json.dumps(_edited(lambda c: c.update(categories={"id": 5}))),
        "not COCO instances (no list 'categories'); see docs/data.md for the format",
    ),
    "image not an object": (
        json.dumps(_edited(lambda c: c["images"].append([3, 16, 24]))),
        "images[2] is a JSON list, not an object",
    ),
    "image without size": (
        json.dumps(_edited(lambda c: c["images"][1].pop("width"))),
        "images[1] has no width (each of images needs id, height, width)",
    ),
    "image of size 0": (
        json.dumps(_edited(lambda c: c["images"][0].update(height=0))),
        "images[0]: height 0 is not a positive integer",
    ),
    "fractional width": (
        json.dumps(_edited(lambda c: c["images"][0].update(width=24.5))),
        "images[0]: width 24.5 is not a positive integer",
    ),
    "image id a list": (
        json.dumps(_edited(lambda c: c["images"][0].update(id=[1]))),
        "images[0]: id [1] is not an integer or a string",
    ),
    "category without name": (
        json.dumps(_edited(lambda c: c["categories"][0].pop("name"))),
        "categories[0] has no name (each of categories needs id, name)",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_names_file_entry_and_fix(tmp_path, case):
    text, message = BAD_FILES[case]
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(COCOFormatError) as error:
        read_coco_json(path)
    assert str(error.value).startswith(f"{path}: {message}")
    if case not in ("empty", "blank", "invalid JSON"):
        assert str(error.value).endswith("; see docs/data.md for the format")


def test_results_file_errors(tmp_path):
    path = tmp_path / "dt.json"
    where = re.escape(str(path))
    with pytest.raises(COCOFormatError, match=f"^{where}: cannot read: .*No such file"):
        read_coco_results(path)
    path.write_text('{"image_id": 1}')
    with pytest.raises(COCOFormatError, match=f"^{where}: expected a JSON list of results, got a"):
        read_coco_results(path)
    path.write_bytes(b"[\xff]")
    with pytest.raises(COCOFormatError, match=f"^{where}: cannot read: 'utf-8' codec"):
        read_coco_results(path)


def test_a_parsed_dict_is_checked_as_a_file_is():
    coco = _edited(lambda c: c["categories"].append({"id": 7}))
    with pytest.raises(COCOFormatError, match=r"^ground truth: categories\[1\] has no name"):
        check_coco_instances(coco, "ground truth")
    assert check_coco_instances(GOOD, "x") is GOOD


def test_one_error_type_under_every_old_name():
    assert EvaluationError is COCOFormatError and DataFaultError is COCOFormatError
    assert issubclass(COCOFormatError, ValueError)


def test_registration_check_fault_scan_and_evaluation_read_through_it(tmp_path):
    """A file the reader refuses gives its message everywhere: an ``inconsistent`` line of the
    dataset check, the fault scan's error, evaluation's error."""
    image_root, json_file = tmp_path / "images", tmp_path / "train.json"
    write_coco_split(image_root, json_file, edit=lambda c: c["images"][2].pop("height"))
    message = f"{json_file}: images[2] has no height (each of images needs id, height, width)"
    report = check_coco_dataset(json_file, image_root, faults=True)
    assert not report.ok and report.faults is None
    assert report.inconsistent == [f"annotations {message}; see docs/data.md for the format"]
    with pytest.raises(COCOFormatError, match=f"^{re.escape(message)}"):
        scan_coco_file(json_file)
    with pytest.raises(COCOFormatError, match=f"^{re.escape(message)}"):
        evaluate_results(json_file, [])
