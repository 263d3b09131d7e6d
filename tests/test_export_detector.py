"""Whole-detector export (backbones.export.detector, tools/export_model.py): TorchScript and
ONNX files of R-CNNs and RetinaNet, run back (ONNX Runtime; TorchScript in a process with torch
and torchvision alone) and compared with eager PyTorch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import backbones  # noqa: F401  (registers the builders and the shapes datasets)
from backbones import load_cfg
from backbones.export.detector import (
    OUTPUTS_RECORD,
    ExportedDetector,
    ExportMismatchError,
    Tolerance,
    check_detections,
    compare_detections,
    detector_inference,
    export_and_check,
    export_detector,
)

ROOT = Path(__file__).resolve().parents[1]
THIN_R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
# (config, overrides): the shapes Mask R-CNN, and Detectron2's COCO recipes on our backbone
# (random weights, FrozenBN, 80 classes) shrunk to R-18 where the recipe is not the point.
DETECTORS = {
    "shapes-mrcnn-fpn": ("configs/mrcnn_r18_shapes.yaml", []),
    "coco-frcnn-r50-fpn": ("configs/frcnn_r50.yaml", []),
    "coco-mrcnn-c4": ("configs/mrcnn_r50_c4.yaml", THIN_R18),
    "coco-frcnn-dc5": ("configs/frcnn_r50_dc5.yaml", THIN_R18),
    "coco-retinanet": ("configs/retinanet_r50.yaml", THIN_R18),
}


def detector(name: str) -> torch.nn.Module:
    config, opts = DETECTORS[name]
    cfg = load_cfg(str(ROOT / config), [*opts, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def image(height: int = 128, width: int = 160, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", list(DETECTORS))
def test_traced_export_equals_eager_at_two_sizes(name, fmt, tmp_path):
    model = detector(name)
    check = export_and_check(model, image(), tmp_path, format=fmt)
    assert check.path.name == ("model.onnx" if fmt == "onnx" else "model.ts")
    assert check.output_names[-1] == "image_size" and "pred_boxes" in check.output_names
    assert ("pred_masks" in check.output_names) == ("mrcnn" in name)
    assert list(check.diffs) == [(128, 160), (96, 120)]  # a size the trace never saw
    for diffs in check.diffs.values():
        assert diffs["eager"] > 0 and diffs["unpaired"] == 0
        if fmt == "torchscript":  # the same kernels: exactly eager
            assert diffs["boxes"] == diffs["scores"] == diffs.get("masks", 0.0) == 0.0


def test_onnx_export_runs_in_onnx_runtime_on_other_sizes(tmp_path):
    model = detector("shapes-mrcnn-fpn")
    export_detector(model, image(), tmp_path / "model.onnx", format="onnx")
    exported = ExportedDetector(tmp_path / "model.onnx")
    for height, width in [(64, 64), (128, 96), (200, 256)]:
        sample = image(height, width, seed=height)
        ours = exported.instances(sample)
        assert ours.image_size == (height, width)
        check_detections(compare_detections(detector_inference(model, sample), ours))


LOAD_ALONE = """
import json, sys
import torch
import torchvision  # registers torchvision::nms and roi_align, which the graph calls
extra = {"outputs.json": ""}
model = torch.jit.load(sys.argv[1], _extra_files=extra)
image = torch.load(sys.argv[2])
outputs = model(image)
assert "backbones" not in sys.modules and "detectron2" not in sys.modules
print(json.dumps({"names": json.loads(extra["outputs.json"]),
                  "outputs": [o.tolist() for o in outputs]}))
"""


def test_traced_torchscript_runs_with_torch_and_torchvision_alone(tmp_path):
    model = detector("shapes-mrcnn-fpn")
    sample = image()
    export_detector(model, sample, tmp_path / "model.ts")
    torch.save(sample, tmp_path / "image.pt")
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, str(tmp_path / "model.ts"), str(tmp_path / "image.pt")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["names"] == ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]
    outputs = dict(zip(result["names"], result["outputs"]))
    eager = detector_inference(model, sample)
    np.testing.assert_array_equal(outputs["pred_boxes"], eager.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(outputs["scores"], eager.scores.numpy())
    assert outputs["image_size"] == [128, 160]


def test_outputs_record_names_the_traced_outputs(tmp_path):
    names = export_detector(detector("coco-retinanet"), image(), tmp_path / "model.ts")
    extra = {OUTPUTS_RECORD: ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra[OUTPUTS_RECORD]) == names == [
        "pred_boxes", "pred_classes", "scores", "image_size"
    ]  # fmt: skip


def test_scripting_is_torchscript_only(tmp_path):
    with pytest.raises(ValueError, match="--export-method='scripting'.*ONNX export traces"):
        export_detector(detector("coco-retinanet"), image(), tmp_path / "m.onnx",
                        format="onnx", method="scripting")  # fmt: skip


def instances(boxes, scores, classes, size=(100, 100)) -> Instances:
    return Instances(
        size,
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
        scores=torch.tensor(scores),
        pred_classes=torch.tensor(classes),
    )


def test_compare_pairs_reordered_and_degenerate_boxes():
    eager = instances([[0, 0, 10, 10], [5, 5, 5, 30], [20, 20, 40, 40]], [0.9, 0.8, 0.8], [1, 2, 1])
    # Reordered (tied scores), a zero-width box, rounding in the last digits.
    exported = instances(
        [[20, 20, 40, 40.001], [0, 0, 10, 10], [5, 5, 5, 30]], [0.8, 0.9, 0.80001], [1, 1, 2]
    )
    diffs = compare_detections(eager, exported)
    assert diffs["unpaired"] == 0
    assert diffs["boxes"] == pytest.approx(0.001, abs=1e-5)
    assert diffs["scores"] == pytest.approx(1e-5, abs=1e-6)
    check_detections(diffs)


def test_check_names_differences_past_tolerance():
    eager = instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [1, 1])
    moved = instances([[0, 0, 10, 10.5], [20, 20, 40, 40]], [0.9, 0.3], [1, 1])
    with pytest.raises(ExportMismatchError, match=r"boxes differ by up to 0.5 \(tolerance 0.1\)"):
        check_detections(compare_detections(eager, moved))
    # A detection at the cut may be missing (rounding decides it), one above it may not.
    check_detections(compare_detections(eager, instances([[0, 0, 10, 10]], [0.9], [1])))
    top_missing = instances([[20, 20, 40, 40]], [0.3], [1])
    with pytest.raises(ExportMismatchError, match="1 detections have no counterpart"):
        check_detections(compare_detections(eager, top_missing))
    check_detections(compare_detections(eager, top_missing), Tolerance(scores=0.7))
    wrong_class = instances([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.3], [2, 1])
    with pytest.raises(ExportMismatchError, match="no counterpart"):
        check_detections(compare_detections(eager, wrong_class))


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools/export_model.py"), *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip


def test_cli_scripting_and_sample_image(tmp_path):
    """Scripting in a process of its own (a trace earlier in a process breaks it: the library
    refuses, the tool exports one model per run)."""
    import cv2

    cv2.imwrite(str(tmp_path / "sample.png"), (image(96, 128).permute(1, 2, 0)).byte().numpy())
    proc = export_cli(
        "--config-file", "configs/retinanet_r50.yaml", "--export-method", "scripting",
        "--sample-image", str(tmp_path / "sample.png"), "--output", str(tmp_path / "out"),
        *THIN_R18, "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {tmp_path / 'out' / 'model.ts'}" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "image:" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["96x128 image", "72x96 image"]
    assert all("largest differences: boxes 0, scores 0" in line for line in lines), lines
    assert ExportedDetector(tmp_path / "out" / "model.ts").instances(image(96, 128)) is not None


def test_cli_errors_are_one_line(tmp_path):
    proc = export_cli("--config-file", "configs/mrcnn_r18_shapes.yaml", "--output", str(tmp_path),
                      "--sample-image", str(tmp_path / "missing.png"))  # fmt: skip
    assert proc.returncode == 1
    assert "--sample-image" in proc.stderr and "missing.png" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = export_cli("--config-file", "configs/mrcnn_r18_shapes.yaml", "--output", str(tmp_path),
                      "--format", "onnx", "--export-method", "scripting")  # fmt: skip
    assert proc.returncode == 2 and "ONNX export traces" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = export_cli("--config-file", "configs/mrcnn_r18_shapes.yaml", "--output", str(tmp_path),
                      "--run-eval", "DATASETS.TEST", "()")  # fmt: skip
    assert proc.returncode == 2 and "--run-eval evaluates on DATASETS.TEST" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def val_subset(path: Path, count: int) -> list[str]:
    """Config overrides evaluating on the first ``count`` images of shapes_val (a COCO JSON of
    them at ``path``)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get("shapes_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    data["images"] = data["images"][:count]
    kept = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    path.write_text(json.dumps(data))
    entry = [["shapes_val_subset", str(path), meta.image_root]]
    return ["BACKBONES.COCO_DATASETS", json.dumps(entry), "DATASETS.TEST", "('shapes_val_subset',)"]


@pytest.mark.slow
def test_run_eval_gives_eager_ap(tmp_path):
    """A shapes Mask R-CNN trained briefly, exported to ONNX, evaluated on 40 shapes_val images
    by the exported file (ONNX Runtime) and by eager PyTorch: the same COCO AP within 0.1. (The
    TorchScript file gives eager's outputs exactly: the tests above.)"""
    train = subprocess.run(
        [sys.executable, str(ROOT / "tools/train_net.py"), "--config-file",
         "configs/mrcnn_r18_shapes.yaml", "SOLVER.MAX_ITER", "150", "SOLVER.WARMUP_ITERS", "50",
         "OUTPUT_DIR", str(tmp_path / "train")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    proc = export_cli(
        "--config-file", str(tmp_path / "train" / "config.yaml"), "--format", "onnx",
        "--run-eval", "--output", str(tmp_path / "export"),
        "MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth"),
        *val_subset(tmp_path / "val40.json", 40),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.findall(r"(bbox|segm) AP: exported ([\d.]+), eager ([\d.]+)", proc.stdout)
    assert [task for task, _, _ in found] == ["bbox", "segm"], proc.stdout
    for _, exported, eager in found:
        assert float(eager) > 1.0  # detections, not an empty model
        assert abs(float(exported) - float(eager)) <= 0.1


def test_scripting_after_a_trace_in_the_process_is_refused(tmp_path):
    model = detector("coco-retinanet")
    export_detector(model, image(), tmp_path / "traced.ts")
    with pytest.raises(RuntimeError, match="script in a fresh process"):
        export_detector(model, image(), tmp_path / "scripted.ts", method="scripting")
    assert not (tmp_path / "scripted.ts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traced.ts"]  # nothing half-written
