"""RetinaNet's ResNet-FPN (P3-P7) against Detectron2's ``build_retinanet_resnet_fpn_backbone``:
names, shapes and outputs; the ``p6p7`` top block; TorchScript; a RetinaNet trained on shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.utils.events import EventStorage

from backbones import (
    FPN,
    SHAPES_CLASSES,
    BackboneOptionError,
    LastLevelP6P7,
    backbones_build_retinanet_resnet_fpn_backbone,
    load_cfg,
    make_resnet_fpn,
    register_shapes,
)
from backbones.export import check_export, example_images, script_backbone

from helpers import make_cfg, randomize_

ROOT = Path(__file__).resolve().parents[1]
RETINANET_FEATURES = ["res3", "res4", "res5"]  # Base-RetinaNet.yaml's, as in the zoo
P3_P7 = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
# Full topology, shrunk widths where the topology is what is tested (as tests/test_fpn.py).
CASES = {
    "R18": dict(depth=18, res2_out_channels=64),
    "R50-shrunk": dict(depth=50, stem_out_channels=16, res2_out_channels=64, width_per_group=16),
    "R50-BN": dict(depth=50, norm="BN"),
}


def retinanet_cfg(**resnets):
    cfg = make_cfg(**resnets)
    cfg.MODEL.RESNETS.OUT_FEATURES = RETINANET_FEATURES
    cfg.MODEL.FPN.IN_FEATURES = RETINANET_FEATURES
    return cfg


def build_pair(memory_format: str, **resnets):
    """Detectron2's RetinaNet backbone (random norms and biases) and ours, loaded from it."""
    cfg = retinanet_cfg(**resnets)
    cfg.BACKBONES.MEMORY_FORMAT = memory_format
    reference = randomize_(build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))).eval()
    ours = backbones_build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def assert_close_to_scale(actual, expected, tol: float) -> None:
    """max |actual - expected| <= tol * max(1, max |expected|), as in tests/test_fpn.py."""
    scale = max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tol * scale, f"max abs diff {diff:.2e} > {tol:.0e} x scale {scale:.1f}"


@pytest.mark.parametrize("case", CASES)
def test_names_shapes_and_keys_equal_detectron2(case):
    reference, ours = build_pair("channels_last", **CASES[case])
    assert ours.output_shape() == reference.output_shape()
    assert {k: v.stride for k, v in ours.output_shape().items()} == P3_P7
    assert sorted(ours.state_dict()) == sorted(reference.state_dict())
    assert ours.size_divisibility == reference.size_divisibility == 32
    top = ours.top_block
    assert isinstance(top, LastLevelP6P7)
    assert (top.in_feature, top.num_levels) == (reference.top_block.in_feature, 2) == ("res5", 2)
    assert top.p6.in_channels == reference.top_block.p6.in_channels
    # Two-way: Detectron2's model takes ours strictly too.
    reference.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_detectron2_in_float64(case, memory_format):
    """Equal networks: float64 leaves only rounding. Measured max |ours - Detectron2's| over
    P3-P7, relative to the output scale: 0 to 7e-15; bound 1e-10 (a wrong network is off by ~1)."""
    reference, ours = build_pair(memory_format, **CASES[case])
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected, actual = reference.double()(x), ours.double()(x)
    assert list(actual) == list(expected) == list(P3_P7)
    for name in expected:
        assert actual[name].shape == expected[name].shape
        assert_close_to_scale(actual[name], expected[name], 1e-10)


@pytest.mark.parametrize("case", CASES)
def test_float32_outputs_are_as_close_to_float64_as_detectron2s(case):
    """In float32 our fast paths (FrozenBN folded into the conv, channels-last kernels) round
    differently from Detectron2, so both are held against Detectron2's model in float64.
    Measured, relative to the output scale: Detectron2's float32 error 5-6e-7, ours 2.0-2.4e-6
    (channels last); bound 5e-5, as in tests/test_fpn.py."""
    reference, ours = build_pair("channels_last", **CASES[case])
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        actual = ours(x)
        truth = reference.double()(x.double())
    for name in truth:
        assert_close_to_scale(actual[name].double(), truth[name], 5e-5)


def test_float32_outputs_equal_detectron2_without_fast_paths():
    """Trainable BN and NCHW: no folded norm, the same kernels, so bit-identical outputs."""
    reference, ours = build_pair("contiguous", **CASES["R50-BN"])
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


def test_make_resnet_fpn_p6p7_outputs_p3_to_p7_with_p6_from_res5():
    model = make_resnet_fpn(
        18, in_features=RETINANET_FEATURES, out_channels=16, top_block="p6p7", norm="BN"
    ).eval()
    assert {k: v.stride for k, v in model.output_shape().items()} == P3_P7
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        outputs = model(x)
        res5 = model.bottom_up(x)["res5"]
        p6 = model.top_block.p6(res5)
        p7 = model.top_block.p7(torch.relu(p6))
    for name, spec in model.output_shape().items():
        assert outputs[name].shape == (1, 16, 256 // spec.stride, 128 // spec.stride)
    assert torch.equal(outputs["p6"], p6) and torch.equal(outputs["p7"], p7)
    assert model.top_block.p6.in_channels == 512  # res5 of R-18


def test_p6p7_without_res5_starts_from_the_last_level():
    model = make_resnet_fpn(
        18, in_features=("res2", "res3", "res4"), out_channels=16, top_block="p6p7", norm="BN"
    ).eval()
    assert {k: v.stride for k, v in model.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    assert (model.top_block.in_feature, model.top_block.p6.in_channels) == ("p4", 16)
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 64, 64))
        assert torch.equal(outputs["p5"], model.top_block.p6(outputs["p4"]))


def test_bad_top_block_names_the_allowed_values():
    with pytest.raises(BackboneOptionError, match="top_block='p6p8'.*'maxpool', 'p6p7', None"):
        make_resnet_fpn(18, top_block="p6p8")


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_scripted_retinanet_backbone_equals_eager(memory_format):
    cfg = retinanet_cfg(**CASES["R50-shrunk"])
    cfg.BACKBONES.MEMORY_FORMAT = memory_format
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    model = randomize_(backbones_build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)))
    scripted = script_backbone(model.eval())
    assert list(scripted.state_dict()) == list(model.state_dict())  # no renamed keys
    images = example_images(model, (64, 96))
    diffs = check_export(model, scripted, images)
    assert list(diffs) == list(P3_P7)
    with torch.no_grad():
        expected = model(images)
    for name, diff in diffs.items():
        assert diff <= 1e-6 * max(1.0, expected[name].abs().max().item()), (name, diff)


# ---------------------------------------------------------------------------------------------
# A RetinaNet from our config, on CPU, on the shapes data


@pytest.fixture
def shapes_retinanet(tmp_path):
    """The ``shapes_retinanet_train`` / ``_val`` datasets (8 and 2 images of 128 px), removed
    from Detectron2's catalogs afterwards."""
    names = register_shapes(tmp_path, name="shapes_retinanet", num_train=8, num_val=2)
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_retinanet_trains_and_predicts_on_shapes(shapes_retinanet):
    """Detectron2's RetinaNet over our backbone, from configs/Base-RetinaNet.yaml: a few AdamW
    steps on one batch (R-18, trainable BN, 128 px) lower the loss, and inference runs through
    Detectron2's batched_nms, which is torchvision's (no detectron2._C).

    RetinaNet divides its losses by an average of the positive-anchor count that starts at 100
    and moves towards this batch's count, so the losses returned grow while training; their sums
    (times ``model.loss_normalizer``) are compared instead. Measured: 34.1 at the first step,
    24.3 at the sixth (LR 3e-4; each step lower than the one before); 100 detections an image."""
    train, _ = shapes_retinanet
    sizes = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (8, 16, 32, 64, 128)]
    cfg = load_cfg(
        str(ROOT / "configs" / "Base-RetinaNet.yaml"),
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", "",
            "MODEL.BACKBONE.FREEZE_AT", "0",
            "MODEL.RESNETS.DEPTH", "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
            "MODEL.RESNETS.NORM", "BN",
            "MODEL.FPN.OUT_CHANNELS", "64",
            "MODEL.ANCHOR_GENERATOR.SIZES", repr(sizes),  # objects of 13-64 px
            "MODEL.RETINANET.NUM_CLASSES", str(len(SHAPES_CLASSES)),
            "MODEL.RETINANET.NUM_CONVS", "2",
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # every candidate reaches the NMS
            "INPUT.RANDOM_FLIP", "none",  # the same batch at every run
            "INPUT.MIN_SIZE_TRAIN", "(128,)",
            "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "128",
            "INPUT.MAX_SIZE_TEST", "128",
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, RetinaNet)
    assert model.head_in_features == list(P3_P7)
    assert isinstance(model.backbone, FPN)
    mapper = DatasetMapper(cfg, is_train=True)  # what the training data loader runs
    batch = [mapper(record) for record in DatasetCatalog.get(train)[:2]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    losses = []
    model.train()
    with EventStorage():  # RetinaNet logs its number of positive anchors
        for _ in range(6):
            loss_dict = model(batch)
            loss = sum(loss_dict.values())
            losses.append(loss.item() * model.loss_normalizer)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert set(loss_dict) == {"loss_cls", "loss_box_reg"}
    assert all(math.isfinite(value) for value in losses), losses
    assert losses[-1] < 0.9 * losses[0], losses

    model.eval()
    with torch.no_grad():
        results = model([{"image": item["image"]} for item in batch])
    for item, result in zip(batch, results):
        instances = result["instances"]
        assert instances.image_size == tuple(item["image"].shape[1:])
        assert 0 < len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert instances.pred_boxes.tensor.isfinite().all()
        assert set(instances.pred_classes.tolist()) <= set(range(len(SHAPES_CLASSES)))
