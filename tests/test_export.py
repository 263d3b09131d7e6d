"""TorchScript and ONNX export of the ResNet and ResNet-FPN: same keys, outputs equal to eager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones import BackboneOptionError, make_resnet, make_resnet_fpn
from backbones.export import check_export, example_images, export_onnx, script_backbone

from helpers import randomize_

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)
SMALL_BASIC = dict(stem_out_channels=8, res2_out_channels=8)
# GroupNorm (32 groups) needs widths that are multiples of 32.
SMALL_GN = dict(stem_width=32, stem_out_channels=32, res2_out_channels=64, width_per_group=32)
DEEP = dict(stem_type="deep", stem_width=4, avg_down=True)

CASES = {
    "R18-FrozenBN": dict(depth=18, norm="FrozenBN", **SMALL_BASIC),
    "R18-D-BN": dict(depth=18, norm="BN", **SMALL_BASIC, **DEEP),
    "R50-BN": dict(depth=50, norm="BN", **SMALL),
    "R50-D-FrozenBN": dict(depth=50, norm="FrozenBN", **SMALL, **DEEP),
    "R50-D-GN": dict(depth=50, norm="GN", **{**DEEP, **SMALL_GN}),
    "R50-dilated-contiguous": dict(depth=50, res5_dilation=2, memory_format="contiguous", **SMALL),
}


def assert_close_to_scale(diffs: dict[str, float], expected: dict, tol: float) -> None:
    for name, diff in diffs.items():
        scale = max(1.0, expected[name].abs().max().item())
        assert diff <= tol * scale, f"{name}: max abs diff {diff:.2e} > {tol:.0e} x {scale:.1f}"


def eager_outputs(model, images):
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("out_features", [("res2", "res3", "res4", "res5"), ("res2", "res3")])
@pytest.mark.parametrize("case", CASES)
def test_scripted_resnet_equals_eager(case, out_features):
    model = randomize_(make_resnet(**CASES[case], out_features=out_features)).eval()
    scripted = script_backbone(model)
    assert list(scripted.state_dict()) == list(model.state_dict())
    images = example_images(model, (64, 96))
    diffs = check_export(model, scripted, images)
    assert list(diffs) == list(out_features)
    assert_close_to_scale(diffs, eager_outputs(model, images), 1e-6)


@pytest.mark.parametrize("case", CASES)
def test_scripted_fpn_equals_eager(case):
    in_features = (
        ("res2", "res3", "res4") if "dilated" in case else ("res2", "res3", "res4", "res5")
    )
    model = randomize_(make_resnet_fpn(**CASES[case], in_features=in_features, out_channels=16))
    scripted = script_backbone(model.eval())
    assert list(scripted.state_dict()) == list(model.state_dict())
    images = example_images(model, (64, 96))
    diffs = check_export(model, scripted, images)
    assert list(diffs) == list(model.output_shape())
    assert_close_to_scale(diffs, eager_outputs(model, images), 1e-6)


def test_scripted_fpn_options_and_save_load(tmp_path):
    """Average fusion, FPN norm, no top block, a coarse-only pyramid; a saved file reloads."""
    model = randomize_(
        make_resnet_fpn(
            50,
            in_features=("res3", "res4", "res5"),
            out_channels=32,
            fpn_norm="GN",
            fuse_type="avg",
            top_block=None,
            norm="BN",
            **SMALL,
        )
    ).eval()
    script_backbone(model).save(tmp_path / "fpn.pt")
    loaded = torch.jit.load(tmp_path / "fpn.pt")
    images = example_images(model, (64, 64))
    diffs = check_export(model, loaded, images)
    assert list(diffs) == ["p3", "p4", "p5"]
    assert_close_to_scale(diffs, eager_outputs(model, images), 1e-6)


def test_scripted_model_trains_like_eager():
    """In training mode (BatchNorm batch statistics) the scripted model still matches."""
    model = randomize_(make_resnet(**CASES["R50-D-FrozenBN"], freeze_at=2)).train()
    model.res3[0].conv1.norm = torch.nn.BatchNorm2d(8)  # a trainable norm after frozen ones
    scripted = script_backbone(model)
    assert scripted.training
    images = example_images(model, (64, 64))
    expected, actual = model(images), scripted(images)
    diffs = {name: (actual[name] - expected[name]).abs().max().item() for name in expected}
    assert_close_to_scale(diffs, expected, 1e-6)


@pytest.mark.parametrize("fpn", [False, True], ids=["resnet", "fpn"])
def test_onnx_equals_eager_with_dynamic_shapes(tmp_path, fpn):
    build = make_resnet_fpn if fpn else make_resnet
    model = randomize_(build(18, **SMALL_BASIC, **({"out_channels": 16} if fpn else {})))
    names = export_onnx(model, tmp_path / "model.onnx", image_size=(64, 96))
    assert names == list(model.output_shape())
    # The traced size and another batch size, height and width (multiples of 32 for the FPN).
    batches = [example_images(model, (64, 96)), example_images(model, (128, 64), batch_size=3)]
    diffs = check_export(model, tmp_path / "model.onnx", batches)
    assert list(diffs) == names
    for images in batches:
        assert_close_to_scale(diffs, eager_outputs(model, images), 1e-4)


def test_static_onnx_keeps_the_example_shape(tmp_path):
    model = randomize_(make_resnet(18, **SMALL_BASIC, out_features=("res4",))).train()
    export_onnx(model, tmp_path / "static.onnx", image_size=(64, 64), dynamic=False)
    assert model.training  # the mode is restored after exporting in eval mode
    images = example_images(model, (64, 64))
    diffs = check_export(model, tmp_path / "static.onnx", images)
    assert_close_to_scale(diffs, eager_outputs(model, images), 1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        check_export(model, tmp_path / "static.onnx", example_images(model, (96, 64)))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["R50-D-FrozenBN", "R50-D-GN"])
def test_onnx_bottleneck_fpn_equals_eager(tmp_path, case):
    model = randomize_(make_resnet_fpn(**CASES[case], out_channels=32))
    export_onnx(model, tmp_path / "fpn.onnx", image_size=(64, 96))
    batches = [example_images(model, (64, 96)), example_images(model, (96, 128), batch_size=1)]
    diffs = check_export(model, tmp_path / "fpn.onnx", batches)
    for images in batches:
        assert_close_to_scale(diffs, eager_outputs(model, images), 1e-4)


def test_image_size_must_fit_the_fpn_strides():
    model = make_resnet_fpn(18, **SMALL_BASIC)
    with pytest.raises(BackboneOptionError, match=r"image_size=\(100, 64\) .*multiples of 32"):
        example_images(model, (100, 64))


def test_cli_names_a_size_the_fpn_cannot_take_in_one_line(tmp_path):
    widths = ["--set", "stem_out_channels=8", "--set", "res2_out_channels=8"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export_backbone.py"), "--fpn", "--depth", "18",
         *widths, "--size", "100", "100", "--output", str(tmp_path / "x.pt")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: --size 100 100: image_size=(100, 100) is not supported (the FPN's strides); "
        "allowed: positive multiples of 32"
    )
    assert not (tmp_path / "x.pt").exists()


def run_cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export_backbone.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_cli_writes_torchscript_with_weights(tmp_path):
    widths = ["--set", "stem_out_channels=8", "--set", "res2_out_channels=8"]
    weights = randomize_(make_resnet(18, norm="BN", stem_out_channels=8, res2_out_channels=8))
    torch.save(weights.state_dict(), tmp_path / "r18.pth")
    output = tmp_path / "r18.pt"
    out = run_cli(
        "--depth",
        "18",
        *widths,
        "--weights",
        str(tmp_path / "r18.pth"),
        "--output",
        str(output),
        "--size",
        "64",
        "64",
    )
    assert f"wrote {output} (torchscript, R-18" in out
    assert "max abs diff vs eager on (2, 3, 64, 64): 0 " in out
    loaded = torch.jit.load(output)
    loaded_state = loaded.state_dict()
    for key, value in weights.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # BN's counter; the CLI builds FrozenBN
            torch.testing.assert_close(loaded_state[key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_cli_writes_onnx_fpn(tmp_path):
    output = tmp_path / "r18d_fpn.onnx"
    out = run_cli(
        "--preset",
        "R-18-D",
        "--fpn",
        "--format",
        "onnx",
        "--output",
        str(output),
        "--size",
        "64",
        "96",
        "--set",
        "stem_width=8",
        "--set",
        "out_channels=16",
    )
    assert output.stat().st_size > 0
    assert "outputs p2, p3, p4, p5, p6" in out
    diff = float(out.split("max abs diff vs eager on (2, 3, 64, 96): ")[1].split()[0])
    assert diff <= 1e-3


def test_scripting_keeps_keys_after_detectron2_export_patches_its_classes():
    """Importing detectron2.export gives Detectron2's ResNet and FPN a __prepare_scriptable__
    that scripts a copy with ModuleLists (renaming keys); ours, their subclasses, opt out."""
    import detectron2.export  # noqa: F401  (applies the patch)

    model = make_resnet_fpn(**CASES["R50-BN"], out_channels=16).eval()
    scripted = script_backbone(model)
    assert list(scripted.state_dict()) == list(model.state_dict())


LOAD_ALONE = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
import torchvision  # the scripted blocks name torchvision::deform_conv2d
fpn = torch.jit.load(sys.argv[1])
out = fpn(torch.zeros(1, 3, 64, 64))
assert "backbones" not in sys.modules and "detectron2" not in sys.modules, sorted(sys.modules)
print(sorted(out))
"""


def test_a_scripted_fpn_loads_with_torch_and_torchvision_alone(tmp_path):
    model = make_resnet_fpn(18, **SMALL_BASIC).eval()
    script_backbone(model).save(str(tmp_path / "fpn.pt"))
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, str(tmp_path / "fpn.pt")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "['p2', 'p3', 'p4', 'p5', 'p6']"
