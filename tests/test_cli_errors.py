"""A user's mistakes with ``tools/train_net.py`` end in one ``error:`` line naming the culprit
and the fix, exit status 2 (command line, config) or 1 (data, weights, processes), and no
traceback unless ``--debug``. Each case runs the tool as a user does; all fail before training."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torchvision

from backbones import Trainer, load_cfg
from backbones.engine.cli import check_datasets, describe_error, user_errors
from backbones.engine.config import ConfigError
from backbones.quiet import THIRD_PARTY_LOG_RECORDS, quiet_third_party_warnings

ROOT = Path(__file__).resolve().parents[1]
SHAPES = "configs/mrcnn_r18_shapes.yaml"
# A slimmer R-18 shapes model: the weights files below are written for it.
SLIM = [
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
]  # fmt: skip


@pytest.fixture(autouse=True)
def scratch_datasets(tmp_path, monkeypatch):
    """Datasets a case might generate (the shapes) go to a scratch folder, never the checkout."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))


def train_net(*args: str, **environ: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE")
    }
    # As on a CPU-only machine.
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **environ)
    return subprocess.run(
        [sys.executable, "tools/train_net.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_line(proc: subprocess.CompletedProcess, status: int) -> str:
    """The one ``error:`` line of a failed run, after checking its status and that no
    traceback was printed."""
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """A file that is no weights file, and a checkpoint of the slim shapes model (4 classes)."""
    folder = tmp_path_factory.mktemp("weights")
    (folder / "garbage.pth").write_bytes(b"not a weights file at all")
    cfg = load_cfg(SHAPES, SLIM)
    torch.save({"model": Trainer.build_model(cfg).state_dict()}, folder / "four_classes.pth")
    return {"garbage": folder / "garbage.pth", "four_classes": folder / "four_classes.pth"}


def test_no_config_file():
    line = error_line(train_net("OUTPUT_DIR", "/nowhere"), 2)
    assert line.startswith("error: --config-file is required, e.g. --config-file configs/")


def test_a_missing_config_file_names_the_closest():
    line = error_line(train_net("--config-file", "configs/frcnn_r101x.yaml"), 2)
    assert line == (
        "error: config file configs/frcnn_r101x.yaml does not exist; "
        "did you mean configs/frcnn_r101.yaml?"
    )


def test_an_unknown_key_names_the_closest():
    line = error_line(train_net("--config-file", SHAPES, "MODEL.RESNETS.DEPTHH", "18"), 2)
    assert line == (
        "error: Non-existent key: MODEL.RESNETS.DEPTHH (in the KEY VALUE overrides); "
        "did you mean MODEL.RESNETS.DEPTH?"
    )


def test_debug_shows_the_traceback():
    proc = train_net("--config-file", SHAPES, "--debug", "MODEL.RESNETS.DEPTHH", "18")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "ConfigError: Non-existent key: MODEL.RESNETS.DEPTHH" in proc.stderr


def test_missing_coco_is_named_before_anything_is_built(tmp_path):
    # configs/frcnn_r101.yaml asks for MODEL.DEVICE cuda: on this CPU-only run, said once.
    proc = train_net("--config-file", "configs/frcnn_r101.yaml", DETECTRON2_DATASETS=str(tmp_path))
    line = error_line(proc, 1)
    json_file = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    assert line.startswith(
        f"error: DATASETS.TRAIN: dataset coco_2017_train is not on disk: {json_file} does not exist"
    )
    for fix in (
        f"DETECTRON2_DATASETS={tmp_path}",
        "datasets/README.md",
        "datasets/prepare_coco.py",
    ):
        assert fix in line
    assert proc.stderr.count("MODEL.DEVICE=cuda, but this machine has no CUDA") == 1
    assert "GeneralizedRCNN" not in proc.stdout + proc.stderr  # no model was built


def test_unreadable_weights(weights):
    line = error_line(
        train_net("--config-file", SHAPES, "MODEL.WEIGHTS", str(weights["garbage"])), 1
    )
    assert line.startswith(f"error: {weights['garbage']}: not a readable weights file")


def test_mismatched_weights(weights, tmp_path):
    options = [*SLIM, "MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", str(tmp_path)]
    weights_file = str(weights["four_classes"])
    proc = train_net(
        "--config-file", SHAPES, "--eval-only", "MODEL.WEIGHTS", weights_file, *options
    )
    line = error_line(proc, 1)
    assert line.startswith(
        f"error: {weights_file}: roi_heads.box_predictor.cls_score.weight has shape (5, 128) in "
        "the file but (4, 128) in the model."
    )
    assert "BACKBONES.SKIP_MISMATCHED" in line


def test_weights_of_another_depth_name_both_and_the_config(tmp_path):
    # An R-18 file into the R-50 config: one round, naming the depths, not the input settings.
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    proc = train_net("--config-file", "configs/frcnn_r50.yaml", "MODEL.WEIGHTS", str(path))
    line = error_line(proc, 2)
    assert line.startswith(
        f"error: MODEL.WEIGHTS {path} holds a ResNet-18 (basic blocks), not the config's network: "
        "MODEL.RESNETS.DEPTH is 50, the weights' 18; MODEL.RESNETS.RES2_OUT_CHANNELS is 256, "
        "the weights' 64. Use configs/frcnn_r18.yaml (the config for these weights), set "
        "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64"
    )
    assert proc.stderr.splitlines()[0] == line  # the first thing said
    assert "GeneralizedRCNN" not in proc.stdout + proc.stderr  # no model was built


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_dist_url_times_out():
    url = f"tcp://127.0.0.1:{_closed_port()}"
    machines = ["--num-machines", "2", "--machine-rank", "1", "--dist-url", url]
    proc = train_net("--config-file", SHAPES, *machines, "--dist-timeout", "1")
    line = error_line(proc, 1)
    assert line.startswith(f"error: --dist-url {url}: rank 0 at 127.0.0.1:")
    assert "could not be reached within 1 s" in line and "--dist-timeout" in line


def test_num_gpus_that_disagrees_with_torchrun():
    torchrun = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torchrun.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", TORCHELASTIC_RUN_ID="test")
    line = error_line(train_net("--config-file", SHAPES, "--num-gpus", "4", **torchrun), 2)
    assert line.startswith("error: --num-gpus 4 disagrees with torchrun: --num-gpus 2 here")


# ---------------------------------------------------------------------------------------------
# In process: the mapping from errors to messages


def test_known_errors_and_bugs():
    assert describe_error(ConfigError("bad key")) == ("bad key", 2)
    assert describe_error(FileNotFoundError("no file")) == ("no file", 1)
    assert describe_error(RuntimeError("a bug")) is None  # keeps its traceback
    # A started process that said why itself; one killed from outside.
    exited = mp.ProcessExitedException("", error_index=1, error_pid=7, exit_code=2)
    assert describe_error(exited) == (None, 2)
    killed = mp.ProcessExitedException("", 1, 7, exit_code=-9, signal_name="SIGKILL")
    assert describe_error(killed) == ("process 1 was killed by SIGKILL (out of memory?)", 1)
    # One that failed joining the others, before its own handler ran.
    text = "Traceback ...\nbackbones.engine.distributed.RendezvousError: not all met"
    assert describe_error(mp.ProcessRaisedException(text, 0, 7)) == ("not all met", 1)
    assert describe_error(mp.ProcessRaisedException("Traceback\nKeyError: 'x'", 0, 7)) is None


def test_user_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        with user_errors():
            raise ConfigError("MODEL.X: no such key")
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: MODEL.X: no such key\n"
    with pytest.raises(ConfigError):
        with user_errors(debug=True):
            raise ConfigError("MODEL.X: no such key")
    with pytest.raises(RuntimeError):
        with user_errors():
            raise RuntimeError("a bug")


def test_an_unregistered_dataset_names_the_closest():
    cfg = load_cfg(SHAPES, ["DATASETS.TEST", "('shapes_vall',)"])
    with pytest.raises(
        ConfigError, match="DATASETS.TEST: no dataset named shapes_vall; did you mean shapes_val?"
    ):
        check_datasets(cfg)
    check_datasets(load_cfg(SHAPES))  # generated on first use: nothing to find on disk


def test_quiet_hides_third_party_notices_only():
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_third_party_warnings()
            warnings.warn("`torch.jit.script` is deprecated. Please switch to", FutureWarning)
            warnings.warn("torch.meshgrid: in an upcoming release, it will be", UserWarning)
            warnings.warn("BACKBONES.FREEZE_AT=2 with no MODEL.WEIGHTS", UserWarning)  # ours
        assert [str(w.message) for w in caught] == ["BACKBONES.FREEZE_AT=2 with no MODEL.WEIGHTS"]
        fx = logging.getLogger("torch.fx._symbolic_trace")
        make = fx.makeRecord
        assert not fx.filter(
            make(fx.name, logging.WARNING, "", 0, "is_fx_tracing will return true", (), None)
        )
        assert fx.filter(make(fx.name, logging.WARNING, "", 0, "something else", (), None))
    finally:  # the tests keep pytest.ini's filters
        for name, _ in THIRD_PARTY_LOG_RECORDS:
            log = logging.getLogger(name)
            for added in [f for f in log.filters if type(f).__name__ == "_DropRecords"]:
                log.removeFilter(added)
