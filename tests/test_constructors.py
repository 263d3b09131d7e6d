"""``make_resnet``'s family options: output stride, stochastic depth, gradient checkpointing, custom
depths, and their config keys; defaults that do not mislead."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from torch import nn

from backbones import (
    DEPTHS,
    BackboneOptionError,
    backbones_build_resnet_backbone,
    backbones_build_resnet_fpn_backbone,
    load_cfg,
    make_resnet,
    make_resnet_fpn,
)

from helpers import make_cfg

RGB = ShapeSpec(channels=3)


def tiny(depth: int | None, **options) -> nn.Module:
    """Full topology with shrunk widths."""
    basic = (
        (options.get("block_type") == "basic") if depth is None else DEPTHS[depth].block == "basic"
    )
    widths = dict(stem_out_channels=8, res2_out_channels=8 if basic else 16, width_per_group=4)
    return make_resnet(depth, **{"norm": "BN", **widths, **options})


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_stride_dilates_the_last_stages(depth, output_stride):
    model = tiny(depth, output_stride=output_stride).eval()
    strides = {name: spec.stride for name, spec in model.output_shape().items()}
    assert strides == {
        "res2": 4,
        "res3": 8,
        "res4": min(16, output_stride),
        "res5": min(32, output_stride),
    }
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    for name, value in outputs.items():
        assert value.shape[-2:] == (64 // strides[name],) * 2
    dilations = {name: getattr(model, name)[-1].conv2.dilation for name in ("res4", "res5")}
    expected = {32: (1, 1), 16: (1, 2), 8: (2, 4)}[output_stride]
    assert (dilations["res4"][0], dilations["res5"][0]) == expected


def test_output_stride_16_is_res5_dilation_2():
    torch.manual_seed(0)
    a = tiny(50, output_stride=16).eval()
    b = tiny(50, res5_dilation=2).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x)["res5"], b(x)["res5"])
    tiny(50, output_stride=16, res5_dilation=2)  # agree: no error


def test_output_stride_8_from_the_config():
    cfg = make_cfg(depth=50, norm="BN")
    cfg.BACKBONES.OUTPUT_STRIDE = 8
    model = backbones_build_resnet_backbone(cfg, RGB)
    assert {name: s.stride for name, s in model.output_shape().items()} == {
        "res2": 4, "res3": 8, "res4": 8, "res5": 8
    }  # fmt: skip


def test_output_stride_contradicting_res5_dilation_names_both_keys():
    cfg = make_cfg(depth=50, res5_dilation=2)
    cfg.BACKBONES.OUTPUT_STRIDE = 32
    with pytest.raises(BackboneOptionError, match=r"BACKBONES\.OUTPUT_STRIDE=32 .*RES5_DILATION"):
        backbones_build_resnet_backbone(cfg, RGB)


def test_drop_path_schedule_training_and_eval():
    model = tiny(50, drop_path_rate=0.3)
    rates = [block.drop_path for stage in model.stages for block in stage]
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert max(steps) - min(steps) < 1e-9  # linear, as timm's
    block = model.res5[-1].train()
    x = torch.randn(64, block.in_channels, 4, 4)
    torch.manual_seed(0)
    out = block(x)
    # A dropped sample passes through the identity shortcut alone: relu(x).
    identity = [torch.equal(out[i], torch.relu(x[i])) for i in range(64)]
    assert 5 <= sum(identity) <= 35  # ~0.3 * 64 = 19 dropped
    block.eval()
    reference = tiny(50).res5[-1].eval()
    reference.load_state_dict(block.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x))  # identity in eval


def test_drop_path_draws_as_before_and_scripts():
    """One Bernoulli draw per sample, ``empty((N, 1, 1, 1)).bernoulli_(1 - rate)``, then the
    kept ones scaled by ``1 / (1 - rate)``: the draws of the former hand-written drop path, so a
    training resumed with drop path repeats them exactly. TorchScript compiles it."""
    model = tiny(50, drop_path_rate=0.3, out_features=("res5",)).train()
    block = model.res5[-1]
    x = torch.randn(64, block.in_channels, 4, 4)
    torch.manual_seed(0)
    out = block(x)
    torch.manual_seed(0)
    kept = torch.empty((64, 1, 1, 1)).bernoulli_(1 - block.drop_path)
    dropped = [torch.equal(out[i], torch.relu(x[i])) for i in range(64)]
    assert dropped == [not k for k in kept.flatten().tolist()]
    with torch.no_grad():
        branch = block.conv3(F.relu(block.conv2(F.relu(block.conv1(x)))))
    torch.testing.assert_close(out, F.relu(branch * kept / 0.7 + x))
    scripted = torch.jit.script(model)
    image = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    expected = model(image)["res5"]
    torch.manual_seed(1)
    torch.testing.assert_close(scripted(image)["res5"], expected)


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN"])
def test_grad_checkpointing_gives_the_same_gradients_and_statistics(norm):
    torch.manual_seed(0)
    options = dict(norm=norm)
    if norm == "GN":  # 32 groups: every width a multiple of 32
        options.update(stem_out_channels=32, res2_out_channels=64, width_per_group=32)
    plain = tiny(50, **options).train()
    checkpointed = tiny(50, grad_checkpointing=True, **options).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        model(x)["res5"].square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(a, b, msg=name)  # running statistics updated once


def test_grad_checkpointing_keeps_fewer_activations():
    """The bytes autograd keeps for the backward pass (saved-tensor hooks), without and with
    checkpointing of every stage."""

    def saved_bytes(model: nn.Module) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(2, 3, 128, 128))["res5"].sum()
        return total

    full = saved_bytes(tiny(50).train())
    checkpointed = saved_bytes(tiny(50, grad_checkpointing=True).train())
    assert checkpointed < 0.5 * full  # 0.36 here; R-50 at full width: docs/usage.md


def test_grad_checkpointing_of_chosen_stages_and_torchscript():
    model = tiny(50, grad_checkpointing=["res4", "res5"])
    assert model.grad_checkpointing == ["res4", "res5"]
    model.eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)["res5"], model(x)["res5"])


@pytest.mark.parametrize("block_type", ["basic", "bottleneck"])
def test_custom_stage_blocks_build_and_round_trip_through_a_weights_file(block_type, tmp_path):
    model = tiny(None, stage_blocks=(1, 2, 3, 1), block_type=block_type)
    assert [len(stage) for stage in model.stages] == [1, 2, 3, 1]
    model(torch.randn(1, 3, 64, 64))["res5"].sum().backward()
    torch.save({"model": model.state_dict()}, tmp_path / "custom.pth")
    rebuilt = make_resnet(weights=tmp_path / "custom.pth", norm="BN")
    assert [len(stage) for stage in rebuilt.stages] == [1, 2, 3, 1]
    assert type(rebuilt.res2[0]) is type(model.res2[0])


def test_table_depths_equal_their_stage_blocks():
    spec = DEPTHS[101]
    a = tiny(101)
    b = tiny(None, stage_blocks=spec.blocks_per_stage, block_type=spec.block)
    assert a.state_dict().keys() == b.state_dict().keys()


@pytest.mark.parametrize(
    "opts, check",
    [
        (["BACKBONES.OUTPUT_STRIDE", "16"], lambda m: m.res5[0].conv2.dilation == (2, 2)),
        (["BACKBONES.DROP_PATH_RATE", "0.2"], lambda m: m.res5[-1].drop_path == 0.2),
        (
            ["BACKBONES.GRAD_CHECKPOINTING", "['res2', 'res3']"],
            lambda m: m.grad_checkpointing == ["res2", "res3"],
        ),
        (
            ["BACKBONES.STAGE_BLOCKS", "[1, 1, 2, 1]", "BACKBONES.BLOCK_TYPE", "bottleneck"],
            lambda m: [len(s) for s in m.stages] == [1, 1, 2, 1],
        ),
        (
            ["BACKBONES.STAGE_BLOCKS", "[1, 1, 1, 1]", "BACKBONES.BLOCK_TYPE", "basic"],
            lambda m: type(m.res2[0]).__name__ == "BasicBlock",
        ),
        (["BACKBONES.RESIDUAL", "False"], lambda m: m.res3[0].shortcut is None),
        (
            ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, False, True]"],
            lambda m: hasattr(m.res5[0], "conv2_offset"),
        ),
    ],
)
def test_each_option_has_a_config_key_that_merges_and_builds(opts, check):
    cfg = make_cfg(depth=50, norm="BN", res2_out_channels=64, width_per_group=16)
    if "basic" in opts:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.merge_from_list(opts)
    model = backbones_build_resnet_backbone(cfg, RGB)
    assert check(model)
    out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"res2", "res3", "res4", "res5"}


def test_bad_config_values_name_the_key():
    cfg = make_cfg(depth=50)
    cfg.BACKBONES.DROP_PATH_RATE = 2.0
    with pytest.raises(BackboneOptionError, match=r"BACKBONES\.DROP_PATH_RATE=2\.0 .*\[0, 1\)"):
        backbones_build_resnet_backbone(cfg, RGB)
    cfg = make_cfg(depth=50)
    cfg.BACKBONES.STAGE_BLOCKS = [1, 1, 1, 1]
    cfg.BACKBONES.BLOCK_TYPE = "wide"
    with pytest.raises(BackboneOptionError, match=r"BACKBONES\.BLOCK_TYPE='wide' .*'basic'"):
        backbones_build_resnet_backbone(cfg, RGB)


def test_frozen_bn_without_weights_warns_once_in_each_path():
    with pytest.warns(UserWarning, match="norm='FrozenBN' with no weights"):
        make_resnet(18, stem_out_channels=8, res2_out_channels=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_resnet(18, norm="BN", stem_out_channels=8, res2_out_channels=8)
    assert not caught
    cfg = load_cfg(opts=["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    cfg.defrost()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbones_build_resnet_backbone(cfg, RGB)
    messages = [str(w.message) for w in caught if "FrozenBN" in str(w.message)]
    assert len(messages) == 1 and "MODEL.WEIGHTS" in messages[0]
    fpn_cfg = make_cfg(depth=18, res2_out_channels=64)
    fpn_cfg.MODEL.WEIGHTS = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbones_build_resnet_fpn_backbone(fpn_cfg, RGB)
    messages = [str(w.message) for w in caught if "FrozenBN" in str(w.message)]
    assert len(messages) == 1 and "MODEL.WEIGHTS" in messages[0]


def test_make_resnet_fpn_warns_once_and_not_with_weights(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_resnet_fpn(18, out_channels=8, stem_out_channels=8, res2_out_channels=8)
    messages = [str(w.message) for w in caught if "FrozenBN" in str(w.message)]
    assert messages and len(messages) == 1
    assert messages[0].startswith("make_resnet_fpn: norm='FrozenBN' with no weights")
    path = tmp_path / "r18.pth"
    torch.save(make_resnet(18, norm="BN", stem_out_channels=8).state_dict(), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_resnet_fpn(out_channels=8, weights=path)  # FrozenBN, filled from the file
    assert not [w for w in caught if "FrozenBN" in str(w.message)]


def test_zero_init_residual_with_frozen_bn_is_an_error_naming_the_key():
    cfg = make_cfg(depth=50, norm="FrozenBN")
    cfg.BACKBONES.ZERO_INIT_RESIDUAL = True
    with pytest.raises(BackboneOptionError, match=r"BACKBONES\.ZERO_INIT_RESIDUAL=True .*FrozenBN"):
        backbones_build_resnet_backbone(cfg, RGB)


def test_timm_resnet_d_weights_through_yaml_set_the_deep_stem_and_avg_down(tmp_path):
    import timm

    path = tmp_path / "resnet18d.pth"
    torch.save(timm.create_model("resnet18d", pretrained=False).state_dict(), path)
    cfg = load_cfg(
        opts=[
            "MODEL.WEIGHTS", str(path),
            "MODEL.RESNETS.DEPTH", "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        ]
    )  # fmt: skip
    assert cfg.BACKBONES.STEM_TYPE == "deep" and cfg.BACKBONES.AVG_DOWN is True
    assert cfg.BACKBONES.STEM_WIDTH == 32
    cfg.defrost()
    model = backbones_build_resnet_backbone(cfg, RGB)
    assert hasattr(model.stem, "conv3")
    with pytest.raises(ValueError, match=r"BACKBONES\.AVG_DOWN is False .*the weights want True"):
        load_cfg(
            opts=[
                "MODEL.WEIGHTS", str(path),
                "MODEL.RESNETS.DEPTH", "18",
                "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                "BACKBONES.AVG_DOWN", "False",
            ]
        )  # fmt: skip


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize(
    "options",
    [
        dict(output_stride=16),
        dict(drop_path_rate=0.2),
        dict(grad_checkpointing=True),
        dict(residual=False),
        dict(deform_on_per_stage=(False, True, True, True), deform_modulated=True),
    ],
    ids=["os16", "drop_path", "checkpointing", "plain", "dcn"],
)
def test_every_option_builds_for_every_depth_and_trains(depth, options):
    if "deform_on_per_stage" in options and DEPTHS[depth].block == "basic":
        with pytest.raises(BackboneOptionError, match="basic blocks have no deformable"):
            tiny(depth, **options)
        return
    model = tiny(depth, **options).train()
    model(torch.randn(2, 3, 64, 64))["res5"].square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
