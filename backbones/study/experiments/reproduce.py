"""The paper's two claims at small scale, in one command (``tools/reproduce_small.py``,
``make reproduce-small``):

1. plain deep nets degrade while residual nets do not: ``tools/degradation.py`` trains thin
   plain and residual nets of each depth, several seeds each, on the synthetic classification
   set (:mod:`.degradation`);
2. depth learned on classification carries over to detection: the same Mask R-CNN recipe on a
   small shapes training set (``train_images``), fine-tuned from each seed's pretrained residual
   net (the degradation experiment's) and trained from scratch, the same seeds; box and mask AP
   as mean ± std per depth and arm (:mod:`..report.transfer`), with both arms' depth reports.

Every step skips what is finished and resumes what was interrupted, so the command can be run
again after a kill; each step's output goes to a log beside its results. Detector runs go
``jobs`` at a time, each with ``cpus / jobs`` threads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from ...coco_json import read_coco_json
from ...modeling.build import CFG_KEYS
from ...modeling.spec import width_channels
from ...progress import format_duration
from ...specs import DEPTHS
from ...weights import atomic_write
from ..pretrain.classifier import PIXEL_MEAN, PIXEL_STD
from ..report.depth_report import write_depth_report
from ..report.transfer import ARMS, write_transfer_report
from .degradation import DEFAULT_SEEDS, DEFAULT_WIDTH, is_finished, plan_degradation
from .sweep import plan_sweep, run_training

TOOLS = Path(__file__).resolve().parents[3] / "tools"
# The detector recipe fine-tuned from each pretrained ResNet, and trained from scratch.
DETECTOR_CONFIG = "configs/mrcnn_r{depth}_shapes.yaml"
DEFAULT_DEPTHS = (18, 34, 50)
# The degradation tool's length (its default), and the detectors': a small training set and a
# short schedule, where the initialisation can matter (the full shapes set from scratch reaches
# box AP 57 whatever the depth). The same for every depth and both arms.
PRETRAIN_ITERS = 3000
TRAIN_IMAGES = 200
DETECTOR_ITERS = 400
DETECTOR_WARMUP = 100
TRAIN_DATASET = "shapes_train"


def detector_config(depth: int) -> Path:
    """The detector recipe of ``depth``, relative to the checkout."""
    return Path(__file__).resolve().parents[3] / DETECTOR_CONFIG.format(depth=depth)


@dataclass
class Step:
    """One command of the reproduction: its name, where it writes, the weights it starts from
    (None: none needed), and once run, its status."""

    name: str
    output_dir: Path
    command: list[str] | None  # None: finished before, skipped
    weights: Path | None = None
    returncode: int | None = None
    seconds: float | None = None


@dataclass
class Reproduction:
    steps: list[Step] = field(default_factory=list)
    comparison: Path | None = None

    @property
    def failed(self) -> list[Step]:
        return [step for step in self.steps if step.returncode not in (None, 0)]


def thin_detector_opts(depth: int, width: int) -> list[str]:
    """The config keys that give the detector's ResNet-``depth`` the pretrained net's width."""
    channels = width_channels(width, DEPTHS[depth].block)
    return [text for name, value in channels.items() for text in (CFG_KEYS[name], str(value))]


def write_subset(json_file: str | os.PathLike, num_images: int, path: str | os.PathLike) -> Path:
    """A COCO instances file of the first ``num_images`` images of ``json_file`` (by id) and
    their annotations, written atomically to ``path``.

    Raises:
        ValueError: ``json_file`` holds fewer images.
    """
    coco = read_coco_json(json_file)
    images = sorted(coco["images"], key=lambda image: image["id"])
    if len(images) < num_images:
        raise ValueError(
            f"{json_file} holds {len(images)} images, fewer than the {num_images} asked for"
        )
    keep = {image["id"] for image in images[:num_images]}
    subset = {
        **coco,
        "images": images[:num_images],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in keep],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(subset, separators=(",", ":")).encode()))
    return path


def small_train_set(root: Path, num_images: int) -> list[str]:
    """The detector opts that train on the first ``num_images`` of ``shapes_train`` (generated
    if missing), registered as ``shapes_train_<n>`` from a subset file under ``root/data``."""
    from ...data.shapes import ensure_generated

    json_file, image_root = ensure_generated(TRAIN_DATASET)
    name = f"{TRAIN_DATASET}_{num_images}"
    subset = root / "data" / f"{name}.json"
    if not subset.is_file():
        write_subset(json_file, num_images, subset)
    return [
        "BACKBONES.COCO_DATASETS", repr([[name, str(subset), str(image_root)]]),
        "DATASETS.TRAIN", repr((name,)),
    ]  # fmt: skip


def degradation_step(
    root: Path,
    *,
    depths: Sequence[int],
    seeds: int,
    width: int,
    max_iter: int,
    jobs: int,
    extra: Sequence[str] = (),
) -> Step:
    """The degradation experiment, whose residual nets are the detectors' pretrained weights;
    skipped when every run and its report are there."""
    output_dir = root / "degradation"
    runs = plan_degradation(output_dir, depths, range(seeds))
    if (output_dir / "degradation.md").is_file() and all(
        is_finished(run.output_dir, max_iter) for run in runs
    ):
        return Step("degradation", output_dir, None)
    command = [
        sys.executable, str(TOOLS / "degradation.py"), "--output", str(output_dir),
        "--depths", *map(str, depths), "--seeds", str(seeds), "--width", str(width),
        "--max-iter", str(max_iter), "--jobs", str(jobs), "--resume", *extra,
    ]  # fmt: skip
    return Step("degradation", output_dir, command)


def pretrained_weights(root: Path, depth: int, seed: int) -> Path:
    """The residual net of the degradation experiment that the detector of ``seed`` starts from."""
    return root / "degradation" / f"resnet-{depth}" / f"seed{seed}" / "model_final.pth"


def detector_steps(
    root: Path,
    *,
    depths: Sequence[int],
    seeds: int,
    width: int,
    scratch: bool,
    max_iter: int | None,
    opts: Sequence[str] = (),
) -> list[Step]:
    """Each seed, depth and arm: ``root/detection/<arm>/seed<k>/mrcnn_r<depth>_shapes``."""
    steps = []
    # One input normalisation for both arms (the pretraining's): only the start differs.
    shared = ["MODEL.PIXEL_MEAN", repr(list(PIXEL_MEAN)), "MODEL.PIXEL_STD", repr(list(PIXEL_STD))]
    for seed in range(seeds):
        for depth in depths:
            weights = pretrained_weights(root, depth, seed)
            common = [*shared, *thin_detector_opts(depth, width), "SEED", str(seed), *opts]
            arms = [("pretrained", weights)] + ([("scratch", None)] if scratch else [])
            for arm, start in arms:
                run_opts = common + (["MODEL.WEIGHTS", str(start)] if start else [])
                (run,) = plan_sweep(
                    [detector_config(depth)],
                    output_root=root / "detection" / arm / f"seed{seed}",
                    opts=run_opts,
                    max_iter=max_iter,
                )
                steps.append(
                    Step(f"{arm} R-{depth} seed {seed}", run.output_dir, run.command, start)
                )
    return steps


@dataclass
class Settings:
    """What a reproduction runs (the defaults: the measured run of docs/pretraining.md).

    Attributes:
        depths: the ladder (each needs ``configs/mrcnn_r{depth}_shapes.yaml``); two or more.
        seeds: runs per net and per detector (seeds 0, 1, ...).
        width: of the pretrained nets and the detectors' ResNets (64: the paper's).
        pretrain_iters: the length of every pretraining.
        train_images: the detectors' training images (the first of ``shapes_train``); None:
            the config's training set.
        detector_iters: ``SOLVER.MAX_ITER`` of the detectors (warmup: half of it, at most 100);
            None: the config's.
        scratch: also train the detectors from scratch (the comparison's other half).
        jobs: runs at once (the degradation tool's ``--jobs``; detector runs), each with
            ``cpus / jobs`` threads.
        degradation_extra: more flags of the degradation tool (e.g. smaller synthetic sets).
        detector_opts: KEY VALUE overrides of every detector run.
    """

    depths: Sequence[int] = DEFAULT_DEPTHS
    seeds: int = DEFAULT_SEEDS
    width: int = DEFAULT_WIDTH
    pretrain_iters: int = PRETRAIN_ITERS
    train_images: int | None = TRAIN_IMAGES
    detector_iters: int | None = DETECTOR_ITERS
    scratch: bool = True
    jobs: int = 1
    degradation_extra: Sequence[str] = ()
    detector_opts: Sequence[str] = ()


def plan(output_root: str | os.PathLike, settings: Settings | None = None) -> list[Step]:
    """The steps in order: the degradation experiment (the pretraining), then the detectors."""
    s = settings or Settings()
    root = Path(output_root)
    opts = list(s.detector_opts)
    if s.train_images:
        opts = small_train_set(root, s.train_images) + opts
    if s.detector_iters is not None:
        opts += ["SOLVER.WARMUP_ITERS", str(min(DETECTOR_WARMUP, s.detector_iters // 2))]
    steps = [
        degradation_step(
            root, depths=s.depths, seeds=s.seeds, width=s.width, max_iter=s.pretrain_iters,
            jobs=s.jobs, extra=s.degradation_extra,
        )
    ]  # fmt: skip
    steps += detector_steps(
        root,
        depths=s.depths,
        seeds=s.seeds,
        width=s.width,
        scratch=s.scratch,
        max_iter=s.detector_iters,
        opts=opts,
    )
    return steps


def reproduce_small(
    output_root: str | os.PathLike = "output/reproduce_small",
    settings: Settings | None = None,
    *,
    out: TextIO | None = None,
) -> Reproduction:
    """Run every step (see the module's docstring), then write the reports.

    Args:
        output_root: ``degradation/`` (with the pretrained nets), ``detection/<arm>/seed<k>/``,
            the depth reports ``report_pretrained/`` and ``report_scratch/``, and
            ``pretrained_vs_scratch.{md,csv,png}`` go here.
        settings: what runs (:class:`Settings`).
        out: progress lines; default stdout.
    """
    out = out or sys.stdout
    settings = settings or Settings()
    root = Path(output_root)
    steps = plan(root, settings)
    result = Reproduction(steps)
    for step in steps:
        if step.command is None:
            print(f"{step.name}: finished, skipped ({step.output_dir})", file=out, flush=True)
    todo = [step for step in steps if step.command is not None]
    # Each detector process takes its share of the cores (the degradation tool sets its own).
    threads = str(max(1, (os.cpu_count() or 1) // settings.jobs))
    progress = _Progress(len(todo), out, settings.jobs, dict(os.environ, OMP_NUM_THREADS=threads))
    for step in todo[:1] if todo and todo[0].name == "degradation" else []:
        progress.run(step)
    detectors = [step for step in todo if step.name != "degradation"]
    with ThreadPoolExecutor(max(1, settings.jobs)) as pool:
        list(pool.map(progress.run, detectors))
    for arm in ARMS:
        runs = sorted(p for p in (root / "detection" / arm).glob("seed*/*") if p.is_dir())
        if runs:
            write_depth_report(runs, root / f"report_{arm}")
            print(f"depth report of the {arm} runs: {root / f'report_{arm}'}", file=out)
    result.comparison = write_transfer_report(root, settings.depths, seeds=settings.seeds)
    print(f"pretrained vs scratch: {result.comparison}", file=out, flush=True)
    return result


class _Progress:
    """Runs the steps (from threads), with a line when each starts and ends: its time, the
    elapsed time and an ETA from the mean of the steps so far."""

    def __init__(self, total: int, out: TextIO, jobs: int, env: dict[str, str]) -> None:
        self.total, self.out, self.ended, self.times = total, out, 0, []
        self.jobs, self.env = max(1, jobs), env
        self.start = time.perf_counter()

    def run(self, step: Step) -> None:
        if step.weights is not None and not step.weights.is_file():
            self._say(f"{step.name}: its pretrained net {step.weights} is missing, skipped")
            step.returncode = 1
            return
        log = step.output_dir / "reproduce.log"
        self._say(f"{step.name}: started, log {log}")
        begin = time.perf_counter()
        step.returncode = run_training(step.command, log, self.env)
        step.seconds = time.perf_counter() - begin
        self.ended += 1
        self.times.append(step.seconds)
        status = f"FAILED (exit {step.returncode}), see {log}" if step.returncode else "done"
        left = self.total - self.ended
        eta = sum(self.times) / len(self.times) * left / self.jobs
        self._say(
            f"[{self.ended}/{self.total}] {step.name}: {status} in "
            f"{format_duration(step.seconds)}; elapsed "
            f"{format_duration(time.perf_counter() - self.start)}, ETA {format_duration(eta)} "
            f"(mean of the steps so far, {self.jobs} at a time)"
        )

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)
