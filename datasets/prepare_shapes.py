"""Generate the synthetic "shapes" dataset of ``backbones.data.shapes`` and print a summary.

Optional: ``register_shapes`` generates the data on first use. Run this to generate it ahead of
time, e.g. ``python datasets/prepare_shapes.py`` writes ``datasets/shapes/{train,val}``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from backbones.data import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    SHAPES_CLASSES,
    default_root,
    generate_shapes,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", help="output folder (default: $DETECTRON2_DATASETS/NAME or datasets/NAME)"
    )
    parser.add_argument("--name", default="shapes", help="dataset name, for the default root")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = args.root or default_root(args.name)
    for split, num_images in (("train", args.num_train), ("val", args.num_val)):
        start = time.perf_counter()
        json_file, image_root = generate_shapes(
            root, split, num_images=num_images, image_size=args.image_size, seed=args.seed
        )
        elapsed = time.perf_counter() - start
        coco = json.loads(json_file.read_text())
        counts = Counter(ann["category_id"] for ann in coco["annotations"])
        print(
            f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} instances "
            f"in {elapsed:.1f} s\n  annotations: {json_file}\n  images:      {image_root}"
        )
        for i, name in enumerate(SHAPES_CLASSES, start=1):
            print(f"  {name:>10}: {counts[i]}")


if __name__ == "__main__":
    main()
