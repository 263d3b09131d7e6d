"""The paper's CIFAR-10 ResNets (Sec. 4.2, Table 6): parameter counts equal to the paper's and to
a count by hand, 6n + 2 weighted layers, the three shortcut kinds, shapes, errors, and a net that
learns a fixed batch."""

from __future__ import annotations

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from backbones import BackboneOptionError
from backbones.study.pretrain.cifar import (
    CIFAR_DEPTHS,
    PAPER_PARAMS_M,
    ZeroPadShortcut,
    make_cifar_resnet,
)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def by_hand(n: int, projections: bool) -> int:
    """Conv weights (no biases), two norm parameters per channel, the linear layer."""
    total = 3 * 16 * 9 + 2 * 16  # stem
    previous = 16
    for width in (16, 32, 64):
        total += previous * width * 9 + (2 * n - 1) * width * width * 9 + 2 * n * 2 * width
        if projections and previous != width:
            total += previous * width + 2 * width
        previous = width
    return total + 64 * 10 + 10


@pytest.mark.parametrize("depth", sorted(CIFAR_DEPTHS))
def test_parameters_equal_the_papers_table_6(depth):
    n = CIFAR_DEPTHS[depth]
    assert depth == 6 * n + 2
    option_a = count(make_cifar_resnet(depth))
    assert option_a == by_hand(n, projections=False)
    digits = 1 if depth == 110 else 2  # as printed: 0.27M ... 0.85M, 1.7M
    assert round(option_a / 1e6, digits) == PAPER_PARAMS_M[depth]
    # Option B adds the two projections; the plain net has the same layers as option A.
    assert count(make_cifar_resnet(depth, shortcut="B")) == by_hand(n, projections=True)
    assert count(make_cifar_resnet(depth, residual=False)) == option_a


@pytest.mark.parametrize("depth", [20, 56])
def test_six_n_plus_two_weighted_layers(depth):
    model = make_cifar_resnet(depth, shortcut="B")
    layers = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and ".shortcut" not in name
    ]
    assert len(layers) == depth


def test_the_three_shortcuts():
    option_a = make_cifar_resnet(20).backbone
    option_b = make_cifar_resnet(20, shortcut="B").backbone
    plain = make_cifar_resnet(20, residual=False).backbone
    firsts = [getattr(option_a, name)[0] for name in ("res2", "res3", "res4")]
    assert firsts[0].shortcut is None  # 16 -> 16 at stride 1: the identity
    for block in firsts[1:]:
        assert isinstance(block.shortcut, ZeroPadShortcut)
        assert not list(block.shortcut.parameters())
    assert [type(getattr(option_b, n)[0].shortcut).__name__ for n in ("res3", "res4")] == [
        "ConvNorm",
        "ConvNorm",
    ]
    assert all(not block.residual and block.shortcut is None for block in plain.res3)


def test_zero_padding_subsamples_and_adds_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


def test_shapes_of_a_cifar_image():
    model = make_cifar_resnet(32).eval()
    shape = model.backbone.output_shape()["res4"]
    assert (shape.channels, shape.stride) == (64, 4)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert model.backbone(images.float())["res4"].shape == (3, 64, 8, 8)
    assert model(images).shape == (3, 10)
    assert make_cifar_resnet(20, num_classes=100).eval()(images).shape == (3, 100)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(depth=18), "depth"),
        (dict(depth=20, shortcut="C"), "shortcut"),
        (dict(depth=20, residual="no"), "residual"),
        (dict(depth=20, num_classes=0), "num_classes"),
    ],
)
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(BackboneOptionError) as error:
        make_cifar_resnet(**kwargs)
    assert error.value.option == option


@pytest.mark.parametrize("residual", [True, False])
def test_a_net_learns_a_fixed_batch(residual):
    torch.manual_seed(0)
    model = make_cifar_resnet(20, residual=residual).train()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with EventStorage():
        for _ in range(30):
            loss = model((images, labels))["loss_cls"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_zero_init_starts_each_block_at_the_identity_and_refuses_plain_nets():
    model = make_cifar_resnet(20, zero_init_residual=True)
    x = torch.randn(2, 16, 8, 8)
    block = model.backbone.res2[1]
    block.eval()
    assert torch.equal(block(x), torch.relu(x))  # the branch adds zeros: relu(x + 0)
    with pytest.raises(BackboneOptionError) as error:
        make_cifar_resnet(20, residual=False, zero_init_residual=True)
    assert error.value.option == "zero_init_residual"


def test_the_pretraining_tool_trains_a_cifar_net_and_names_bad_options(tmp_path, capsys):
    from test_pretrain import load_tool

    tool = load_tool("pretrain_classifier")
    base = ["--family", "cifar", "--depth", "20", "--synthetic-root", str(tmp_path / "data")]
    base += ["--num-classes", "4", "--num-train", "32", "--num-val", "16", "--image-size", "32"]
    assert tool.main(base + ["--output", str(tmp_path / "bad"), "width", "8"]) == 2
    err = capsys.readouterr().err
    assert "width=8" in err and "shortcut" in err and not (tmp_path / "bad").exists()
    argv = base + ["--output", str(tmp_path / "out"), "--max-iter", "2", "--batch-size", "8"]
    capsys.readouterr()
    assert tool.main(argv + ["shortcut", "B", "zero_init_residual", "True"]) == 0
    assert "weights:" in capsys.readouterr().out
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert "FAMILY: cifar" in config and "shortcut" in config
