"""Model-zoo checkpoints evaluated through our backbone (``backbones.study.experiments.zoo_eval``,
``tools/zoo_eval.py``): zoo names to configs, refused names, commands, failures and the report
through the ``run_training`` seam; and one real run (slow) on a tiny generated COCO, with
checkpoints of Detectron2's own models seeded into the download cache, offline."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from iopath.common.file_io import get_cache_dir
from test_configs import ZOO

import backbones.study.experiments.zoo_eval as zoo_eval_module
import backbones.study.report.runs as runs_module
from backbones import load_cfg
from backbones.study.experiments.zoo_eval import (
    BUILDERS,
    LOG_NAME,
    ZOO_CONFIGS,
    ZooNameError,
    backbone_builder,
    failure_line,
    resolve_zoo_model,
    zoo_resnet_models,
)
from backbones.study.report.runs import EVALUATED, load_references

from helpers import load_script, randomize_, write_coco_split

ROOT = Path(__file__).resolve().parents[1]
R50 = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
R101 = "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
X101 = "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml"
# Shrunk widths, full topology: applied when writing a seeded checkpoint and when evaluating it.
SHRINK = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_HEADS.NUM_CLASSES", "2",  # the tiny COCO's cat and dog
]  # fmt: skip
# Evaluation only: something to rate from random weights, small images, no loader workers.
TEST_OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "INPUT.MIN_SIZE_TEST", "32",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def load_tool():
    return load_script(ROOT / "tools" / "zoo_eval.py", "zoo_eval_tool")


def test_our_configs_are_the_pairs_test_configs_proves_equal_to_the_zoo():
    # tests/test_configs.py checks each of its pairs key for key; this table must be those.
    assert ZOO_CONFIGS == {zoo: ours for ours, zoo in ZOO.items() if not ours.startswith("Base-")}


@pytest.mark.parametrize("name", list(ZOO_CONFIGS))
def test_zoo_names_with_a_config_of_ours_resolve_to_it(name):
    model = resolve_zoo_model(name)
    assert model.config_file == ROOT / "configs" / ZOO_CONFIGS[name]
    assert model.opts == ()
    assert model.checkpoint == model_zoo.get_checkpoint_url(name)
    assert model.run_dir == name[: -len(".yaml")]


def test_every_zoo_model_of_ours_has_its_published_figures():
    published = {m.zoo: m for m in load_references().models if m.zoo}
    assert set(ZOO_CONFIGS) <= set(published)
    for name, model in published.items():
        cfg = load_cfg(str(ROOT / "configs" / ZOO_CONFIGS[name])) if name in ZOO_CONFIGS else None
        if cfg is not None:  # the figure is of the model the config builds
            assert cfg.MODEL.RESNETS.DEPTH == model.depth
            assert cfg.MODEL.MASK_ON == (model.detector == "Mask R-CNN")
            assert f"_{model.schedule}" in name and f"_{model.design}_" in name


def test_other_resnet_models_run_the_zoo_yaml_with_our_builder():
    model = resolve_zoo_model("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x")  # .yaml optional
    assert model.name == "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"
    assert model.config_file == Path(model_zoo.get_config_file(model.name))
    assert model.opts == ("MODEL.BACKBONE.NAME", "backbones_build_resnet_fpn_backbone")
    cfg = load_cfg(str(model.config_file), [*model.opts, "BACKBONES.INPUT_FROM_WEIGHTS", "off"])
    assert cfg.MODEL.KEYPOINT_ON and cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY
    assert all(ours in BACKBONE_REGISTRY for ours in BUILDERS.values())


def test_zoo_resnet_models():
    names = zoo_resnet_models()
    assert set(ZOO_CONFIGS) < set(names)
    assert "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml" in names
    assert not [n for n in names if "Base-" in n or not n.endswith(".yaml")]
    assert all(model_zoo.get_checkpoint_url(n) for n in names)


@pytest.mark.parametrize(
    "name, why",
    [
        ("new_baselines/mask_rcnn_regnetx_4gf_dds_FPN_100ep_LSJ.py", "LazyConfig"),
        ("COCO-Detection/faster_rcnn_R_50_FPN_2x.yaml", "did you mean"),
        ("Base-RCNN-FPN.yaml", "no checkpoint"),  # a zoo file, not a trained model
    ],
)
def test_names_that_are_no_resnet_zoo_model_are_refused(name, why):
    with pytest.raises(ZooNameError) as error:
        resolve_zoo_model(name)
    message = str(error.value)
    assert name in message and why in message
    assert R50 in message and "--list" in message  # the valid names


def test_a_zoo_model_without_a_resnet_is_refused(monkeypatch):
    monkeypatch.setattr(zoo_eval_module, "backbone_builder", lambda path: "build_regnet_backbone")
    with pytest.raises(ZooNameError, match="its backbone is build_regnet_backbone, not a ResNet"):
        resolve_zoo_model(R50)


def test_backbone_builder_follows_base_and_runs_no_python_tags(tmp_path):
    base = tmp_path / "Base.yaml"
    base.write_text(
        "MODEL:\n  BACKBONE: {NAME: build_retinanet_resnet_fpn_backbone}\n"
        "  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ['[[32]]']\n"
    )
    (tmp_path / "sub").mkdir()
    leaf = tmp_path / "sub" / "leaf.yaml"
    leaf.write_text('_BASE_: "../Base.yaml"\nMODEL: {RESNETS: {DEPTH: 101}}\n')
    assert backbone_builder(leaf) == "build_retinanet_resnet_fpn_backbone"
    base.write_text("MODEL: {MASK_ON: True}\n")  # none set: Detectron2's default
    assert backbone_builder(leaf) == "build_resnet_backbone"


def test_failure_line(tmp_path):
    log = tmp_path / "log"
    log.write_text("an earlier run\nerror: old\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("[12/07 10:00:00 d2]: starting\nerror: MODEL.WEIGHTS x cannot be downloaded\n")
        f.write("error: rank 1: the same\n")
    assert failure_line(log, start) == "error: MODEL.WEIGHTS x cannot be downloaded"
    log.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n\n")
    assert failure_line(log) == "RuntimeError: boom"


def fake_evaluation(ap: dict[str, float], fail: set[str]):
    """A ``run_training`` stand-in: fails (exit 2, an error line amid other output) for the
    run folders named in ``fail``; else leaves what ``train_net.py --eval-only`` leaves: the
    config.yaml of the command's config and overrides, and coco_metrics.json with ``ap``."""
    calls = []

    def run(command, log_path):
        calls.append(list(command))
        output_dir = Path(command[command.index("OUTPUT_DIR") + 1])
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if output_dir.name in fail:
            log_path.write_text("Command Line Args: ...\nerror: MODEL.WEIGHTS unreachable\n")
            return 2
        config = command[command.index("--config-file") + 1]
        opts = command[command.index("MODEL.WEIGHTS") :]
        cfg = load_cfg(config, [*opts, "BACKBONES.INPUT_FROM_WEIGHTS", "off"])
        (output_dir / "config.yaml").write_text(cfg.dump())
        metrics = output_dir / "inference" / cfg.DATASETS.TEST[0] / "coco_metrics.json"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({"bbox": ap}))
        log_path.write_text("done\n")
        return 0

    return run, calls


def test_evaluations_failures_and_the_report_through_the_seam(tmp_path, monkeypatch, capsys):
    run, calls = fake_evaluation({"AP": 42.1, "AP50": 63.0}, fail={"faster_rcnn_R_50_FPN_3x"})
    monkeypatch.setattr(zoo_eval_module, "run_training", run)
    # Parameters and FLOPs: counted in the slow test below, and in tests/test_complexity.py.
    monkeypatch.setattr(runs_module, "detector_complexity", lambda cfg: dict(params=1, gflops=1.0))
    monkeypatch.setattr(runs_module, "_COMPLEXITY", {})
    tool = load_tool()
    out = tmp_path / "zoo"
    assert tool.main([R50, R101, "--output", str(out), "--num-gpus", "2", *SHRINK]) == 1
    stdout = capsys.readouterr().out
    # Each evaluation: our config, the zoo's checkpoint, the overrides last.
    assert [c[c.index("--config-file") + 1] for c in calls] == [
        str(ROOT / "configs" / "frcnn_r50_3x.yaml"), str(ROOT / "configs" / "frcnn_r101_3x.yaml")
    ]  # fmt: skip
    for command, name in zip(calls, (R50, R101)):
        assert command[:2] == [sys.executable, "tools/train_net.py"]
        assert command[command.index("--num-gpus") + 1] == "2" and "--eval-only" in command
        assert command[command.index("MODEL.WEIGHTS") + 1] == model_zoo.get_checkpoint_url(name)
        assert command[command.index("OUTPUT_DIR") + 1] == str(out / name[: -len(".yaml")])
        assert command[-len(SHRINK) :] == SHRINK
    # The failure surfaced with its log's error line, and the next one ran.
    log = out / "COCO-Detection" / "faster_rcnn_R_50_FPN_3x" / LOG_NAME
    assert "[1/2] faster_rcnn_R_50_FPN_3x: FAILED (exit 2) in" in stdout
    assert "[1/2] faster_rcnn_R_50_FPN_3x: error: MODEL.WEIGHTS unreachable" in stdout
    assert "[2/2] faster_rcnn_R_101_FPN_3x: done in" in stdout and "ETA 0:00:00" in stdout
    assert (
        f"faster_rcnn_R_50_FPN_3x: FAILED (exit 2): error: MODEL.WEIGHTS unreachable (log {log})"
        in stdout
    )
    assert "faster_rcnn_R_101_FPN_3x: box AP 42.1 (zoo 42.0, +0.1)" in stdout
    assert "1 of 2 evaluations failed" in stdout
    with open(out / "report" / "depth_report.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    r101 = rows["faster_rcnn_R_101_FPN_3x"]
    assert (r101["status"], r101["zoo"], r101["bbox/AP_zoo"]) == (EVALUATED, R101, "42.0")
    assert float(r101["bbox/AP_zoo_diff"]) == pytest.approx(0.1)
    assert rows["faster_rcnn_R_50_FPN_3x"]["status"] == "no config"
    markdown = (out / "report" / "depth_report.md").read_text()
    assert "| 42.1 | base | 42.0 | +0.1 |" in markdown and "Not evaluated on" not in markdown


def test_tool_arguments(capsys, monkeypatch):
    tool = load_tool()
    args = tool.parse_args([R50, "--output", "o", R101, "MODEL.DEVICE", "cpu", "SEED", "-1"])
    assert args.names == [R50, R101] and args.opts == ["MODEL.DEVICE", "cpu", "SEED", "-1"]
    with pytest.raises(SystemExit):
        tool.parse_args([R50])  # --output is required
    assert "--output DIR is required" in capsys.readouterr().err
    assert tool.main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert f"{R101}  (configs/frcnn_r101_3x.yaml)" in listed
    assert "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml  (the zoo YAML, our builder)" in listed
    monkeypatch.setattr(zoo_eval_module, "run_training", lambda *a: pytest.fail("ran"))
    assert tool.main(["COCO-Detection/nope.yaml", R50, "--output", "o"]) == 2
    assert "zoo_eval.py: error: COCO-Detection/nope.yaml is not a config" in capsys.readouterr().err
    assert tool.main([R50, R50, "--output", "o"]) == 2
    assert f"named more than once: {R50}" in capsys.readouterr().err
    assert tool.main([R50, "--output", "o", "--dataset", "d", "no.json", "images"]) == 2
    assert "--dataset d: not found: no.json, images" in capsys.readouterr().err


def seed_checkpoint(name: str, cache: Path) -> int:
    """Put a checkpoint of ``name``'s architecture (Detectron2's own model of the zoo YAML,
    :data:`SHRINK`, random weights) where Detectron2's download of its URL is cached, in the
    zoo's layout. Returns its number of tensors."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(name))
    cfg.merge_from_list([*SHRINK, "MODEL.DEVICE", "cpu"])
    state = randomize_(build_model(cfg)).state_dict()
    url = model_zoo.get_checkpoint_url(name)
    path = Path(get_cache_dir(str(cache))) / urlparse(url).path.lstrip("/")  # iopath's layout
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        model = {key: value.numpy() for key, value in state.items()}
        pickle.dump({"model": model, "__author__": "tests/test_zoo_eval.py"}, f)
    return len(state)


@pytest.mark.slow
def test_zoo_eval_end_to_end_offline(tmp_path):
    data, cache = tmp_path / "coco", tmp_path / "cache"
    write_coco_split(data / "images", data / "val.json", num_images=3)
    tensors = {name: seed_checkpoint(name, cache) for name in (R50, R101)}  # not X101's
    out = tmp_path / "zoo"
    command = [sys.executable, str(ROOT / "tools" / "zoo_eval.py"), X101, R50, R101]
    command += ["--output", str(out), "--dataset", "tiny", str(data / "val.json")]
    command += [str(data / "images"), "DATASETS.TEST", '("tiny",)', *SHRINK, *TEST_OPTS]
    # Offline whatever the machine: downloads go to a closed port.
    proxy = "http://127.0.0.1:9"
    env = dict(os.environ, FVCORE_CACHE=str(cache), OMP_NUM_THREADS="1")
    env.update(https_proxy=proxy, HTTPS_PROXY=proxy, no_proxy="", NO_PROXY="")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    # X101: no copy in the cache, no network: its one error line, and the others went on.
    step = "[1/3] faster_rcnn_X_101_32x8d_FPN_3x: "
    surfaced = [line for line in proc.stdout.splitlines() if line.startswith(step + "error: ")]
    assert len(surfaced) == 1, proc.stdout
    assert model_zoo.get_checkpoint_url(X101) in surfaced[0] and str(cache) in surfaced[0]
    assert "1 of 3 evaluations failed" in proc.stdout
    # R-50 and R-101: every tensor of Detectron2's model loaded into ours from the cached copy.
    for name, count in tensors.items():
        log = (out / name[: -len(".yaml")] / LOG_NAME).read_text()
        assert f"Loaded {count} tensors from {cache}" in log
        assert "NOT IN THE FILE" not in log and "not in the model" not in log
    with open(out / "report" / "depth_report.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    published = {m.zoo: m.ap["bbox/AP"] for m in load_references().models if m.zoo}
    for name in (R50, R101):
        row = rows[Path(name).stem]
        assert row["status"] == EVALUATED and row["zoo"] == name
        assert float(row["bbox/AP_zoo"]) == published[name]
        ours = float(row["bbox/AP"])
        assert 0 <= ours <= 100
        assert float(row["bbox/AP_zoo_diff"]) == pytest.approx(ours - published[name], abs=1e-3)
    gain = float(rows["faster_rcnn_R_101_FPN_3x"]["bbox/AP_gain"])
    r50, r101 = (float(rows[Path(n).stem]["bbox/AP"]) for n in (R50, R101))
    assert gain == pytest.approx(r101 - r50, abs=1e-3)
    assert rows["faster_rcnn_X_101_32x8d_FPN_3x"]["status"] == "no config"
    markdown = (out / "report" / "depth_report.md").read_text()
    assert "zoo box AP | ours - zoo" in markdown and "Not evaluated on `coco_2017_val`" in markdown
