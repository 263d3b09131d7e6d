"""Context blocks placed by stage and position (squeeze-excitation, global context, non-local):
placement and names, identity at initialisation where the papers zero-initialise, equality with
direct formulas, every block type and norm, TorchScript, configs, errors and the loading report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from detectron2.layers import ShapeSpec

from backbones import BackboneOptionError, ResNetSpec, backbones_build_resnet_backbone, make_resnet
from backbones.modeling.plugins import (
    PLUGIN_TYPES,
    GlobalContext,
    NonLocal,
    PluginSpec,
    SqueezeExcitation,
)
from backbones.weights import load_weights

from helpers import flatten, make_cfg, randomize_

# Shrunk widths, full topology.
BOTTLENECK = dict(stem_out_channels=8, res2_out_channels=32, width_per_group=8, norm="BN")
BASIC = dict(width=8, norm="BN")
LATE = ("res3", "res4", "res5")
X = torch.randn(2, 3, 64, 64)


def plugged(depth: int, plugins: list, **options):
    options = {**(BASIC if depth in (18, 34) else BOTTLENECK), **options}
    return make_resnet(depth, plugins=plugins, **options)


def outputs_with_and_without(plugins: list, depth: int = 50, **options):
    """The outputs of a net with ``plugins`` and of the same net without them (same weights)."""
    torch.manual_seed(0)
    plain = randomize_(plugged(depth, [], **options)).eval()  # "pretrained"
    model = plugged(depth, plugins, **options).eval()  # its plugins as initialised
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".after_conv" in k for k in missing)
    with torch.no_grad():
        return model(X), plain(X)


@pytest.mark.parametrize("kind", sorted(PLUGIN_TYPES))
@pytest.mark.parametrize("position", ["after_conv1", "after_conv2", "after_conv3"])
def test_plugins_sit_where_placed_and_are_named_by_position_and_type(kind, position):
    model = plugged(50, [{"type": kind, "stages": LATE, "position": position}])
    for stage in model.stage_names:
        for block in getattr(model, stage):
            holder = getattr(block, position)
            if stage in LATE:
                assert isinstance(getattr(holder, kind), PLUGIN_TYPES[kind])
            else:
                assert holder is None
    keys = [k for k in model.state_dict() if ".after_conv" in k]
    assert keys and all(k.split(".")[2:4] == [position, kind] for k in keys)
    assert {k.split(".")[0] for k in keys} == set(LATE)
    # Its channels are those of the conv it follows: the bottleneck's inner width, or conv3's.
    block = model.res4[1]
    expected = block.conv3.out_channels if position == "after_conv3" else block.conv1.out_channels
    assert getattr(getattr(block, position), kind).channels == expected
    assert model(X)["res5"].shape == (2, 256, 2, 2)


@pytest.mark.parametrize("kind", [k for k, c in PLUGIN_TYPES.items() if c.identity_at_init])
@pytest.mark.parametrize(
    "norm, position",
    [("BN", "after_conv1"), ("BN", "after_conv2"), ("BN", "after_conv3"),
     ("FrozenBN", "after_conv3"), ("GN", "after_conv2")],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:make_resnet. norm='FrozenBN' with no weights")
def test_zero_initialised_plugins_leave_a_pretrained_net_unchanged(kind, position, norm):
    """GCNet and non-local nets zero-initialise their last conv: at initialisation the plugged
    net computes exactly what the net it starts from computes."""
    gn = dict(stem_out_channels=32, res2_out_channels=128, width_per_group=32)  # 32 groups
    options = dict(norm=norm, **(gn if norm == "GN" else {}))
    plugins = [{"type": kind, "stages": ("res2", "res3", "res4", "res5"), "position": position}]
    with_plugin, without = outputs_with_and_without(plugins, **options)
    for name in without:
        torch.testing.assert_close(with_plugin[name], without[name], rtol=0, atol=0)


def test_squeeze_excitation_is_not_an_identity_at_initialisation():
    """The SE paper trains from scratch and has no zero-init: the gate starts near 0.5."""
    with_se, without = outputs_with_and_without([{"type": "se", "stages": LATE}])
    assert not torch.allclose(with_se["res5"], without["res5"], atol=1e-3)
    torch.testing.assert_close(with_se["res2"], without["res2"])  # res2 has none


@pytest.mark.parametrize(
    "depth, position", [(18, "after_conv1"), (18, "after_conv2"), (34, "after_conv2")]
)
@pytest.mark.parametrize("kind", sorted(PLUGIN_TYPES))
def test_basic_blocks_take_plugins_after_either_conv(depth, position, kind):
    model = plugged(depth, [{"type": kind, "stages": LATE, "position": position}]).eval()
    assert getattr(getattr(model.res5[0], position), kind).channels == 64
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(X)["res5"], model(X)["res5"])


def test_basic_blocks_have_no_conv3():
    with pytest.raises(BackboneOptionError, match=r"plugins position='after_conv3'.*BasicBlock"):
        plugged(18, [{"type": "gc", "stages": ["res4"], "position": "after_conv3"}])


@pytest.mark.parametrize("kind", sorted(PLUGIN_TYPES))
def test_deformable_blocks_run_their_plugins(kind):
    plugins = [{"type": kind, "stages": ["res4"], "position": p} for p in ("after_conv2",)]
    options = dict(deform_on_per_stage=(False, False, True, True))
    model = plugged(50, plugins, **options)
    block = model.res4[0]
    assert type(block).__name__ == "DeformBottleneckBlock"
    with torch.no_grad():  # a plugin that changes its input must change the block's output
        getattr(block.after_conv2, kind).register_forward_hook(lambda m, i, o: o * 2 + 1)
        changed = model(X)["res4"]
    plain = plugged(50, [], **options)
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(changed, plain(X)["res4"])


@pytest.mark.parametrize("kind", sorted(PLUGIN_TYPES))
@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_torchscript_keeps_keys_and_outputs(kind, memory_format):
    model = randomize_(plugged(50, [{"type": kind, "stages": LATE}], memory_format=memory_format))
    model.eval()
    scripted = torch.jit.script(model)
    assert list(scripted.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        for name, value in model(X).items():
            torch.testing.assert_close(scripted(X)[name], value)


def test_memory_formats_give_the_same_outputs():
    torch.manual_seed(0)
    plugins = [{"type": k, "stages": LATE, "position": "after_conv3"} for k in ("se", "gc")]
    plugins.append({"type": "non_local", "stages": ["res4"], "position": "after_conv2"})
    a = randomize_(plugged(50, plugins, memory_format="channels_last")).eval()
    b = plugged(50, plugins, memory_format="contiguous").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(X)["res5"], b(X)["res5"], rtol=1e-4, atol=1e-4)


def test_squeeze_excitation_equals_its_formula_and_timms_module():
    torch.manual_seed(0)
    se = randomize_(SqueezeExcitation(64, ratio=1 / 16))
    theirs = timm.layers.SEModule(64)  # timm's default: rd_ratio 1/16, divisible by 8
    theirs.load_state_dict(se.state_dict())
    x = torch.randn(2, 64, 5, 7)
    pooled = x.mean((2, 3))
    gate = torch.sigmoid(F.linear(F.relu(F.linear(pooled, se.fc1.weight[:, :, 0, 0], se.fc1.bias)),
                                  se.fc2.weight[:, :, 0, 0], se.fc2.bias))  # fmt: skip
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    torch.testing.assert_close(se(x), theirs(x))
    # timm's widths: channels / 16 rounded to a multiple of 8, at least 8.
    assert [SqueezeExcitation.inner_channels(c, 1 / 16) for c in (64, 256, 2048)] == [8, 16, 128]


def test_global_context_equals_its_formula():
    torch.manual_seed(0)
    block = randomize_(GlobalContext(32, ratio=1 / 4))
    with torch.no_grad():
        block.channel_add_conv[3].weight.normal_()
    x = torch.randn(2, 32, 6, 5)
    # context = sum_j softmax_j(w . x_j + b) x_j; out = x + W2 relu(LN(W1 context + b1)) + b2
    logits = torch.einsum("c,nchw->nhw", block.conv_mask.weight.flatten(), x) + block.conv_mask.bias
    weights = logits.flatten(1).softmax(1).view_as(logits)
    context = torch.einsum("nchw,nhw->nc", x, weights)
    conv1, norm, _, conv2 = block.channel_add_conv
    hidden = F.linear(context, conv1.weight.flatten(1), conv1.bias)
    hidden = F.layer_norm(hidden, (8,), norm.weight.flatten(), norm.bias.flatten(), norm.eps)
    added = F.linear(F.relu(hidden), conv2.weight.flatten(1), conv2.bias)
    torch.testing.assert_close(block(x), x + added[:, :, None, None])


def test_non_local_equals_its_formula():
    torch.manual_seed(0)
    block = randomize_(NonLocal(16))
    with torch.no_grad():
        block.conv_out.weight.normal_()
    x = torch.randn(2, 16, 4, 3)
    flat = x.flatten(2).transpose(1, 2)  # (N, HW, C)

    def project(conv):
        return F.linear(flat, conv.weight.flatten(1), conv.bias)  # (N, HW, d)

    theta, phi, g = project(block.theta), project(block.phi), project(block.g)
    assert theta.shape[-1] == 8  # the paper's half width
    attention = torch.softmax(theta @ phi.transpose(1, 2) / math.sqrt(8), dim=-1)
    y = attention @ g  # (N, HW, d): each position's weighted sum over all positions
    out = F.linear(y, block.conv_out.weight.flatten(1), block.conv_out.bias)
    torch.testing.assert_close(block(x), x + out.transpose(1, 2).reshape_as(x))


def test_gradients_reach_the_zero_initialised_layers():
    model = plugged(
        50, [{"type": "gc", "stages": ["res5"]}, {"type": "non_local", "stages": ["res4"]}]
    )
    model(X)["res5"].sum().backward()
    block = model.res5[0].after_conv3.gc
    assert block.channel_add_conv[3].weight.grad.abs().sum() > 0
    assert model.res4[0].after_conv3.non_local.conv_out.weight.grad.abs().sum() > 0


def test_frozen_stages_freeze_their_plugins():
    model = plugged(50, [{"type": "gc", "stages": ("res2", "res3")}], freeze_at=2)
    assert not any(p.requires_grad for p in model.res2[0].after_conv3.parameters())
    assert all(p.requires_grad for p in model.res3[0].after_conv3.parameters())


def test_specs_round_trip_and_rebuild():
    model = plugged(50, [{"type": "gc", "stages": ["res5", "res3"], "ratio": 0.25}])
    spec = model.spec
    assert spec.plugins == (PluginSpec("gc", ("res3", "res5"), "after_conv3", 0.25),)
    assert ResNetSpec.from_dict(spec.as_dict()) == spec
    as_json = {
        **spec.as_dict(),
        "plugins": [dict(p, stages=list(p["stages"])) for p in spec.as_dict()["plugins"]],
    }
    assert ResNetSpec.from_dict(as_json) == spec
    again = make_resnet(**spec.as_dict(), norm="BN")
    assert list(again.state_dict()) == list(model.state_dict())
    # The default ratios: 1/16 for SE and GC, 1/2 for non-local.
    assert [PluginSpec(k, ("res4",)).ratio for k in ("se", "gc", "non_local")] == [1 / 16] * 2 + [
        0.5
    ]


@pytest.mark.parametrize(
    "plugins, match",
    [
        ([{"type": "cbam", "stages": ["res4"]}], r"plugins type='cbam'.*'se', 'gc', 'non_local'"),
        ([{"type": "gc", "stages": ["res6"]}], r"plugins stages='res6'"),
        ([{"type": "gc", "stages": []}], r"plugins stages=\(\)|plugins stages=\[\]"),
        ([{"type": "gc", "stages": "res4"}], r"plugins stages='res4'.*non-empty list"),
        ([{"type": "gc", "stages": ["res4"], "position": "after_conv4"}], r"after_conv4"),
        ([{"type": "gc", "stages": ["res4"], "ratio": 0}], r"plugins ratio=0"),
        ([{"type": "gc", "stages": ["res4"], "ration": 0.5}], r"unknown key 'ration'"),
        ([{"stages": ["res4"]}], r"type and stages needed"),
        ({"type": "gc", "stages": ["res4"]}, r"a list of dicts"),
        (
            [{"type": "gc", "stages": ["res4"]}, {"type": "gc", "stages": ["res4", "res5"]}],
            r"'gc' twice at after_conv3 in res4",
        ),
    ],
)
def test_bad_plugins_are_refused_naming_the_key(plugins, match):
    with pytest.raises(BackboneOptionError, match=match):
        make_resnet(50, plugins=plugins, **BOTTLENECK)


def test_plugins_in_a_stage_that_is_not_built_are_refused():
    with pytest.raises(BackboneOptionError, match=r"res5 is not built.*roi_heads.res5"):
        plugged(50, [{"type": "gc", "stages": LATE}], out_features=("res4",))


def test_config_builds_plugins_and_names_its_key_in_errors():
    cfg = make_cfg(DEPTH=50, NORM="BN", STEM_OUT_CHANNELS=8, RES2_OUT_CHANNELS=32,
                   WIDTH_PER_GROUP=8)  # fmt: skip
    cfg.BACKBONES.PLUGINS = [
        {
            "type": "gc",
            "stages": ["res3", "res4", "res5"],
            "position": "after_conv3",
            "ratio": 0.0625,
        }
    ]
    model = backbones_build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert model.spec.plugins == (PluginSpec("gc", LATE, "after_conv3", 0.0625),)
    assert isinstance(model.res4[5].after_conv3.gc, GlobalContext)
    cfg.dump()  # a config with plugins can be written out
    cfg.BACKBONES.PLUGINS = [{"type": "gc", "stages": ["res4"], "position": "after_conv9"}]
    with pytest.raises(BackboneOptionError, match=r"^BACKBONES.PLUGINS position='after_conv9'"):
        backbones_build_resnet_backbone(cfg, ShapeSpec(channels=3))
    cfg.BACKBONES.PLUGINS = [{"type": "gc", "stages": ["res5"]}]
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    with pytest.raises(BackboneOptionError, match=r"^BACKBONES.PLUGINS stages=.*not built"):
        backbones_build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_imagenet_weights_report_plugin_tensors_as_new(tmp_path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    plugins = [{"type": "gc", "stages": LATE}, {"type": "non_local", "stages": ["res4"]}]
    model = make_resnet(50, plugins=plugins, norm="BN", stride_in_1x1=False)
    lines: list[str] = []
    report = load_weights(model, tmp_path / "r50.pth", log=lines.append)
    assert not report.missing  # every ImageNet tensor found its place
    assert set(report.new) == {"res*.after_conv3.gc.*", "res*.after_conv3.non_local.*"}
    assert len(report.new["res*.after_conv3.gc.*"]) == 8 * (4 + 6 + 3)
    assert any("new, they start as the plugin initialises them" in line for line in lines)
    assert not any("NOT IN THE FILE" in line for line in lines)
    # A file of the plugged net has them all; one that lost some of a plugin's tensors is missing
    # them (not new).
    state = model.state_dict()
    torch.save(state, tmp_path / "gc.pth")
    assert not load_weights(model, tmp_path / "gc.pth", log=lines.append).new
    del state["res4.2.after_conv3.gc.conv_mask.weight"]
    torch.save(state, tmp_path / "partial.pth")
    report = load_weights(model, tmp_path / "partial.pth", log=lines.append)
    assert report.missing == {"res*.after_conv3.gc.*": ["res4.2.after_conv3.gc.conv_mask.weight"]}


def test_the_gcnet_config_is_mask_rcnn_r50_fpn_with_gc_blocks_and_syncbn():
    """configs/mrcnn_r50_gc.yaml: our Mask R-CNN R-50-FPN 1x with torchvision's weights (as
    MMDetection's GCNet recipe), SyncBN in the backbone and GC r1/16 after conv3 of res3-res5."""
    from detectron2.modeling import build_model

    from backbones import load_cfg

    root = Path(__file__).parents[1] / "configs"
    gc = load_cfg(str(root / "mrcnn_r50_gc.yaml"), ["MODEL.DEVICE", "cpu"])
    plain = load_cfg(str(root / "mrcnn_r50.yaml"), ["MODEL.DEVICE", "cpu"])
    differ = {k for k in flatten(gc) if flatten(gc)[k] != flatten(plain).get(k)}
    weights = {"MODEL.WEIGHTS", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT"}
    assert differ == weights | {
        "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.NORM", "BACKBONES.PLUGINS"
    }  # fmt: skip
    assert gc.MODEL.RESNETS.NORM == "SyncBN" and gc.MODEL.BACKBONE.FREEZE_AT == 2
    model = build_model(gc)
    resnet = model.backbone.bottom_up
    assert resnet.spec.plugins == (PluginSpec("gc", LATE, "after_conv3", 1 / 16),)
    blocks = [m for m in resnet.modules() if isinstance(m, GlobalContext)]
    assert len(blocks) == 4 + 6 + 3
    assert {b.channels // b.channel_add_conv[0].out_channels for b in blocks} == {16}


def test_the_gcnet_detector_loads_imagenet_weights_with_its_gc_blocks_new(tmp_path, caplog):
    """The user's path: the GCNet YAML with a torchvision R-50 file, loaded by the checkpointer
    into the whole detector; only the heads are missing and the GC blocks are new."""
    from detectron2.modeling import build_model

    from backbones import BackbonesCheckpointer, load_cfg

    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    config = str(Path(__file__).parents[1] / "configs" / "mrcnn_r50_gc.yaml")
    cfg = load_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "r50.pth")])
    model = build_model(cfg)
    with caplog.at_level("INFO"):
        BackbonesCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    gc = "backbone.bottom_up.res*.after_conv3.gc.*: 104 tensors of a plugin the file does not have"
    assert gc in caplog.text and "NOT IN THE FILE" not in caplog.text


def test_a_weights_file_of_a_plugged_net_rebuilds_it(tmp_path):
    """make_resnet(weights=...) reads the plugins from the file's names (type, position,
    stages) and their ratio from the inner conv's shape, as it reads the depth and widths."""
    plugins = [
        {"type": "gc", "stages": LATE, "ratio": 0.25},
        {"type": "non_local", "stages": ["res4"], "position": "after_conv2"},
        {"type": "se", "stages": ["res2", "res5"], "position": "after_conv1"},
    ]
    model = randomize_(plugged(50, plugins)).eval()
    torch.save(model.state_dict(), tmp_path / "plugged.pth")
    again = make_resnet(weights=tmp_path / "plugged.pth", norm="BN").eval()
    # The same plugins; SE's ratio is read where its widths round to 8 (here 64 * 1/16 = 4 -> 8,
    # read as 1/8), which builds the same widths.
    assert {p for p in again.spec.plugins if p.type != "se"} == set(model.spec.plugins[:2])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    with torch.no_grad():
        torch.testing.assert_close(again(X)["res5"], model(X)["res5"])
    # Given explicitly, the caller's plugins win: none here, and the file's are reported unused.
    lines: list[str] = []
    plain = make_resnet(weights=tmp_path / "plugged.pth", plugins=[], norm="BN")
    assert plain.spec.plugins == ()
    report = load_weights(plain, tmp_path / "plugged.pth", log=lines.append)
    assert any(".after_conv3.gc." in name for name in report.unused)


def test_plugged_backbones_export_to_onnx_with_dynamic_sizes(tmp_path):
    from backbones.export.exporters import check_export, export_onnx

    plugins = [
        {"type": "gc", "stages": LATE},
        {"type": "se", "stages": ["res2"]},
        {"type": "non_local", "stages": ["res4"], "position": "after_conv2"},
    ]
    options = {**BOTTLENECK, "stage_blocks": (1, 1, 1, 1)}
    model = randomize_(make_resnet(plugins=plugins, **options)).eval()
    with torch.no_grad():  # the zero-initialised layers too, so that every path counts
        for weight in model.parameters():
            if not weight.any():
                weight.normal_(std=0.1)
    export_onnx(model, tmp_path / "plugged.onnx", image_size=(64, 64))
    batches = [torch.randn(1, 3, 64, 64), torch.randn(2, 3, 96, 64)]  # another size and batch
    worst = check_export(model, tmp_path / "plugged.onnx", batches)
    assert set(worst) == {"res2", "res3", "res4", "res5"} and max(worst.values()) < 1e-3


@pytest.mark.parametrize("name, depth", [("seresnet50", 50), ("seresnet18", 18)])
def test_timms_se_resnets_load_and_equal_timm(name, depth, tmp_path):
    """timm's SE-ResNets (SE after the last conv's norm, ratio 1/16, widths rounded to 8) on
    random weights: the file rebuilds our ResNet with the SE plugin and its features equal
    timm's ``forward_features``."""
    torch.manual_seed(0)
    theirs = randomize_(timm.create_model(name)).eval()
    torch.save(theirs.state_dict(), tmp_path / f"{name}.pth")
    lines: list[str] = []
    ours = make_resnet(weights=tmp_path / f"{name}.pth", norm="BN").eval()
    report = load_weights(ours, tmp_path / f"{name}.pth", log=lines.append)
    position = "after_conv3" if depth == 50 else "after_conv2"
    stages = ("res2", "res3", "res4", "res5")
    assert ours.spec.plugins == (PluginSpec("se", stages, position, 1 / 16),)
    assert (ours.spec.depth, ours.spec.stride_in_1x1) == (depth, False)
    assert not report.missing and not report.new and report.unused == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x)["res5"], theirs.forward_features(x), rtol=1e-4, atol=1e-4
        )
