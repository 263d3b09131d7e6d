#!/usr/bin/env python3
"""What each CPU speed lever is worth for a whole Faster R-CNN (docs/correctness-and-speed.md,
"Each lever, measured"): ONNX Runtime's graph optimisation levels and torch.compile of the
backbone, against the stock model and ours eager, in one process.

    .venv/bin/python dev/detector_speed_levers.py --depth 50 --size 800 1216   # about 4 min
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime
import torch

from backbones import load_cfg
from backbones.benchmark import detector_pair, median_time, set_candidate_threshold
from backbones.export.detector import (
    compare_detections,
    detector_inference,
    export_detector,
    format_diffs,
)

ROOT = Path(__file__).resolve().parents[1]
ORT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def main() -> None:
    quiet_third_party_warnings()
    warnings.filterwarnings("ignore", message=".*no MODEL.WEIGHTS.*")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=2000, help="as tools/benchmark_detector.py")
    args = ap.parse_args()
    cfg = load_cfg(
        str(ROOT / f"configs/frcnn_r{args.depth}.yaml"),
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"],
    )
    torch.manual_seed(args.depth)
    stock, ours = detector_pair(cfg)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *args.size), generator=generator).float()
    set_candidate_threshold((stock, ours), image, args.candidates)
    cpu = torch.device("cpu")

    def timed(name: str, run) -> None:
        with torch.no_grad():
            print(f"{name:>40}: {median_time(run, args.iters, 1, cpu):.3f} s", flush=True)

    timed("stock", lambda: stock([{"image": image}]))
    timed("ours eager", lambda: ours([{"image": image}]))
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "model.onnx")
        export_detector(ours, image, path, format="onnx")
        for level in ORT_LEVELS:
            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
            session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
            array = image.numpy()
            timed(f"ONNX Runtime {level}", lambda: session.run(None, {"image": array}))
    # torch.compile of the backbone only: the heads' shapes depend on the data.
    started = time.perf_counter()
    ours.backbone = torch.compile(ours.backbone, dynamic=False)
    with torch.no_grad():
        ours([{"image": image}])
    print(
        f"{'torch.compile of the backbone: compiling':>40}: {time.perf_counter() - started:.1f} s"
    )
    timed("ours eager, compiled backbone", lambda: ours([{"image": image}]))
    diffs = compare_detections(detector_inference(stock, image), detector_inference(ours, image))
    print(f"compiled against stock: {format_diffs(diffs)}")


if __name__ == "__main__":
    main()
