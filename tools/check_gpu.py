#!/usr/bin/env python3
"""GPU checks: CUDA parity with Detectron2's built-in ResNet-FPN, and speed ratios against it.

Prints, on the current CUDA device:
1. outputs of our R-50-FPN and Detectron2's built-in one (same weights) against the float64
   truth, in float32 (TF32 off) and under autocast;
2. backbone inference and training speed, float32 and bf16/fp16 autocast, COCO-sized input;
3. a whole Faster R-CNN R-101-FPN training step (configs/frcnn_r101.yaml, synthetic boxes).

Every speed figure is a ratio against the built-in model timed in the same process.
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import copy
import json
import time
import warnings

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

from backbones import backbones_build_resnet_fpn_backbone, load_cfg
from backbones.benchmark import FPN_OPTS, Timing, benchmark_detector, benchmark_fpn
from backbones.modeling import MEMORY_FORMATS


def fpn_cfg(*opts, **resnets):
    """A config of the backbones alone (both get the same weights by copy)."""
    options = list(FPN_OPTS)
    for key, value in resnets.items():
        options += [f"MODEL.RESNETS.{key}", repr(value)]
    return load_cfg(opts=options + list(opts))


@torch.no_grad()
def randomize(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for name, buf in list(model.named_parameters()) + list(model.named_buffers()):
        if "norm" in name and name.endswith(("weight", "running_var")):
            buf.copy_(torch.rand(buf.shape, generator=gen) * 0.5 + 0.75)
        elif "norm" in name and name.endswith(("bias", "running_mean")):
            buf.copy_(torch.rand(buf.shape, generator=gen) * 0.4 - 0.2)
    return model


def parity(device: str, results: dict) -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for norm in ("FrozenBN", "GN"):
        cfg = fpn_cfg(NORM=norm, DEPTH=50)
        reference = randomize(build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))).eval()
        ours = backbones_build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
        ours.load_state_dict(reference.state_dict())
        reference, ours = reference.to(device), ours.to(device)
        x = torch.randn(2, 3, 512, 640, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad():
            truth = copy.deepcopy(reference).double()(x.double())
            outputs = {"detectron2 fp32": reference(x), "ours fp32": ours(x)}
            for amp in (torch.bfloat16, torch.float16):
                with torch.autocast("cuda", dtype=amp):
                    outputs[f"detectron2 {str(amp)[6:]}"] = reference(x)
                    outputs[f"ours {str(amp)[6:]}"] = ours(x)
        for label, out in outputs.items():
            rel = max(
                ((out[k].double() - truth[k]).abs().max() / truth[k].abs().max()).item()
                for k in truth
            )
            results[f"parity R50-FPN {norm}: {label} vs float64, max rel err"] = rel
            print(f"R50-FPN {norm:8s} {label:16s} max |err| / max |truth| = {rel:.2e}")
    torch.backends.cudnn.allow_tf32 = True


def report(results: dict, label: str, t: Timing, suffix: str = "") -> None:
    """Print one timing and keep it for the JSON output."""
    results[label] = dict(
        detectron2_ms=t.detectron2_s * 1e3, ours_ms=t.ours_s * 1e3, speedup=t.speedup
    )
    print(
        f"{label:60s} detectron2 {t.detectron2_s * 1e3:7.1f} ms  ours "
        f"{t.ours_s * 1e3:7.1f} ms  x{t.speedup:.2f}{suffix}"
    )


def speed(device: str, results: dict, iters: int) -> None:
    for memory_format, amp in [(m, a) for m in MEMORY_FORMATS for a in ("", "bf16", "fp16")]:
        cfg = fpn_cfg("BACKBONES.MEMORY_FORMAT", memory_format, DEPTH=50)
        for t in benchmark_fpn(
            cfg, batch=2, size=(800, 1216), iters=iters, warmup=5, device=device, amp=amp
        ):
            label = f"R50-FPN {t.mode}, 2x800x1216, {amp or 'fp32'}, ours {memory_format}"
            report(results, label, t)


def _contiguous_outputs(model: torch.nn.Module) -> None:
    model.backbone.register_forward_hook(
        lambda module, args, out: {k: v.contiguous() for k, v in out.items()}
    )


def detector(device: str, results: dict, iters: int, config: str) -> None:
    variants = [
        ("channels_last", "", None),
        ("channels_last", "fp16", None),
        ("contiguous", "", None),
        ("contiguous", "fp16", None),
        ("channels_last, NCHW outputs", "", _contiguous_outputs),
        ("channels_last, NCHW outputs", "fp16", _contiguous_outputs),
    ]
    for name, amp, prepare in variants:
        cfg = load_cfg(config, ["MODEL.WEIGHTS", "", "BACKBONES.MEMORY_FORMAT", name.split(",")[0]])
        start = time.perf_counter()
        (t,) = benchmark_detector(
            cfg,
            batch=2,
            size=(800, 1216),
            iters=iters,
            warmup=3,
            device=device,
            amp=amp,
            prepare=prepare,
        )
        label = f"{config} train step, 2x800x1216, {amp or 'fp32'}, ours {name}"
        report(results, label, t, f"  ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    quiet_third_party_warnings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--detector-config", default="configs/frcnn_r101.yaml")
    ap.add_argument("--output", default="", help="write the figures as JSON here")
    ap.add_argument("--detector-only", action="store_true", help="only the R-CNN training step")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    # Both models get the same weights by copy: random FrozenBN is intended here.
    warnings.filterwarnings("ignore", message=".*no MODEL.WEIGHTS.*")
    device = "cuda"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.detector_only:
        parity(device, results)
        speed(device, results, args.iters)
    detector(device, results, max(5, args.iters // 2), args.detector_config)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
