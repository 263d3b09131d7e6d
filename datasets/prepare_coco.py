"""Check that COCO 2017 is where Detectron2's builtin ``coco_2017_*`` datasets look for it.

Prints what is present, missing or inconsistent, and every data fault (docs/troubleshooting.md,
"Data faults": bad boxes and polygons, unknown ids; with ``--check-images`` images that do not
decode or differ in size from the JSON), each naming the file, image id and annotation id.
Exits with status 1 unless all is there and no fault is fatal.
``--link SRC`` first links an existing COCO folder into place; ``--dataset JSON IMAGE_ROOT``
checks your own COCO-format data instead. Download and layout: ``datasets/README.md``. Examples::

    python datasets/prepare_coco.py --link /data/coco --check-images
    python datasets/prepare_coco.py --dataset data/pets/val.json data/pets/images
"""

from __future__ import annotations

import argparse
import sys

from backbones.data import COCO_SPLITS, check_coco_dataset, check_coco_layout, coco_root, link_coco


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", help="the COCO folder (default: $DETECTRON2_DATASETS/coco or datasets/coco)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(COCO_SPLITS),
        help="splits to check (default: %(default)s)",
    )
    parser.add_argument(
        "--link", metavar="SRC", help="first make the COCO folder a symbolic link to SRC"
    )
    parser.add_argument(
        "--dataset",
        nargs=2,
        action="append",
        metavar=("JSON", "IMAGE_ROOT"),
        help="check this COCO-format dataset instead of the COCO layout (repeatable)",
    )
    parser.add_argument(
        "--check-images",
        action="store_true",
        help="decode every image to find unreadable files and wrong sizes (slow; progress bar)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dataset:
        reports = [
            check_coco_dataset(*d, check_images=args.check_images, faults=True)
            for d in args.dataset
        ]
        print("\n".join(report.format() for report in reports))
        return 0 if all(report.ok for report in reports) else 1
    root = args.root or coco_root()
    if args.link:
        try:
            link_coco(args.link, root)
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"linked {root} -> {args.link}")
    report = check_coco_layout(root, args.splits, check_images=args.check_images, faults=True)
    print(report)
    if not report.ok:
        print("See datasets/README.md for the download and the expected layout.")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
