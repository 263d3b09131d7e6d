"""``backbones.progress.Progress`` on a fake clock (rate limit, ETA, last line, unknown and empty
totals), and the progress lines of the evaluation path it serves."""

from __future__ import annotations

import logging

import pytest

from backbones import progress as progress_module
from backbones.evaluation import evaluate_results
from backbones.progress import Progress, format_duration

LOGGER = "backbones.test_progress"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _progress(total: int | None, clock: Clock, every_s: float = 5.0, **kwargs) -> Progress:
    logger = logging.getLogger(LOGGER)
    return Progress(total, what="work", logger=logger, every_s=every_s, clock=clock, **kwargs)


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0:00:00"), (59.9, "0:00:59"), (310, "0:05:10"), (3 * 3600 + 7, "3:00:07")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert format_duration(100 * 3600) == "100:00:00"  # hours do not wrap into days
    assert format_duration(-3) == "0:00:00" == format_duration(float("inf"))


def test_line_gives_count_percent_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    progress = _progress(5000, clock, every_s=0)
    clock.now += 97.5
    progress.update(1200)  # 12.3 it/s; 3800 left: 308.75 s
    assert _lines(caplog) == ["work: 1200/5000 (24%), 12.3 it/s, ETA 0:05:08"]


def test_lines_are_rate_limited(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    progress = _progress(100, clock, unit="results")
    for _ in range(10):  # 1 s per unit: a line 5 s after the start, then every 5 s
        clock.now += 1
        progress.update()
    assert _lines(caplog) == [
        "work: 5/100 (5%), 1.00 results/s, ETA 0:01:35",
        "work: 10/100 (10%), 1.00 results/s, ETA 0:01:30",
    ]


def test_last_line_once_when_total_is_reached(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    progress = _progress(4, clock, every_s=2)
    for _ in range(4):
        clock.now += 1.5
        progress.update()
    progress.close()
    progress.update()  # after the end: nothing more
    assert _lines(caplog) == [  # below one a second, the time each takes
        "work: 2/4 (50%), 1.5 s each, ETA 0:00:03",
        "work: 4 it in 0:00:06 (1.5 s each)",
    ]


def test_short_work_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    with _progress(3, clock) as progress:
        for _ in range(3):
            clock.now += 0.1
            progress.update()
    assert _lines(caplog) == []


def test_unknown_and_empty_totals(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    with _progress(None, clock, every_s=0) as progress:
        clock.now += 2
        progress.update(50)
    assert _lines(caplog) == ["work: 50, 25.0 it/s", "work: 50 it in 0:00:02 (25.0 it/s)"]
    caplog.clear()
    empty = _progress(0, clock, every_s=0)
    assert empty.line() == "work: 0/0"  # no division by a zero total or a zero time
    empty.close()
    assert _lines(caplog) == ["work: 0 it in 0:00:00"]


def test_an_error_leaves_no_last_line(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    with pytest.raises(RuntimeError), _progress(10, clock, every_s=0) as progress:
        clock.now += 1
        raise RuntimeError("stop")
    progress.close()
    assert _lines(caplog) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="total=-1"):
        _progress(-1, Clock())
    with pytest.raises(ValueError, match="every_s=-1"):
        _progress(1, Clock(), every_s=-1)


def test_offline_evaluation_logs_checking_and_cocoeval_progress(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "DEFAULT_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="backbones.evaluation")
    gt = {
        "images": [{"id": i, "height": 40, "width": 60} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "area": 200},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30], "area": 900},
        ],
        "categories": [{"id": 3, "name": "box"}],
    }
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10], "score": 0.9},
        {"image_id": 2, "category_id": 3, "bbox": [1, 1, 30, 30], "score": 0.8},
        {"image_id": 2, "category_id": 3, "bbox": [30, 5, 10, 10], "score": 0.3},
    ]
    report = evaluate_results(gt, results, ("bbox",))
    assert report.iou_types["bbox"].stats["AP50"] == pytest.approx(1.0)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("backbones.evaluation")]
    assert lines[0].startswith("checking results: 1/3 (33%), ") and "ETA" in lines[0]
    assert lines[2].startswith("checking results: 3 results in 0:00:00")
    assert lines[-1].startswith("COCOeval bbox: 1 IoU types in 0:00:00")
