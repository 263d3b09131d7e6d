"""A training that survives: killed with SIGKILL at a known iteration and resumed, it ends with
the uninterrupted run's weights (data-loader workers on, a corrupt latest checkpoint skipped);
2 processes x batch 1 end where 1 process x batch 2 does; a diverging loss stops every process
with one message.

Each run is ``tools/train_net.py`` in a fresh Python on the tiny shapes sets of
tests/test_train_net_e2e.py (R-18-FPN, 128 px, 8 training images).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_net_e2e import ROOT, TINY_OPTS, dataset_flags
from test_train_net_e2e import tiny_data as tiny_data  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

CONFIG = ROOT / "configs" / "mrcnn_r18_shapes.yaml"


def opts(**overrides: object) -> list[str]:
    """TINY_OPTS with ``KEY__SUB=value`` overrides (``__`` for ``.``) and no evaluation."""
    merged = dict(zip(TINY_OPTS[::2], TINY_OPTS[1::2]))
    merged.update({"DATASETS.TEST": "()", "SEED": "3"})
    merged.update({k.replace("__", "."): str(v) for k, v in overrides.items()})
    return [x for kv in merged.items() for x in kv]


def command(data, output: Path, options: list[str], *flags: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "tools" / "train_net.py"),
        "--config-file",
        str(CONFIG),
        *dataset_flags(data),
        *flags,
        *options,
        "OUTPUT_DIR",
        str(output),
    ]


def environment(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path / "ds"))


def train(data, tmp_path: Path, output: Path, options: list[str], *flags: str):
    proc = subprocess.run(
        command(data, output, options, *flags),
        env=environment(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k: v.double() for k, v in state.items() if v.is_floating_point()}


def kill_after(data, tmp_path: Path, output: Path, options: list[str], iteration: int, *flags):
    """Train until ``iteration`` is done, then SIGKILL the training and its data-loader workers
    (tests/kill_at_iteration.py: a hook, so the same iteration on any machine)."""
    command_line = command(data, output, options, *flags)
    command_line[1:2] = [str(ROOT / "tests" / "kill_at_iteration.py"), str(iteration)]
    proc = subprocess.run(
        command_line,
        env=environment(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # the kill reaches its process group, not pytest
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert f"killing the training after iteration {iteration}" in proc.stdout


def checkpoints(output: Path) -> list[str]:
    return sorted(p.name for p in output.glob("model_*.pth"))


def test_killed_runs_resume_to_the_uninterrupted_weights(tiny_data, tmp_path):
    options = opts(SOLVER__MAX_ITER=12, SOLVER__CHECKPOINT_PERIOD=4, DATALOADER__NUM_WORKERS=2)
    whole = tmp_path / "whole"
    assert train(tiny_data, tmp_path, whole, options).returncode == 0
    expected = weights(whole / "model_final.pth")

    # Killed one iteration past each checkpoint (with the data-loader workers ahead of it):
    # the resumed runs redo iterations 4 and 8 from the checkpoints alone.
    parts = tmp_path / "parts"
    kill_after(tiny_data, tmp_path, parts, options, 4)
    assert checkpoints(parts) == ["model_0000003.pth"]
    kill_after(tiny_data, tmp_path, parts, options, 8, "--resume")
    assert checkpoints(parts) == ["model_0000003.pth", "model_0000007.pth"]
    # The newest checkpoint is damaged: the resume names it and goes back to the one before.
    latest = parts / "model_0000007.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    proc = train(tiny_data, tmp_path, parts, options, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Cannot resume from it" in log and str(latest) in log
    assert "model_0000003.pth, the newest readable checkpoint" in log

    resumed = weights(parts / "model_final.pth")
    assert resumed.keys() == expected.keys()
    worst = max((resumed[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 1e-5, f"resumed weights differ by {worst}"


def test_two_processes_of_one_image_equal_one_process_of_two(tiny_data, tmp_path):
    # Faster R-CNN with what makes the two exactly comparable: SyncBN (BN statistics over both
    # images), every anchor and proposal used (no per-process random sampling) and the same
    # number of proposals per image (per-process loss normalisers then agree), and SGD (Adam
    # turns float-order differences of near-zero gradients into whole steps).
    options = opts(
        MODEL__MASK_ON=False,
        MODEL__RESNETS__NORM="SyncBN",
        MODEL__RPN__BATCH_SIZE_PER_IMAGE=100000,
        MODEL__RPN__POST_NMS_TOPK_TRAIN=50,
        MODEL__ROI_HEADS__BATCH_SIZE_PER_IMAGE=100000,
        MODEL__ROI_HEADS__PROPOSAL_APPEND_GT=False,
        BACKBONES__OPTIMIZER="SGD",
        SOLVER__BASE_LR=0.01,
        SOLVER__MAX_ITER=6,
    )
    finals = {}
    for n in (1, 2):
        output = tmp_path / f"procs{n}"
        proc = train(tiny_data, tmp_path, output, options, "--num-gpus", str(n))
        assert proc.returncode == 0, proc.stderr[-3000:]
        finals[n] = weights(output / "model_final.pth")
    one, two = finals[1], finals[2]
    for key in one:
        scale = max(one[key].abs().max().item(), 1.0)
        difference = (one[key] - two[key]).abs().max().item()
        assert difference <= 1e-5 * scale, f"{key} differs by {difference}"
    # Something was learnt: the weights moved from the seeded initialisation.
    assert any((one[k] - two[k]).abs().max().item() < (one[k].abs().max().item()) for k in one)


# A loss term made infinite from the start (no checkpoint yet), and an LR so large that a step
# makes the weights infinite after the checkpoint of iteration 1.
DIVERGENCES = {
    "loss": (dict(MODEL__RPN__LOSS_WEIGHT="1e999"), "iteration 0 at LR 0.01: loss_rpn_cls = inf"),
    "weights": (dict(SOLVER__BASE_LR=30.0), "the step made weights that are not finite"),
}


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("case", DIVERGENCES)
def test_divergence_stops_every_process_with_one_message(tiny_data, tmp_path, processes, case):
    output = tmp_path / "diverged"
    overrides, expected = DIVERGENCES[case]
    defaults = dict(SOLVER__BASE_LR=0.01, SOLVER__MAX_ITER=40, SOLVER__CHECKPOINT_PERIOD=2)
    options = opts(BACKBONES__OPTIMIZER="SGD", **{**defaults, **overrides})
    start = time.monotonic()
    proc = train(tiny_data, tmp_path, output, options, "--num-gpus", str(processes))
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Terminating process" not in proc.stderr
    message = errors[0]
    assert message.startswith("error: training diverged at iteration ")
    assert expected in message and " at LR " in message
    assert took < 240, f"took {took:.0f} s to stop"
    saved = sorted(output.glob("model_*.pth"))
    assert not (output / "model_final.pth").exists()
    if case == "loss":
        assert not saved and "No checkpoint was saved before it" in message
    else:
        assert saved, "the LR was meant to diverge after a checkpoint"
        last = (output / "last_checkpoint").read_text()
        assert f"The last good checkpoint is {output / last}; --resume" in message
        for path in saved:
            assert all(torch.isfinite(t).all() for t in weights(path).values()), path
