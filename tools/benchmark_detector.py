#!/usr/bin/env python3
"""Whole-detector inference latency per depth: Detectron2's stock Faster R-CNN against ours
eager, TorchScript, ONNX Runtime and bf16, same weights, same process, with the outputs'
agreement next to each speed.

Example (the table in docs/correctness-and-speed.md)::

    .venv/bin/python tools/benchmark_detector.py --depths 18 34 50 101 152 --size 800 1216 \\
        --batch 1 --iters 2 --output docs/results/latency

Writes OUTPUT/latency.csv, latency.md and latency.png. Random weights (each residual block
starting as the identity, so that activations stay finite), random images, the box score
threshold set so that --candidates (proposal, class) pairs reach the NMS; the exported files
take one image, so their batch of N is N calls.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import csv
import os
import platform
import subprocess
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import torch

from backbones import load_cfg
from backbones.benchmark import detector_pair, median_time, set_candidate_threshold
from backbones.export.detector import (
    ExportedDetector,
    compare_detections,
    detector_inference,
    export_detector,
)

# bf16: ours under torch.autocast(bfloat16); stock-bf16 the same for Detectron2's (the fair pair).
VARIANTS = ("stock", "eager", "torchscript", "onnx", "bf16", "stock-bf16")
COLUMNS = [
    "depth", "variant", "batch", "height", "width", "seconds", "images_per_s",
    "speedup_vs_stock", "detections", "stock_detections", "unpaired", "max_box_diff_px",
    "max_score_diff",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (lscpu), for every figure's label."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads"


def runners(stock, ours, variants, folder: Path, sample: torch.Tensor) -> dict:
    """variant -> (run a list of images, the instances of one image)."""

    def batched(model, bf16=False):
        def run(images):
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model([{"image": image} for image in images])

        def one(image):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return detector_inference(model, image)

        return run, one

    table = {}
    for variant in variants:
        if variant in ("stock", "eager", "bf16", "stock-bf16"):
            model = stock if variant.startswith("stock") else ours
            table[variant] = batched(model, variant.endswith("bf16"))
            continue
        path = folder / ("model.onnx" if variant == "onnx" else "model.ts")
        export_detector(ours, sample, path, format=variant)
        exported = ExportedDetector(path)
        table[variant] = (
            lambda images, exported=exported: [exported.instances(i) for i in images],
            exported.instances,
        )
    return table


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant in VARIANTS:
        points = [r for r in rows if r["variant"] == variant and r["batch"] == 1]
        if points:
            ax.plot(
                [r["depth"] for r in points], [r["seconds"] for r in points], "o-", label=variant
            )
    ax.set_xlabel("ResNet depth (Faster R-CNN, FPN)")
    ax.set_ylabel("seconds per image (batch 1)")
    ax.set_xticks(sorted({r["depth"] for r in rows}))
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows: list[dict], header: str) -> str:
    columns = [
        "depth",
        "batch",
        "variant",
        "s / batch",
        "img/s",
        "vs stock",
        "agreement with stock",
    ]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        agreement = (
            f"{r['detections']}/{r['stock_detections']} detections, {r['unpaired']} unpaired, "
            f"boxes {r['max_box_diff_px']:.2g} px, scores {r['max_score_diff']:.2g}"
        )
        lines.append(
            f"| R-{r['depth']} | {r['batch']} | {r['variant']} | {r['seconds']:.3f} | "
            f"{r['images_per_s']:.2f} | x{r['speedup_vs_stock']:.2f} | {agreement} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    quiet_third_party_warnings()
    warnings.filterwarnings("ignore", message=".*no MODEL.WEIGHTS.*")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[18, 34, 50, 101, 152])
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=3, help="timed runs (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--candidates",
        type=int,
        default=2000,
        help="(proposal, class) candidates above the score threshold, as a trained model has "
        "(random weights score all classes alike); 0: the config's threshold",
    )
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--output", default="output/latency", help="folder for the CSV, table, plot")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args()
    if "stock" not in args.variants:
        ap.error("--variants must include stock (every figure is a ratio to it)")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    height, width = args.size
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, height, width), generator=generator).float()
        for _ in range(max(args.batch))
    ]
    header = (
        f"Faster R-CNN FPN inference, {height}x{width}, {cpu_model()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, median of {args.iters} after {args.warmup} warm-up"
    )
    print(header)
    rows: list[dict] = []
    started = time.perf_counter()
    cpu = torch.device("cpu")
    for done, depth in enumerate(args.depths):
        cfg = load_cfg(
            str(ROOT / f"configs/frcnn_r{depth}.yaml"),
            ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *args.opts],
        )
        torch.manual_seed(depth)  # the same random weights on every run
        stock, ours = detector_pair(cfg)
        if args.candidates:  # before the export: the traces keep it
            threshold = set_candidate_threshold((stock, ours), images[0], args.candidates)
            print(f"R-{depth}: score threshold {threshold:.5f} ({args.candidates} candidates)")
        with tempfile.TemporaryDirectory() as folder:
            table = runners(stock, ours, args.variants, Path(folder), images[0])
            reference = detector_inference(stock, images[0])
            # Each variant's agreement with stock, on the first image (the same at any batch).
            agreement = {
                v: compare_detections(reference, one(images[0])) for v, (_, one) in table.items()
            }
            for batch in args.batch:
                stock_seconds = None
                for variant, (run, _) in table.items():
                    seconds = median_time(lambda: run(images[:batch]), args.iters, args.warmup, cpu)
                    stock_seconds = stock_seconds or seconds
                    diffs = agreement[variant]
                    row = {
                        "depth": depth, "variant": variant, "batch": batch, "height": height,
                        "width": width, "seconds": seconds, "images_per_s": batch / seconds,
                        "speedup_vs_stock": stock_seconds / seconds,
                        "detections": int(diffs["exported"]),
                        "stock_detections": int(diffs["eager"]),
                        "unpaired": int(diffs["unpaired"]), "max_box_diff_px": diffs["boxes"],
                        "max_score_diff": diffs["scores"],
                    }  # fmt: skip
                    rows.append(row)
                    print(
                        f"R-{depth} batch {batch} {variant:>11}: {seconds:7.3f} s "
                        f"x{row['speedup_vs_stock']:.2f} vs stock; {row['detections']}/"
                        f"{row['stock_detections']} detections, {row['unpaired']} unpaired, "
                        f"boxes {diffs['boxes']:.2g} px, scores {diffs['scores']:.2g}",
                        flush=True,
                    )
        elapsed = time.perf_counter() - started
        left = elapsed / (done + 1) * (len(args.depths) - done - 1)
        print(f"  [{done + 1}/{len(args.depths)} depths, {elapsed / 60:.1f} min, "
              f"about {left / 60:.1f} min left]", flush=True)  # fmt: skip
    with open(output / "latency.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (output / "latency.md").write_text(markdown(rows, header))
    plot(rows, output / "latency.png", header)
    print(f"wrote {os.path.join(output, 'latency.csv')}, latency.md, latency.png")


if __name__ == "__main__":
    main()
