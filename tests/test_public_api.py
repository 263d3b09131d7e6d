"""The public API (``backbones.__all__``) as recorded here: every name, its kind, the keyword
names and defaults of each constructor and function, the bases of each class, and one real call
of each on a tiny input (shrunk widths). A change to the public API must change this file too:
that is the point.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling.backbone import fpn as d2_fpn
from detectron2.modeling.backbone import resnet as d2_resnet
from torch import nn

import backbones

from helpers import make_cfg, write_coco_split

# Functions and classes: the signature without annotations (keyword names, kinds, defaults).
SIGNATURES = {
    "ResNetSpec": (
        "(depth=None, stage_blocks=None, block_type=None, in_channels=3, num_groups=1, "
        "width_per_group=64, stem_type='basic', stem_width=32, stem_out_channels=64, "
        "res2_out_channels=None, stride_in_1x1=True, avg_down=False, residual=True, "
        "output_stride=32, deform_on_per_stage=(False, False, False, False), "
        "deform_modulated=False, deform_num_groups=1, plugins=())"
    ),
    "PluginSpec": "(type, stages, position='after_conv3', ratio=None)",
    "make_resnet": (
        "(depth=None, *, stage_blocks=None, block_type=None, in_channels=None, num_groups=None, "
        "width_per_group=None, stem_type=None, stem_width=None, stem_out_channels=None, "
        "res2_out_channels=None, width=None, stride_in_1x1=None, res5_dilation=1, "
        "output_stride=None, "
        "norm='FrozenBN', out_features=('res2', 'res3', 'res4', 'res5'), freeze_at=0, "
        "memory_format='channels_last', zero_init_residual=False, avg_down=None, residual=None, "
        "drop_path_rate=0.0, grad_checkpointing=False, "
        "deform_on_per_stage=(False, False, False, False), deform_modulated=False, "
        "deform_num_groups=1, plugins=None, weights=None)"
    ),
    "make_resnet_fpn": (
        "(depth=None, *, in_features=('res2', 'res3', 'res4', 'res5'), out_channels=256, "
        "fpn_norm='', fuse_type='sum', top_block='maxpool', weights=None, **resnet_options)"
    ),
    "ResNet": (
        "(stem, stages, *, out_features=('res2', 'res3', 'res4', 'res5'), freeze_at=0, "
        "memory_format='channels_last', grad_checkpointing=False, spec=None)"
    ),
    "FPN": (
        "(bottom_up, in_features, out_channels, *, norm='', top_block=None, fuse_type='sum', "
        "square_pad=0)"
    ),
    "LastLevelMaxPool": "(in_feature='p5')",
    "LastLevelP6P7": "(in_channels, out_channels, in_feature='res5')",  # Detectron2's own
    "ResidualBlock": "(in_channels, out_channels, stride, *, residual=True)",
    "BasicBlock": (
        "(in_channels, out_channels, *, stride=1, norm='BN', dilation=1, avg_down=False, "
        "residual=True)"
    ),
    "BottleneckBlock": (
        "(in_channels, out_channels, *, bottleneck_channels, stride=1, num_groups=1, norm='BN', "
        "stride_in_1x1=False, dilation=1, avg_down=False, residual=True)"
    ),
    "BasicStem": "(in_channels=3, out_channels=64, norm='BN')",
    "DeepStem": "(in_channels=3, out_channels=64, *, width=32, norm='BN')",
    "Weights": (
        "(path, source, state, input, architecture=<factory>, unused=<factory>, "
        "metadata=<factory>)"
    ),
    "read_weights": "(path, *, trusted=False, progress=None)",
    "load_weights": "(model, weights, *, trusted=False, skip_mismatched=(), log=None)",
    "BackbonesCheckpointer": (
        "(model, save_dir='', *, cfg=None, trusted=None, skip_mismatched=None, "
        "save_to_disk=None, metadata=None, **checkpointables)"
    ),
    "add_backbones_config": "(cfg)",
    "load_cfg": "(config_file='', opts=None, *, datasets=())",
    "backbones_build_resnet_backbone": "(cfg, input_shape)",
    "backbones_build_resnet_fpn_backbone": "(cfg, input_shape)",
    "backbones_build_retinanet_resnet_fpn_backbone": "(cfg, input_shape)",
    "Trainer": "(cfg)",
    "register_coco_dataset": "(name, json_file, image_root)",
    "register_shapes": (
        "(root=None, *, name='shapes', num_train=1000, num_val=100, image_size=128, seed=0)"
    ),
    "BackboneOptionError": "(option, value, allowed, reason='')",
}
# Classes: what they are (ResNet and FPN are Detectron2's types, so Detectron2 code takes them).
BASES = {
    "ResNet": d2_resnet.ResNet,
    "FPN": d2_fpn.FPN,
    "LastLevelMaxPool": nn.Module,
    "LastLevelP6P7": nn.Module,
    "ResidualBlock": CNNBlockBase,
    "BasicBlock": backbones.ResidualBlock,
    "BottleneckBlock": backbones.ResidualBlock,
    "BasicStem": CNNBlockBase,
    "DeepStem": CNNBlockBase,
    "Weights": object,  # a dataclass
    "ResNetSpec": object,  # a frozen dataclass
    "PluginSpec": object,  # a frozen dataclass
    "BackbonesCheckpointer": DetectionCheckpointer,
    "Trainer": DefaultTrainer,
    "BackboneOptionError": ValueError,
}
# Tables: their type, and the type of their keys.
DATA = {
    "DEPTHS": (dict, int),
    "PRESETS": (dict, str),
    "BLOCK_TYPES": (dict, str),
    "STEM_TYPES": (dict, str),
    "PLUGIN_TYPES": (dict, str),
    "NORMS": (tuple, str),
    "SOURCES": (dict, str),
    "SHAPES_CLASSES": (tuple, str),
}
FUNCTIONS = set(SIGNATURES) - set(BASES)


def signature(obj: Callable) -> str:
    """The signature without annotations: names, kinds (``*``, ``**``) and defaults."""
    sig = inspect.signature(obj)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=bare, return_annotation=inspect.Signature.empty))


def test_the_names_are_the_recorded_ones():
    assert len(backbones.__all__) == len(set(backbones.__all__)), "a name listed twice"
    assert set(backbones.__all__) == set(SIGNATURES) | set(DATA)
    namespace: dict = {}
    exec("from backbones import *", namespace)
    assert set(backbones.__all__) <= set(namespace)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(name):
    assert signature(getattr(backbones, name)) == SIGNATURES[name]


@pytest.mark.parametrize("name", sorted(BASES))
def test_classes_and_their_bases(name):
    cls = getattr(backbones, name)
    assert inspect.isclass(cls) and issubclass(cls, BASES[name]), inspect.getmro(cls)


def test_functions_are_functions_and_weights_a_dataclass():
    assert all(inspect.isfunction(getattr(backbones, name)) for name in FUNCTIONS)
    assert dataclasses.is_dataclass(backbones.Weights)
    assert dataclasses.is_dataclass(backbones.ResNetSpec)


@pytest.mark.parametrize("name", sorted(DATA))
def test_tables(name):
    kind, key = DATA[name]
    table = getattr(backbones, name)
    assert isinstance(table, kind) and table and all(isinstance(k, key) for k in table)


# ---------------------------------------------------------------- one real call of each

# Shrunk widths; whole models run in eval mode (BN in training mode needs more than one value
# per channel, and res5 of a 32 px image is 1x1).
TINY = dict(norm="BN", stem_out_channels=8, res2_out_channels=8)
x32 = torch.randn(1, 3, 32, 32)


def _shapes(outputs: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in outputs.items()}


def call_depths(tmp_path: Path) -> None:
    model = backbones.make_resnet(50, width_per_group=4, **{**TINY, "res2_out_channels": 16})
    blocks = tuple(len(getattr(model, f"res{i}")) for i in range(2, 6))
    assert blocks == backbones.DEPTHS[50].blocks_per_stage == (3, 4, 6, 3)


def call_presets(tmp_path: Path) -> None:
    options = {**backbones.PRESETS["R-18-D"], "stem_width": 4, **TINY}
    model = backbones.make_resnet(**options).eval()
    assert isinstance(model.stem, backbones.DeepStem)
    assert model(x32)["res5"].shape == (1, 64, 1, 1)


def call_block_types(tmp_path: Path) -> None:
    for kind, block_class in backbones.BLOCK_TYPES.items():
        widths = dict(res2_out_channels=16, width_per_group=4) if kind != "basic" else {}
        model = backbones.make_resnet(
            stage_blocks=(1, 1, 1, 1), block_type=kind, **{**TINY, **widths}
        ).eval()
        assert isinstance(model.res2[0], block_class), kind
        assert model(x32)["res5"].shape[-2:] == (1, 1), kind


def call_stem_types(tmp_path: Path) -> None:
    for kind, stem_class in backbones.STEM_TYPES.items():
        model = backbones.make_resnet(18, stem_type=kind, stem_width=4, **TINY).eval()
        assert isinstance(model.stem, stem_class) and model.stem.stride == 4, kind
        assert model(x32)["res2"].shape == (1, 8, 8, 8), kind


def call_plugin_types(tmp_path: Path) -> None:
    for kind, plugin_class in backbones.PLUGIN_TYPES.items():
        plugins = [{"type": kind, "stages": ("res4", "res5"), "position": "after_conv2"}]
        model = backbones.make_resnet(18, plugins=plugins, **TINY).eval()
        assert isinstance(getattr(model.res5[1].after_conv2, kind), plugin_class), kind
        assert model.res3[0].after_conv2 is None, kind
        assert model(x32)["res5"].shape == (1, 64, 1, 1), kind


def call_plugin_spec(tmp_path: Path) -> None:
    spec = backbones.PluginSpec("gc", ("res5", "res3"))
    assert (spec.stages, spec.position, spec.ratio) == (("res3", "res5"), "after_conv3", 1 / 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.ratio = 0.25  # type: ignore[misc]
    with pytest.raises(backbones.BackboneOptionError, match="plugins position"):
        backbones.PluginSpec("se", ("res4",), "after_conv0")


def call_norms(tmp_path: Path) -> None:
    for norm in backbones.NORMS:  # in eval mode: SyncBN needs no process group
        block = backbones.BasicBlock(32, 32, norm=norm).eval()
        assert block(torch.randn(1, 32, 4, 4)).shape == (1, 32, 4, 4), norm


def _saved_tiny_resnet(tmp_path: Path) -> tuple[nn.Module, Path]:
    model = backbones.make_resnet(18, **TINY)
    path = tmp_path / "r18.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def call_sources(tmp_path: Path) -> None:
    model, path = _saved_tiny_resnet(tmp_path)
    source = backbones.SOURCES[backbones.read_weights(path).source]
    assert source.name == "detectron2" and source.detect(model.state_dict(), {})


def call_make_resnet(tmp_path: Path) -> None:
    model = backbones.make_resnet(18, out_features=("res2", "res5"), **TINY).eval()
    shapes = model.output_shape()
    assert _shapes(model(x32)) == {"res2": (1, 8, 8, 8), "res5": (1, 64, 1, 1)}
    assert (shapes["res2"].stride, shapes["res5"].stride) == (4, 32)


def call_make_resnet_fpn(tmp_path: Path) -> None:
    model = backbones.make_resnet_fpn(18, out_channels=16, **TINY).eval()
    sides = {"p2": 8, "p3": 4, "p4": 2, "p5": 1, "p6": 1}
    assert _shapes(model(x32)) == {k: (1, 16, s, s) for k, s in sides.items()}


def call_resnet(tmp_path: Path) -> None:
    stages = [[backbones.BasicBlock(8, 8)], [backbones.BasicBlock(8, 16, stride=2)]]
    model = backbones.ResNet(backbones.BasicStem(3, 8), stages, out_features=("res3",))
    assert _shapes(model(x32)) == {"res3": (1, 16, 4, 4)}
    assert model.output_shape()["res3"].stride == 8


def call_fpn(tmp_path: Path) -> None:
    bottom_up = backbones.make_resnet(18, **TINY)
    model = backbones.FPN(
        bottom_up, ["res3", "res4", "res5"], 16, top_block=backbones.LastLevelMaxPool()
    )
    assert list(model.eval()(x32)) == ["p3", "p4", "p5", "p6"]


def call_last_level_max_pool(tmp_path: Path) -> None:
    (pooled,) = backbones.LastLevelMaxPool()(torch.randn(1, 4, 4, 4))
    assert pooled.shape == (1, 4, 2, 2)


def call_last_level_p6p7(tmp_path: Path) -> None:
    p6, p7 = backbones.LastLevelP6P7(8, 16)(torch.randn(1, 8, 4, 4))
    assert p6.shape == (1, 16, 2, 2) and p7.shape == (1, 16, 1, 1)


def call_residual_block(tmp_path: Path) -> None:
    assert all(issubclass(c, backbones.ResidualBlock) for c in backbones.BLOCK_TYPES.values())
    block = backbones.BasicBlock(8, 8, residual=False)
    assert isinstance(block, backbones.ResidualBlock) and block.residual is False


def call_basic_block(tmp_path: Path) -> None:
    block = backbones.BasicBlock(8, 16, stride=2)
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)


def call_bottleneck_block(tmp_path: Path) -> None:
    block = backbones.BottleneckBlock(8, 16, bottleneck_channels=4, stride=2)
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)


def call_basic_stem(tmp_path: Path) -> None:
    assert backbones.BasicStem(3, 8)(x32).shape == (1, 8, 8, 8)


def call_deep_stem(tmp_path: Path) -> None:
    assert backbones.DeepStem(3, 8, width=4)(x32).shape == (1, 8, 8, 8)


def call_weights(tmp_path: Path) -> None:
    model, path = _saved_tiny_resnet(tmp_path)
    weights = backbones.read_weights(path)
    assert isinstance(weights, backbones.Weights)
    assert weights.state.keys() == model.state_dict().keys()


def call_read_weights(tmp_path: Path) -> None:
    _, path = _saved_tiny_resnet(tmp_path)
    weights = backbones.read_weights(path)
    assert (weights.source, weights.architecture["depth"]) == ("detectron2", 18)


def call_load_weights(tmp_path: Path) -> None:
    model, path = _saved_tiny_resnet(tmp_path)
    fresh = backbones.make_resnet(18, **TINY)
    report = backbones.load_weights(fresh, path)
    assert not report.missing and not report.unused
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


def call_backbones_checkpointer(tmp_path: Path) -> None:
    model, fresh = backbones.make_resnet(18, **TINY), backbones.make_resnet(18, **TINY)
    backbones.BackbonesCheckpointer(model, save_dir=str(tmp_path)).save("model_0000001")
    backbones.BackbonesCheckpointer(fresh).load(str(tmp_path / "model_0000001.pth"))
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


def call_add_backbones_config(tmp_path: Path) -> None:
    cfg = get_cfg()
    assert backbones.add_backbones_config(cfg) is cfg and "BACKBONES" in cfg


def call_load_cfg(tmp_path: Path) -> None:
    cfg = backbones.load_cfg(opts=["MODEL.RESNETS.DEPTH", "34", "MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.RESNETS.DEPTH == 34 and "BACKBONES" in cfg and cfg.is_frozen()


def _build(builder: Callable, *in_features: str) -> dict[str, tuple[int, ...]]:
    """The outputs of ``builder`` on a config of R-18 (FPN of 16 channels)."""
    cfg = make_cfg(depth=18, res2_out_channels=64, norm="BN")
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    if in_features:
        cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = list(in_features)
    return _shapes(builder(cfg, ShapeSpec(channels=3)).eval()(x32))


def call_build_resnet(tmp_path: Path) -> None:
    assert _build(backbones.backbones_build_resnet_backbone)["res5"] == (1, 512, 1, 1)


def call_build_resnet_fpn(tmp_path: Path) -> None:
    outputs = _build(backbones.backbones_build_resnet_fpn_backbone)
    assert list(outputs) == ["p2", "p3", "p4", "p5", "p6"]


def call_build_retinanet(tmp_path: Path) -> None:
    outputs = _build(
        backbones.backbones_build_retinanet_resnet_fpn_backbone, "res3", "res4", "res5"
    )
    assert list(outputs) == ["p3", "p4", "p5", "p6", "p7"]


def call_trainer(tmp_path: Path) -> None:
    # Its class methods, without a training: the optimizer the config names.
    cfg = make_cfg()
    cfg.BACKBONES.OPTIMIZER = "AdamW"
    optimizer = backbones.Trainer.build_optimizer(cfg, nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.AdamW)


def call_register_coco_dataset(tmp_path: Path) -> None:
    write_coco_split(tmp_path / "images", tmp_path / "train.json", 2)
    name = backbones.register_coco_dataset(
        "public_api_coco", tmp_path / "train.json", tmp_path / "images"
    )
    try:
        assert len(DatasetCatalog.get(name)) == 2
        assert MetadataCatalog.get(name).thing_classes == ["cat", "dog"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def call_register_shapes(tmp_path: Path) -> None:
    names = backbones.register_shapes(
        tmp_path, name="public_api_shapes", num_train=2, num_val=1, image_size=32
    )
    try:
        assert names == ("public_api_shapes_train", "public_api_shapes_val")
        assert len(DatasetCatalog.get(names[0])) == 2
        assert MetadataCatalog.get(names[0]).thing_classes == list(backbones.SHAPES_CLASSES)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def call_shapes_classes(tmp_path: Path) -> None:
    assert backbones.SHAPES_CLASSES == ("circle", "square", "triangle", "star")
    assert MetadataCatalog.get("shapes_train").thing_classes == list(backbones.SHAPES_CLASSES)


def call_backbone_option_error(tmp_path: Path) -> None:
    with pytest.raises(backbones.BackboneOptionError) as error:
        backbones.make_resnet(18, num_groups=32)  # basic blocks are not grouped
    assert (error.value.option, error.value.value) == ("num_groups", 32)
    assert "num_groups=32" in str(error.value)


def call_resnet_spec(tmp_path: Path) -> None:
    spec = backbones.ResNetSpec(depth=18, stem_out_channels=8, res2_out_channels=8)
    assert spec.block_type == "basic" and spec.blocks_per_stage == (2, 2, 2, 2)
    model = backbones.make_resnet(**spec.as_dict(), norm="BN")
    assert model.spec == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.depth = 50  # type: ignore[misc]
    with pytest.raises(backbones.BackboneOptionError):
        backbones.ResNetSpec(depth=18, num_groups=32)


CALLS: dict[str, Callable[[Path], None]] = {
    "ResNetSpec": call_resnet_spec,
    "DEPTHS": call_depths,
    "PRESETS": call_presets,
    "BLOCK_TYPES": call_block_types,
    "STEM_TYPES": call_stem_types,
    "PLUGIN_TYPES": call_plugin_types,
    "PluginSpec": call_plugin_spec,
    "NORMS": call_norms,
    "SOURCES": call_sources,
    "make_resnet": call_make_resnet,
    "make_resnet_fpn": call_make_resnet_fpn,
    "ResNet": call_resnet,
    "FPN": call_fpn,
    "LastLevelMaxPool": call_last_level_max_pool,
    "LastLevelP6P7": call_last_level_p6p7,
    "ResidualBlock": call_residual_block,
    "BasicBlock": call_basic_block,
    "BottleneckBlock": call_bottleneck_block,
    "BasicStem": call_basic_stem,
    "DeepStem": call_deep_stem,
    "Weights": call_weights,
    "read_weights": call_read_weights,
    "load_weights": call_load_weights,
    "BackbonesCheckpointer": call_backbones_checkpointer,
    "add_backbones_config": call_add_backbones_config,
    "load_cfg": call_load_cfg,
    "backbones_build_resnet_backbone": call_build_resnet,
    "backbones_build_resnet_fpn_backbone": call_build_resnet_fpn,
    "backbones_build_retinanet_resnet_fpn_backbone": call_build_retinanet,
    "Trainer": call_trainer,
    "register_coco_dataset": call_register_coco_dataset,
    "register_shapes": call_register_shapes,
    "SHAPES_CLASSES": call_shapes_classes,
    "BackboneOptionError": call_backbone_option_error,
}


def test_every_name_has_its_call():
    assert set(CALLS) == set(backbones.__all__)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_one_real_call(name, tmp_path):
    CALLS[name](tmp_path)
