"""Export of whole Detectron2 detectors (Faster / Mask R-CNN with FPN, C4 or DC5 heads,
RetinaNet) on our backbones: TorchScript by tracing or scripting, ONNX by tracing (run in ONNX
Runtime), each loaded back and checked against eager PyTorch on a sample image.

The exported graph is Detectron2's ``model.inference(inputs, do_postprocess=False)`` for one
image (RetinaNet: its forward): a float ``(3, H, W)`` image in ``INPUT.FORMAT``, already resized
as in testing, in; the detections in that image's pixels out. Rescaling to the original image
and pasting masks (``detector_postprocess``) stay outside the graph, as in Detectron2's
``tools/deploy``: :class:`ExportedDetector` does them for evaluation.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from ..errors import BackboneOptionError, check_choice

FORMATS = ("torchscript", "onnx")
METHODS = ("tracing", "scripting")
# The name of the exported graph's input, and of the outputs' names record in a traced
# TorchScript file (``torch.jit.load(path, _extra_files={OUTPUTS_RECORD: ""})``).
IMAGE_INPUT = "image"
OUTPUTS_RECORD = "outputs.json"
# ONNX opset: 17 has every op the R-CNNs need (RoIAlign, NonMaxSuppression, TopK); ONNX Runtime
# 1.18+ runs it.
DEFAULT_OPSET = 17
# Fields an R-CNN's or RetinaNet's Instances can carry during inference, for scripting
# (Detectron2's scripting_with_instances needs their types up front).
_SCRIPTED_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
}


# Set by the first trace: a later scripting in the process fails (see export_detector).
_TRACED_IN_THIS_PROCESS = False
# Farthest apart (largest corner difference, pixels) two detections of one class can be and
# still be the same detection for compare_detections.
_PAIR_PX = 1.0


@dataclass(frozen=True)
class Tolerance:
    """Largest differences an exported detector may show against eager on the same image.

    TorchScript gives eager's outputs exactly. ONNX Runtime's kernels round differently: on the
    trained shapes Mask R-CNN the differences were 1e-4 px, 1.4e-5 in scores, 2e-6 in mask
    probabilities; random COCO-config detectors, whose logits run to the hundreds, reach 0.05 px
    on a 192 px image and 3e-3 in scores. The bounds sit above those. Detections missing on one
    side are allowed only at the cut (within ``scores`` of the lowest score kept on that side),
    where rounding decides what is kept.
    """

    boxes: float = 1e-3  # pixels per pixel of the image's longer side (0.8 px at 800)
    scores: float = 5e-3
    masks: float = 5e-3  # mask probabilities


class ExportMismatchError(AssertionError):
    """An exported detector's outputs differ from eager past the tolerance; the message names
    the largest differences."""


def detector_inference(model: nn.Module, image: torch.Tensor) -> Instances:
    """Eager detections of one image, as the exported graph computes them: ``image`` is a float
    ``(3, H, W)`` tensor, resized as in testing, in ``INPUT.FORMAT``; the instances are in its
    pixels (R-CNN masks are the ``M x M`` mask probabilities before pasting)."""
    with torch.no_grad():
        return _inference(model, [{"image": image}])[0]["instances"]


def _inference(model: nn.Module, inputs: list[dict[str, torch.Tensor]]) -> list[dict]:
    if isinstance(model, GeneralizedRCNN):  # masks stay M x M, boxes in the resized image
        instances = model.inference(inputs, do_postprocess=False)
    else:  # a dense detector (RetinaNet): its forward without detector_postprocess, as scripted
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        instances = model.forward_inference(images, features, model.head(features))
    return [{"instances": i} for i in instances]


class _Traceable(nn.Module):
    """One image in, the detection fields flattened out: the tensors of the fields in the order
    of their names, then the image size."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Detectron2's len() patch: the number of boxes per image stays a tensor in the trace,
        # so the graph takes any number of proposals (not the sample image's).
        with patch_builtin_len():
            instances = _inference(self.model, [{"image": image}])[0]["instances"]
        fields = instances.get_fields()
        tensors = [_tensor(fields[name]) for name in sorted(fields)]
        return (*tensors, torch.as_tensor(instances.image_size))


class _ScriptableRCNN(nn.Module):
    # Dicts of fields out, not Instances (a scripted Instances class cannot be returned to a
    # process that does not have it).
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _ScriptableDense(_ScriptableRCNN):
    def forward(self, inputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        # A scripted dense detector's forward returns its results before detector_postprocess.
        return [i.get_fields() for i in self.model(inputs)]


def _tensor(value: Any) -> torch.Tensor:
    return value.tensor if isinstance(value, Boxes) else value


def check_export_options(format: str, method: str) -> None:
    """Raise :class:`BackboneOptionError` for a format or method :func:`export_detector` cannot
    take, naming the command-line flag."""
    check_choice("--format", format, FORMATS)
    check_choice("--export-method", method, METHODS)
    if method == "scripting" and format != "torchscript":
        raise BackboneOptionError(
            "--export-method", method, "'tracing'", "ONNX export traces the model"
        )


def export_detector(
    model: nn.Module,
    image: torch.Tensor,
    path: str | os.PathLike,
    *,
    format: str = "torchscript",
    method: str = "tracing",
    opset: int = DEFAULT_OPSET,
) -> list[str]:
    """Write ``model`` (a Detectron2 detector in eval mode) to ``path``.

    Args:
        model: the detector, e.g. ``build_model(cfg)`` with its weights loaded.
        image: a sample float ``(3, H, W)`` image (resized as in testing, ``INPUT.FORMAT``);
            tracing records the ops it runs, so an image with detections is best.
        path: the file to write (``model.ts`` / ``model.onnx`` by convention).
        format: ``"torchscript"`` or ``"onnx"``.
        method: ``"tracing"`` (either format; H and W stay dynamic) or ``"scripting"``
            (TorchScript only; also keeps the Python control flow).
        opset: the ONNX opset.

    Returns:
        the output names, in order: the detection fields (``pred_boxes``, ``pred_classes``,
        ``pred_masks`` for Mask R-CNN, ``scores``) and ``image_size``; for scripting, the
        fields of the dicts the scripted model returns.
    """
    global _TRACED_IN_THIS_PROCESS
    check_export_options(format, method)
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(detector_inference(model, image).get_fields())
    if method == "scripting":
        # Imported here: importing detectron2.export patches Detectron2's classes for scripting.
        from detectron2.export import scripting_with_instances

        if _TRACED_IN_THIS_PROCESS:
            # A trace compiles Detectron2's @script_if_tracing functions and TorchScript keeps
            # them; a detector scripted afterwards in the same process fails when it runs
            # ("Scripting is not supported for postprocess"; torch 2.14).
            raise RuntimeError(
                "a detector was traced in this process, and TorchScript's caches make a later "
                "scripting fail: script in a fresh process (tools/export_model.py exports one "
                "model per run)"
            )
        wrapper = _ScriptableRCNN if isinstance(model, GeneralizedRCNN) else _ScriptableDense
        scripted = scripting_with_instances(wrapper(model).eval(), _SCRIPTED_FIELDS)
        partial = path.with_name(path.name + ".partial")  # no half-written file at the path
        scripted.save(str(partial))
        os.replace(partial, path)
        return names
    _TRACED_IN_THIS_PROCESS = True
    names.append("image_size")  # _Traceable's outputs
    traceable = _Traceable(model).eval()
    # The tracer warns at every Python branch on a tensor (dozens in Detectron2); the outputs
    # are checked on a second image size instead (export_and_check).
    # The exporter's note on advanced indexing (wrong results for negative indices) is
    # checked the same way.
    partial = path.with_name(path.name + ".partial")  # no half-written file at the path
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        if format == "torchscript":
            traced = torch.jit.trace(traceable, (image,), check_trace=False)
            extra = {OUTPUTS_RECORD: json.dumps(names)}
            torch.jit.save(traced, str(partial), _extra_files=extra)
        else:
            # The TorchScript-based exporter (dynamo=False): the torch.export-based one cannot
            # take the data-dependent shapes of NMS and the per-level RoI assignment.
            torch.onnx.export(
                traceable,
                (image,),
                str(partial),
                opset_version=opset,
                dynamo=False,
                input_names=[IMAGE_INPUT],
                output_names=names,
                dynamic_axes={IMAGE_INPUT: {1: "height", 2: "width"}}
                | {name: {0: "detections"} for name in names if name != "image_size"},
            )
    os.replace(partial, path)
    model.eval()  # the exporter may leave submodules in another mode
    return names


class ExportedDetector:
    """An exported detector loaded back: ``detector.instances(image)`` gives the
    :class:`Instances` of one image (as :func:`detector_inference`), and ``detector(inputs)``
    takes Detectron2 dataset dicts (``image``, ``height``, ``width``) as a model does, returning
    ``[{"instances": ...}]`` rescaled to the original image and with pasted masks; so it can be
    evaluated with Detectron2's ``inference_on_dataset``.

    Args:
        path: a ``.ts`` file (traced or scripted) or a ``.onnx`` file (run in ONNX Runtime's
            CPU provider).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no exported model at {self.path}")
        self.format = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        self._run: Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
        if self.format == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
            names = [o.name for o in session.get_outputs()]

            def run(image: torch.Tensor) -> Mapping[str, torch.Tensor]:
                arrays = session.run(None, {IMAGE_INPUT: image.cpu().numpy()})
                return {n: torch.from_numpy(np.asarray(a)) for n, a in zip(names, arrays)}

            self._run = run
        else:
            extra = {OUTPUTS_RECORD: ""}
            module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            if extra[OUTPUTS_RECORD]:  # traced: a tuple, named by the record
                names = json.loads(extra[OUTPUTS_RECORD])
                self._run = lambda image: dict(zip(names, module(image)))
            else:  # scripted: a list of field dicts
                self._run = lambda image: {
                    k: _tensor(v) for k, v in module([{"image": image}])[0].items()
                }

    def instances(self, image: torch.Tensor) -> Instances:
        """Detections of one float ``(3, H, W)`` image (resized, in ``INPUT.FORMAT``), in its
        pixels."""
        with torch.no_grad():
            outputs = dict(self._run(image))
        size = outputs.pop("image_size", None)
        image_size = tuple(int(s) for s in size) if size is not None else tuple(image.shape[-2:])
        fields: dict[str, Any] = {}
        for name, value in outputs.items():
            fields[name] = Boxes(value) if name in ("pred_boxes", "proposal_boxes") else value
        return Instances(image_size, **fields)

    def __call__(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Instances]]:
        results = []
        for item in inputs:
            image = item["image"].float()
            height = item.get("height", image.shape[-2])
            width = item.get("width", image.shape[-1])
            instances = self.instances(image)
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results


def compare_detections(eager: Instances, exported: Instances) -> dict[str, float]:
    """The differences between two sets of detections of one image.

    Detections are paired by class and place (each eager detection, highest score first, with
    the nearest exported one of its class, no corner more than 1 px away), so a reordering of
    near-equal scores is not a difference.

    Returns:
        ``{"eager": n, "exported": n, "unpaired": count, "unpaired_margin": how far the
        highest-scoring unpaired detection scores above the lowest kept on its side (0: at the
        cut), "image_side": the image's longer side, "boxes": max |diff| in px, "scores": max
        |diff|, "masks": max |diff| of the mask probabilities (if both have masks)}``.
    """
    ours, theirs = eager.to("cpu"), exported.to("cpu")
    diffs: dict[str, float] = {"eager": len(ours), "exported": len(theirs)}
    diffs["image_side"] = max(ours.image_size)
    pairs = _pair(ours, theirs)
    paired_eager = {i for i, _ in pairs}
    paired_exported = {j for _, j in pairs}
    # An unpaired detection is expected only at a cut: the lowest scores kept on its side.
    margins = [
        float(side.scores[k] - side.scores.min())
        for side, paired in ((ours, paired_eager), (theirs, paired_exported))
        for k in range(len(side))
        if k not in paired
    ]
    diffs["unpaired"] = len(margins)
    diffs["unpaired_margin"] = max(margins, default=0.0)
    index_eager = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    index_exported = torch.tensor([j for _, j in pairs], dtype=torch.long)

    def largest(a: torch.Tensor, b: torch.Tensor) -> float:
        if not len(pairs):
            return 0.0
        return float((a[index_eager].float() - b[index_exported].float()).abs().max())

    diffs["boxes"] = largest(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    diffs["scores"] = largest(ours.scores, theirs.scores)
    if ours.has("pred_masks") and theirs.has("pred_masks"):
        diffs["masks"] = largest(ours.pred_masks, theirs.pred_masks)
    return diffs


def _pair(a: Instances, b: Instances) -> list[tuple[int, int]]:
    # By coordinates, not IoU: a random model's boxes can have no area (IoU 0 with themselves).
    if not len(a) or not len(b):
        return []
    distance = (a.pred_boxes.tensor[:, None, :] - b.pred_boxes.tensor[None, :, :]).abs()
    distance = distance.float().amax(dim=2)
    distance[a.pred_classes[:, None] != b.pred_classes[None, :]] = float("inf")
    pairs, taken = [], set()
    for i in torch.argsort(a.scores, descending=True).tolist():
        order = torch.argsort(distance[i]).tolist()
        j = next((j for j in order if j not in taken and distance[i, j] <= _PAIR_PX), None)
        if j is not None:
            taken.add(j)
            pairs.append((i, j))
    return pairs


def check_detections(diffs: Mapping[str, float], tolerance: Tolerance = Tolerance()) -> None:
    """Raise :class:`ExportMismatchError` if ``diffs`` (from :func:`compare_detections`) are past
    ``tolerance``: a paired difference larger than its bound, or an unpaired detection scoring
    more than the score bound above the lowest kept score of its side."""
    bounds = {
        "boxes": tolerance.boxes * diffs["image_side"],
        "scores": tolerance.scores,
        "masks": tolerance.masks,
    }
    faults = [
        f"{key} differ by up to {diffs[key]:.3g} (tolerance {bound:.3g})"
        for key, bound in bounds.items()
        if key in diffs and diffs[key] > bound
    ]
    if diffs["unpaired_margin"] > tolerance.scores:
        faults.append(
            f"{diffs['unpaired']:.0f} detections have no counterpart (eager {diffs['eager']:.0f}, "
            f"exported {diffs['exported']:.0f}), one scoring {diffs['unpaired_margin']:.3f} above "
            "the lowest kept score of its side"
        )
    if faults:
        raise ExportMismatchError("the exported model differs from eager: " + "; ".join(faults))


def format_diffs(diffs: Mapping[str, float]) -> str:
    """One line: the detection counts and the largest differences."""
    text = f"{diffs['eager']:.0f} detections eager, {diffs['exported']:.0f} exported"
    if diffs["unpaired"]:
        text += f" ({diffs['unpaired']:.0f} unpaired)"
    parts = [f"{k} {diffs[k]:.2g}" for k in ("boxes", "scores", "masks") if k in diffs]
    return text + "; largest differences: " + ", ".join(parts)


@dataclass
class ExportCheck:
    """What :func:`export_and_check` wrote and how the file compares with eager."""

    path: Path
    output_names: list[str]
    # (H, W) of each checked image -> compare_detections' differences on it
    diffs: dict[tuple[int, int], dict[str, float]]
    seconds: float


def export_and_check(
    model: nn.Module,
    image: torch.Tensor,
    output_dir: str | os.PathLike,
    *,
    format: str = "torchscript",
    method: str = "tracing",
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance = Tolerance(),
) -> ExportCheck:
    """Export ``model`` into ``output_dir`` (``model.ts`` or ``model.onnx``), load the file back
    (ONNX in ONNX Runtime) and compare it with eager on ``image`` and on the image at 3/4 of its
    size (a size the export never saw: the graph must take any H and W).

    Raises:
        ExportMismatchError: past ``tolerance`` on either image, naming the size and the largest
            differences; the file stays written, for inspection.
    """
    started = time.perf_counter()
    path = Path(output_dir) / ("model.onnx" if format == "onnx" else "model.ts")
    names = export_detector(model, image, path, format=format, method=method, opset=opset)
    seconds = time.perf_counter() - started
    exported = ExportedDetector(path)
    height, width = image.shape[-2:]
    smaller = torch.nn.functional.interpolate(
        image[None], size=(height * 3 // 4, width * 3 // 4), mode="bilinear", align_corners=False
    )[0]
    check = ExportCheck(path, names, {}, seconds)
    for sample in (image, smaller):
        size = tuple(sample.shape[-2:])
        diffs = compare_detections(detector_inference(model, sample), exported.instances(sample))
        check.diffs[size] = diffs
        try:
            check_detections(diffs, tolerance)
        except ExportMismatchError as e:
            raise ExportMismatchError(f"{path}, on a {size[0]}x{size[1]} image: {e}") from None
    return check
