#!/usr/bin/env python3
"""What two family options cost, each against its baseline in the same process:

* gradient checkpointing: bytes autograd keeps for the backward pass (saved-tensor hooks, so the
  figure is the same on CPU and GPU) and the time of a training step, without and with
  ``grad_checkpointing=True``;
* deformable convs: the time of a training step and of inference with DCNv1 / DCNv2 in res3..res5
  (Detectron2's DCN recipe) against the plain ResNet.

    python tools/benchmark_options.py --depth 50 --size 224 --batch 2
"""

from __future__ import annotations

# First: importing backbones hides Detectron2's import-time notices; main() hides the rest.
from backbones.quiet import quiet_third_party_warnings

# isort: split

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from backbones import make_resnet


def _median_seconds(step: Callable[[], object], iters: int, warmup: int = 1) -> float:
    times = []
    for index in range(warmup + iters):
        start = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)["res5"].sum()
    return total


def _train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x)["res5"].square().mean().backward()

    return step


def main() -> None:
    quiet_third_party_warnings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--size", type=int, default=224, help="square input side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    threads = torch.get_num_threads()
    print(f"R-{args.depth}, {args.batch}x3x{args.size}x{args.size}, BN, {threads} threads")

    plain = make_resnet(args.depth, norm="BN").train()
    checkpointed = make_resnet(args.depth, norm="BN", grad_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    full, saved = _saved_bytes(plain, x), _saved_bytes(checkpointed, x)
    t_full = _median_seconds(_train_step(plain, x), args.iters)
    t_ckpt = _median_seconds(_train_step(checkpointed, x), args.iters)
    print(
        f"grad checkpointing: activations kept {full / 2**20:.1f} MiB -> {saved / 2**20:.1f} MiB "
        f"({saved / full:.2f}x); train step {t_full:.3f} s -> {t_ckpt:.3f} s "
        f"({t_ckpt / t_full:.2f}x)"
    )

    for modulated in (False, True):
        deform = make_resnet(
            args.depth,
            norm="BN",
            deform_on_per_stage=(False, True, True, True),
            deform_modulated=modulated,
        ).train()
        t_train = _median_seconds(_train_step(deform, x), args.iters)
        with torch.no_grad():
            plain.eval(), deform.eval()
            t_plain_inf = _median_seconds(lambda: plain(x), args.iters)
            t_inf = _median_seconds(lambda: deform(x), args.iters)
        plain.train()
        name = "DCNv2" if modulated else "DCNv1"
        print(
            f"{name} in res3-res5: train step {t_full:.3f} s -> {t_train:.3f} s "
            f"({t_train / t_full:.2f}x); inference {t_plain_inf:.3f} s -> {t_inf:.3f} s "
            f"({t_inf / t_plain_inf:.2f}x)"
        )


if __name__ == "__main__":
    main()
