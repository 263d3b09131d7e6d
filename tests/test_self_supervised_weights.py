"""Self-supervised ResNet-50 checkpoints (MoCo v1/v2, MoCo v3, DenseCL, SwAV, DINO, MoCo's and
OpenSelfSup's Detectron2 conversions), written here in their training scripts' layouts: each is
told apart from every other source, keeps only the evaluated backbone and loads strictly."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from backbones import load_cfg, make_resnet
from backbones.weights import (
    SOURCES,
    UnsafeWeightsError,
    claiming_sources,
    load_weights,
    published_weights,
    read_file,
    read_weights,
    source_of_url,
)
from backbones.weights.sources import TORCHVISION_INPUT, unwrap

from helpers import randomize_

# torchvision's ResNet-50 topology with a thin bottleneck (3x3 width 4 * 2**stage instead of
# 64 * 2**stage): every name and the stem/output widths of a ResNet-50, a tenth of its tensors.
WIDTH_PER_GROUP = 4
EMBED = 2048  # res5's channels: what heads take


def torchvision_r50(seed: int, fc: nn.Module | None = None) -> torchvision.models.ResNet:
    """A randomised torchvision R-50 (thin bottleneck); ``fc`` replaces its classifier (None:
    removed, as in OpenSelfSup, SwAV and DINO)."""
    torch.manual_seed(seed)
    model = torchvision.models.ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=WIDTH_PER_GROUP)
    model.fc = fc if fc is not None else nn.Identity()
    return randomize_(model, seed).eval()


def ours() -> nn.Module:
    return make_resnet(50, width_per_group=WIDTH_PER_GROUP, stride_in_1x1=False, norm="BN").eval()


def features(model: torchvision.models.ResNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for i in range(1, 5):
        y = getattr(model, f"layer{i}")(y)
        out[f"res{i + 1}"] = y
    return out


def prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in state.items()}


def optimizer_state() -> dict[str, Any]:
    """What a torch optimizer's state_dict holds (no tensors needed to tell a source)."""
    return {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}


def mlp(*layers: nn.Module) -> dict[str, torch.Tensor]:
    return nn.Sequential(*layers).state_dict()


@dataclass
class Layout:
    """A checkpoint in one publisher's layout: the object saved, the network whose backbone is
    to be taken (``query``), another that must not be (a momentum encoder, a DINO student), the
    names that are unused (heads, queues, the other network) and how the file is written."""

    source: str
    obj: dict[str, Any]
    query: torchvision.models.ResNet
    other: torchvision.models.ResNet | None
    unused: set[str]
    pickled: bool = False  # a plain pickle (Detectron2 conversions), else torch.save
    trusted: bool = False  # it pickles more than tensors and containers (DINO's args)

    def write(self, path: Path) -> Path:
        if self.pickled:
            path.write_bytes(pickle.dumps(self.obj))
        else:
            torch.save(self.obj, path)
        return path


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def moco(version: int) -> Layout:
    """facebookresearch/moco main_moco.py: DDP MoCo(encoder_q, encoder_k, queue, queue_ptr)."""

    def head() -> nn.Module:
        return (
            nn.Linear(EMBED, 8)
            if version == 1
            else nn.Sequential(nn.Linear(EMBED, 16), nn.ReLU(), nn.Linear(16, 8))
        )

    query, key = torchvision_r50(1, head()), torchvision_r50(2, head())
    state = {
        **prefixed("encoder_q.", query.state_dict()),
        **prefixed("encoder_k.", key.state_dict()),
        "queue": torch.randn(8, 32),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    unused = {k for k in state if not k.startswith("encoder_q.") or k.startswith("encoder_q.fc.")}
    obj = {
        "epoch": 200,
        "arch": "resnet50",
        "state_dict": prefixed("module.", state),
        "optimizer": optimizer_state(),
    }
    return Layout(f"moco_v{version}", obj, query, key, unused)


def moco_v3() -> Layout:
    """facebookresearch/moco-v3 main_moco.py: base_encoder.fc a projection MLP with BN, a
    momentum encoder, a predictor; checkpoint with a GradScaler state."""

    def projector() -> nn.Module:
        return nn.Sequential(
            nn.Linear(EMBED, 16, bias=False),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.Linear(16, 8, bias=False),
            nn.BatchNorm1d(8, affine=False),
        )

    base, momentum = torchvision_r50(3, projector()), torchvision_r50(4, projector())
    predictor = mlp(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8))
    state = {
        **prefixed("base_encoder.", base.state_dict()),
        **prefixed("momentum_encoder.", momentum.state_dict()),
        **prefixed("predictor.", predictor),
    }
    unused = {k for k in state if not k.startswith("base_encoder.") or ".fc." in k}
    obj = {
        "epoch": 100,
        "arch": "resnet50",
        "state_dict": prefixed("module.", state),
        "optimizer": optimizer_state(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
    }
    return Layout("moco_v3", obj, base, momentum, unused)


class DenseCLNeck(nn.Module):
    """OpenSelfSup's DenseCLNeck names: a global MLP (mlp) and a dense 1x1-conv MLP (mlp2)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(EMBED, 16), nn.ReLU(), nn.Linear(16, 8))
        self.mlp2 = nn.Sequential(nn.Conv2d(EMBED, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1))


class DenseCL(nn.Module):
    """WXinlong/DenseCL openselfsup/models/densecl.py: encoder_q = [ResNet, neck], encoder_k,
    ``backbone`` = encoder_q[0] (a second name for the same module), two queues."""

    def __init__(self, query: nn.Module, key: nn.Module) -> None:
        super().__init__()
        self.encoder_q = nn.Sequential(query, DenseCLNeck())
        self.encoder_k = nn.Sequential(key, DenseCLNeck())
        self.backbone = self.encoder_q[0]
        for name in ("queue", "queue2"):
            self.register_buffer(name, torch.randn(8, 32))
            self.register_buffer(name + "_ptr", torch.zeros(1, dtype=torch.long))


def densecl_training() -> Layout:
    query, key = torchvision_r50(5), torchvision_r50(6)
    state = DenseCL(query, key).state_dict()
    assert "backbone.layer1.0.conv1.weight" in state  # the shared module, saved twice
    unused = {k for k in state if not k.startswith("encoder_q.0.")}
    obj = {
        "meta": {"epoch": 200, "iter": 1000, "mmcv_version": "0.3.1"},
        "state_dict": state,
        "optimizer": optimizer_state(),
    }
    return Layout("densecl", obj, query, key, unused)


def densecl_extracted() -> Layout:
    """DenseCL's tools/extract_backbone_weights.py output (its released files)."""
    query = torchvision_r50(7)
    obj = {"state_dict": backbone_state(query), "author": "DenseCL"}
    return Layout("densecl", obj, query, None, set())


def swav(multi_prototypes: bool) -> Layout:
    """facebookresearch/swav src/resnet50.py (no fc; projection_head, prototypes), as released
    (a bare DDP state dict) or, for DeepCluster-v2's several prototype heads, as main_*.py's
    training checkpoint."""
    model = torchvision_r50(8)
    head = mlp(nn.Linear(EMBED, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8))
    prototypes = (
        {f"prototypes.prototypes{i}.weight": torch.randn(30, 8) for i in range(3)}
        if multi_prototypes
        else {"prototypes.weight": torch.randn(30, 8)}
    )
    state = {**backbone_state(model), **prefixed("projection_head.", head), **prototypes}
    unused = {k for k in state if k.startswith(("projection_head.", "prototypes."))}
    obj = prefixed("module.", state)
    if multi_prototypes:
        obj = {"epoch": 400, "state_dict": obj, "optimizer": optimizer_state()}
    return Layout("swav", obj, model, None, unused)


def dino() -> Layout:
    """facebookresearch/dino main_dino.py: student and teacher MultiCropWrapper(backbone without
    fc, DINOHead) state dicts, both DDP-wrapped for a ResNet; args is an argparse.Namespace."""
    teacher, student = torchvision_r50(9), torchvision_r50(10)

    def head() -> dict[str, torch.Tensor]:
        state = prefixed("mlp.", mlp(nn.Linear(EMBED, 16), nn.GELU(), nn.Linear(16, 8)))
        state["last_layer.weight_g"] = torch.ones(30, 1)
        state["last_layer.weight_v"] = torch.randn(30, 8)
        return state

    def wrapper(model: nn.Module) -> dict[str, torch.Tensor]:
        return prefixed(
            "module.", {**prefixed("backbone.", model.state_dict()), **prefixed("head.", head())}
        )

    obj = {
        "student": wrapper(student),
        "teacher": wrapper(teacher),
        "optimizer": optimizer_state(),
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet50", out_dim=30, optimizer="sgd"),
        "dino_loss": {"center": torch.zeros(1, 30)},
    }
    unused = {f"teacher.{k[len('module.'):]}" for k in obj["teacher"] if ".head." in k}
    unused |= {f"student.{k[len('module.'):]}" for k in obj["student"]}
    return Layout("dino", obj, teacher, student, unused, trusted=True)


def to_detectron2_names(name: str) -> str:
    """The renaming MoCo's / OpenSelfSup's convert-pretrain-to-detectron2.py does: names without
    "layer" go under "stem." (fc too), layerN -> res(N+1), bnN -> convN.norm, downsample.0/.1 ->
    shortcut / shortcut.norm."""
    if "layer" not in name:
        name = "stem." + name
    name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    for i in (1, 2, 3):
        name = name.replace(f"bn{i}", f"conv{i}.norm")
    for i in (4, 3, 2, 1):
        name = name.replace(f"layer{i}", f"res{i + 1}")
    return name


def converted(author: str) -> Layout:
    """A MoCo v2 query encoder (with its MLP head: MoCo's script keeps it as stem.fc.*) or a
    DenseCL extracted backbone, through the converter: a pickle of numpy arrays."""
    fc = (
        nn.Sequential(nn.Linear(EMBED, 16), nn.ReLU(), nn.Linear(16, 8))
        if author == "MOCO"
        else None
    )
    query = torchvision_r50(11, fc)
    state = query.state_dict() if author == "MOCO" else backbone_state(query)
    model = {to_detectron2_names(k): v.numpy() for k, v in state.items()}
    unused = {k for k in model if k.startswith("stem.fc.")}
    assert len(unused) == (4 if author == "MOCO" else 0)
    obj = {"model": model, "__author__": author, "matching_heuristics": True}
    return Layout("selfsup_detectron2", obj, query, None, unused, pickled=True)


LAYOUTS: dict[str, Callable[[], Layout]] = {
    "moco_v1": lambda: moco(1),
    "moco_v2": lambda: moco(2),
    "moco_v3": moco_v3,
    "densecl (training checkpoint)": densecl_training,
    "densecl (extracted backbone, released)": densecl_extracted,
    "swav (released state dict)": lambda: swav(multi_prototypes=False),
    "swav (DeepCluster-v2 training checkpoint)": lambda: swav(multi_prototypes=True),
    "dino (full checkpoint)": dino,
    "selfsup_detectron2 (MoCo)": lambda: converted("MOCO"),
    "selfsup_detectron2 (OpenSelfSup)": lambda: converted("OpenSelfSup"),
}


@pytest.mark.parametrize("kind", LAYOUTS)
def test_checkpoint_is_its_source_and_loads_the_evaluated_backbone(kind, tmp_path):
    layout = LAYOUTS[kind]()
    path = layout.write(tmp_path / "checkpoint.pth")
    obj = read_file(str(path), trusted=layout.trusted)
    assert claiming_sources(*unwrap(obj)) == [layout.source]  # and no other record
    weights = read_weights(path, trusted=layout.trusted)
    assert weights.source == kind.split(" ")[0] == layout.source
    assert weights.input == TORCHVISION_INPUT == SOURCES[layout.source].input
    assert weights.architecture["depth"] == 50 and weights.is_backbone_only
    assert set(weights.unused) == layout.unused

    model = ours()
    report = load_weights(model, weights, log=lambda line: None)
    # Strict: every tensor of the ResNet loaded, every renamed tensor used, nothing skipped.
    assert not report.missing and not report.skipped
    assert sorted(report.loaded) == sorted(model.state_dict())
    assert sorted(report.unused) == sorted(layout.unused)

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        actual, expected = model(x), features(layout.query, x)
        other = features(layout.other, x) if layout.other is not None else None
    for name, tensor in expected.items():
        assert torch.allclose(actual[name], tensor, atol=1e-4, rtol=1e-4), name
        # The momentum encoder / student differs: what was taken is the evaluated backbone.
        assert other is None or not torch.allclose(actual[name], other[name], atol=1e-2), name


def test_dino_checkpoint_needs_trust_for_its_pickled_args(tmp_path):
    path = dino().write(tmp_path / "dino_resnet50_pretrain_full_checkpoint.pth")
    with pytest.raises(UnsafeWeightsError, match=r"dino_resnet50_pretrain_full_checkpoint.pth"):
        read_weights(path)
    assert read_weights(path, trusted=True).source == "dino"


def test_dino_backbone_only_file_reads_as_torchvision_with_the_same_input(tmp_path):
    # dino_resnet50_pretrain.pth is a torchvision state dict without fc: its names are all
    # torchvision's, so by content it is torchvision's (with the same input settings).
    model = torchvision_r50(12)
    path = tmp_path / "dino_resnet50_pretrain.pth"
    torch.save(backbone_state(model), path)
    weights = read_weights(path)
    assert weights.source == "torchvision" and weights.input == SOURCES["dino"].input
    assert weights.unused == []


def test_torchvision_names_beside_other_top_level_modules_are_not_torchvision():
    """SwAV's names are torchvision's plus its heads: only the swav record claims them; without
    a record's markers such a file is unknown, not torchvision's with the extras dropped."""
    state = backbone_state(torchvision_r50(13))
    assert claiming_sources(state, {}) == ["torchvision"]
    assert claiming_sources({**state, "prototypes.weight": torch.zeros(3, 8)}, {}) == ["swav"]
    assert claiming_sources({**state, "projection_head.0.weight": torch.zeros(3, 8)}, {}) == []
    # timm's SE blocks sit under layerN: still a torchvision/timm file.
    se = {**state, "layer1.0.se.fc1.weight": torch.zeros(4, 256, 1, 1)}
    assert claiming_sources(se, {}) == ["torchvision"]
    # A signed extraction is its publisher's, whatever its names.
    assert claiming_sources(state, {"author": "DenseCL"}) == ["densecl"]
    d2 = make_resnet(50, width_per_group=WIDTH_PER_GROUP, norm="BN").state_dict()
    assert claiming_sources(d2, {"__author__": "MOCO"}) == ["selfsup_detectron2"]
    assert claiming_sources(d2, {"__author__": "torchvision"}) == ["detectron2"]


# The publishers' download addresses, from their READMEs (MoCo v3: CONFIG.md).
PUBLISHED = {
    "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar": "moco_v1",  # noqa: E501
    "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar": "moco_v2",  # noqa: E501
    "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar": "moco_v3",
    "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar": "swav",
    "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth": "dino",  # noqa: E501
    "https://huggingface.co/xinlongwang/DenseCL/resolve/main/densecl_r50_imagenet_200ep.pth?download=true": "densecl",  # noqa: E501
}


@pytest.mark.parametrize("url", PUBLISHED)
def test_publisher_addresses_are_known_without_downloading(url):
    assert source_of_url(url) == PUBLISHED[url]
    record = published_weights(url)
    assert record is not None and record.architecture["depth"] == 50
    assert record.architecture["width_per_group"] == 64


def test_config_takes_the_input_settings_from_a_self_supervised_address():
    url = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"  # noqa: E501
    cfg = load_cfg("configs/Base-RCNN-FPN.yaml", ["MODEL.WEIGHTS", url])
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.PIXEL_MEAN == list(TORCHVISION_INPUT.pixel_mean)
    assert cfg.MODEL.PIXEL_STD == list(TORCHVISION_INPUT.pixel_std)
    assert (
        source_of_url("https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/linear-1000ep.pth.tar")
        is None
    )


def test_convert_tool_writes_the_query_encoder_with_its_input_settings(tmp_path):
    layout = moco(2)
    src, dst = layout.write(tmp_path / "moco_v2_800ep_pretrain.pth.tar"), tmp_path / "R-50.pkl"
    run = subprocess.run(
        [sys.executable, "tools/convert_weights.py", str(src), str(dst)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "moco_v2" in run.stderr and 'INPUT: {FORMAT: "RGB"}' in run.stdout
    assert "STRIDE_IN_1X1: False" in run.stdout
    # What is left out, by group with counts (a real MoCo file has over 300 such names).
    left_out = next(line for line in run.stderr.splitlines() if "left out" in line)
    assert "encoder_k.* (322 tensors), encoder_q.* (4 tensors), queue.* (1 tensor)" in left_out
    weights = read_weights(dst)
    assert weights.origin == "moco_v2, converted" and weights.input == TORCHVISION_INPUT
    assert not any("fc" in k for k in weights.state)
    expected = layout.query.state_dict()["layer3.1.conv2.weight"]
    assert torch.equal(weights.state["res4.1.conv2.weight"], expected)
