#!/usr/bin/env python3
"""Draw a model's predictions next to the ground truth for the first images of a dataset.

Example::

    .venv/bin/python tools/visualize_predictions.py --config-file out/config.yaml \
        --weights out/model_final.pth --output out/vis --num-images 8
    .venv/bin/python tools/visualize_predictions.py --config-file out/config.yaml \
        --weights out/model_final.pth --output out/vis --dataset my_val val.json images

Give the config the model was trained with: its OUTPUT_DIR/config.yaml (the number of classes,
the input settings and the datasets it registered are there).
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse

from detectron2.utils.logger import setup_logger

import backbones  # noqa: F401  (registers our backbones and the shapes datasets)
from backbones import load_cfg
from backbones.engine.cli import check_datasets, check_weights, user_errors
from backbones.engine.config import ConfigError
from backbones.inference import visualize_predictions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--weights", required=True, help="checkpoint to load")
    parser.add_argument(
        "--dataset",
        nargs="+",
        metavar="NAME [JSON IMAGE_ROOT]",
        help="a registered dataset, or a COCO-format one to register under NAME (default: the "
        "first of DATASETS.TEST)",
    )
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--num-images", type=int, default=8, help="how many images")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="smallest drawn score")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    quiet_third_party_warnings()
    args = parse_args(argv)
    setup_logger(name="backbones")
    if args.dataset is not None and len(args.dataset) not in (1, 3):
        raise SystemExit(
            f"error: --dataset {' '.join(args.dataset)}: give NAME, or NAME JSON IMAGE_ROOT"
        )
    # The config, the dataset and the weights, before the model is built.
    with user_errors():
        own = [args.dataset] if args.dataset and len(args.dataset) == 3 else []
        cfg = load_cfg(args.config_file, args.opts, datasets=own)
        if args.dataset is None and not cfg.DATASETS.TEST:
            raise ConfigError("no --dataset given and DATASETS.TEST is empty")
        dataset = args.dataset[0] if args.dataset else cfg.DATASETS.TEST[0]
        check_weights(cfg, args.weights, config_file=args.config_file, inference=True)
        view = cfg.clone()
        view.defrost()
        view.DATASETS.TEST = (dataset,)
        check_datasets(view, train=False)
    paths = visualize_predictions(
        cfg, args.weights, dataset, args.output, args.num_images, args.score_thresh
    )
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
