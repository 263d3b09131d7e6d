"""The paper's two claims at small scale, in one command (``tools/reproduce_small.py``,
``make reproduce-small``):

1. depth learned on classification carries over to detection: pretrain R-18/34/50 on the
   synthetic classification set with one recipe, fine-tune the same detector recipe (Mask R-CNN
   on shapes) from each and from scratch, and write the depth report of both ladders with a
   pretrained-versus-scratch table;
2. plain deep nets degrade while residual nets do not: ``tools/degradation.py``.

Every step skips what is finished and resumes what was interrupted, so the command can be run
again after a kill; each step's output goes to a log beside its results.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from ...progress import format_duration
from ..report.depth_report import write_depth_report
from ..report.runs import read_run
from .sweep import plan_sweep, run_training

TOOLS = Path(__file__).resolve().parents[3] / "tools"
# The detector recipe fine-tuned from each pretrained ResNet, and trained from scratch.
DETECTOR_CONFIG = "configs/mrcnn_r{depth}_shapes.yaml"
# make_resnet options of the pretraining that the detector recipe needs: trainable BN, and the
# stride in the 3x3 as the shapes configs (STRIDE_IN_1X1 False) build it.
PRETRAIN_OPTIONS = ("norm", "BN", "stride_in_1x1", "False")
METRICS = ("bbox/AP", "bbox/AP50", "segm/AP")
# The measured run's settings (docs/pretraining.md), sized for 2 CPU cores: the ten-shape
# synthetic set, whose 100-class version stays at chance for this many iterations.
PRETRAIN_EXTRA = ("--num-classes", "10", "--eval-period", "300")
DEGRADATION_EXTRA = (
    "--num-classes", "10", "--input-size", "32", "--batch-size", "64", "--eval-period", "200",
)  # fmt: skip


@dataclass
class Step:
    """One command of the reproduction: its name, where it writes, and once run, its status."""

    name: str
    output_dir: Path
    command: list[str] | None  # None: finished before, skipped
    returncode: int | None = None
    seconds: float | None = None


@dataclass
class Reproduction:
    steps: list[Step] = field(default_factory=list)
    comparison: Path | None = None

    @property
    def failed(self) -> list[Step]:
        return [step for step in self.steps if step.returncode not in (None, 0)]


def _finished(output_dir: Path) -> bool:
    return (output_dir / "model_final.pth").is_file()


def pretrain_step(
    depth: int,
    output_root: Path,
    *,
    max_iter: int,
    batch_size: int,
    num_gpus: int,
    extra: Sequence[str],
) -> Step:
    output_dir = output_root / "pretrain" / f"r{depth}"
    if _finished(output_dir):
        return Step(f"pretrain R-{depth}", output_dir, None)
    command = [
        sys.executable, str(TOOLS / "pretrain_classifier.py"), "--depth", str(depth),
        "--max-iter", str(max_iter), "--batch-size", str(batch_size), "--num-gpus", str(num_gpus),
        "--output", str(output_dir), *extra, "--resume", *PRETRAIN_OPTIONS,
    ]  # fmt: skip
    return Step(f"pretrain R-{depth}", output_dir, command)


def detector_steps(
    depth: int,
    output_root: Path,
    *,
    num_gpus: int,
    scratch: bool,
    max_iter: int | None,
    opts: Sequence[str] = (),
) -> list[Step]:
    config = DETECTOR_CONFIG.format(depth=depth)
    weights = output_root / "pretrain" / f"r{depth}" / "model_final.pth"
    ladders = [("pretrained", [*opts, "MODEL.WEIGHTS", str(weights)])]
    if scratch:
        ladders.append(("scratch", list(opts)))
    steps = []
    for ladder, opts in ladders:
        (run,) = plan_sweep(
            [config],
            output_root=output_root / ladder,
            num_gpus=num_gpus,
            opts=opts,
            max_iter=max_iter,
        )
        steps.append(Step(f"{ladder} R-{depth}", run.output_dir, run.command))
    return steps


def degradation_step(
    output_root: Path, *, max_iter: int, num_gpus: int, extra: Sequence[str]
) -> Step:
    output_dir = output_root / "degradation"
    if (output_dir / "curves.csv").is_file() and (output_dir / "degradation.png").is_file():
        return Step("degradation", output_dir, None)
    command = [
        sys.executable, str(TOOLS / "degradation.py"), "--output", str(output_dir),
        "--max-iter", str(max_iter), "--num-gpus", str(num_gpus), "--resume", *extra,
    ]  # fmt: skip
    return Step("degradation", output_dir, command)


def plan(
    output_root: str | os.PathLike,
    *,
    depths: Sequence[int] = (18, 34, 50),
    pretrain_iters: int = 600,
    batch_size: int = 64,
    degradation_iters: int = 800,
    num_gpus: int = 1,
    scratch: bool = True,
    detector_max_iter: int | None = None,
    pretrain_extra: Sequence[str] = PRETRAIN_EXTRA,
    degradation_extra: Sequence[str] = DEGRADATION_EXTRA,
    detector_opts: Sequence[str] = (),
) -> list[Step]:
    """The steps in order: pretraining of each depth, then its detectors, then the degradation
    experiment. Arguments as :func:`reproduce_small`."""
    root = Path(output_root)
    steps = []
    for depth in depths:
        steps.append(
            pretrain_step(
                depth, root, max_iter=pretrain_iters, batch_size=batch_size,
                num_gpus=num_gpus, extra=pretrain_extra,
            )
        )  # fmt: skip
    for depth in depths:
        steps += detector_steps(
            depth,
            root,
            num_gpus=num_gpus,
            scratch=scratch,
            max_iter=detector_max_iter,
            opts=detector_opts,
        )
    steps.append(
        degradation_step(
            root, max_iter=degradation_iters, num_gpus=num_gpus, extra=degradation_extra
        )
    )
    return steps


def reproduce_small(
    output_root: str | os.PathLike = "output/reproduce_small",
    *,
    depths: Sequence[int] = (18, 34, 50),
    pretrain_iters: int = 600,
    batch_size: int = 64,
    degradation_iters: int = 800,
    num_gpus: int = 1,
    scratch: bool = True,
    detector_max_iter: int | None = None,
    pretrain_extra: Sequence[str] = PRETRAIN_EXTRA,
    degradation_extra: Sequence[str] = DEGRADATION_EXTRA,
    detector_opts: Sequence[str] = (),
    out: TextIO | None = None,
) -> Reproduction:
    """Run every step (see the module's docstring), then write the reports.

    Args:
        output_root: ``pretrain/r{depth}``, ``pretrained/`` and ``scratch/`` detector runs,
            ``degradation/``, the depth reports ``report_pretrained/`` and ``report_scratch/``,
            and ``pretrained_vs_scratch.md`` go here.
        depths: the ladder (each needs ``configs/mrcnn_r{depth}_shapes.yaml``).
        pretrain_iters, batch_size: the one pretraining recipe of every depth.
        degradation_iters: iterations of each of the degradation experiment's four nets.
        num_gpus: processes per step (CPU processes without CUDA).
        scratch: also train the detectors from scratch (the comparison's other half).
        detector_max_iter: ``SOLVER.MAX_ITER`` of the detectors, for a quick pass (default:
            the config's).
        pretrain_extra, degradation_extra: more flags of the two tools (e.g. smaller synthetic
            sets for a test).
        detector_opts: KEY VALUE overrides of every detector run.
        out: progress lines; default stdout.
    """
    out = out or sys.stdout
    root = Path(output_root)
    steps = plan(
        root, depths=depths, pretrain_iters=pretrain_iters, batch_size=batch_size,
        degradation_iters=degradation_iters, num_gpus=num_gpus, scratch=scratch,
        detector_max_iter=detector_max_iter, pretrain_extra=pretrain_extra,
        degradation_extra=degradation_extra, detector_opts=detector_opts,
    )  # fmt: skip
    result = Reproduction(steps)
    todo = [step for step in steps if step.command is not None]
    for step in steps:
        if step.command is None:
            print(f"{step.name}: finished, skipped ({step.output_dir})", file=out, flush=True)
    start = time.perf_counter()
    for index, step in enumerate(todo, start=1):
        if step.name.startswith("pretrained") and not _finished(
            root / "pretrain" / f"r{step.name.split('R-')[1]}"
        ):
            print(f"{step.name}: its pretraining failed, skipped", file=out, flush=True)
            continue
        log = step.output_dir / "reproduce.log"
        print(f"[{index}/{len(todo)}] {step.name}: log {log}", file=out, flush=True)
        begin = time.perf_counter()
        step.returncode = run_training(step.command, log)
        step.seconds = time.perf_counter() - begin
        done = [s.seconds for s in todo[:index] if s.seconds is not None]
        eta = sum(done) / len(done) * (len(todo) - index)
        status = f"FAILED (exit {step.returncode}), see {log}" if step.returncode else "done"
        took, elapsed = format_duration(step.seconds), format_duration(time.perf_counter() - start)
        print(
            f"[{index}/{len(todo)}] {step.name}: {status} in {took}; elapsed {elapsed}, ETA "
            f"{format_duration(eta)} (mean of steps so far)",
            file=out,
            flush=True,
        )
    for ladder in ("pretrained", "scratch"):
        runs = sorted((root / ladder).glob("*")) if (root / ladder).is_dir() else []
        runs = [run for run in runs if run.is_dir()]
        if runs:
            write_depth_report(runs, root / f"report_{ladder}")
            print(f"depth report of the {ladder} ladder: {root / f'report_{ladder}'}", file=out)
    result.comparison = write_comparison(root, depths)
    print(f"pretrained vs scratch: {result.comparison}", file=out, flush=True)
    return result


def write_comparison(root: str | os.PathLike, depths: Sequence[int]) -> Path:
    """``pretrained_vs_scratch.md``: box and mask AP of each depth fine-tuned from its
    pretrained ResNet and trained from scratch, with the difference (points)."""
    root = Path(root)
    header = ["depth"]
    for metric in METRICS:
        header += [f"{metric} pretrained", f"{metric} scratch", "difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for depth in depths:
        name = DETECTOR_CONFIG.format(depth=depth).rsplit("/", 1)[1].removesuffix(".yaml")
        cells = [f"R-{depth}"]
        pre = (
            read_run(root / "pretrained" / name) if (root / "pretrained" / name).is_dir() else None
        )
        scr = read_run(root / "scratch" / name) if (root / "scratch" / name).is_dir() else None
        for metric in METRICS:
            a = pre.ap.get(metric) if pre is not None and pre.compared else None
            b = scr.ap.get(metric) if scr is not None and scr.compared else None
            cells += [
                "-" if a is None else f"{a:.1f}",
                "-" if b is None else f"{b:.1f}",
                "-" if a is None or b is None else f"{a - b:+.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    path = root / "pretrained_vs_scratch.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Mask R-CNN on shapes: fine-tuned from the pretrained ResNet vs from scratch\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return path
