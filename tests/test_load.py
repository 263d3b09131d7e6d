"""``backbones.weights.load`` into the paper's detection designs: C4 (res5 is the per-RoI head,
``roi_heads.res5``) and DC5 get their ImageNet weights whole, from every kind of file."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision
from detectron2 import model_zoo
from detectron2.modeling import build_model

from backbones import BackbonesCheckpointer, load_cfg, make_resnet

from helpers import caffe2_blobs, randomize_

ZOO = {
    "c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "dc5": "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
}
SOURCES = ("torchvision", "msra", "detectron2")


def write_imagenet_file(source: str, folder) -> tuple[str, dict[str, torch.Tensor]]:
    """An ImageNet R-50 file of ``source`` and the expected res5 tensors by Detectron2 name."""
    if source == "torchvision":
        state = torchvision.models.resnet50().state_dict()
        path = folder / "resnet50.pth"
        torch.save(state, path)
        expected = {
            "res5.0.conv1.weight": state["layer4.0.conv1.weight"],
            "res5.2.conv3.weight": state["layer4.2.conv3.weight"],
            "res5.0.shortcut.weight": state["layer4.0.downsample.0.weight"],
            "res5.1.conv2.norm.running_var": state["layer4.1.bn2.running_var"],
        }
        return str(path), expected
    resnet = randomize_(make_resnet(50, memory_format="contiguous"))
    state = resnet.state_dict()
    expected = {k: state[k] for k in ("res5.0.conv1.weight", "res5.2.conv3.weight")}
    if source == "msra":  # Caffe2 names, BN folded, in a "blobs" dict (Detectron's R-50.pkl)
        path = folder / "R-50.pkl"
        path.write_bytes(pickle.dumps({"blobs": caffe2_blobs(resnet)}))
    else:  # a Detectron2 ImageNet conversion: Detectron2 names, numpy, matching heuristics
        path = folder / "R-50-detectron2.pkl"
        model = {k: v.numpy() for k, v in state.items()}
        path.write_bytes(pickle.dumps({"model": model, "matching_heuristics": True}))
        expected["res5.1.conv2.norm.running_var"] = state["res5.1.conv2.norm.running_var"]
    return str(path), expected


def zoo_model(design: str, weights: str):
    """Detectron2's zoo recipe of ``design`` on our builder, with ``weights``."""
    builder = "backbones_build_resnet_backbone"
    opts = ["MODEL.BACKBONE.NAME", builder, "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
    cfg = load_cfg(model_zoo.get_config_file(ZOO[design]), opts)
    return cfg, build_model(cfg)


@pytest.mark.parametrize("source", SOURCES)
def test_c4_gets_res5_as_its_per_roi_head(source, tmp_path, monkeypatch):
    path, expected = write_imagenet_file(source, tmp_path)
    cfg, model = zoo_model("c4", path)
    assert "res5" not in model.backbone.output_shape()  # the backbone stops at res4
    lines: list[str] = []
    checkpointer = BackbonesCheckpointer(model, cfg=cfg)
    # The report's lines; the logger is shared, so it is patched for this test only.
    monkeypatch.setattr(
        checkpointer.logger, "info", lambda msg, *args: lines.append(msg % args if args else msg)
    )
    checkpointer.load(path)
    report = checkpointer.report
    head = model.roi_heads.res5.state_dict()
    for name, value in expected.items():
        assert torch.equal(head[name[len("res5.") :]], value.to(head[name[len("res5.") :]].dtype))
    missing = [n for names in report.missing.values() for n in names]
    assert not [n for n in missing if n.startswith(("roi_heads.res5.", "backbone."))]
    assert not [n for n in report.unused if "res5" in n]
    res5 = [n for n in report.loaded if n.startswith("roi_heads.res5.")]
    assert len(res5) == len([k for k in head if not k.endswith("num_batches_tracked")])
    # What stays missing is what an ImageNet file cannot have: the detector's own heads.
    assert all(report.expected_missing.values())
    assert not any("NOT IN THE FILE" in line for line in lines)


@pytest.mark.parametrize("source", SOURCES)
def test_dc5_gets_its_dilated_res5(source, tmp_path):
    path, expected = write_imagenet_file(source, tmp_path)
    cfg, model = zoo_model("dc5", path)
    assert cfg.MODEL.RESNETS.RES5_DILATION == 2
    assert model.backbone.output_shape()["res5"].stride == 16
    checkpointer = BackbonesCheckpointer(model, cfg=cfg)
    checkpointer.load(path)
    backbone = model.backbone.state_dict()
    for name, value in expected.items():
        assert torch.equal(backbone[name], value.to(backbone[name].dtype))
    missing = [n for names in checkpointer.report.missing.values() for n in names]
    assert not [n for n in missing if n.startswith("backbone.")]
