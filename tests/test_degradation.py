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
from backbones.weights import read_file

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


def test_the_nets_train_with_their_seeds_and_the_curves_figure_and_table_are_written(
    tmp_path, degradation, capsys
):
    cifar = write_cifar10(tmp_path / "cifar-10-batches-py")
    output = tmp_path / "out"
    argv = ["--cifar", str(cifar), "--output", str(output), "--max-iter", "4", "--jobs", "1"]
    argv += ["--eval-period", "2", "--batch-size", "8", "--log-period", "2", "--seeds", "2"]
    argv += ["--depths", "18", "34", "--width", "8"]
    assert degradation.main(argv) == 0
    with open(output / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["model"], r["depth"], r["residual"], r["seed"], r["iter"]) for r in rows] == [
        (name, depth, residual, seed, it)
        for name, depth, residual in (
            ("plain-18", "18", "False"),
            ("plain-34", "34", "False"),
            ("resnet-18", "18", "True"),
            ("resnet-34", "34", "True"),
        )
        for seed in ("0", "1")
        for it in ("2", "4")
    ]
    assert all(0 <= float(r["train_error"]) <= 100 and float(r["train_loss"]) > 0 for r in rows)
    # The seeds are different runs: another initialisation, another curve.
    by_seed = {(r["model"], r["seed"], r["iter"]): r["train_loss"] for r in rows}
    assert by_seed["resnet-34", "0", "4"] != by_seed["resnet-34", "1", "4"]
    assert (output / "degradation.png").stat().st_size > 10_000
    table = (output / "degradation.md").read_text()
    assert "| plain-34 | 34 | 2 | 4 |" in table and "plain-34 minus plain-18" in table
    assert "Seeds: 0, 1." in table and "width 8" in table
    # Plain nets really are plain: their weights have no shortcut, and rebuild as plain nets;
    # the zero-init goes to the residual nets only.
    plain = read_weights(output / "plain-34" / "seed1" / "model_final.pth")
    assert plain.architecture["residual"] is False
    assert plain.architecture["stem_out_channels"] == 8
    assert not any("shortcut" in name for name in plain.state)
    assert read_weights(output / "resnet-34" / "seed0" / "model_final.pth").architecture["residual"]
    configs = {n.name: (n.output_dir / "config.yaml").read_text() for n in plan(output, seeds=(0,))}
    assert "zero_init_residual" in configs["resnet-18"]
    assert "zero_init_residual" not in configs["plain-18"]

    stamps = {
        n.output_dir: (n.output_dir / "metrics.json").stat().st_mtime_ns for n in plan(output)
    }
    capsys.readouterr()
    assert degradation.main(["--resume"] + argv) == 0
    assert stamps == {
        n.output_dir: (n.output_dir / "metrics.json").stat().st_mtime_ns for n in plan(output)
    }  # nothing trained again


def plan(output: Path, seeds=(0, 1)):
    return plan_degradation(output, (18, 34), seeds)


@pytest.mark.slow
def test_the_cifar_nets_train_in_two_jobs(tmp_path, degradation):
    cifar = write_cifar10(tmp_path / "cifar-10-batches-py")
    output = tmp_path / "out"
    argv = ["--family", "cifar", "--depths", "20", "32", "--cifar", str(cifar), "--seeds", "1"]
    argv += ["--output", str(output), "--max-iter", "2", "--eval-period", "2"]
    argv += ["--batch-size", "8", "--jobs", "2", "shortcut", "B"]
    assert degradation.main(argv) == 0
    checkpoint = read_file(output / "resnet-32" / "seed0" / "model_final.pth")
    assert checkpoint["backbones"]["architecture"] == {
        "cifar_depth": 32, "residual": True, "shortcut": "B",
    }  # fmt: skip
    assert "| plain-32 | 32 | 1 | 2 |" in (output / "degradation.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depths", "18"], "--depths"),
        (["--seeds", "0"], "--seeds"),
        (["--family", "cifar", "--width", "8"], "--width"),
        (["--family", "cifar", "width", "8"], "width"),
        (["zero_init_residual", "True"], "zero_init_residual"),
    ],
)
def test_bad_options_are_refused_before_training(tmp_path, degradation, capsys, argv, message):
    assert degradation.main(["--output", str(tmp_path / "out")] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "out" / "plain-18").exists()


def test_the_table_reads_the_last_common_evaluation_as_mean_and_std():
    record = dict(iter=10, train_error=20.0, val_error=30.0, train_loss=1.0)
    curves = [
        NetCurve("plain-18", 18, False, [record], 0),
        NetCurve("plain-18", 18, False, [{**record, "train_error": 22.0}], 1),
        NetCurve("plain-34", 34, False, [{**record, "train_error": 25.5}], 0),
        NetCurve("resnet-18", 18, True, [], 0),
    ]
    table = final_errors_table(curves)
    assert "| plain-18 | 18 | 2 | 10 | 21.00 ± 1.41 | 30.00 ± 0.00 | 1.000 ± 0.000 |" in table
    assert "| resnet-18 | 18 | 0 | 0 | - | - | - |" in table
    assert "plain-34 minus plain-18: training error +4.50, validation error +0.00" in table
