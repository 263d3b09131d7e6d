#!/usr/bin/env python3
"""Export a whole detector (Faster / Mask R-CNN, RetinaNet) to TorchScript or ONNX, check it
against eager PyTorch, and optionally evaluate the exported file on DATASETS.TEST.

The interface of Detectron2's tools/deploy/export_model.py. Examples::

    .venv/bin/python tools/export_model.py --config-file output/mrcnn_r18_shapes/config.yaml \\
        --format onnx --output export/ MODEL.WEIGHTS output/mrcnn_r18_shapes/model_final.pth
    .venv/bin/python tools/export_model.py --config-file configs/frcnn_r50.yaml \\
        --format torchscript --export-method scripting --sample-image img.jpg --output export/ \\
        --run-eval MODEL.WEIGHTS model_final.pth

Writes OUTPUT/model.ts or OUTPUT/model.onnx; the graph takes one float (3, H, W) image, resized
as in testing and in INPUT.FORMAT, and returns the detections in its pixels (docs/export.md).
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import logging
import os
from collections.abc import Callable

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

import backbones  # noqa: F401  (registers our backbones and the shapes datasets)
from backbones import load_cfg
from backbones.engine import Trainer
from backbones.engine.cli import check_weights, user_errors
from backbones.engine.config import ConfigError
from backbones.export.detector import (
    DEFAULT_OPSET,
    FORMATS,
    METHODS,
    ExportedDetector,
    ExportMismatchError,
    check_export_options,
    export_and_check,
    format_diffs,
)
from backbones.inference import Predictor

logger = logging.getLogger("backbones.export_model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Config overrides come last, as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config YAML")
    parser.add_argument("--format", choices=FORMATS, default="torchscript")
    parser.add_argument(
        "--export-method",
        choices=METHODS,
        default="tracing",
        help="tracing (TorchScript or ONNX) or scripting (TorchScript only)",
    )
    parser.add_argument(
        "--sample-image",
        metavar="FILE",
        help="image to trace and check with (default: the first image of DATASETS.TEST)",
    )
    parser.add_argument(
        "--run-eval",
        action="store_true",
        help="evaluate the exported file and the eager model on DATASETS.TEST",
    )
    parser.add_argument("--output", required=True, help="folder for model.ts / model.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def sample_image_file(args: argparse.Namespace, test_datasets: tuple[str, ...]) -> str:
    """``--sample-image``, else the first image of the first test dataset."""
    if args.sample_image:
        if not os.path.isfile(args.sample_image):
            raise FileNotFoundError(f"--sample-image {args.sample_image} does not exist")
        return args.sample_image
    if not test_datasets:
        raise FileNotFoundError(
            "no image to export with: give --sample-image FILE, or a DATASETS.TEST"
        )
    return DatasetCatalog.get(test_datasets[0])[0]["file_name"]


def evaluate(cfg: CfgNode, model: Callable, output_dir: str) -> dict:
    """COCO metrics of ``model`` (a module or an ExportedDetector) on DATASETS.TEST."""
    evaluators = [
        Trainer.build_evaluator(cfg, name, os.path.join(output_dir, name))
        for name in cfg.DATASETS.TEST
    ]
    return Trainer.test(cfg, model, evaluators)


def ap_lines(exported: dict, eager: dict) -> list[str]:
    """``bbox AP: exported 60.61, eager 60.61 (diff +0.00)`` per task (and dataset)."""
    lines = []
    for key, metrics in exported.items():
        if not isinstance(metrics, dict):
            continue
        if "AP" not in metrics:  # several datasets: one more level
            lines += [f"{key}: {line}" for line in ap_lines(metrics, eager[key])]
            continue
        ours, theirs = metrics["AP"], eager[key]["AP"]
        lines.append(
            f"{key} AP: exported {ours:.2f}, eager {theirs:.2f} (diff {ours - theirs:+.2f})"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    quiet_third_party_warnings()
    args = parse_args(argv)
    setup_logger(name="backbones")
    with user_errors():
        check_export_options(args.format, args.export_method)
        # Exported and checked on the CPU (ONNX Runtime's CPU provider runs the ONNX file).
        cfg = load_cfg(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
        check_weights(cfg, config_file=args.config_file, inference=True)
        if args.run_eval and not cfg.DATASETS.TEST:
            raise ConfigError("--run-eval evaluates on DATASETS.TEST, which is empty: add "
                              "DATASETS.TEST \"('name',)\" (a registered dataset)")  # fmt: skip
        image_file = sample_image_file(args, cfg.DATASETS.TEST)
        predictor = Predictor(cfg)
        image = predictor.model_input(read_image(image_file, format="BGR"))["image"]
        logger.info("Exporting %s (%s) with %s ...", args.format, args.export_method, image_file)
        try:
            check = export_and_check(
                predictor.model,
                image,
                args.output,
                format=args.format,
                method=args.export_method,
                opset=args.opset,
            )
        except ExportMismatchError as e:
            raise SystemExit(f"error: {e}") from None
    size_mb = check.path.stat().st_size / 2**20
    print(f"wrote {check.path} ({size_mb:.1f} MiB, {check.seconds:.1f} s); outputs: "
          f"{', '.join(check.output_names)}")  # fmt: skip
    for (height, width), diffs in check.diffs.items():
        print(f"  {height}x{width} image: {format_diffs(diffs)}")
    if args.run_eval:
        with user_errors():
            exported = evaluate(
                cfg, ExportedDetector(check.path), os.path.join(args.output, "eval_exported")
            )
            eager = evaluate(cfg, predictor.model, os.path.join(args.output, "eval_eager"))
        for line in ap_lines(exported, eager):
            print(line)


if __name__ == "__main__":
    main()
