#!/usr/bin/env python3
"""Benchmark our ResNet-FPN against Detectron2's built-in one (same weights, same process)."""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import warnings

import torch

from backbones import load_cfg
from backbones.benchmark import FPN_OPTS, benchmark_detector, benchmark_fpn


def main() -> None:
    quiet_third_party_warnings()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config-file", default="", help="optional YAML; default: R-50-FPN")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", default=["inference", "train"])
    ap.add_argument("--amp", default="", choices=["", "bf16", "fp16"], help="autocast dtype")
    ap.add_argument(
        "--detector",
        action="store_true",
        help="time a whole R-CNN training step of --config-file (e.g. configs/frcnn_r101.yaml) "
        "on synthetic COCO-sized images instead of the backbone alone",
    )
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*no MODEL.WEIGHTS.*")
    # Without a YAML, Detectron2's defaults are C4's: take the FPN's features.
    features = [] if args.config_file else FPN_OPTS
    cfg = load_cfg(args.config_file, features + args.opts)
    r = cfg.MODEL.RESNETS
    print(
        f"R-{r.DEPTH}-FPN ({r.NUM_GROUPS}x{r.WIDTH_PER_GROUP}d, norm {r.NORM}), batch "
        f"{args.batch} x {args.size[0]}x{args.size[1]}, {args.device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, ours in "
        f"{cfg.BACKBONES.MEMORY_FORMAT}, amp {args.amp or 'off'}"
    )
    if args.detector:
        timings = benchmark_detector(
            cfg,
            batch=args.batch,
            size=tuple(args.size),
            iters=args.iters,
            device=args.device,
            amp=args.amp,
        )
    else:
        timings = benchmark_fpn(
            cfg,
            batch=args.batch,
            size=tuple(args.size),
            iters=args.iters,
            modes=tuple(args.modes),
            device=args.device,
            amp=args.amp,
        )
    for t in timings:
        print(
            f"{t.mode:>9}: detectron2 {t.detectron2_s * 1e3:8.1f} ms   ours "
            f"{t.ours_s * 1e3:8.1f} ms   speedup x{t.speedup:.2f}"
        )


if __name__ == "__main__":
    main()
