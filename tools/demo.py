#!/usr/bin/env python3
"""Run a model on images or video frames: drawn predictions and a COCO-format predictions.json.

Examples::

    .venv/bin/python tools/demo.py --config-file output/mrcnn_r18_shapes/config.yaml \
        --input img.png 'photos/*.jpg' --output out/demo \
        MODEL.WEIGHTS output/mrcnn_r18_shapes/model_final.pth
    .venv/bin/python tools/demo.py --config-file cfg.yaml --input clip.mp4 --every 10 \
        --output out/clip --image-format jpg --confidence-threshold 0.3 MODEL.WEIGHTS model.pth

Give the config the model was trained with (its OUTPUT_DIR/config.yaml: the number of classes
and the input settings are there); a model whose classes differ from the config's is an error
before anything is built. Runs on CPU (``MODEL.DEVICE cpu`` is used when CUDA is missing). See
``backbones/inference/demo.py`` for the layout of ``predictions.json``.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import os

from detectron2.utils.logger import setup_logger

import backbones  # noqa: F401  (registers our backbones and the shapes datasets)
from backbones import load_cfg
from backbones.engine.cli import check_weights, user_errors
from backbones.inference import IMAGE_FORMATS, run_demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Config overrides come last, as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config YAML")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="image or video files, folders, or glob patterns (quote them: 'dir/*.jpg')",
    )
    parser.add_argument("--output", required=True, help="folder for the drawn images and JSON")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="smallest kept score"
    )
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png")
    parser.add_argument("--every", type=int, default=1, help="take every N-th video frame")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images or frames per forward (consecutive ones of one size; equal predictions)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    quiet_third_party_warnings()
    args = parse_args(argv)
    setup_logger(name="backbones")
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"error: config file {args.config_file} does not exist")
    try:
        cfg = load_cfg(args.config_file, args.opts)
    except (AssertionError, KeyError, ValueError, FileNotFoundError) as e:
        # yacs reports an unknown key with an AssertionError.
        raise SystemExit(f"error: {args.config_file}: {e}") from None
    with user_errors():  # the weights: downloaded if needed and checked before the model is built
        check_weights(cfg, config_file=args.config_file, inference=True)
    try:
        result = run_demo(
            cfg,
            args.input,
            args.output,
            confidence_threshold=args.confidence_threshold,
            image_format=args.image_format,
            every=args.every,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{result.num_instances} instances on {result.num_images} images/frames")
    print(f"drawn: {len(result.visualizations)} files in {args.output}")
    print(f"predictions: {result.predictions_json}")


if __name__ == "__main__":
    main()
