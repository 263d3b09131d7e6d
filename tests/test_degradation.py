"""The degradation experiment (``tools/degradation.py``,
``backbones.study.experiments.degradation``): the four nets train a few iterations each (shrunk
widths, tiny CIFAR-10-format data), and the CSV,
the figure and the table come out; ``--resume`` skips finished nets."""

from __future__ import annotations

import csv
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest

from backbones import read_weights
from backbones.study.experiments.degradation import plan_degradation
from backbones.study.report.pretrain_plots import CSV_COLUMNS, NetCurve, final_errors_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def degradation():
    spec = importlib.util.spec_from_file_location("degradation", ROOT / "tools" / "degradation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_cifar10(folder: Path, per_batch: int = 8) -> Path:
    """CIFAR-10's python batches with random images, as pickled by Python 3 (bytes keys)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    return folder


def test_the_four_nets_train_and_the_curves_figure_and_table_are_written(
    tmp_path, degradation, capsys
):
    cifar = write_cifar10(tmp_path / "cifar-10-batches-py")
    output = tmp_path / "out"
    argv = ["--cifar", str(cifar), "--output", str(output), "--max-iter", "4"]
    argv += ["--eval-period", "2", "--batch-size", "8", "--log-period", "2"]
    argv += ["stem_out_channels", "8", "res2_out_channels", "8"]
    assert degradation.main(argv) == 0
    with open(output / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["model"], r["depth"], r["residual"], r["iter"]) for r in rows] == [
        (name, depth, residual, it)
        for name, depth, residual in (
            ("plain-18", "18", "False"),
            ("plain-34", "34", "False"),
            ("resnet-18", "18", "True"),
            ("resnet-34", "34", "True"),
        )
        for it in ("2", "4")
    ]
    assert all(0 <= float(r["train_error"]) <= 100 and float(r["train_loss"]) > 0 for r in rows)
    assert (output / "degradation.png").stat().st_size > 10_000
    table = (output / "degradation.md").read_text()
    assert "| plain-34 | 34 | 4 |" in table and "plain-34 minus plain-18" in table
    # Plain nets really are plain: their weights have no shortcut, and rebuild as plain nets.
    plain = read_weights(output / "plain-34" / "model_final.pth")
    assert plain.architecture["residual"] is False
    assert not any("shortcut" in name for name in plain.state)
    assert read_weights(output / "resnet-34" / "model_final.pth").architecture["residual"]

    stamps = {n.name: (n.output_dir / "metrics.json").stat().st_mtime_ns for n in plan(output)}
    capsys.readouterr()
    assert degradation.main(["--resume"] + argv) == 0
    assert stamps == {
        n.name: (n.output_dir / "metrics.json").stat().st_mtime_ns for n in plan(output)
    }  # nothing trained again


def plan(output: Path):
    return plan_degradation(output, (18, 34))


def test_one_depth_is_refused(tmp_path, degradation, capsys):
    assert degradation.main(["--output", str(tmp_path), "--depths", "18"]) == 2
    assert "--depths" in capsys.readouterr().err


def test_the_table_reads_the_last_evaluation_and_the_gaps():
    record = dict(iter=10, train_error=20.0, val_error=30.0, val_top5_error=5.0)
    curves = [
        NetCurve("plain-18", 18, False, [record]),
        NetCurve("plain-34", 34, False, [{**record, "train_error": 25.5}]),
        NetCurve("resnet-18", 18, True, []),
    ]
    table = final_errors_table(curves)
    assert "| plain-18 | 18 | 10 | 20.00 | 30.00 | 5.00 |" in table
    assert "| resnet-18 | 18 | 0 | - | - | - |" in table
    assert "plain-34 minus plain-18: training error +5.50, validation error +0.00" in table
