#!/usr/bin/env python3
"""Parameters and FLOPs (billions of multiply-adds, the unit of He et al.'s Table 1) per model.

Either ResNets of the given depths (``--depths``; with ``--classifier`` the 1000-way ImageNet
classifier is added, and at 224x224 the paper's figure is shown next to ours) or the whole
detector of a config at its test size, backbone and heads apart (``--config-file``, then
``KEY VALUE`` overrides). Prints a table; ``--csv PATH`` also writes it. Examples::

    tools/analyze_model.py --depths 18 34 50 101 152 --size 224 224 --classifier
    tools/analyze_model.py --depths 18 34 50 101 --width 16 --size 32 32
    tools/analyze_model.py --depths 50 --plugins '[{"type": "gc", "stages": ["res3", "res4"]}]'
    tools/analyze_model.py --config-file configs/frcnn_r50.yaml --csv frcnn_r50.csv
    tools/analyze_model.py --config-file configs/mrcnn_r50.yaml MODEL.RESNETS.DEPTH 101

Progress goes to stderr; the counts are those of :mod:`backbones.study.report.complexity`.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import json
import sys
from collections.abc import Sequence

from backbones import DEPTHS, BackboneOptionError, load_cfg
from backbones.modeling.plugins import plugin_specs
from backbones.specs import STAGE_NAMES
from backbones.study.report import (
    PAPER_GFLOPS,
    detector_complexity,
    detector_test_size,
    format_table,
    resnet_complexity,
    write_csv,
)

PAPER_SIZE = (224, 224)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--config-file", metavar="FILE", help="a detector config (YAML)")
    models.add_argument(
        "--depths", type=int, nargs="+", choices=sorted(DEPTHS), metavar="D", help="ResNet depths"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input image size; default 224 224 for --depths, the config's test size otherwise",
    )
    parser.add_argument(
        "--classifier", action="store_true", help="with --depths: add the 1000-way classifier"
    )
    parser.add_argument(
        "--width",
        type=int,
        metavar="W",
        help="with --depths: a thinner or wider ResNet (make_resnet's width; 64 is the paper's)",
    )
    parser.add_argument(
        "--plugins",
        metavar="JSON",
        help="with --depths: context blocks as BACKBONES.PLUGINS takes them, a JSON list, e.g. "
        '\'[{"type": "gc", "stages": ["res3", "res4", "res5"]}]\'; each depth is counted with '
        "and without them, and the cost they add is shown (with --config-file: the config's "
        "BACKBONES.PLUGINS are counted)",
    )
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="with --config-file: KEY VALUE config overrides"
    )
    args = parser.parse_args(argv)
    if args.depths is not None and args.opts:
        parser.error("KEY VALUE overrides apply to --config-file only")
    if args.config_file is not None and (
        args.classifier or args.width is not None or args.plugins is not None
    ):
        parser.error("--classifier, --width and --plugins apply to --depths only")
    if args.plugins is not None:
        try:
            args.plugins = plugin_specs(json.loads(args.plugins))
        except json.JSONDecodeError as error:
            parser.error(f"--plugins is not JSON ({error}): {args.plugins}")
        except BackboneOptionError as error:
            parser.error(f"--plugins: {error}")
    if args.width is not None and args.width <= 0:
        parser.error(f"--width must be positive, got {args.width}")
    if args.size is not None and min(args.size) <= 0:
        parser.error(f"--size must be positive, got {args.size[0]} {args.size[1]}")
    return args


def resnet_rows(
    depths: Sequence[int],
    size: tuple[int, int],
    classifier: bool,
    width: int | None = None,
    plugins: Sequence = (),
) -> list[dict]:
    """One row per depth; with the paper's figure and our difference to it where comparable
    (the paper's width, with the classifier, at 224x224). With ``plugins``, a second row per
    depth counts the net with them, and the parameters and FLOPs they add."""
    compare = classifier and size == PAPER_SIZE and width in (None, 64)
    options = {} if width is None else {"width": width}
    rows = []
    for depth in depths:
        print(f"R-{depth}: counting at {size[0]}x{size[1]}...", file=sys.stderr, flush=True)
        row = resnet_complexity(depth, size=size, classifier=classifier, **options)
        if width is not None:
            row = {"depth": row.pop("depth"), "width": width, **row}
        if plugins:
            row = {"depth": row.pop("depth"), "plugins": "none", **row}
        if compare and depth in PAPER_GFLOPS:
            paper = PAPER_GFLOPS[depth]
            row.update(paper_gflops=paper, paper_difference=row["gflops"] / paper - 1)
        rows.append(row)
        if plugins:
            plugged = resnet_complexity(
                depth, size=size, classifier=classifier, plugins=plugins, **options
            )
            rows.append(
                {
                    **row,
                    **plugged,
                    "plugins": describe_plugins(plugins),
                    "added_params": plugged["params"] - row["params"],
                    "added_gflops": plugged["gflops"] - row["gflops"],
                    "paper_gflops": None,
                    "paper_difference": None,
                }
            )
    return rows


def describe_plugins(plugins: Sequence) -> str:
    """``gc r1/16 after_conv3 res3-res5`` for each plugin (a run of three or more stages as a
    range, others listed: ``res2,res5``), joined by ``; ``."""

    def stages(names: Sequence[str]) -> str:
        first, last = STAGE_NAMES.index(names[0]), STAGE_NAMES.index(names[-1])
        run = len(names) > 2 and last - first + 1 == len(names)
        return f"{names[0]}-{names[-1]}" if run else ",".join(names)

    return "; ".join(
        f"{p.type} r1/{round(1 / p.ratio)} {p.position} {stages(p.stages)}" for p in plugins
    )


def detector_row(config_file: str, opts: Sequence[str], size: tuple[int, int] | None) -> dict:
    """The row of the config's detector, with the input size it was counted at."""
    cfg = load_cfg(config_file, ["MODEL.DEVICE", "cpu", *opts])  # counted on CPU anyway
    size = size or detector_test_size(cfg)
    print(f"{config_file}: counting at {size[0]}x{size[1]}...", file=sys.stderr, flush=True)
    row = {"config": config_file, "size": f"{size[0]}x{size[1]}"}
    row.update(detector_complexity(cfg, size=size))
    return row


def main(argv: Sequence[str] | None = None) -> int:
    quiet_third_party_warnings()
    args = parse_args(argv)
    size = tuple(args.size) if args.size is not None else None
    if args.depths is not None:
        rows = resnet_rows(
            args.depths, size or PAPER_SIZE, args.classifier, args.width, args.plugins or ()
        )
    else:
        rows = [detector_row(args.config_file, args.opts, size)]
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
