"""A depth sweep: Detectron2 trainings of several configs one after another, finished runs
skipped and interrupted ones resumed, then the depth report of all of them (He et al., 2015,
Table 8's comparison on your own data).

Each config ``F`` trains into ``<output_root>/<F's stem>`` with ``tools/train_net.py``, in a
subprocess whose output goes to ``<output dir>/sweep.log``. The one seam for tests and other
launchers (a cluster's) is :func:`run_training`.
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ...progress import format_duration
from ..report.depth_report import DepthReport, write_depth_report

DEFAULT_OUTPUT_ROOT = "output/depth_sweep"
# Relative to the working directory, as a user types it; tools/depth_sweep.py passes its own.
TRAIN_NET = "tools/train_net.py"
LOG_NAME = "sweep.log"
# run_state: what a run's output directory says of it.
FINISHED, PARTIAL, NEW = "finished", "partial", "new"


class LoggedRun:
    """A run of a tool in its own process that logs into ``<output_dir>/<log_name>``: its name
    (the output folder's), its log and whether it failed (a non-zero exit status)."""

    output_dir: Path
    returncode: int | None
    seconds: float | None
    log_name = LOG_NAME

    @property
    def name(self) -> str:
        return self.output_dir.name

    @property
    def log(self) -> Path:
        return self.output_dir / self.log_name

    @property
    def failed(self) -> bool:
        return self.returncode not in (None, 0)


def ended_line(step: str, status: str, runs: Sequence[LoggedRun], index: int, start: float) -> str:
    """``[2/5] name: done in 0:10:02; elapsed 0:20:31, ETA 0:30:06`` after run ``index`` (from
    1) of ``runs`` ended: its duration, the time since ``start`` (``time.perf_counter()``) and
    the mean duration of the runs that succeeded so far times the runs left."""
    run = runs[index - 1]
    done = [r.seconds for r in runs[:index] if not r.failed] or [run.seconds]
    eta = sum(done) / len(done) * (len(runs) - index)
    return (
        f"{step}: {status} in {format_duration(run.seconds)}; elapsed "
        f"{format_duration(time.perf_counter() - start)}, ETA {format_duration(eta)}"
    )


@dataclass
class SweepRun(LoggedRun):
    """One config of a sweep: where it trains, its state before the sweep, the command that
    trains it (None when finished), and once run, its exit status and duration in seconds."""

    config: Path
    output_dir: Path
    state: str
    command: list[str] | None
    returncode: int | None = None
    seconds: float | None = None


@dataclass
class SweepResult:
    """The runs in config order and the report written after them (None with ``--print``)."""

    runs: list[SweepRun]
    report: DepthReport | None

    @property
    def failed(self) -> list[SweepRun]:
        return [run for run in self.runs if run.failed]


def run_state(output_dir: str | os.PathLike) -> str:
    """``"finished"`` when ``model_final.pth`` exists or ``last_checkpoint`` names it,
    ``"partial"`` when there is a ``last_checkpoint`` to resume from, ``"new"`` otherwise."""
    path = Path(output_dir)
    last = path / "last_checkpoint"
    last_name = last.read_text().strip() if last.is_file() else ""
    if (path / "model_final.pth").is_file() or last_name == "model_final.pth":
        return FINISHED
    return PARTIAL if last_name else NEW


def train_command(
    config: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_gpus: int = 1,
    resume: bool = False,
    opts: Sequence[str] = (),
    train_net: str | os.PathLike = TRAIN_NET,
) -> list[str]:
    """``python tools/train_net.py --config-file F --num-gpus N [--resume] OUTPUT_DIR D
    [opts]``, with this process's Python."""
    command = [sys.executable, str(train_net), "--config-file", str(config)]
    command += ["--num-gpus", str(num_gpus)] + (["--resume"] if resume else [])
    return command + ["OUTPUT_DIR", str(output_dir), *opts]


def plan_sweep(
    configs: Sequence[str | os.PathLike],
    *,
    output_root: str | os.PathLike = DEFAULT_OUTPUT_ROOT,
    num_gpus: int = 1,
    opts: Sequence[str] = (),
    max_iter: int | None = None,
    train_net: str | os.PathLike = TRAIN_NET,
) -> list[SweepRun]:
    """The runs of a sweep, in config order, as the directories are now: a finished run gets no
    command, a partial one ``--resume``, a new one a fresh start.

    Args:
        configs: YAML configs; each trains into ``<output_root>/<its stem>``.
        output_root: the parent of the runs' output directories.
        num_gpus: ``--num-gpus`` of every run (CPU processes on a machine without CUDA).
        opts: ``KEY VALUE`` overrides for every run, after ``OUTPUT_DIR``.
        max_iter: appends ``SOLVER.MAX_ITER max_iter`` to ``opts``, and scales nothing else:
            ``SOLVER.STEPS``, ``WARMUP_ITERS``, ``CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD``
            stay as the config has them (e.g. a short smoke test of the whole sweep).
        train_net: the training script.

    Raises:
        FileNotFoundError: a config that does not exist.
        ValueError: two configs with the same stem (they would share an output directory).
    """
    paths = [Path(config) for config in configs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"config files not found: {', '.join(missing)}")
    stems = [p.stem for p in paths]
    shared = sorted({stem for stem in stems if stems.count(stem) > 1})
    if shared:
        raise ValueError(f"configs share an output directory name (stem): {', '.join(shared)}")
    opts = list(opts) + (["SOLVER.MAX_ITER", str(max_iter)] if max_iter is not None else [])
    runs = []
    for path in paths:
        output_dir = Path(output_root) / path.stem
        state = run_state(output_dir)
        command = None
        if state != FINISHED:
            command = train_command(
                path, output_dir, num_gpus=num_gpus, resume=state == PARTIAL, opts=opts,
                train_net=train_net,
            )  # fmt: skip
        runs.append(SweepRun(path, output_dir, state, command))
    return runs


def run_training(
    command: Sequence[str], log_path: str | os.PathLike, env: Mapping[str, str] | None = None
) -> int:
    """Run one training command (in ``env``, default this process's environment), its output
    (stdout and stderr) appended to ``log_path``; returns its exit status. The seam that tests
    replace and other launchers may too."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')}: ")
        log.write(shlex.join(command) + "\n")
        log.flush()
        return subprocess.run(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env
        ).returncode


def run_sweep(
    configs: Sequence[str | os.PathLike],
    *,
    output_root: str | os.PathLike = DEFAULT_OUTPUT_ROOT,
    num_gpus: int = 1,
    opts: Sequence[str] = (),
    max_iter: int | None = None,
    report_dir: str | os.PathLike | None = None,
    print_only: bool = False,
    train_net: str | os.PathLike = TRAIN_NET,
    out: TextIO | None = None,
) -> SweepResult:
    """Train the configs one after another (see :func:`plan_sweep`), then write the depth report
    of all their output directories.

    Each run's output goes to ``<output dir>/sweep.log``; ``out`` gets a line as each run
    starts and one as it ends, with the sweep's elapsed time and an ETA (the mean duration of
    the runs trained so far, times the runs left). A failed run is reported (exit status, log)
    and the sweep goes on with the others; the report lists it as unfinished.

    Args:
        configs, output_root, num_gpus, opts, max_iter, train_net: as :func:`plan_sweep`.
        report_dir: where :func:`write_depth_report` writes; default ``<output_root>/report``.
        print_only: print the commands, one shell-quoted line per run to train (for a
            cluster's job array: finished runs have none, partial ones ``--resume``), and run
            nothing: no training, no report.
        out: where the commands and progress go; default ``sys.stdout``.

    Returns:
        the runs (with exit status and duration where trained) and the report.
    """
    out = out or sys.stdout
    runs = plan_sweep(
        configs, output_root=output_root, num_gpus=num_gpus, opts=opts, max_iter=max_iter,
        train_net=train_net,
    )  # fmt: skip
    if print_only:
        for run in runs:
            if run.command is not None:
                print(shlex.join(run.command), file=out, flush=True)
        return SweepResult(runs, None)

    todo = [run for run in runs if run.command is not None]
    start = time.perf_counter()
    for run in runs:
        if run.command is None:
            print(f"{run.name}: finished, skipped ({run.output_dir})", file=out, flush=True)
    for index, run in enumerate(todo, start=1):
        step = f"[{index}/{len(todo)}] {run.name}"
        action = "resuming" if run.state == PARTIAL else "training"
        print(f"{step}: {action}, log {run.log}", file=out, flush=True)
        begin = time.perf_counter()
        run.returncode = run_training(run.command, run.log)
        run.seconds = time.perf_counter() - begin
        status = f"FAILED (exit {run.returncode}), see {run.log}" if run.failed else "done"
        print(ended_line(step, status, todo, index, start), file=out, flush=True)
    report_dir = Path(report_dir) if report_dir is not None else Path(output_root) / "report"
    report = write_depth_report([run.output_dir for run in runs], report_dir)
    for path in report.files.values():
        print(f"wrote {path}", file=out)
    failed = [run for run in runs if run.failed]
    if failed:
        names = ", ".join(f"{run.name} (exit {run.returncode}, {run.log})" for run in failed)
        print(f"{len(failed)} of {len(todo)} runs failed: {names}", file=out, flush=True)
    return SweepResult(runs, report)
