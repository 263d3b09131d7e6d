"""The depth report (``backbones.study.report.depth_report``, ``tools/depth_report.py``) on run
directories written here as Detectron2's trainer leaves them: three finished depths, a run
without evaluation and an unfinished one; and evaluations of model-zoo checkpoints, with the
zoo's published AP and the difference."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import struct
from pathlib import Path

import pytest
import yaml

import backbones.study.report.runs as runs_module
from backbones import load_cfg
from backbones.study.report.depth_report import write_depth_report
from backbones.study.report.runs import (
    EVALUATED,
    FINISHED,
    NO_CONFIG,
    NO_EVALUATION,
    REFERENCES_FILE,
    UNFINISHED,
    RunSummary,
    add_gains,
    load_references,
    match_zoo,
    read_run,
    schedule_name,
)

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {depth: ROOT / "configs" / f"mrcnn_r{depth}_shapes.yaml" for depth in (18, 34, 50)}
MAX_ITER = 100
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def write_run(
    root: Path,
    name: str,
    depth: int,
    *,
    last_iteration: int = MAX_ITER - 1,
    final: bool = True,
    box: tuple[float, float] | None = None,
    mask: float | None = None,
) -> Path:
    """A run directory: config.yaml (a full dump, MODEL.WEIGHTS gone), metrics.json (training
    records every 20 iterations up to ``last_iteration``, then an evaluation with box AP and
    AP50 ``box`` and mask AP ``mask``, APl NaN, per-class APs) and model_final.pth if
    ``final``."""
    path = root / name
    path.mkdir()
    cfg = load_cfg(str(CONFIGS[depth]), ["SOLVER.MAX_ITER", str(MAX_ITER)])
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(root / "deleted" / "model_final.pth")
    (path / "config.yaml").write_text(cfg.dump())
    records = [
        {"iteration": it, "total_loss": 2.0 - it / MAX_ITER, "loss_cls": 0.5, "lr": 0.001}
        for it in range(19, last_iteration + 1, 20)
    ]
    if last_iteration % 20 != 19:
        records.append({"iteration": last_iteration, "total_loss": 1.0, "loss_cls": 0.4})
    if box is not None:
        ap = {"bbox/AP": box[0], "bbox/AP50": box[1], "bbox/AP75": 1.0, "bbox/APs": 2.0}
        ap.update({"bbox/APm": 3.0, "bbox/APl": math.nan, "bbox/AP-circle": 99.0})
        if mask is not None:
            ap.update({f"segm/{m}": mask + i for i, m in enumerate(METRICS)})
        records.append({"iteration": last_iteration + 1, **ap})
    (path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final:
        (path / "model_final.pth").write_bytes(b"")
        (path / "last_checkpoint").write_text("model_final.pth")
    return path


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        write_run(root, "r18_noeval", 18),  # shallowest, but nothing to compare
        write_run(root, "r18", 18, final=False, box=(40.0, 60.0), mask=32.0),  # by its iteration
        write_run(root, "r34", 34, box=(50.0, 66.0), mask=36.0),
        write_run(root, "r50", 50, box=(46.0, 69.0), mask=40.0),
        # Stopped at iteration 59 after an evaluation: listed, not compared.
        write_run(root, "r50_partial", 50, last_iteration=59, final=False, box=(70.0, 80.0)),
    ]


@pytest.fixture(scope="module")
def report(run_dirs, tmp_path_factory):
    return write_depth_report(run_dirs, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def rows(report) -> dict[str, dict[str, str]]:
    with open(report.files["csv"], newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def test_runs_are_read_with_their_status(report):
    runs = {run.name: run for run in report.runs}
    assert [run.name for run in report.runs] == ["r18_noeval", "r18", "r34", "r50", "r50_partial"]
    assert runs["r18_noeval"].status == NO_EVALUATION
    assert runs["r50_partial"].status == UNFINISHED
    assert "iteration 59 of SOLVER.MAX_ITER 100" in runs["r50_partial"].reason
    assert {runs[n].status for n in ("r18", "r34", "r50")} == {FINISHED}
    assert report.base is runs["r18"]
    assert runs["r34"].detector == "Mask R-CNN" and runs["r34"].design == "FPN"


def test_csv_columns_and_values(rows, report):
    with open(report.files["csv"], newline="") as f:
        header = next(csv.reader(f))
    aps = [f"{task}/{m}" for task in ("bbox", "segm") for m in METRICS]
    gains = [f"{ap}{suffix}" for ap in aps for suffix in ("_gain", "_gain_rel")]
    assert header == ["run", "depth", "params", "gflops", *aps, *gains] + [
        "status", "iteration", "max_iter", "run_dir"
    ]  # fmt: skip
    assert [int(rows[n]["depth"]) for n in rows] == [18, 18, 34, 50, 50]
    params = [int(rows[n]["params"]) for n in ("r18", "r34", "r50")]
    assert params == sorted(params) and rows["r18_noeval"]["params"] == rows["r18"]["params"]
    assert all(float(row["gflops"]) > 0 for row in rows.values())
    assert float(rows["r34"]["bbox/AP"]) == 50.0 and rows["r34"]["bbox/APl"] == ""  # NaN
    assert rows["r50_partial"]["bbox/AP"] == "70.0"  # shown, but no gain
    assert rows["r50_partial"]["status"] == UNFINISHED
    assert rows["r18_noeval"]["status"] == NO_EVALUATION
    for name in ("r18_noeval", "r50_partial"):
        assert all(rows[name][column] == "" for column in gains)


@pytest.mark.parametrize(
    "name, column, points, percent",
    [
        ("r18", "bbox/AP", 0.0, 0.0),
        ("r34", "bbox/AP", 10.0, 25.0),  # 50 / 40 - 1
        ("r34", "bbox/AP50", 6.0, 10.0),  # 66 / 60 - 1
        ("r34", "segm/AP", 4.0, 12.5),  # 36 / 32 - 1
        ("r50", "bbox/AP", 6.0, 15.0),  # 46 / 40 - 1
        ("r50", "bbox/AP50", 9.0, 15.0),  # 69 / 60 - 1
        ("r50", "segm/AP", 8.0, 25.0),  # 40 / 32 - 1
        ("r50", "segm/AP50", 8.0, 8.0 / 33.0 * 100),  # 41 / 33 - 1
    ],
)
def test_gains_over_the_shallowest_evaluated_run(rows, name, column, points, percent):
    assert float(rows[name][f"{column}_gain"]) == pytest.approx(points, abs=1e-3)
    assert float(rows[name][f"{column}_gain_rel"]) == pytest.approx(percent, abs=1e-3)


def test_markdown_lists_the_runs_left_out_and_the_references(report):
    text = report.files["markdown"].read_text()
    runs_part, references_part = text.split("## References")
    assert "| `r34` | Mask R-CNN R-34-FPN | 34 |" in runs_part
    assert "+10.0 (+25.0%)" in runs_part  # r34's box AP
    left_out = runs_part.split("Not compared")[1]
    assert "`r50_partial`" in left_out and "unfinished" in left_out
    assert "`r18_noeval`" in left_out and "no evaluation" in left_out
    # The paper's VGG-16 -> ResNet-101 row, always; the zoo's Mask R-CNN FPN models.
    assert "| Faster R-CNN ResNet-101-C4 | 101 | 27.2 | +6.0 (+28.3%) | 48.4 |" in text
    assert "Mask R-CNN R50-FPN 3x" in references_part and "RetinaNet" not in references_part
    assert "He et al., 2015" in references_part and "MODEL_ZOO.md" in references_part


def test_plots_are_png_files(report):
    for key in ("depth", "gflops"):
        data = report.files[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert (width, height) == (700, 450)  # 7 x 4.5 inches at dpi 100
        assert len(data) > 20_000


def test_references_file():
    references = load_references()
    paper = [m for m in references.models if m.source == "he2015"]
    assert [(m.backbone, m.ap["bbox/AP"], m.ap["bbox/AP50"]) for m in paper] == [
        ("VGG-16", 21.2, 41.5),
        ("ResNet-101", 27.2, 48.4),
    ]
    assert paper[1].gains["bbox/AP_gain"] == pytest.approx(6.0)
    assert round(paper[1].gains["bbox/AP_gain_rel"]) == 28  # the paper's "28% relative"
    zoo = {(m.source, m.detector, m.label): m.ap for m in references.models}
    assert zoo["detectron2", "Mask R-CNN", "Mask R-CNN R101-FPN 3x"] == {
        "bbox/AP": 42.9, "segm/AP": 38.6
    }  # fmt: skip
    assert zoo["mmdetection", "Faster R-CNN", "Faster R-CNN R50-FPN 1x"] == {"bbox/AP": 37.4}
    assert all(set(s) == {"name", "url"} for s in references.sources.values())


def test_ties_take_the_first_run_given():
    ap = {"bbox/AP": 10.0}
    runs = [
        RunSummary(name, Path(name), FINISHED, depth=depth, ap=dict(ap))
        for name, depth in [("b", 50), ("a", 18), ("c", 18)]
    ]
    assert add_gains(runs).name == "a"


def test_broken_runs_are_listed_not_raised(tmp_path):
    assert read_run(tmp_path / "missing").status == NO_CONFIG
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("MODEL: {NO_SUCH_KEY: 1}\n")
    run = read_run(tmp_path / "bad")
    assert run.status == NO_CONFIG and "not readable" in run.reason


def test_coco_metrics_json_when_metrics_json_has_no_evaluation(tmp_path):
    path = write_run(tmp_path, "r34", 34)
    inference = path / "inference" / "shapes_val"
    inference.mkdir(parents=True)
    metrics = {"bbox": {"AP": 12.5, "AP50": 30.0, "AP-circle": 1.0}, "segm": {"AP": 10.0}}
    (inference / "coco_metrics.json").write_text(json.dumps(metrics))
    run = read_run(path)
    assert run.status == FINISHED
    assert run.ap == {"bbox/AP": 12.5, "bbox/AP50": 30.0, "segm/AP": 10.0}


def test_tool(run_dirs, tmp_path, capsys):
    path = ROOT / "tools" / "depth_report.py"
    spec = importlib.util.spec_from_file_location("depth_report_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([*map(str, run_dirs), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r34: R-34, finished, box AP 50.0" in out
    assert "r50_partial: R-50, unfinished" in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "depth_report.csv", "depth_report.md", "depth_report_ap_vs_depth.png",
        "depth_report_ap_vs_gflops.png",
    }  # fmt: skip


# Runs that evaluated model-zoo checkpoints (tools/zoo_eval.py): eval-only folders.

ZOO_R50 = "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
ZOO_R101 = "COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl"
ZOO_X101 = "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x/139173657/model_final_68b088.pkl"


def write_eval_run(root: Path, name: str, config: str, weights: str, box: float) -> Path:
    """What ``train_net.py --eval-only`` leaves: config.yaml and the evaluator's
    ``inference/<DATASETS.TEST[0]>/coco_metrics.json``; no training record, no model_final."""
    path = root / name
    path.mkdir()
    opts = ["MODEL.WEIGHTS", weights, "BACKBONES.INPUT_FROM_WEIGHTS", "off"]
    cfg = load_cfg(str(ROOT / "configs" / config), opts)
    (path / "config.yaml").write_text(cfg.dump())
    metrics = path / "inference" / cfg.DATASETS.TEST[0] / "coco_metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"bbox": {"AP": box, "AP50": box + 20}}))
    return path


def fake_complexity(cfg) -> dict:
    """Parameters and GFLOPs by depth: counting them (seconds a detector) is tested above."""
    return {"params": cfg.MODEL.RESNETS.DEPTH * 1000, "gflops": cfg.MODEL.RESNETS.DEPTH / 10}


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs_module, "detector_complexity", fake_complexity)
        patch.setattr(runs_module, "_COMPLEXITY", {})  # none of these fake counts kept
        yield _zoo_report(tmp_path_factory)


def _zoo_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_runs")
    cache = "/cache/iopath_cache/detectron2/"  # a downloaded copy, by its path
    runs = [
        write_eval_run(root, "r50", "frcnn_r50_3x.yaml", f"detectron2://{ZOO_R50}", 40.3),
        write_eval_run(
            root,
            "r101",
            "frcnn_r101_3x.yaml",
            f"https://dl.fbaipublicfiles.com/detectron2/{ZOO_R101}",
            41.9,
        ),
        write_eval_run(root, "x101", "frcnn_x101_32x8d_3x.yaml", cache + ZOO_X101, 43.0),
        # Another detector and schedule, weights of no zoo model: its own group, no zoo column.
        write_eval_run(root, "mask_r50", "mrcnn_r50.yaml", "output/model_final.pth", 30.0),
    ]
    return write_depth_report(runs, tmp_path_factory.mktemp("zoo_report"))


def test_evaluations_of_zoo_checkpoints_get_the_zoo_column_and_the_difference(zoo_report):
    runs = {run.name: run for run in zoo_report.runs}
    assert {run.status for run in runs.values()} == {EVALUATED}
    assert [runs[n].zoo.zoo for n in ("r50", "r101", "x101")] == [
        "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
        "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
        "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    ]
    assert runs["mask_r50"].zoo is None
    with open(zoo_report.files["csv"], newline="") as f:
        header = next(csv.reader(f))
        rows = {row["run"]: row for row in csv.DictReader(f, fieldnames=header)}
    # The existing columns as they were; the zoo's at the end.
    assert header[header.index("run_dir") :] == [
        "run_dir", "zoo", "bbox/AP_zoo", "bbox/AP_zoo_diff"
    ]  # fmt: skip
    published = {m.zoo: m.ap["bbox/AP"] for m in load_references().models if m.zoo}
    for name, ours in (("r50", 40.3), ("r101", 41.9), ("x101", 43.0)):
        assert float(rows[name]["bbox/AP_zoo"]) == published[rows[name]["zoo"]]
        diff = float(rows[name]["bbox/AP_zoo_diff"])
        assert diff == pytest.approx(ours - published[rows[name]["zoo"]], abs=1e-6)
    assert rows["mask_r50"]["zoo"] == rows["mask_r50"]["bbox/AP_zoo_diff"] == ""


def test_gains_are_within_a_detector_design_and_schedule(zoo_report):
    runs = {run.name: run for run in zoo_report.runs}
    assert runs["r101"].gains["bbox/AP_gain"] == pytest.approx(1.6)  # over r50, not mask_r50
    assert runs["x101"].gains["bbox/AP_gain"] == pytest.approx(2.7)
    assert runs["mask_r50"].gains["bbox/AP_gain"] == 0.0
    assert [run.name for run in zoo_report.runs if run.is_base] == ["r50", "mask_r50"]
    assert (runs["x101"].group, runs["mask_r50"].group) == (
        "Faster R-CNN FPN 3x",
        "Mask R-CNN FPN 1x",
    )
    text = zoo_report.files["markdown"].read_text().split("## References")[0]
    assert "| `x101` | Faster R-CNN X-101-32x8d-FPN 3x | 101 |" in text
    assert "| 40.3 | base | 40.2 | +0.1 |" in text  # r50: its AP, base, the zoo's, ours - zoo
    assert "| 41.9 | +1.6 (+4.0%) | 42.0 | -0.1 |" in text
    assert "bases: `r50` (Faster R-CNN FPN 3x), `mask_r50` (Mask R-CNN FPN 1x)" in text
    assert "should match its published AP to about 0.1" in text
    assert "Not evaluated on" not in text  # all on coco_2017_val


def test_zoo_checkpoints_are_matched_by_their_address_only():
    references = load_references()
    spellings = {
        f"https://dl.fbaipublicfiles.com/detectron2/{ZOO_R50}": True,
        f"detectron2://{ZOO_R50}": True,
        f"/data/copies/{ZOO_R50}": True,
        ZOO_R50: True,
        f"/data/xCOCO-Detection/{ZOO_R50.split('/', 1)[1]}": False,  # another folder
        "detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final.pkl": False,
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl": False,
    }
    runs = [RunSummary(w, Path("."), weights=w) for w in spellings]
    match_zoo(runs, references)
    assert {run.weights: run.zoo is not None for run in runs} == spellings


def test_a_reference_naming_no_zoo_checkpoint_is_refused(tmp_path):
    data = yaml.safe_load(REFERENCES_FILE.read_text())
    data["models"][2]["zoo"] = "COCO-Detection/faster_rcnn_R_50_FPN_2x.yaml"
    path = tmp_path / "references.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ValueError, match=r"models\[2\]: zoo 'COCO-Detection/faster_rcnn_R_50_FPN_2x"
    ):
        load_references(path)


@pytest.mark.parametrize(
    "max_iter, batch, name",
    [(90000, 16, "1x"), (270000, 16, "3x"), (720000, 2, "1x"), (100, 4, "100 iterations")],
)
def test_schedule_name(max_iter, batch, name):
    assert schedule_name(max_iter, batch) == name


def test_tool_prints_the_zoo_figure(zoo_report, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs_module, "detector_complexity", fake_complexity)
    monkeypatch.setattr(runs_module, "_COMPLEXITY", {})
    tool = load_script(ROOT / "tools" / "depth_report.py", "depth_report_tool")
    assert tool.main([*(str(run.path) for run in zoo_report.runs), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r101: R-101, evaluated, box AP 41.9 (zoo 42.0, -0.1)" in out
    assert "mask_r50: R-50, evaluated, box AP 30.0\n" in out
