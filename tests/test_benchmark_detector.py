"""tools/benchmark_detector.py: the latency ladder's files and columns, on a tiny run."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_latency_ladder_writes_its_table_plot_and_agreement(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/benchmark_detector.py"), "--depths", "18",
         "--size", "64", "96", "--batch", "1", "2", "--iters", "1", "--warmup", "0",
         "--variants", "stock", "eager", "onnx", "--candidates", "500", "--output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R-18: score threshold" in proc.stdout and "(500 candidates)" in proc.stdout
    with open(tmp_path / "latency.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["batch"]) for r in rows] == [
        ("stock", "1"), ("eager", "1"), ("onnx", "1"), ("stock", "2"), ("eager", "2"), ("onnx", "2")
    ]  # fmt: skip
    for row in rows:
        assert float(row["seconds"]) > 0
        assert float(row["images_per_s"]) == int(row["batch"]) / float(row["seconds"])
        # The same weights: every variant pairs all its detections with the stock model's.
        assert row["detections"] == row["stock_detections"] and int(row["detections"]) > 0
        assert row["unpaired"] == "0" and float(row["max_box_diff_px"]) < 0.1
    assert rows[0]["speedup_vs_stock"] == "1.0"
    assert (tmp_path / "latency.png").stat().st_size > 0
    table = (tmp_path / "latency.md").read_text()
    assert "| R-18 | 2 | onnx |" in table and "threads" in table


def test_variants_must_include_the_stock_baseline(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/benchmark_detector.py"), "--variants", "eager",
         "--output", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "--variants must include stock" in proc.stderr
