"""Weight files of every source: safe reading, format detection, renaming, input settings."""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from torch import nn

from backbones import make_resnet
from backbones.checkpoint import BackbonesCheckpointer
from backbones.config import InputSettingsError, apply_input_settings, config_origins
from backbones.engine import load_cfg
from backbones.weights import (
    KNOWN_URLS,
    PUBLISHED_WEIGHTS,
    SOURCES,
    InputSettings,
    Renamed,
    Source,
    UnsafeWeightsError,
    WeightsFormatError,
    WeightsShapeError,
    claiming_sources,
    detect_source,
    load_weights,
    published_weights,
    read_file,
    read_weights,
    register_source,
    source_of_url,
    weights_from_object,
    write_detectron2_checkpoint,
)
from backbones.weights.sources import MSRA_INPUT, TORCHVISION_INPUT, unwrap

from helpers import caffe2_blobs, make_cfg, randomize_

# torchvision's ResNet family: constructor -> what our architecture reads from its tensors.
TORCHVISION = {
    "resnet18": dict(depth=18),
    "resnet34": dict(depth=34),
    "resnet50": dict(depth=50, num_groups=1, width_per_group=64),
    "resnet101": dict(depth=101, num_groups=1, width_per_group=64),
    "resnet152": dict(depth=152, num_groups=1, width_per_group=64),
    "resnext50_32x4d": dict(depth=50, num_groups=32, width_per_group=4),
    "resnext101_32x8d": dict(depth=101, num_groups=32, width_per_group=8),
    "resnext101_64x4d": dict(depth=101, num_groups=64, width_per_group=4),
    "wide_resnet50_2": dict(depth=50, num_groups=1, width_per_group=128),
    "wide_resnet101_2": dict(depth=101, num_groups=1, width_per_group=128),
}
# Full-size models take seconds each to build on 2 cores: the deep ones run with the slow tests.
SLOW = {"resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2", "resnet101"}


def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_(getattr(torchvision.models, name)()).eval()


def torchvision_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for i in range(1, 5):
        y = getattr(model, f"layer{i}")(y)
        out[f"res{i + 1}"] = y
    return out


def assert_features_equal(ours: nn.Module, reference: dict, x: torch.Tensor, tol: float) -> None:
    with torch.no_grad():
        actual = ours(x)
    for name, expected in reference.items():
        diff = (actual[name] - expected).abs().max().item()
        assert diff <= tol, f"{name}: max abs diff {diff:.2e} > {tol:.0e}"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TORCHVISION],
)
def test_torchvision_state_dicts_reproduce_torchvision_features(name, tmp_path):
    tv = torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), path)
    weights = read_weights(path)
    assert weights.source == "torchvision" and weights.input == TORCHVISION_INPUT
    assert {k: weights.architecture[k] for k in TORCHVISION[name]} == TORCHVISION[name]
    assert weights.unused == ["fc.weight", "fc.bias"]
    # The plain constructor builds torchvision's stride placement from the file by itself.
    ours = make_resnet(TORCHVISION[name]["depth"], weights=str(path)).eval()
    if hasattr(ours.res3[0], "conv3"):  # bottleneck: res3's stride sits in its 3x3
        assert ours.res3[0].conv1.stride == (1, 1) and ours.res3[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = torchvision_features(tv, x)
    assert_features_equal(ours, reference, x, 1e-4)


def test_msra_caffe2_pickle_reproduces_the_model(tmp_path):
    cfg = make_cfg(depth=50, stride_in_1x1=True)
    reference = randomize_(build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))).bottom_up.eval()
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": caffe2_blobs(reference)}, f, protocol=2)
    weights = read_weights(path)
    assert weights.source == "msra" and weights.input == MSRA_INPUT
    ours = make_resnet(50, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_features_equal(ours, reference(x), x, 1e-4)


def test_fair_caffe2_resnext_pickle_sets_fair_inputs(tmp_path):
    cfg = make_cfg(depth=50, num_groups=32, width_per_group=4, stride_in_1x1=False)
    reference = randomize_(build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))).bottom_up.eval()
    path = tmp_path / "X-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(caffe2_blobs(reference), f)  # no "blobs" wrapper: also seen in the wild
    weights = read_weights(path)
    assert weights.source == "fair" and weights.input.stride_in_1x1 is False
    assert weights.input.format == "BGR" and weights.input.pixel_std != (1.0, 1.0, 1.0)
    ours = make_resnet(50, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_features_equal(ours, reference(x), x, 1e-4)


def shapes_cfg(**opts):
    base = {
        "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.BACKBONE.FREEZE_AT": 0,
    }
    base.update(opts)
    return [str(x) for kv in base.items() for x in kv]


def test_detectron2_checkpoint_of_the_builtin_model_loads_strictly(tmp_path):
    opts = shapes_cfg()
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", opts)
    builtin = cfg.clone()
    builtin.defrost()
    builtin.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    reference = randomize_(build_model(builtin)).eval()
    path = tmp_path / "model_final.pth"
    torch.save({"model": reference.state_dict(), "iteration": 9}, path)

    model = build_model(cfg).eval()
    checkpointer = BackbonesCheckpointer(model, cfg=cfg)
    extra = checkpointer.load(str(path))
    report = checkpointer.report
    assert extra == {"iteration": 9}
    assert report.source == "detectron2" and not report.missing and not report.unused
    assert len(report.loaded) == len(reference.state_dict())
    x = torch.randn(3, 96, 96) * 50 + 100
    with torch.no_grad():
        a = model.backbone(model.preprocess_image([{"image": x}]).tensor)
        b = reference.backbone(reference.preprocess_image([{"image": x}]).tensor)
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-4 * max(1.0, b[name].abs().max())


def test_imagenet_file_goes_into_the_detector_backbone_with_a_grouped_report(tmp_path):
    tv = torchvision_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg(**{"MODEL.WEIGHTS": str(path)}))
    model = build_model(cfg)
    lines: list[str] = []
    report = load_weights(model, str(path), log=lines.append)
    assert all(n.startswith("backbone.bottom_up.") for n in report.loaded)
    assert len(report.loaded) == len(model.backbone.bottom_up.state_dict())
    assert report.unused == ["fc.weight", "fc.bias"]
    groups = set(report.missing)
    assert {"backbone.fpn_lateral*.*", "proposal_generator.*", "roi_heads.*"} <= groups
    assert all(report.expected_missing.values())
    text = "\n".join(lines)
    assert "roi_heads.*" in text and "expected" in text and "fc.*" in text
    loaded = model.backbone.bottom_up.state_dict()["res3.0.conv1.weight"]
    assert torch.equal(loaded, tv.state_dict()["layer2.0.conv1.weight"])


def test_config_input_settings_follow_the_weights(tmp_path):
    tv = torchvision_model("resnet18")
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg(**{"MODEL.WEIGHTS": str(path)}))
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == list(TORCHVISION_INPUT.pixel_mean)
    assert cfg.MODEL.PIXEL_STD == list(TORCHVISION_INPUT.pixel_std)
    # Detectron2's zoo addresses are known without downloading: MSRA's settings, stride in 1x1.
    msra = load_cfg("configs/frcnn_r50.yaml", ["MODEL.DEVICE", "cpu"])
    assert msra.MODEL.RESNETS.STRIDE_IN_1X1 is True and msra.INPUT.FORMAT == "BGR"


def test_contradicting_input_setting_is_an_error_naming_both_values(tmp_path):
    tv = torchvision_model("resnet50")
    path = tmp_path / "tv50.pth"
    torch.save(tv.state_dict(), path)
    # frcnn_r50.yaml sets MSRA's BGR / std 1 / stride in 1x1 next to its MODEL.WEIGHTS.
    with pytest.raises(InputSettingsError) as error:
        load_cfg("configs/frcnn_r50.yaml", ["MODEL.WEIGHTS", str(path)])
    message = str(error.value)
    assert (
        "INPUT.FORMAT is 'BGR' (set in configs/frcnn_r50.yaml), the weights want 'RGB'" in message
    )
    assert "MODEL.PIXEL_STD is [1, 1, 1]" in message and "[58.395, 57.12, 57.375]" in message
    assert "MODEL.RESNETS.STRIDE_IN_1X1 is True" in message and "(torchvision)" in message
    # The explicit override keeps the config as written.
    cfg = load_cfg(
        "configs/frcnn_r50.yaml",
        ["MODEL.WEIGHTS", str(path), "BACKBONES.INPUT_FROM_WEIGHTS", "off"],
    )
    assert cfg.INPUT.FORMAT == "BGR"


def test_config_origins_follow_bases_and_the_command_line():
    origins = config_origins("configs/frcnn_r50.yaml", ["INPUT.FORMAT", "RGB"])
    assert origins["MODEL.PIXEL_STD"].endswith("frcnn_r50.yaml")
    assert origins["MODEL.BACKBONE.NAME"].endswith("Base-RCNN-FPN.yaml")
    assert origins["INPUT.FORMAT"] == "the command line"


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    tv = torchvision_model("resnet18")
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    model = make_resnet(18, stem_out_channels=32, res2_out_channels=64)
    with pytest.raises(WeightsShapeError, match=r"stem.conv1.weight has shape \(64, 3, 7, 7\)"):
        load_weights(model, str(path))
    # Allowed on purpose: skipped and reported.
    report = load_weights(model, str(path), skip_mismatched=("stem.", "res2.0.conv1"))
    assert any(s.startswith("stem.conv1.weight") for s in report.skipped)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": np.zeros(3), "x": Boom()}, f)
    with pytest.raises(UnsafeWeightsError, match=r"evil.pkl.*'posix.system'.*trusted=True"):
        read_file(path)
    torch_path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Boom()}, torch_path)
    with pytest.raises(UnsafeWeightsError, match=r"evil.pth.*posix.system"):
        read_file(torch_path)


def test_numpy_arrays_in_pth_files_are_admitted(tmp_path):
    # Detectron2's converted checkpoints hold numpy arrays; weights_only=True alone refuses them.
    path = tmp_path / "np.pth"
    state = {k: v.numpy() for k, v in make_resnet(18).state_dict().items()}
    torch.save({"model": state, "__author__": "someone"}, path)
    weights = read_weights(path)
    assert weights.source == "detectron2" and weights.architecture["depth"] == 18


def test_truncated_empty_and_unknown_files_are_clear_errors(tmp_path):
    tv_path = tmp_path / "tv.pth"
    torch.save(torchvision_model("resnet18").state_dict(), tv_path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tv_path.read_bytes()[:100_000])
    with pytest.raises(WeightsFormatError, match="truncated.pth"):
        read_weights(truncated)
    pkl = tmp_path / "truncated.pkl"
    pkl.write_bytes(pickle.dumps({"conv1_w": np.zeros((64, 3, 7, 7))})[:500])
    with pytest.raises(WeightsFormatError, match="truncated.pkl.*truncated"):
        read_weights(pkl)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsFormatError, match="empty.pth: the file is empty"):
        read_weights(empty)
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, unknown)
    with pytest.raises(WeightsFormatError, match=r"unknown.pth: unknown weights format"):
        read_weights(unknown)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_weights(tmp_path / "nowhere.pth")
    assert zipfile.is_zipfile(tv_path)  # the truncation above cut a real torch zip file


def test_ddp_prefix_and_state_dict_wrapper_are_unwrapped():
    state = {"module." + k: v for k, v in torchvision_model("resnet18").state_dict().items()}
    weights = weights_from_object({"state_dict": state, "epoch": 90})
    assert weights.source == "torchvision" and "stem.conv1.weight" in weights.state


def test_checkpoints_are_written_atomically_with_input_settings(tmp_path):
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg())
    model = build_model(cfg)
    checkpointer = BackbonesCheckpointer(model, str(tmp_path), cfg=cfg)
    checkpointer.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    saved = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert saved["backbones"]["input"]["format"] == cfg.INPUT.FORMAT
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    # A failing write leaves the previous file untouched and no temporary file behind.
    before = (tmp_path / "model_0000009.pth").read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpointer.save("model_0000009", iteration=Unpicklable())
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_unknown_input_mode_is_named():
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg())
    cfg.defrost()
    cfg.BACKBONES.INPUT_FROM_WEIGHTS = "maybe"
    with pytest.raises(InputSettingsError, match="INPUT_FROM_WEIGHTS is 'maybe'"):
        apply_input_settings(cfg, {})


def test_convert_tool_writes_a_file_stock_detectron2_loads(tmp_path):
    import subprocess
    import sys

    from detectron2.checkpoint import DetectionCheckpointer

    tv = torchvision_model("resnet18")
    src, dst = tmp_path / "resnet18.pth", tmp_path / "out" / "R-18.pkl"
    torch.save(tv.state_dict(), src)
    run = subprocess.run(
        [sys.executable, "tools/convert_weights.py", str(src), str(dst)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "torchvision" in run.stderr and 'INPUT: {FORMAT: "RGB"}' in run.stdout
    assert (
        "RESNETS: {DEPTH: 18" in run.stdout and "PIXEL_STD: [58.395, 57.12, 57.375]" in run.stdout
    )
    # Detectron2's own checkpointer (no backbones code involved) places it by its heuristics.
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg())
    builtin = cfg.clone()
    builtin.defrost()
    builtin.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    model = build_model(builtin)
    DetectionCheckpointer(model).load(str(dst))
    loaded = model.backbone.bottom_up.state_dict()["res4.1.conv2.weight"]
    assert torch.equal(loaded, tv.state_dict()["layer3.1.conv2.weight"])
    # Read back by us: the stored input settings and architecture.
    weights = read_weights(dst)
    assert weights.input == TORCHVISION_INPUT and weights.origin == "torchvision, converted"
    assert weights.metadata["backbones"]["config"] == run.stdout.strip()
    # Bad input: exit code 2 and one line naming the file.
    bad = subprocess.run(
        [sys.executable, "tools/convert_weights.py", str(tmp_path / "missing.pth"), str(dst)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "missing.pth" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("name", ["resnet50", "resnet50d", "resnet18d"])
def test_timm_state_dicts_reproduce_timm_features(name, tmp_path):
    import timm  # a test dependency (setup.py's "test" extra)

    torch.manual_seed(0)
    model = randomize_(timm.create_model(name, pretrained=False)).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    weights = read_weights(path)
    deep = name.endswith("d")
    assert weights.source == ("timm" if deep else "torchvision")  # plain timm = torchvision names
    assert weights.input == TORCHVISION_INPUT
    assert weights.architecture.get("stem_type", "basic") == ("deep" if deep else "basic")
    assert weights.architecture.get("avg_down", False) == deep
    ours = make_resnet(int(name[6:8].rstrip("d")), weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        reference = {}
        for i in range(1, 5):
            y = getattr(model, f"layer{i}")(y)
            reference[f"res{i + 1}"] = y
    assert_features_equal(ours, reference, x, 1e-4)


def test_plain_fpn_takes_the_backbone_of_a_detector_checkpoint(tmp_path):
    """make_resnet_fpn(weights=model_final.pth) fills the ResNet and the FPN from a detector."""
    from backbones import make_resnet_fpn

    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg())
    detector = randomize_(build_model(cfg)).eval()
    path = tmp_path / "model_final.pth"
    torch.save({"model": detector.state_dict(), "iteration": 3}, path)
    fpn = make_resnet_fpn(
        weights=str(path),
        norm="BN",
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        res2_out_channels=64,
        stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1,
    ).eval()
    assert fpn.bottom_up.res2[0].conv1.weight.shape[0] == 64  # depth 18 read from the file
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = detector.backbone(x), fpn(x)
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-5), name


def test_weights_read_for_the_config_are_not_read_again_by_the_checkpointer(tmp_path, monkeypatch):
    import backbones.checkpoint as checkpoint
    import backbones.config.input_settings as input_settings
    import backbones.weights.read as weights_module

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_model("resnet18").state_dict(), path)
    reads = []
    real_read_file = weights_module.read_file

    def counting_read_file(*args, **kwargs):
        reads.append(args[0])
        return real_read_file(*args, **kwargs)

    monkeypatch.setattr(weights_module, "read_file", counting_read_file)
    monkeypatch.setattr(checkpoint, "read_file", counting_read_file)
    cfg = load_cfg("configs/mrcnn_r18_shapes.yaml", shapes_cfg(**{"MODEL.WEIGHTS": str(path)}))
    BackbonesCheckpointer(build_model(cfg), cfg=cfg).load(cfg.MODEL.WEIGHTS)
    assert len(reads) == 1
    assert not input_settings._READ_AHEAD  # dropped once loaded, not kept for the run


# ---------------------------------------------------------------------------------------------
# The table of sources: one record each, exactly one claiming each file, extensible


def shrunk_resnet50(**opts) -> nn.Module:
    return make_resnet(50, stem_out_channels=8, res2_out_channels=16, **opts)


def timm_state(name: str) -> dict:
    import timm

    return timm.create_model(name, pretrained=False).state_dict()


# One file of every kind the tests above read, as the object read_file returns.
SOURCE_FIXTURES = {
    "torchvision": lambda: torchvision_model("resnet18").state_dict(),
    "torchvision (DDP, state_dict)": lambda: {
        "state_dict": {
            "module." + k: v for k, v in torchvision_model("resnet18").state_dict().items()
        },
        "epoch": 90,
    },
    "torchvision (plain timm)": lambda: timm_state("resnet26"),
    "timm": lambda: timm_state("resnet18d"),
    "msra": lambda: {"blobs": caffe2_blobs(shrunk_resnet50(width_per_group=4))},
    "fair": lambda: caffe2_blobs(shrunk_resnet50(num_groups=4, width_per_group=2)),
    "detectron2": lambda: make_resnet(18).state_dict(),
    "detectron2 (detector, numpy)": lambda: {
        "model": {
            f"backbone.bottom_up.{k}": v.numpy() for k, v in make_resnet(18).state_dict().items()
        },
        "iteration": 9,
    },
}


@pytest.mark.parametrize("kind", SOURCE_FIXTURES)
def test_exactly_one_source_claims_each_file(kind):
    obj = SOURCE_FIXTURES[kind]()
    expected = kind.split(" ")[0]
    assert claiming_sources(*unwrap(obj)) == [expected]
    assert detect_source(obj)[0] == expected


def test_every_source_is_one_record():
    for name, source in SOURCES.items():
        assert source.name == name and source.description
        assert callable(source.detect) and callable(source.rename)
    # The built-in sources' files are known by their exact address, not by a prefix: an address
    # Detectron2's store does not hold (torchvision/R-18.pkl, MSRA/R-152.pkl) is not theirs.
    assert dict(KNOWN_URLS) == {}
    assert source_of_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == "msra"
    assert source_of_url("detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl") == "fair"
    assert source_of_url("detectron2://ImageNetPretrained/torchvision/R-50.pkl") == "torchvision"
    for unpublished in ("torchvision/R-18.pkl", "torchvision/R-152.pkl", "MSRA/R-152.pkl"):
        assert source_of_url(f"detectron2://ImageNetPretrained/{unpublished}") is None
    assert (
        source_of_url("https://download.pytorch.org/models/resnet18-f37072fd.pth") == "torchvision"
    )
    assert source_of_url("https://example.com/R-50.pkl") is None


# torchvision's weight enums of the ResNet family (installed data: no download) -> builder.
TORCHVISION_WEIGHTS = {
    "ResNet18_Weights": "resnet18",
    "ResNet34_Weights": "resnet34",
    "ResNet50_Weights": "resnet50",
    "ResNet101_Weights": "resnet101",
    "ResNet152_Weights": "resnet152",
    "ResNeXt50_32X4D_Weights": "resnext50_32x4d",
    "ResNeXt101_32X8D_Weights": "resnext101_32x8d",
    "ResNeXt101_64X4D_Weights": "resnext101_64x4d",
    "Wide_ResNet50_2_Weights": "wide_resnet50_2",
    "Wide_ResNet101_2_Weights": "wide_resnet101_2",
}


@pytest.mark.parametrize("enum_name", TORCHVISION_WEIGHTS)
def test_published_torchvision_files_are_torchvisions_own(enum_name):
    builder = TORCHVISION_WEIGHTS[enum_name]
    with torch.device("meta"):  # shapes only: full-size models in no time and no memory
        tensors = getattr(torchvision.models, builder)().state_dict()
    held = weights_from_object(tensors, builder).architecture
    for weights in getattr(torchvision.models, enum_name):
        record = published_weights(weights.url)
        assert record is not None, f"{weights.url} ({enum_name}.{weights.name}) is not known"
        assert (record.source, record.name) == ("torchvision", builder)
        assert weights.name == f"IMAGENET1K_{record.recipe}"
        # What load_cfg knows without the file is what the file holds.
        assert record.architecture == held
        # torchvision normalises with ImageNet's mean and std (0-1 pixels): the source's input.
        mean = [round(m * 255, 3) for m in weights.transforms().mean]
        assert mean == list(SOURCES["torchvision"].input.pixel_mean)
    ours = [w for w in PUBLISHED_WEIGHTS.values() if w.name == builder]
    assert len(ours) == len(getattr(torchvision.models, enum_name))  # none made up


def test_published_detectron2_files_are_its_four_imagenet_files():
    store = "detectron2://ImageNetPretrained/"
    published = {url: w for url, w in PUBLISHED_WEIGHTS.items() if url.startswith(store)}
    assert {url[len(store) :]: (w.source, w.depth) for url, w in published.items()} == {
        "MSRA/R-50.pkl": ("msra", 50),
        "MSRA/R-101.pkl": ("msra", 101),
        "FAIR/X-101-32x8d.pkl": ("fair", 101),
        "torchvision/R-50.pkl": ("torchvision", 50),
    }
    x101 = published[store + "FAIR/X-101-32x8d.pkl"].architecture
    assert (x101["num_groups"], x101["width_per_group"]) == (32, 8)
    # Any other address is read from its file (no record): every record has a known source.
    assert all(w.source in SOURCES for w in PUBLISHED_WEIGHTS.values())


@pytest.fixture
def sources_table():
    """SOURCES as it was before the test, whatever the test registers into it."""
    saved = dict(SOURCES)
    yield SOURCES
    SOURCES.clear()
    SOURCES.update(saved)


# A made-up naming scheme: "toynet:" + the Detectron2 name with "/" for ".", plus a classifier.
TOY_INPUT = InputSettings("BGR", (100.0, 110.0, 120.0), (50.0, 50.0, 50.0), False)


def detect_toy(state, meta) -> bool:
    return any(k.startswith("toynet:") for k in state)


def rename_toy(state) -> Renamed:
    renamed, unused = {}, []
    for name, value in state.items():
        if name.startswith("toynet:classifier/"):
            unused.append(name)
        else:
            renamed[name[len("toynet:") :].replace("/", ".")] = value
    return Renamed(renamed, unused, {})


TOY = Source("toy", "ToyNet checkpoint", TOY_INPUT, detect_toy, rename_toy, urls=("toyzoo://",))


def test_a_new_weight_source_is_one_record(sources_table, tmp_path):
    register_source(TOY)
    reference = randomize_(make_resnet(18)).state_dict()
    path = tmp_path / "toy18.pth"
    toy = {"toynet:" + k.replace(".", "/"): v for k, v in reference.items()}
    torch.save({**toy, "toynet:classifier/weight": torch.zeros(10, 512)}, path)
    weights = read_weights(path)
    assert weights.source == "toy" and weights.input == TOY_INPUT
    assert weights.unused == ["toynet:classifier/weight"] and weights.architecture["depth"] == 18
    ours = make_resnet(18, weights=str(path))
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    lines: list[str] = []
    report = load_weights(make_resnet(18), str(path), log=lines.append)
    assert report.source == "toy" and not report.missing and "ToyNet checkpoint" in lines[0]
    # Converted once, the file remembers its source and input settings.
    write_detectron2_checkpoint(weights, tmp_path / "R-18-toy.pkl")
    converted = read_weights(tmp_path / "R-18-toy.pkl")
    assert converted.origin == "toy, converted" and converted.input == TOY_INPUT
    # Its zoo addresses are known without downloading: the config takes its input settings.
    assert source_of_url("toyzoo://resnets/r18.pth") == "toy" and KNOWN_URLS["toyzoo://"] == "toy"
    cfg = load_cfg(
        "configs/mrcnn_r18_shapes.yaml", shapes_cfg(**{"MODEL.WEIGHTS": "toyzoo://r18.pth"})
    )
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.PIXEL_MEAN == [100.0, 110.0, 120.0]


def test_registering_a_taken_name_or_address_is_refused(sources_table):
    register_source(TOY)
    with pytest.raises(ValueError, match=r"weight source 'toy' is already registered"):
        register_source(TOY)
    with pytest.raises(ValueError, match=r"'toyzoo://' already belongs to 'toy'"):
        register_source(replace(TOY, name="toy3", urls=("toyzoo://",)))
    with pytest.raises(TypeError, match=r"urls=\('toyzoo2://',\)"):
        replace(TOY, name="toy2", urls="toyzoo2://")
    assert "toy3" not in SOURCES and "toy2" not in SOURCES


def test_a_file_two_sources_claim_is_an_error_naming_both(sources_table):
    def detect_greedy(state, meta) -> bool:
        return "fc.weight" in state  # torchvision's classifier: its files are torchvision's

    register_source(Source("greedy", "claims torchvision's", None, detect_greedy, rename_toy))
    state = torchvision_model("resnet18").state_dict()
    with pytest.raises(
        WeightsFormatError, match=r"tv.pth: .*match several weight sources: torchvision, greedy"
    ):
        detect_source(state, "tv.pth")
    # An unknown file's error lists the sources of the table, registered ones included.
    with pytest.raises(WeightsFormatError, match=r"x.pth: unknown weights format") as error:
        detect_source({"encoder.weight": torch.zeros(1)}, "x.pth")
    assert all(f"{name} (" in str(error.value) for name in SOURCES)
