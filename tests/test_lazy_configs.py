"""``configs/lazy/``: each LazyConfig twin equals its Detectron2 counterpart in every key but
``model.backbone`` (and the documented input settings of its weights), and the two build
detectors with the same parameter names and shapes, trainable parameters, conv strides, norms and
features; ``tools/lazyconfig_train_net.py``'s checks, and a short training on the shapes data.

Models are built on the ``meta`` device: names, shapes and module types without the cost of
initialising the weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from omegaconf import DictConfig, OmegaConf
from torch import nn

from backbones import SOURCES, load_cfg, make_resnet, make_resnet_fpn
from backbones.data import generate_shapes
from backbones.engine.config import ConfigError
from backbones.quiet import THIRD_PARTY_WARNINGS
from backbones.weights import InputSettings

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
LAZY = ROOT / "configs" / "lazy"
MASK_1X = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
TORCHVISION = "https://download.pytorch.org/models/resnet{}.pth"
MSRA_R101 = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
# make_resnet's warning for a FrozenBN model built before its weights are loaded.
UNTRAINED_FROZEN_BN = ".*norm='FrozenBN' with no weights"


@dataclass(frozen=True)
class Twin:
    """What a config of ``configs/lazy/`` is: Detectron2's ``zoo`` config with our R-``depth``,
    and where they must differ: the ImageNet weights (``init_checkpoint``, when not the zoo's)
    of ``source`` (a key of ``backbones.SOURCES``, "" from scratch) with their input settings,
    and no masks for Faster R-CNN."""

    zoo: str
    depth: int
    source: str = "msra"
    init_checkpoint: str | None = None
    masks: bool = True


_LADDER = {
    18: Twin(MASK_1X, 18, "torchvision", TORCHVISION.format("18-f37072fd")),
    34: Twin(MASK_1X, 34, "torchvision", TORCHVISION.format("34-b627a593")),
    50: Twin(MASK_1X, 50),
    101: Twin(MASK_1X, 101, init_checkpoint=MSRA_R101),
    152: Twin(MASK_1X, 152, "torchvision", TORCHVISION.format("152-394f9c45")),
}
TWINS: dict[str, Twin] = {
    **{f"mrcnn_r{depth}.py": twin for depth, twin in _LADDER.items()},
    **{
        f"frcnn_r{depth}.py": Twin(twin.zoo, depth, twin.source, twin.init_checkpoint, False)
        for depth, twin in _LADDER.items()
    },
    **{
        f"mrcnn_r{depth}_{epochs}ep_lsj.py": Twin(
            f"new_baselines/mask_rcnn_R_{depth}_FPN_{epochs}ep_LSJ.py", depth, ""
        )
        for depth in (50, 101)
        for epochs in (100, 200, 400)
    },
}


def load(name: str) -> DictConfig:
    return LazyConfig.load(str(LAZY / name))


def counterpart(twin: Twin) -> DictConfig:
    """Detectron2's config of ``twin`` with the documented differences made by hand: the depth,
    the weights and their input settings, the mask branch."""
    cfg = LazyConfig.load(model_zoo.get_config_file(twin.zoo))
    stages = cfg.model.backbone.bottom_up.stages
    stages.depth = twin.depth
    if twin.depth < 50:
        del stages.stride_in_1x1  # Detectron2's BasicBlock takes none: it has no 1x1
    if twin.init_checkpoint is not None:
        cfg.train.init_checkpoint = twin.init_checkpoint
    if twin.source == "torchvision":
        settings = SOURCES["torchvision"].input
        cfg.model.pixel_mean, cfg.model.pixel_std = settings.pixel_mean, settings.pixel_std
        cfg.model.input_format = cfg.dataloader.train.mapper.image_format = settings.format
        if twin.depth >= 50:
            stages.stride_in_1x1 = settings.stride_in_1x1
    if not twin.masks:
        for key in ("mask_in_features", "mask_pooler", "mask_head"):
            del cfg.model.roi_heads[key]
        cfg.dataloader.train.mapper.use_instance_mask = False
    return cfg


def _comparable(value: Any) -> Any:
    """A config value as compared: callables by their qualified name (a lambda by where it is
    written: each load makes a new one), containers element by element."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return [_comparable(v) for v in value]
    if getattr(value, "__name__", None) == "<lambda>":
        return f"<lambda at {value.__code__.co_filename}:{value.__code__.co_firstlineno}>"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def flat(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of ``cfg`` by its dotted key, interpolations unresolved."""
    leaves: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, child in value.items():
                walk(child, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for i, child in enumerate(value):
                walk(child, f"{key}.{i}")
        else:
            leaves[key] = value

    walk(_comparable(OmegaConf.to_container(cfg, resolve=False)), "")
    return leaves


def without_backbone(leaves: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in leaves.items() if not k.startswith("model.backbone.")}


def build(cfg: DictConfig, device: str = "meta") -> nn.Module:
    with torch.device(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=UNTRAINED_FROZEN_BN)
        return instantiate(cfg.model)


def _norm_kind(module: nn.Module) -> str | None:
    for kind, types in (
        ("FrozenBN", FrozenBatchNorm2d),
        ("SyncBN", nn.SyncBatchNorm),
        ("naiveSyncBN", NaiveSyncBatchNorm),
        ("BN", nn.BatchNorm2d),
        ("GN", nn.GroupNorm),
    ):
        if isinstance(module, types):
            return kind
    return None


def signature(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What must be equal between a twin's model and its counterpart's."""
    modules = dict(model.named_modules())
    return {
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "trainable": {k: p.requires_grad for k, p in model.named_parameters()},
        "strides": {k: m.stride for k, m in modules.items() if isinstance(m, nn.Conv2d)},
        "norms": {k: _norm_kind(m) for k, m in modules.items() if _norm_kind(m)},
        "features": {k: (v.channels, v.stride) for k, v in model.backbone.output_shape().items()},
    }


# ---------------------------------------------------------------------------------------------
# The twins


def test_every_config_is_a_twin_or_the_shapes_config():
    found = {p.name for p in LAZY.glob("*.py")} - {"common.py"}
    assert found == set(TWINS) | {"mrcnn_r18_shapes.py"}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_config_equals_detectron2s_but_for_the_backbone(name):
    twin, ours = TWINS[name], load(name)
    assert ours.model.backbone._target_ is make_resnet_fpn
    assert ours.model.backbone.depth == twin.depth
    expected, got = without_backbone(flat(counterpart(twin))), without_backbone(flat(ours))
    differ = {
        k: (got.get(k, "<missing>"), expected.get(k, "<missing>"))
        for k in sorted(expected.keys() | got.keys())
        if got.get(k, "<missing>") != expected.get(k, "<missing>")
    }
    assert not differ, f"{name} (ours, Detectron2's): {differ}"


def test_longer_lsj_schedules_change_only_the_schedule():
    for depth in (50, 101):
        base = flat(load(f"mrcnn_r{depth}_100ep_lsj.py"))
        for epochs in (200, 400):
            longer = flat(load(f"mrcnn_r{depth}_{epochs}ep_lsj.py"))
            differ = {k for k in base.keys() | longer.keys() if base.get(k) != longer.get(k)}
            assert differ == {
                "train.max_iter",
                "lr_multiplier.scheduler.milestones",
                "lr_multiplier.scheduler.num_updates",
            }


# The 200 and 400 epoch LSJ twins build the 100 epoch twins' models (the test above).
@pytest.mark.parametrize(
    "name", sorted(n for n in TWINS if not n.endswith(("200ep_lsj.py", "400ep_lsj.py")))
)
def test_model_equals_detectron2s(name):
    ours, theirs = signature(build(load(name))), signature(build(counterpart(TWINS[name])))
    for what in ours:
        assert ours[what] == theirs[what], f"{name}: {what} differ"


@pytest.mark.parametrize("name", sorted(n for n, twin in TWINS.items() if twin.source))
def test_input_settings_follow_the_weights(name):
    cfg = load(name)
    assert cfg.dataloader.test.mapper.image_format == cfg.dataloader.train.mapper.image_format
    settings = InputSettings(
        cfg.dataloader.train.mapper.image_format,
        tuple(cfg.model.pixel_mean),
        tuple(cfg.model.pixel_std),
        cfg.model.backbone.stride_in_1x1,
    )
    assert settings == SOURCES[TWINS[name].source].input
    assert cfg.model.input_format == settings.format


def test_faster_rcnn_is_detectron2s_yaml_faster_rcnn():
    # Detectron2 has no Faster R-CNN LazyConfig; its YAML zoo entry builds the same model.
    yaml = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    with torch.device("meta"):
        theirs = build_model(load_cfg(yaml, ["MODEL.DEVICE", "meta"]))
    ours = build(load("frcnn_r50.py"))
    assert signature(ours) == signature(theirs)


def test_shapes_config_is_the_yaml_demo():
    cfg = load("mrcnn_r18_shapes.py")
    yaml = load_cfg(str(ROOT / "configs" / "mrcnn_r18_shapes.yaml"))
    theirs, ours = build_model(yaml), build(cfg, "cpu")
    assert signature(ours) == signature(theirs)
    assert ours.backbone.bottom_up.res2[0].conv2.norm.weight.count_nonzero() == 0  # zero-init
    assert ours.proposal_generator.pre_nms_topk == theirs.proposal_generator.pre_nms_topk
    assert ours.proposal_generator.post_nms_topk == theirs.proposal_generator.post_nms_topk
    assert cfg.train.max_iter == yaml.SOLVER.MAX_ITER and cfg.train.seed == yaml.SEED
    assert cfg.optimizer.lr == yaml.SOLVER.BASE_LR
    assert cfg.optimizer.weight_decay == yaml.SOLVER.WEIGHT_DECAY
    assert cfg.dataloader.train.total_batch_size == yaml.SOLVER.IMS_PER_BATCH
    assert cfg.train.checkpointer.period == yaml.SOLVER.CHECKPOINT_PERIOD
    # The LR of every iteration: Detectron2's YAML schedule (WarmupCosineLR) and the lazy one.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=yaml.SOLVER.BASE_LR)
    yaml_schedule, yaml_lrs = build_lr_scheduler(yaml, optimizer), []
    for _ in range(yaml.SOLVER.MAX_ITER):
        yaml_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        yaml_schedule.step()
    multiplier = instantiate(cfg.lr_multiplier)
    lazy_lrs = [cfg.optimizer.lr * multiplier(i / cfg.train.max_iter) for i in range(len(yaml_lrs))]
    assert lazy_lrs == pytest.approx(yaml_lrs, rel=1e-6, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# The tool's checks (in-process: each fails before anything is built)


@pytest.fixture(scope="module")
def tool():
    return load_script(ROOT / "tools" / "lazyconfig_train_net.py", "lazyconfig_train_net")


def run_tool(tool, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``invoke_main(args)`` in this process: its exit status and its stderr."""
    monkeypatch.setattr(tool, "quiet_third_party_warnings", lambda: None)  # a tool's, not ours
    with pytest.raises(SystemExit) as exit_info:
        tool.invoke_main(list(args))
    return exit_info.value.code, capsys.readouterr().err


SHAPES = "configs/lazy/mrcnn_r18_shapes.py"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config-file", "configs/lazy/mrcnn_r5.py"],
            "config file configs/lazy/mrcnn_r5.py does not exist; did you mean "
            "configs/lazy/mrcnn_r50.py?",
        ),
        (
            ["--config-file", "configs/mrcnn_r18_shapes.yaml"],
            "configs/mrcnn_r18_shapes.yaml is not a LazyConfig: it defines no model, dataloader, "
            "train, optimizer, lr_multiplier",
        ),
        (
            ["--config-file", SHAPES, "SOLVER.MAX_ITER", "10"],
            "override 'SOLVER.MAX_ITER': LazyConfig overrides are key=value",
        ),
        (
            ["--config-file", SHAPES, "train.max_itr=10"],
            "override train.max_itr=...: configs/lazy/mrcnn_r18_shapes.py has no key "
            "train.max_itr; did you mean train.max_iter?",
        ),
        (
            ["--config-file", SHAPES, "optimizer.lrr=0.1"],
            "override optimizer.lrr=...: AdamW takes no argument lrr; did you mean lr?",
        ),
        (
            ["--config-file", SHAPES, "train.max_iter=ten"],
            "override train.max_iter=ten: must be a number, like 1000",
        ),
        (
            ["--config-file", SHAPES, "train.max_iter=10", "--evl-only"],  # not a flag
            "--evl-only after the key=value overrides: give the options first",
        ),
        (
            ["--config-file", SHAPES, "dataloader.train.dataset.names=shapes_trian"],
            "dataloader.train.dataset.names: no dataset named shapes_trian; did you mean "
            "shapes_train? register your own with --dataset NAME JSON IMAGE_ROOT (docs/data.md)",
        ),
        (
            ["--config-file", SHAPES, "--num-gpus", "3"],
            "dataloader.train.total_batch_size=4 does not split evenly over 3 processes",
        ),
    ],
)
def test_a_mistake_is_one_error_line(tool, monkeypatch, capsys, args, message):
    status, stderr = run_tool(tool, monkeypatch, capsys, *args)
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {message}"), lines[0]


def test_overrides_change_keys_and_add_call_arguments(tool):
    overrides = ["train.max_iter=7", "train.seed=3", "model.backbone.drop_path_rate=0.1"]
    cfg = tool.load_config(SHAPES, [*overrides, "+train.note=mine"])
    assert (cfg.train.max_iter, cfg.train.seed, cfg.model.backbone.drop_path_rate) == (7, 3, 0.1)
    assert cfg.train.note == "mine" and cfg.train.device == "cpu"


def test_an_argument_the_backbone_does_not_take_is_named_when_built(tool):
    # make_resnet_fpn passes its **options on to make_resnet: they are checked by the call.
    cfg = tool.load_config(SHAPES, ["model.backbone.drop_pth_rate=0.1"])
    with pytest.raises(ConfigError, match="unexpected keyword argument 'drop_pth_rate'"):
        tool.build_model(cfg)


def test_yaml_view_of_a_recipe(tool):
    view = tool.yaml_view(load("mrcnn_r101_100ep_lsj.py"), [["mine", "a.json", "images"]])
    assert view.DATASETS.TRAIN == ("coco_2017_train",) and view.DATASETS.TEST == ("coco_2017_val",)
    assert (view.SOLVER.IMS_PER_BATCH, view.SOLVER.BASE_LR) == (64, 0.1)
    assert view.BACKBONES.COCO_DATASETS == [["mine", "a.json", "images"]]
    # Detectron2's BGR / std 1 / stride in the 1x1 of its LSJ recipe, stored in checkpoints.
    assert view.INPUT.FORMAT == "BGR" and view.MODEL.RESNETS.STRIDE_IN_1X1
    assert view.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    torchvision_r18 = tool.yaml_view(load("frcnn_r18.py"), [])
    assert torchvision_r18.INPUT.FORMAT == "RGB" and not torchvision_r18.MODEL.RESNETS.STRIDE_IN_1X1


# ---------------------------------------------------------------------------------------------
# Training on the shapes data


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory) -> list[str]:
    """``--dataset`` flags and overrides for 8 training and 4 validation shapes images."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    args = []
    for split, n in (("train", 8), ("val", 4)):
        json_file, images = generate_shapes(root, split, num_images=n)
        args += ["--dataset", f"lazy_tiny_{split}", str(json_file), str(images)]
    return args


def lazy_train_net(
    tmp_path: Path, tiny_shapes: list[str], flags: list[str], overrides: list[str]
) -> str:
    """Run the tool on the shapes config shrunk to seconds, with ``flags`` and ``overrides``;
    returns its stdout."""
    overrides = [
        "dataloader.train.dataset.names=lazy_tiny_train",
        "dataloader.test.dataset.names=lazy_tiny_val",
        "dataloader.train.total_batch_size=2",
        f"train.output_dir={tmp_path / 'output'}",
        "train.log_period=1",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # as a user runs it
    env.update(DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "tools/lazyconfig_train_net.py", "--config-file", SHAPES]
        + [*tiny_shapes, *flags, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for pattern, _ in THIRD_PARTY_WARNINGS:  # the tool hides them, as every tool does
        assert not re.search(pattern, proc.stderr), proc.stderr[-3000:]
    return proc.stdout


def copypaste(stdout: str) -> list[str]:
    return [line.split("copypaste: ")[1] for line in stdout.splitlines() if "copypaste: " in line]


@pytest.mark.slow
def test_train_resume_and_evaluate(tmp_path, tiny_shapes):
    trained = lazy_train_net(tmp_path, tiny_shapes, [], ["train.max_iter=3"])
    output = tmp_path / "output"
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1, 2]
    assert (output / "loss_curve.png").stat().st_size > 0
    assert (output / "inference" / "lazy_tiny_val" / "coco_instances_results.json").exists()
    final = torch.load(output / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2
    assert final["backbones"]["input"]["format"] == "BGR"  # the input settings travel with it
    tasks = [line for line in copypaste(trained) if line.startswith("Task: ")]
    assert tasks == ["Task: bbox", "Task: segm"]

    resumed = lazy_train_net(tmp_path, tiny_shapes, ["--resume"], ["train.max_iter=5"])
    assert "Starting training from iteration 3" in resumed
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1, 2, 3, 4]

    weights = f"train.init_checkpoint={output / 'model_final.pth'}"
    evaluated = lazy_train_net(tmp_path, tiny_shapes, ["--eval-only"], [weights])
    assert copypaste(evaluated) == copypaste(resumed)  # the same weights, the same metrics


def test_a_missing_init_checkpoint_is_named_before_anything_is_built(tool, monkeypatch, capsys):
    status, stderr = run_tool(
        tool, monkeypatch, capsys, "--config-file", SHAPES, "train.init_checkpoint=nowhere.pth"
    )
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status != 0 and len(lines) == 1, stderr
    assert "train.init_checkpoint: weights file not found: nowhere.pth" in lines[0]
    assert "Traceback" not in stderr


def test_an_init_checkpoint_of_another_depth_names_both(tool, monkeypatch, capsys, tmp_path):
    r34 = make_resnet(34, norm="BN", stem_out_channels=8, res2_out_channels=8)
    torch.save(r34.state_dict(), tmp_path / "r34.pth")
    status, stderr = run_tool(
        tool,
        monkeypatch,
        capsys,
        "--config-file",
        SHAPES,
        f"train.init_checkpoint={tmp_path / 'r34.pth'}",
        f"train.output_dir={tmp_path / 'out'}",
    )
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status != 0 and len(lines) == 1, stderr
    assert "depth=18" in lines[0] and "ResNet-34" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing was built or written
