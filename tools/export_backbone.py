#!/usr/bin/env python3
"""Export a ResNet or ResNet-FPN backbone to TorchScript or ONNX and check it against eager.

Examples:
    python tools/export_backbone.py --preset R-50 --fpn --format onnx --output r50_fpn.onnx
    python tools/export_backbone.py --preset R-50-D --weights resnet50d.pth --output r50d.pt
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import ast
import logging
import warnings

from backbones import PRESETS, make_resnet, make_resnet_fpn
from backbones.export import (
    check_export,
    example_images,
    export_onnx,
    script_backbone,
)


def option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a Python literal (a bare word stays a string)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> None:
    quiet_third_party_warnings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    arch = ap.add_mutually_exclusive_group()
    arch.add_argument("--preset", choices=sorted(PRESETS), help="a named variant, e.g. R-50-D")
    arch.add_argument("--depth", type=int, help="a plain ResNet depth (default: 50)")
    ap.add_argument("--fpn", action="store_true", help="the ResNet-FPN (P2-P6), not the ResNet")
    ap.add_argument("--norm", default="FrozenBN", help="norm layer (default: FrozenBN)")
    ap.add_argument(
        "--set",
        type=option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other make_resnet / make_resnet_fpn argument, e.g. --set res5_dilation=2",
    )
    ap.add_argument("--weights", help="a ResNet weights file (any format backbones reads)")
    ap.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    ap.add_argument("--output", required=True, help="the .pt (TorchScript) or .onnx file")
    ap.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(256, 256),
        metavar=("H", "W"),
        help="example image size (multiples of 32 for the FPN)",
    )
    ap.add_argument("--static", action="store_true", help="ONNX: fix batch, height and width")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    args = ap.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("backbones").setLevel(logging.INFO)  # the weights' loading report

    # Without a preset or depth, the weights file (if any) decides the architecture.
    options = dict(PRESETS[args.preset]) if args.preset else {"depth": args.depth}
    options.update(norm=args.norm, **dict(args.set))
    if args.weights:
        options["weights"] = args.weights
    try:
        model = (make_resnet_fpn if args.fpn else make_resnet)(**options).eval()
    except (OSError, ValueError) as e:  # missing, unreadable or mismatched weights, bad options
        raise SystemExit(f"error: {e}") from None
    try:
        images = example_images(model, tuple(args.size))
    except ValueError as e:  # a size the FPN's strides do not divide
        raise SystemExit(f"error: --size {args.size[0]} {args.size[1]}: {e}") from None
    if args.format == "torchscript":
        exported = script_backbone(model)
        exported.save(args.output)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on deprecated internals
            export_onnx(
                model, args.output, example=images, dynamic=not args.static, opset=args.opset
            )
        exported = args.output
    diffs = check_export(model, exported, images)
    what = args.preset or f"R-{options['depth']}"
    print(
        f"wrote {args.output} ({args.format}, {what}{'-FPN' if args.fpn else ''}, norm "
        f"{args.norm}, outputs {', '.join(diffs)})"
    )
    print(
        f"max abs diff vs eager on {tuple(images.shape)}: {max(diffs.values()):.3g} "
        f"({', '.join(f'{k} {v:.2g}' for k, v in diffs.items())})"
    )


if __name__ == "__main__":
    main()
