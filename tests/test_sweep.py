"""The depth sweep (``backbones.study.experiments.sweep``, ``tools/depth_sweep.py``):
commands, skipping finished runs, resuming partial ones, failures, all without training through the
``run_training`` seam; and one real sweep of two tiny shapes runs (slow)."""

from __future__ import annotations

import csv
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import backbones.study.experiments.sweep as sweep_module
from backbones.study.experiments.sweep import (
    FINISHED,
    NEW,
    PARTIAL,
    run_state,
    run_sweep,
    run_training,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "configs" / f"mrcnn_r{depth}_shapes.yaml" for depth in (18, 34, 50)]


def load_tool():
    spec = importlib.util.spec_from_file_location("depth_sweep", ROOT / "tools" / "depth_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def launched(monkeypatch) -> list[tuple[list[str], Path]]:
    """The ``(command, log_path)`` of each run the sweep launches; nothing is trained."""
    calls = []

    def fake_run_training(command, log_path):
        calls.append((list(command), Path(log_path)))
        return 0

    monkeypatch.setattr(sweep_module, "run_training", fake_run_training)
    return calls


def make_states(root: Path) -> None:
    """R-18 finished, R-34 interrupted after a checkpoint, R-50 not started."""
    (root / "mrcnn_r18_shapes").mkdir(parents=True)
    (root / "mrcnn_r18_shapes" / "model_final.pth").write_bytes(b"")
    (root / "mrcnn_r34_shapes").mkdir()
    (root / "mrcnn_r34_shapes" / "last_checkpoint").write_text("model_0000499.pth")


def test_run_state(tmp_path):
    assert run_state(tmp_path / "absent") == NEW
    (tmp_path / "last_checkpoint").write_text("model_0000499.pth")
    assert run_state(tmp_path) == PARTIAL
    (tmp_path / "last_checkpoint").write_text("model_final.pth\n")  # the file itself deleted
    assert run_state(tmp_path) == FINISHED


def test_print_writes_one_command_per_run(tmp_path, capsys, launched, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands name tools/train_net.py from here
    tool = load_tool()
    root = tmp_path / "sweep"
    argv = ["--configs", *map(str, CONFIGS[:2]), "--output-root", str(root), "--num-gpus", "2"]
    assert tool.main([*argv, "--print", "--max-iter", "20", "SOLVER.IMS_PER_BATCH", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line) for line in lines] == [
        [sys.executable, "tools/train_net.py", "--config-file", str(config), "--num-gpus", "2",
         "OUTPUT_DIR", str(root / config.stem), "SOLVER.IMS_PER_BATCH", "2",
         "SOLVER.MAX_ITER", "20"]
        for config in CONFIGS[:2]
    ]  # fmt: skip
    assert not launched and not root.exists()  # nothing run, no report


def test_finished_runs_are_skipped_and_partial_ones_resumed(tmp_path, launched):
    root = tmp_path / "sweep"
    make_states(root)
    result = run_sweep(CONFIGS, output_root=root, opts=["SEED", "1"])
    assert [run.state for run in result.runs] == [FINISHED, PARTIAL, NEW]
    commands = {Path(c[c.index("OUTPUT_DIR") + 1]).name: c for c, _ in launched}
    assert list(commands) == ["mrcnn_r34_shapes", "mrcnn_r50_shapes"]  # not R-18
    assert "--resume" in commands["mrcnn_r34_shapes"]
    assert "--resume" not in commands["mrcnn_r50_shapes"]
    assert all(command[-2:] == ["SEED", "1"] for command in commands.values())
    assert [log for _, log in launched] == [root / n / "sweep.log" for n in commands]
    # The report covers every run, the skipped one included.
    assert [run.name for run in result.report.runs] == [c.stem for c in CONFIGS]
    assert all(path.is_file() for path in result.report.files.values())
    assert result.report.files["csv"].parent == root / "report"


def test_a_failed_run_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    launched = []

    def failing_first(command, log_path):
        launched.append(command)
        return 3 if len(launched) == 1 else 0

    monkeypatch.setattr(sweep_module, "run_training", failing_first)
    tool = load_tool()
    root = tmp_path / "sweep"
    argv = ["--configs", *map(str, CONFIGS[:2]), "--output-root", str(root)]
    assert tool.main([*argv, "--report-dir", str(tmp_path / "report")]) == 1
    assert len(launched) == 2
    out = capsys.readouterr().out
    log = root / "mrcnn_r18_shapes" / "sweep.log"
    assert f"[1/2] mrcnn_r18_shapes: FAILED (exit 3), see {log}" in out
    assert "[2/2] mrcnn_r34_shapes: done in" in out and "ETA 0:00:00" in out
    assert "1 of 2 runs failed" in out
    assert (tmp_path / "report" / "depth_report.md").is_file()


def test_bad_configs_are_refused(tmp_path, capsys, launched):
    tool = load_tool()
    assert tool.main(["--configs", str(tmp_path / "nope.yaml"), "--print"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    twin = tmp_path / CONFIGS[0].name
    twin.write_text(CONFIGS[0].read_text())
    assert tool.main(["--configs", str(CONFIGS[0]), str(twin), "--print"]) == 2
    assert "mrcnn_r18_shapes" in capsys.readouterr().err
    assert not launched


def test_overrides_after_the_configs():
    args = load_tool().parse_args(["--configs", "a.yaml", "b.yaml", "SOLVER.BASE_LR", "0.1"])
    assert args.configs == ["a.yaml", "b.yaml"] and args.opts == ["SOLVER.BASE_LR", "0.1"]
    args = load_tool().parse_args(["--configs", "a.yaml", "--max-iter", "5", "SEED", "1"])
    assert args.configs == ["a.yaml"] and args.opts == ["SEED", "1"] and args.max_iter == 5


def test_run_training_streams_the_output_to_the_log(tmp_path):
    code = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)"
    log = tmp_path / "run" / "sweep.log"
    assert run_training([sys.executable, "-c", code], log) == 3
    text = log.read_text()
    assert "to stdout" in text and "to stderr" in text and text.startswith("# ")


# The sweep for real: tools/depth_sweep.py -> tools/train_net.py, two depths on tiny shapes
# data (tests/test_train_net_e2e.py's shrunk recipe), 2 iterations each, then the report.
TINY_OPTS = [
    "DATASETS.TRAIN", '("tiny_shapes_train",)',
    "DATASETS.TEST", '("tiny_shapes_val",)',
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",  # something to rate after 2 iterations
    "TEST.DETECTIONS_PER_IMAGE", "20",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
]  # fmt: skip


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path):
    from backbones.data import generate_shapes

    data = {
        f"tiny_shapes_{split}": list(map(str, generate_shapes(tmp_path, split, num_images=n)))
        for split, n in (("train", 4), ("val", 2))
    }
    datasets = ["BACKBONES.COCO_DATASETS", repr([[name, *files] for name, files in data.items()])]
    root = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "tools" / "depth_sweep.py"), "--configs"]
    command += [str(c) for c in CONFIGS[:2]] + ["--output-root", str(root), "--max-iter", "2"]
    command += TINY_OPTS + datasets
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")

    def sweep_once() -> subprocess.CompletedProcess:
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        print(f"sweep: {time.perf_counter() - start:.1f} s")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    sweep_once()
    for config in CONFIGS[:2]:
        run = root / config.stem
        assert (run / "model_final.pth").is_file()
        assert "Starting training from iteration 0" in (run / "sweep.log").read_text()
    with open(root / "report" / "depth_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["run"], row["depth"], row["status"]) for row in rows] == [
        ("mrcnn_r18_shapes", "18", "finished"),
        ("mrcnn_r34_shapes", "34", "finished"),
    ]
    assert int(rows[0]["params"]) < int(rows[1]["params"])
    assert all(0 <= float(row["bbox/AP"]) <= 100 and row["segm/AP"] != "" for row in rows)
    assert rows[0]["bbox/AP_gain"] == "0.0"
    # Again: both runs are finished, nothing trains; the report is written again.
    proc = sweep_once()
    assert proc.stdout.count("finished, skipped") == 2 and "training" not in proc.stdout
