"""Export of the backbones: TorchScript (``torch.jit.script``) and ONNX (the torch.export-based
``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``), checked against eager PyTorch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import BackboneOptionError

INPUT_NAME = "images"


def script_backbone(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)`` for a :class:`ResNet` or :class:`FPN` from this package.

    The scripted module has the same state-dict keys and, in the same mode (``eval()`` for
    inference), gives the same outputs as ``model``. Save it with ``.save(path)``; load it with
    ``torch.jit.load(path)``, without this package.

    Args:
        model: the backbone (any norm, basic or bottleneck blocks, basic or deep stem).

    Returns:
        the scripted module; its ``forward`` returns the feature dict of ``model``.
    """
    return torch.jit.script(model)


def example_images(
    model: nn.Module, image_size: tuple[int, int] = (256, 256), batch_size: int = 2
) -> torch.Tensor:
    """Random images ``(batch_size, C, H, W)`` that ``model`` takes (C of its first conv).

    Raises:
        BackboneOptionError: ``image_size`` is not a multiple of the model's
            ``size_divisibility`` (32 for an FPN over res2-res5).
    """
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    divisor = max(1, getattr(model, "size_divisibility", 1))
    height, width = image_size
    if height % divisor or width % divisor or min(height, width) < divisor:
        raise BackboneOptionError(
            "image_size", tuple(image_size), f"positive multiples of {divisor}", "the FPN's strides"
        )
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, channels, height, width, generator=generator)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: tuple[int, int] = (256, 256),
    example: torch.Tensor | None = None,
    dynamic: bool = True,
    opset: int = 18,
) -> list[str]:
    """Write ``model`` in eval mode as an ONNX graph with torch's torch.export-based exporter.

    The input is named ``images``; the outputs are named as the features (``p2``..``p6`` for the
    FPN, ``res2``..``res5`` for the ResNet). ``model``'s train/eval mode is restored afterwards.

    Args:
        model: the backbone.
        path: the ``.onnx`` file to write.
        image_size: ``(H, W)`` of the example images traced, when ``example`` is None.
        example: example images ``(N, C, H, W)`` instead (N >= 2 keeps the batch dynamic).
        dynamic: batch, height and width dynamic (H and W still multiples of the FPN's 32), or
            every shape fixed to the example's.
        opset: the ONNX opset version.

    Returns:
        the output names, in the order of the graph's outputs.
    """
    if example is None:
        example = example_images(model, image_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            names = list(model(example))
        dim = torch.export.Dim.DYNAMIC
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            opset_version=opset,
            dynamic_shapes=({0: dim, 2: dim, 3: dim},) if dynamic else None,
            verbose=False,
        )
        program.save(os.fspath(path))
    finally:
        model.train(was_training)
    return names


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run an exported graph with onnxruntime (CPU).

    Returns:
        the outputs by name (the feature names given by :func:`export_onnx`).
    """
    import onnxruntime  # the "test" extra: only needed to check what was written

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return {o.name: torch.from_numpy(v) for o, v in zip(session.get_outputs(), outputs)}


def max_abs_diffs(
    expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """max |actual - expected| per output name.

    Raises:
        ValueError: the names or shapes differ.
    """
    if list(actual) != list(expected):
        raise ValueError(f"outputs {list(actual)} differ from the eager outputs {list(expected)}")
    diffs = {}
    for name, value in expected.items():
        if actual[name].shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(actual[name].shape)} != {tuple(value.shape)}")
        diffs[name] = (actual[name].float() - value.float()).abs().max().item()
    return diffs


def check_export(
    model: nn.Module,
    exported: torch.jit.ScriptModule | str | os.PathLike,
    images: torch.Tensor | Sequence[torch.Tensor],
) -> dict[str, float]:
    """Compare an exported backbone with ``model`` in eval mode on one or more image batches.

    Args:
        model: the eager backbone.
        exported: its TorchScript module, or the path of its ONNX file.
        images: a batch ``(N, C, H, W)`` or several (e.g. of other sizes, for dynamic shapes).

    Returns:
        max |exported - eager| per output name, the maximum over the batches.
    """
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    scripted = isinstance(exported, torch.jit.ScriptModule)
    was_training = model.training, scripted and exported.training
    model.eval()
    if scripted:
        exported.eval()
    worst: dict[str, float] = {}
    try:
        for batch in batches:
            with torch.no_grad():
                expected = model(batch)
                if scripted:
                    actual = exported(batch)
                else:
                    actual = run_onnx(Path(exported), batch)
            for name, diff in max_abs_diffs(expected, actual).items():
                worst[name] = max(diff, worst.get(name, 0.0))
    finally:
        model.train(was_training[0])
        if scripted:
            exported.train(was_training[1])
    return worst
