"""Our backbones where Detectron2 expects its own: the classes and attributes its code reads,
tracing and scripting whole R-CNNs, FLOP counts and checkpoints, on Detectron2's zoo configs with
shrunk widths (full R-50 topology). dev/run_detectron2_tests.py runs Detectron2's own tests."""

from __future__ import annotations

import copy

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.export import TracingAdapter
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import FPN, ResNet, build_backbone, build_model
from detectron2.structures import Instances
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.testing import assert_instances_allclose

from backbones import load_cfg
from backbones.modeling import MEMORY_FORMATS, ConvNorm

from helpers import randomize_

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
    "ignore:`torch.jit.trace` is deprecated:FutureWarning",
    "ignore:`torch.jit.trace_method` is deprecated:FutureWarning",
    # Detectron2's R-CNN code, traced: shape arithmetic on tensors.
    "ignore::torch.jit.TracerWarning",
)

MODELS = {
    "mask_rcnn_fpn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "mask_rcnn_c4": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml",
    "cascade_rcnn": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
}
OURS = {
    "build_resnet_backbone": "backbones_build_resnet_backbone",
    "build_resnet_fpn_backbone": "backbones_build_resnet_fpn_backbone",
}
SMALL = [
    # Full topology, shrunk widths; few proposals and detections, every score kept, so that
    # random weights give detections to compare.
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "10",
    "TEST.DETECTIONS_PER_IMAGE", "5",
    # The zoo's MSRA configs divide by 1 (inputs of 0-255, as the pretrained conv1 expects):
    # with random weights that sends every box off the image. Never loaded: a name only.
    "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
    "MODEL.WEIGHTS", "unused-by-the-builders.pkl",
    "BACKBONES.INPUT_FROM_WEIGHTS", "off",
    "MODEL.DEVICE", "cpu",
]  # fmt: skip


def zoo_cfg(config: str, *, memory_format: str = "channels_last", ours: bool = True) -> CfgNode:
    """A zoo config with shrunk widths, its backbone ours or Detectron2's built-in."""
    cfg = load_cfg(
        model_zoo.get_config_file(MODELS[config]),
        SMALL + ["BACKBONES.MEMORY_FORMAT", memory_format],
    ).clone()
    cfg.defrost()
    if ours:
        cfg.MODEL.BACKBONE.NAME = OURS[cfg.MODEL.BACKBONE.NAME]
    return cfg


def make_model(cfg: CfgNode, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_(build_model(cfg), seed).eval()


def image(height: int, width: int, seed: int) -> torch.Tensor:
    """A uint8 BGR image, as Detectron2's models take it."""
    noise = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
    return (noise * 255).to(torch.uint8)


def other_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of the state dict scaled by a random 0.8-1.2 (variances stay
    positive), so that loading them changes every layer."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: (
            value * (0.8 + 0.4 * torch.rand(value.shape, generator=gen))
            if value.is_floating_point()
            else value
        )
        for key, value in model.state_dict().items()
    }


def infer(model: torch.nn.Module, image: torch.Tensor) -> Instances:
    return model.inference([{"image": image}], do_postprocess=False)[0]


def trace(model: torch.nn.Module, image: torch.Tensor):
    """``torch.jit.trace`` through Detectron2's TracingAdapter, with the default check_trace
    (the model traced again and the graphs compared). Returns the traced module and a function
    running it and rebuilding ``Instances``."""
    adapter = TracingAdapter(model, (image,), infer)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (image,))

    def run(image: torch.Tensor) -> Instances:
        with torch.no_grad():
            return adapter.outputs_schema(traced(image))

    return traced, run


def assert_same_detections(actual: Instances, expected: Instances) -> None:
    assert len(expected) > 0, "no detections to compare: the check would pass vacuously"
    assert_instances_allclose(actual, expected, size_as_tensor=True)


def assert_features_close(actual: dict, expected: dict, tol: float) -> None:
    """Same feature names; values within ``tol`` of each feature's scale."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        scale = value.abs().max().item()
        torch.testing.assert_close(
            actual[name], value, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}"
        )


def detections_differ(a: Instances, b: Instances) -> bool:
    if len(a) != len(b):
        return True
    return not torch.allclose(a.scores, b.scores) or not torch.allclose(
        a.pred_boxes.tensor, b.pred_boxes.tensor
    )


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_fpn_is_detectron2s_fpn_with_its_attributes(memory_format):
    cfg = zoo_cfg("mask_rcnn_fpn", memory_format=memory_format)
    fpn = build_backbone(cfg)
    stock = build_backbone(zoo_cfg("mask_rcnn_fpn", ours=False))
    assert isinstance(fpn, FPN), f"{type(fpn)} is not a detectron2.modeling.FPN"
    assert isinstance(fpn.bottom_up, ResNet), f"{type(fpn.bottom_up)} is not a ResNet"
    assert fpn.in_features == stock.in_features == ("res2", "res3", "res4", "res5")
    # Detectron2's order: coarsest level first; the modules are ours, under Detectron2's keys.
    assert fpn.lateral_convs == [getattr(fpn, f"fpn_lateral{level}") for level in (5, 4, 3, 2)]
    assert fpn.output_convs == [getattr(fpn, f"fpn_output{level}") for level in (5, 4, 3, 2)]
    assert all(isinstance(conv, ConvNorm) for conv in fpn.lateral_convs + fpn.output_convs)
    assert fpn._fuse_type == stock._fuse_type == "sum"
    assert fpn.size_divisibility == stock.size_divisibility == 32
    assert fpn.padding_constraints == stock.padding_constraints
    assert fpn.top_block.num_levels == stock.top_block.num_levels == 1
    assert fpn.top_block.in_feature == stock.top_block.in_feature == "p5"
    assert fpn.output_shape() == stock.output_shape()
    resnet = fpn.bottom_up
    assert resnet.stage_names == stock.bottom_up.stage_names == ("res2", "res3", "res4", "res5")
    assert list(resnet.stages) == [resnet.res2, resnet.res3, resnet.res4, resnet.res5]
    assert resnet.num_classes is None


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_c4_backbone_is_detectron2s_resnet_with_its_attributes(memory_format):
    resnet = build_backbone(zoo_cfg("mask_rcnn_c4", memory_format=memory_format))
    stock = build_backbone(zoo_cfg("mask_rcnn_c4", ours=False))
    assert isinstance(resnet, ResNet), f"{type(resnet)} is not a detectron2.modeling.ResNet"
    # C4: res5 is the ROI head's, so the backbone builds res2..res4 only, as Detectron2's does.
    assert resnet.stage_names == stock.stage_names == ("res2", "res3", "res4")
    assert list(resnet.stages) == [resnet.res2, resnet.res3, resnet.res4]
    assert resnet.num_classes is None
    assert resnet.output_shape() == stock.output_shape()
    assert resnet.size_divisibility == stock.size_divisibility
    assert resnet.padding_constraints == stock.padding_constraints
    # Detectron2's stage builders, inherited.
    assert type(resnet).make_stage is ResNet.make_stage
    assert type(resnet).make_default_stages is ResNet.make_default_stages


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "after-a-run"])
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("config", MODELS)
def test_traced_rcnn_computes_from_its_current_weights(config, memory_format, warm):
    """A whole R-CNN with FrozenBN traces (graphs equal on the re-trace of check_trace), gives
    eager's detections on an image of another size, and computes from its parameters: loading
    other weights into the traced module, or tracing again after loading them into the model,
    gives eager's new detections (nothing folded or cached is baked in as a constant)."""
    model = make_model(zoo_cfg(config, memory_format=memory_format))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    small, large = image(64, 96, seed=1), image(96, 128, seed=2)
    if warm:  # an eager run first (fills any cache the backbone keeps)
        with torch.no_grad():
            infer(model, small)
    traced, run_traced = trace(model, small)
    with torch.no_grad():
        before = infer(model, large)
    assert_same_detections(run_traced(large), before)

    other = other_weights(model, seed=1)
    # The traced module's state dict also holds the model's non-persistent buffers (pixel
    # mean and std, anchors): they are kept.
    state = traced.state_dict()
    assert {f"model.{key}" for key in other} <= set(state)
    state.update({f"model.{key}": value for key, value in other.items()})
    traced.load_state_dict(state)
    model.load_state_dict(other)
    with torch.no_grad():
        after = infer(model, large)
    assert detections_differ(before, after), "other weights should change the detections"
    assert_same_detections(run_traced(large), after)

    _, run_retraced = trace(model, small)
    assert_same_detections(run_retraced(large), after)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("config", ["mask_rcnn_fpn", "mask_rcnn_c4"])
def test_traced_backbone_runs_in_float64(config, memory_format):
    """``traced.double()`` computes in float64, equal to the eager backbone in float64. Checked
    on the backbone: a whole R-CNN's trace does not run in float64 even with Detectron2's own
    backbone (torchvision's nms gets float32 scores with float64 boxes)."""
    backbone = make_model(zoo_cfg(config, memory_format=memory_format)).backbone
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        backbone(images)  # a run first, as a model serving requests would have had
        adapter = TracingAdapter(backbone, (images,))
        traced = torch.jit.trace(adapter, (images,)).double()
        actual = adapter.outputs_schema(traced(images.double()))
        expected = copy.deepcopy(backbone).double()(images.double())
    assert all(value.dtype == torch.float64 for value in actual.values())
    assert_features_close(actual, expected, 1e-9)


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("config", ["mask_rcnn_fpn", "mask_rcnn_c4"])
def test_scripted_backbone_equals_eager_with_the_same_keys(config, memory_format):
    """torch.jit.script of the backbone: eager's outputs and eager's state-dict keys (Detectron2's
    own scripted ResNet renames them, ``res2.0.*`` to ``stages.0.0.*``; ours must not)."""
    backbone = make_model(zoo_cfg(config, memory_format=memory_format)).backbone
    scripted = torch.jit.script(backbone)
    assert list(scripted.state_dict()) == list(backbone.state_dict())
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = backbone(images), scripted(images)
    assert_features_close(actual, expected, 1e-5)


@pytest.mark.parametrize("config", ["mask_rcnn_fpn", "mask_rcnn_c4"])
def test_flop_count_equals_detectron2s_less_frozen_bn(config):
    """fvcore's count (no_grad, as for inference) of ours equals the built-in backbone's in
    every operator (conv, upsampling) but ``batch_norm``: our convs fold FrozenBN into their
    weights, so the count has no batch_norm entry, where Detectron2's FrozenBN counts
    2 x the elements it normalises (fvcore's affine batch norm in eval). So the difference is
    exactly that: the built-in's batch_norm count."""
    ours = make_model(zoo_cfg(config)).backbone
    stock = make_model(zoo_cfg(config, ours=False)).backbone
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    normalised = []
    hooks = [
        m.register_forward_hook(lambda m, i, out: normalised.append(out.numel()))
        for m in stock.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    with torch.no_grad():
        stock_count = FlopCountAnalysis(stock, (images,)).by_operator()
        ours_count = FlopCountAnalysis(ours, (images,)).by_operator()
    for hook in hooks:
        hook.remove()
    assert stock_count["batch_norm"] == 2 * sum(normalised) > 0
    assert dict(ours_count) == {op: n for op, n in stock_count.items() if op != "batch_norm"}
    assert ours_count["conv"] > 0


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("config", ["mask_rcnn_fpn", "mask_rcnn_c4"])
def test_checkpoints_round_trip_with_detectron2s_model(config, memory_format, tmp_path):
    """A DetectionCheckpointer file of our whole model loads into the model with Detectron2's
    backbone, every tensor, and back."""
    ours = make_model(zoo_cfg(config, memory_format=memory_format), seed=0)
    stock = make_model(zoo_cfg(config, ours=False), seed=1)
    assert set(ours.state_dict()) == set(stock.state_dict())

    DetectionCheckpointer(ours, save_dir=str(tmp_path)).save("ours")
    DetectionCheckpointer(stock).load(str(tmp_path / "ours.pth"))
    saved = ours.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in stock.state_dict().items())

    stock.load_state_dict(other_weights(stock, seed=2))
    DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("stock")
    DetectionCheckpointer(ours).load(str(tmp_path / "stock.pth"))
    saved = stock.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in ours.state_dict().items())
