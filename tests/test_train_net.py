"""``tools/train_net.py`` in-process: the config is composed once, in the parent, and handed whole
to the processes it launches."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import backbones.engine.config as engine_config
from backbones import load_cfg
from backbones.config import input_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mrcnn_r18_shapes.yaml"


@pytest.fixture()
def train_net():
    spec = importlib.util.spec_from_file_location("train_net", ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_parent_composes_the_config_once_and_passes_it(train_net, monkeypatch):
    calls, launched = [], []

    def counting_load_cfg(*args, **kwargs):
        calls.append(args)
        return load_cfg(*args, **kwargs)

    def fake_launch(main, num_gpus, **kwargs):
        launched.append((main, num_gpus, kwargs))

    monkeypatch.setattr(train_net, "load_cfg", counting_load_cfg)
    monkeypatch.setattr("backbones.engine.cli.launch", fake_launch)
    argv = ["train_net.py", "--config-file", str(CONFIG), "--num-gpus", "2", "SEED", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    train_net.invoke_main()
    assert len(calls) == 1
    main, num_gpus, kwargs = launched[0]
    args, cfg = kwargs["args"]
    assert main is train_net.main and num_gpus == 2
    assert cfg.SEED == 3 and cfg.is_frozen() and kwargs["device"] == cfg.MODEL.DEVICE == "cpu"


def test_a_worker_sets_up_from_the_config_it_is_given(train_net, monkeypatch, tmp_path):
    cfg = load_cfg(str(CONFIG), ["OUTPUT_DIR", str(tmp_path)])

    def no_second_composition(*args, **kwargs):
        raise AssertionError("setup(args, cfg) composed the config again")

    monkeypatch.setattr(engine_config, "load_cfg", no_second_composition)
    args = train_net.parse_args(["--config-file", str(CONFIG)])
    assert engine_config.setup(args, cfg) is cfg
    assert (tmp_path / "config.yaml").is_file()


def test_launching_processes_drops_the_weights_read_for_the_config(monkeypatch):
    from backbones.engine import launch

    input_settings._READ_AHEAD[("weights.pth", 0, 0, False)] = object()
    monkeypatch.setattr("backbones.engine.distributed.d2_launch", lambda *args, **kwargs: None)
    launch(print, 2, device="cuda")  # Detectron2's launch (stubbed): workers read the file
    assert not input_settings._READ_AHEAD
