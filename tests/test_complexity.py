"""Parameter and FLOP counts against He et al.'s Table 1 and torchvision; detectors split into
backbone and heads; ``tools/analyze_model.py``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from backbones.engine import load_cfg
from backbones.study.report import (
    count_gflops,
    count_parameters,
    detector_complexity,
    detector_test_size,
    resnet_complexity,
)

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
# Table 1 of He et al. (2015): billions of multiply-adds at 224x224, classifier included.
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# sum(p.numel() for p in torchvision.models.resnet{depth}().parameters()), classifier included.
TORCHVISION_PARAMS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}


@pytest.mark.parametrize("depth", sorted(PAPER_GFLOPS))
def test_resnet_equals_torchvision_params_and_paper_flops(depth):
    result = resnet_complexity(depth, size=(224, 224), classifier=True)
    assert set(result) == {"depth", "params", "gflops"}
    assert result["depth"] == depth
    assert result["params"] == TORCHVISION_PARAMS[depth]
    assert result["gflops"] == pytest.approx(PAPER_GFLOPS[depth], rel=0.03)


def test_classifier_adds_its_weights_and_flops():
    with_fc = resnet_complexity(18, size=(64, 64))
    without = resnet_complexity(18, size=(64, 64), classifier=False)
    assert with_fc["params"] - without["params"] == 512 * 1000 + 1000
    # The linear layer's multiply-adds, and fvcore's one flop per pooled element (512 x 2 x 2).
    assert (with_fc["gflops"] - without["gflops"]) * 1e9 == pytest.approx(512 * 1000 + 512 * 4)


def test_flops_scale_with_the_image_and_ignore_norms():
    small = resnet_complexity(50, size=(64, 64), classifier=False)["gflops"]
    large = resnet_complexity(50, size=(128, 128), classifier=False)["gflops"]
    assert large == pytest.approx(4 * small)
    # A folded FrozenBN and a BatchNorm cost the same: norms are not counted.
    frozen = resnet_complexity(50, size=(64, 64), classifier=False, norm="FrozenBN")["gflops"]
    assert frozen == pytest.approx(small)


def test_count_gflops_counts_one_multiply_add_as_one():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_gflops(conv, (torch.zeros(1, 3, 10, 10),)) * 1e9 == 3 * 8 * 9 * 100
    assert count_parameters(conv) == 3 * 8 * 9


def test_detector_is_backbone_plus_heads():
    cfg = load_cfg(str(ROOT / "configs" / "frcnn_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    result = detector_complexity(cfg, size=(256, 320))
    assert set(result) == {
        "depth",
        "params",
        "gflops",
        "backbone_params",
        "backbone_gflops",
        "heads_params",
        "heads_gflops",
    }
    assert result["depth"] == 50
    assert result["params"] == result["backbone_params"] + result["heads_params"]
    assert result["params"] == count_parameters(build_model(cfg))
    assert result["gflops"] == pytest.approx(result["backbone_gflops"] + result["heads_gflops"])
    assert all(result[key] > 0 for key in result)
    # The box head runs on POST_NMS_TOPK_TEST = 1000 proposals: two fcs of 12,845,056 and
    # 1,048,576 multiply-adds each, at least; the RPN's 3x3 conv on p2..p6 comes on top.
    assert result["heads_gflops"] > 1000 * (256 * 7 * 7 * 1024 + 1024 * 1024) / 1e9


def test_detector_test_size_is_a_resized_4_by_3_image():
    cfg = load_cfg(str(ROOT / "configs" / "frcnn_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    assert detector_test_size(cfg) == (800, 1067)  # MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST"):
        detector_test_size(load_cfg(opts=["INPUT.MIN_SIZE_TEST", "0"]))


def test_cli_writes_the_table_and_csv(tmp_path, capsys):
    tool = load_script(ROOT / "tools" / "analyze_model.py", "analyze_model")
    path = tmp_path / "resnets.csv"
    argv = ["--depths", "18", "34", "--size", "224", "224", "--classifier", "--csv", str(path)]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert "11,689,512" in out and "21,797,672" in out and "paper GFLOPs" in out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"depth", "params", "gflops", "paper_gflops"} <= set(rows[0])
    assert [(r["depth"], r["params"]) for r in rows] == [("18", "11689512"), ("34", "21797672")]
    assert float(rows[0]["gflops"]) == pytest.approx(1.8, rel=0.03)


def test_cli_detector_row_has_backbone_and_heads(tmp_path, capsys):
    tool = load_script(ROOT / "tools" / "analyze_model.py", "analyze_model")
    path = tmp_path / "frcnn.csv"
    config = str(ROOT / "configs" / "frcnn_r50.yaml")
    opts = ["MODEL.RPN.POST_NMS_TOPK_TEST", "50"]  # a lighter box head, to stay fast
    argv = ["--config-file", config, "--size", "128", "160", "--csv", str(path), *opts]
    assert tool.main(argv) == 0
    assert "backbone GFLOPs" in capsys.readouterr().out
    with open(path, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["config"] == config and row["size"] == "128x160" and row["depth"] == "50"
    assert int(row["params"]) == int(row["backbone_params"]) + int(row["heads_params"])
    total = float(row["backbone_gflops"]) + float(row["heads_gflops"])
    assert float(row["gflops"]) == pytest.approx(total)


def test_cli_counts_thin_resnets(capsys):
    tool = load_script(ROOT / "tools" / "analyze_model.py", "analyze_model")
    assert tool.main(["--depths", "18", "50", "--width", "16", "--size", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["depth", "width"] and "paper" not in out
    thin = resnet_complexity(18, size=(32, 32), classifier=False, width=16)
    assert (
        f"{thin['params']:,}" in out
        and thin["params"] < resnet_complexity(18, size=(32, 32), classifier=False)["params"] / 10
    )


def test_cli_counts_what_plugins_add(tmp_path, capsys):
    """A plugged net's row beside the plain one, with what the plugins add; timm's SE-ResNet-50
    has SE (ratio 1/16, widths rounded to 8) after conv3 in every block: its 28,088,024
    parameters (timm 1.0.31's ``seresnet50``) are the plugged count with the classifier."""
    tool = load_script(ROOT / "tools" / "analyze_model.py", "analyze_model")
    path = tmp_path / "se.csv"
    plugins = '[{"type": "se", "stages": ["res2", "res3", "res4", "res5"]}]'
    argv = ["--depths", "50", "--classifier", "--size", "64", "64", "--plugins", plugins]
    assert tool.main([*argv, "--csv", str(path)]) == 0
    assert "se r1/16 after_conv3 res2-res5" in capsys.readouterr().out
    gaps = tool.plugin_specs([{"type": "gc", "stages": ["res2", "res3", "res5"]}])
    assert tool.describe_plugins(gaps) == "gc r1/16 after_conv3 res2,res3,res5"  # not a range
    with open(path, newline="") as f:
        plain, plugged = list(csv.DictReader(f))
    assert (plain["plugins"], plain["params"], plugged["params"]) == (
        "none",
        "25557032",
        "28088024",
    )
    assert int(plugged["added_params"]) == 28088024 - 25557032
    assert (
        0
        < float(plugged["added_gflops"])
        == pytest.approx(float(plugged["gflops"]) - float(plain["gflops"]))
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "one of the arguments --config-file --depths is required"),
        (["--depths", "50", "--plugins", "[{type: gc}]"], "--plugins is not JSON"),
        (["--depths", "50", "--plugins", '[{"type": "gc"}]'], "type and stages needed"),
        (["--config-file", "configs/frcnn_r50.yaml", "--plugins", "[]"], "--depths only"),
        (["--depths", "18", "--width", "0"], "--width must be positive"),
        (["--config-file", "configs/frcnn_r50.yaml", "--width", "16"], "--depths only"),
        (["--depths", "18", "--classifier", "MODEL.RESNETS.DEPTH", "34"], "--config-file only"),
        (["--config-file", "configs/frcnn_r50.yaml", "--classifier"], "--depths only"),
        (["--depths", "17"], "invalid choice"),
    ],
)
def test_cli_refuses_bad_arguments(argv, message, capsys):
    tool = load_script(ROOT / "tools" / "analyze_model.py", "analyze_model")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
