"""The ResNet family: every depth builds, shapes, freezing, errors, parameter counts and FLOPs."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torchvision
from detectron2.layers import FrozenBatchNorm2d
from fvcore.nn import FlopCountAnalysis
from torch import nn

from backbones import DEPTHS, NORMS, PRESETS, BackboneOptionError, make_resnet
from backbones.modeling.layers import AvgDownConvNorm, projection_shortcut

from helpers import randomize_


def tiny(depth: int, **options):
    """Full topology of ``depth`` with shrunk widths."""
    widths = dict(stem_out_channels=8, res2_out_channels=8 if depth < 26 else 16)
    return make_resnet(depth, width_per_group=4, **{"norm": "BN", **widths, **options})


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_every_depth_builds_and_output_shape_matches_tensors(depth, memory_format):
    model = tiny(
        depth, out_features=("stem", "res2", "res3", "res4", "res5"), memory_format=memory_format
    ).eval()
    blocks = [len(getattr(model, name)) for name in ("res2", "res3", "res4", "res5")]
    assert tuple(blocks) == DEPTHS[depth].blocks_per_stage
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))
    assert list(outputs) == ["stem", "res2", "res3", "res4", "res5"]
    for name, spec in model.output_shape().items():
        assert outputs[name].shape == (1, spec.channels, 64 // spec.stride, 96 // spec.stride)
        assert outputs[name].is_contiguous(
            memory_format=getattr(torch, memory_format, torch.contiguous_format)
        )


def test_memory_formats_give_the_same_features():
    torch.manual_seed(0)
    a = tiny(50, memory_format="channels_last").eval()
    b = tiny(50, memory_format="contiguous").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for name, value in a(x).items():
            # Rounding grows with the magnitude computed (NHWC and NCHW sum in another order).
            scale = max(1.0, value.abs().max().item())
            torch.testing.assert_close(value, b(x)[name], rtol=1e-4, atol=1e-5 * scale)


def test_res5_dilation_keeps_stride_16():
    model = tiny(50, res5_dilation=2)
    assert model.output_shape()["res5"].stride == 16
    assert model.res5[0].conv2.dilation == (2, 2) and model.res5[0].conv2.padding == (2, 2)


def test_unused_stages_are_not_built():
    model = tiny(50, out_features=("res3",))
    assert not hasattr(model, "res4") and not hasattr(model, "res5")


def test_freeze_at_freezes_stem_and_res2_only():
    model = tiny(50, freeze_at=2)
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "res2"} and trainable == {"res3", "res4", "res5"}
    assert isinstance(model.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv1.norm, nn.BatchNorm2d)


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = tiny(18, zero_init_residual=True)
    assert all(block.conv2.norm.weight.abs().sum() == 0 for block in model.res3)
    assert model.res3[0].conv1.norm.weight.abs().sum() > 0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(depth=77), r"depth=77 is not supported; allowed: 18, 26, 34, 50, 101, 152, 200"),
        (dict(depth=18, num_groups=32), r"num_groups=32 .*basic blocks.*allowed: 1"),
        (dict(depth=34, deform_on_per_stage=[False, True, True, True]), r"basic blocks have no"),
        (dict(depth=50, output_stride=12), r"output_stride=12 .*allowed: 32, 16, 8"),
        (
            dict(depth=50, output_stride=8, res5_dilation=2),
            r"output_stride=8 .*res5_dilation=2 \(MODEL.RESNETS.RES5_DILATION\).*allowed: 32, 16",
        ),
        (dict(stage_blocks=(2, 2, 2)), r"stage_blocks=\(2, 2, 2\) .*four positive integers"),
        (dict(depth=50, stage_blocks=(2, 2, 2, 2)), r"stage_blocks=.*depth=50 is given too"),
        (dict(stage_blocks=(2, 2, 2, 2), block_type="wide"), r"block_type='wide' .*'basic'"),
        (dict(depth=50, block_type="basic"), r"block_type='basic' .*depth 50.*'bottleneck'"),
        (dict(depth=50, drop_path_rate=1.0), r"drop_path_rate=1.0 .*\[0, 1\)"),
        (dict(depth=50, residual=False, drop_path_rate=0.1), r"drop_path_rate=0.1 .*plain"),
        (dict(depth=50, zero_init_residual=True), r"zero_init_residual=True .*FrozenBN"),
        (dict(depth=50, grad_checkpointing=["res6"]), r"grad_checkpointing='res6' .*'res2'"),
        (dict(depth=50, deform_num_groups=0), r"deform_num_groups=0 .*positive integer"),
        (dict(depth=50, res5_dilation=4), r"res5_dilation=4 .*allowed: 1, 2"),
        (dict(depth=50, norm="LayerNorm"), r"norm='LayerNorm' .*allowed: 'FrozenBN', 'BN'"),
        (dict(depth=50, out_features=("res6",)), r"out_features='res6' .*'stem', 'res2'"),
        (dict(depth=50, freeze_at=9), r"freeze_at=9 .*allowed: 0, 1, 2, 3, 4, 5"),
        (dict(depth=50, memory_format="nhwc"), r"memory_format='nhwc' .*'channels_last'"),
        (dict(depth=50, width_per_group=0), r"width_per_group=0 .*positive integer"),
        (dict(depth=50, stem_type="tiered"), r"stem_type='tiered' .*allowed: 'basic', 'deep'"),
        (dict(depth=50, stem_type="deep", stem_width=0), r"stem_width=0 .*positive integer"),
        (dict(depth=50, avg_down="yes"), r"avg_down='yes' .*allowed: False, True"),
    ],
)
def test_bad_options_name_the_option_and_the_allowed_values(options, message):
    with pytest.raises(BackboneOptionError, match=message):
        make_resnet(**options)


def test_every_named_norm_builds():
    for norm in NORMS:
        model = make_resnet(
            50,
            norm=norm,
            stem_out_channels=32,
            res2_out_channels=64,
            width_per_group=32,
            memory_format="contiguous",
        )
        assert model.output_shape()["res5"].channels == 512


# torchvision architecture -> our preset; V1 and V2 weights share these shapes.
TORCHVISION = {
    "resnet18": "R-18",
    "resnet34": "R-34",
    "resnet50": "R-50",
    "resnet101": "R-101",
    "resnet152": "R-152",
    "resnext50_32x4d": "X-50-32x4d",
    "resnext101_32x8d": "X-101-32x8d",
    "resnext101_64x4d": "X-101-64x4d",
    "wide_resnet50_2": "W-50-2",
    "wide_resnet101_2": "W-101-2",
}


@pytest.mark.parametrize("arch", TORCHVISION)
def test_parameter_count_equals_torchvision(arch):
    """Same weights as torchvision's model less its classifier (BN in training form)."""
    with torch.device("meta"):
        reference = getattr(torchvision.models, arch)()
        ours = make_resnet(**PRESETS[TORCHVISION[arch]], norm="BN", stride_in_1x1=False)
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == expected
    expected_buffers = sum(b.numel() for b in reference.buffers())
    assert sum(b.numel() for b in ours.buffers()) == expected_buffers


# Table 1 of He et al. (2015): FLOPs (multiply-adds) at 224x224, MSRA stride placement.
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", sorted(PAPER_GFLOPS))
def test_flops_equal_the_paper(depth):
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    model = make_resnet(depth, out_features=("res5",), memory_format="contiguous").eval()
    counter = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
    counter.unsupported_ops_warnings(False)
    # The paper adds the 1000-way classifier (2048 x 1000 or 512 x 1000) and rounds to 0.1 G.
    classifier = model.output_shape()["res5"].channels * 1000
    gflops = (counter.total() + classifier) / 1e9
    assert gflops == pytest.approx(PAPER_GFLOPS[depth], rel=0.02)


def tiny_d(depth: int, **options):
    """ResNet-D (deep stem, avg-down) with the full topology of ``depth`` and shrunk widths."""
    widths = dict(stem_width=4, stem_out_channels=8, res2_out_channels=8 if depth < 26 else 16)
    return make_resnet(
        **{**PRESETS[f"R-{depth}-D"], "norm": "BN", "width_per_group": 4, **widths, **options}
    )


@pytest.mark.parametrize("depth", [18, 26, 34, 50, 101])
def test_parameter_count_equals_timm_resnet_d(depth):
    """R-{depth}-D has the weights of timm's resnet{depth}d less its classifier."""
    with torch.device("meta"):
        reference = timm.create_model(f"resnet{depth}d", pretrained=False)
        ours = make_resnet(**PRESETS[f"R-{depth}-D"], norm="BN")
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == expected
    assert sum(b.numel() for b in ours.buffers()) == sum(b.numel() for b in reference.buffers())


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_deep_stem_output_shape_matches_tensors(memory_format):
    model = tiny_d(
        50, out_features=("stem", "res2", "res3", "res4", "res5"), memory_format=memory_format
    ).eval()
    stem_keys = sorted(k for k in model.state_dict() if k.startswith("stem.") and "norm" not in k)
    assert stem_keys == ["stem.conv1.weight", "stem.conv2.weight", "stem.conv3.weight"]
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))
    for name, spec in model.output_shape().items():
        assert outputs[name].shape == (1, spec.channels, 64 // spec.stride, 96 // spec.stride)
        assert outputs[name].is_contiguous(
            memory_format=getattr(torch, memory_format, torch.contiguous_format)
        )


@pytest.mark.parametrize("depth", [18, 50])
def test_avg_down_adds_no_state_dict_keys(depth):
    plain = tiny_d(depth, avg_down=False).state_dict()
    avg_down = tiny_d(depth, avg_down=True)
    assert {k: v.shape for k, v in avg_down.state_dict().items()} == {
        k: v.shape for k, v in plain.items()
    }
    assert isinstance(avg_down.res3[0].shortcut, AvgDownConvNorm)
    assert avg_down.res3[0].shortcut.stride == (1, 1)


def test_freeze_at_freezes_the_deep_stem():
    model = tiny_d(50, freeze_at=1)
    stem_convs = (model.stem.conv1, model.stem.conv2, model.stem.conv3)
    assert all(isinstance(conv.norm, FrozenBatchNorm2d) for conv in stem_convs)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.res2.parameters())


def timm_to_ours(name: str) -> str:
    """timm ResNet-D state-dict key -> ours (enough of a converter for the tests below)."""
    stem = {
        "conv1.0": "stem.conv1",
        "conv1.1": "stem.conv1.norm",
        "conv1.3": "stem.conv2",
        "conv1.4": "stem.conv2.norm",
        "conv1.6": "stem.conv3",
        "bn1": "stem.conv3.norm",
    }
    prefix, _, leaf = name.rpartition(".")
    if prefix in stem:
        return f"{stem[prefix]}.{leaf}"
    parts = prefix.split(".")
    stage, block, layer = f"res{int(parts[0][5:]) + 1}", parts[1], ".".join(parts[2:])
    layer = {"downsample.1": "shortcut", "downsample.2": "shortcut.norm"}.get(layer, layer)
    if layer.startswith("bn"):
        layer = f"conv{layer[2:]}.norm"
    return f"{stage}.{block}.{layer}.{leaf}"


@pytest.mark.parametrize("depth", [18, 26])
def test_resnet_d_outputs_equal_timm(depth):
    """A shrunk timm ResNet-D, weights renamed, gives our res5 (odd input: ceil-mode pooling)."""
    basic = DEPTHS[depth].block == "basic"
    reference = timm.models.resnet.ResNet(
        timm.models.resnet.BasicBlock if basic else timm.models.resnet.Bottleneck,
        DEPTHS[depth].blocks_per_stage,
        stem_width=4,
        stem_type="deep",
        avg_down=True,
        channels=(8, 16, 32, 64) if basic else (4, 8, 16, 32),
    )
    randomize_(reference).eval()
    ours = tiny_d(depth, out_features=("res5",), memory_format="contiguous").eval()
    weights = {timm_to_ours(k): v for k, v in reference.state_dict().items() if "fc." not in k}
    ours.load_state_dict(weights, strict=True)
    x = torch.randn(2, 3, 61, 83)
    with torch.no_grad():
        expected, actual = reference.forward_features(x), ours(x)["res5"]
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("stride, dilation", [(2, 1), (1, 2), (1, 1)])
def test_avg_down_shortcut_equals_timm_downsample_avg(stride, dilation):
    reference = timm.models.resnet.downsample_avg(8, 16, 1, stride=stride, dilation=dilation)
    ours = projection_shortcut(8, 16, stride, "BN", avg_down=True, dilation=dilation)
    randomize_(reference).eval()
    ours.eval().load_state_dict(
        {
            k.replace("1.", "", 1).replace("2.", "norm.", 1): v
            for k, v in reference.state_dict().items()
        },
        strict=True,
    )
    x = torch.randn(1, 8, 11, 14)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_folded_frozen_bn_is_recomputed_when_weights_change():
    """Without autograd the FrozenBN fold is cached; in-place updates, loading, dtype and
    device moves must invalidate it."""
    torch.manual_seed(0)
    model = tiny(50, norm="FrozenBN").eval()
    other = tiny(50, norm="FrozenBN").eval()
    x = torch.randn(1, 3, 64, 64)

    def reference(m):  # with autograd on and trainable weights: the fold is never cached
        return m(x)["res5"].detach()

    with torch.no_grad():
        first = model(x)["res5"]
        assert torch.equal(model(x)["res5"], first)  # served from the cache
        model.res3[0].conv2.weight.mul_(2.0)
        model.stem.conv1.norm.running_var.add_(0.5)  # a FrozenBN buffer
        changed = model(x)["res5"]
    assert torch.equal(changed, reference(model)) and not torch.allclose(changed, first)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x)["res5"], reference(other))
        assert model.double()(x.double())["res5"].dtype == torch.float64


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_traced_frozen_bn_reads_the_current_parameters(memory_format):
    """A trace records the fold from the parameters, never the eager cache as constants: even
    after a cached eager run, tracing twice agrees (check_trace), loading other weights into the
    traced module gives their outputs, and the traced module converts to float64."""
    torch.manual_seed(0)
    model = randomize_(tiny(50, norm="FrozenBN", memory_format=memory_format)).eval()
    other = randomize_(tiny(50, norm="FrozenBN", memory_format=memory_format), seed=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # fills the eager fold cache
        traced = torch.jit.trace(model, x, strict=False)  # check_trace traces a second time
        torch.testing.assert_close(traced(x)["res5"], model(x)["res5"])
        traced.load_state_dict(other.state_dict())
        torch.testing.assert_close(traced(x)["res5"], other(x)["res5"])
        assert traced.double()(x.double())["res5"].dtype == torch.float64


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_plain_net_has_no_shortcut_and_computes_the_residual_branch_alone(depth):
    torch.manual_seed(0)
    plain = tiny(depth, residual=False).eval()
    residual = tiny(depth).eval()
    plain_keys = set(plain.state_dict())
    assert not any("shortcut" in key for key in plain_keys)
    # Same convs and norms otherwise: the residual net's keys less its shortcuts.
    assert plain_keys == {k for k in residual.state_dict() if "shortcut" not in k}
    block = plain.res3[0]
    x = torch.randn(1, block.in_channels, 16, 16)
    with torch.no_grad():
        # relu(branch(x)) with no shortcut: the convs in order, ReLU between and after.
        convs = [m for n, m in block.named_children() if n.startswith("conv")]
        branch = x
        for conv in convs[:-1]:
            branch = torch.relu(conv(branch))
        torch.testing.assert_close(block(x), torch.relu(convs[-1](branch)))
    plain(torch.randn(1, 3, 64, 64))["res5"].sum().backward()  # trains


def test_plain_net_weights_rebuild_a_plain_net(tmp_path):
    model = tiny(34, residual=False)
    torch.save({"model": model.state_dict()}, tmp_path / "plain.pth")
    rebuilt = make_resnet(weights=tmp_path / "plain.pth", norm="BN")
    assert not rebuilt.res3[0].residual and rebuilt.res3[0].shortcut is None
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_plain_net_refuses_zero_init_residual():
    with pytest.raises(BackboneOptionError, match="zero_init_residual"):
        tiny(18, residual=False, zero_init_residual=True)
