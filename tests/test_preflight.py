"""The weights a run starts from, resolved before anything is built: published addresses known
without a download, Detectron2's download cache where the file is looked for first (seeded here,
as a user offline would), and one clear error when the file is out of reach or holds another
network than the config's."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import iopath.common.download
import pytest
import torch
import torchvision
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from backbones import load_cfg
from backbones.checkpoint import BackbonesCheckpointer
from backbones.config import (
    WeightsArchitectureError,
    WeightsUnavailableError,
    architecture_conflicts,
    fetch_weights,
    weights_cache_path,
)
from backbones.data import generate_shapes
from backbones.engine.cli import check_weights
from backbones.weights import PUBLISHED_WEIGHTS, SOURCES
from backbones.weights import read as weights_read
from backbones.weights import weights_from_object

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
R18 = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
MSRA_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty download cache (``$FVCORE_CACHE``), and no network for this process."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(folder))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(iopath.common.download.request, "urlretrieve", offline)
    return folder


def seed(cache_file: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Write ``model``'s state_dict where the download cache keeps an address's copy."""
    state = model.state_dict()
    Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache_file)
    return state


# ---------------------------------------------------------------------------------------------
# Detectron2's download cache


def test_the_cache_path_is_where_pathmanager_looks(cache):
    assert weights_cache_path(R18) == str(cache / "models" / "resnet18-f37072fd.pth")
    msra = cache / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    assert weights_cache_path(MSRA_R50) == str(msra)
    assert weights_cache_path("weights/R-50.pkl") is None  # a local path: no cache
    for url in (R18, MSRA_R50):
        path = Path(weights_cache_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"seeded")
        # Detectron2's PathManager finds it there (force: this process may know another copy).
        assert PathManager.get_local_path(url, force=True) == str(path)
        assert fetch_weights(url) == str(path)


def test_a_download_goes_through_pathmanager_into_the_cache(cache, monkeypatch):
    downloads = []

    def answer(request, timeout):  # the server has it
        assert request.get_method() == "HEAD" and request.full_url == R18
        return io.BytesIO()

    def download(url, filename, reporthook=None):
        downloads.append(url)
        torch.save(torchvision.models.resnet18().state_dict(), filename)
        return filename, None

    monkeypatch.setattr(urllib.request, "urlopen", answer)
    monkeypatch.setattr(iopath.common.download.request, "urlretrieve", download)
    path = fetch_weights(R18)
    assert path == str(cache / "models" / "resnet18-f37072fd.pth") and os.path.isfile(path)
    assert fetch_weights(R18) == path and downloads == [R18]  # once: then the cache has it


def test_unreachable_is_one_error_naming_the_address_the_cache_and_the_fix(cache, monkeypatch):
    with pytest.raises(WeightsUnavailableError) as error:
        fetch_weights(R18)
    cached = cache / "models" / "resnet18-f37072fd.pth"
    assert str(error.value) == (
        f"MODEL.WEIGHTS {R18} cannot be downloaded (no network in this test) and the download "
        f"cache has no copy at {cached}. Offline, download it where there is internet and put it "
        "at that path (FVCORE_CACHE sets the cache folder), or give a local copy: MODEL.WEIGHTS "
        "/path/to/resnet18-f37072fd.pth"
    )
    # Detectron2's addresses are named with the https address to download them from.
    with pytest.raises(WeightsUnavailableError, match="https://dl.fbaipublicfiles.com/detectron2/"):
        check_weights(load_cfg("configs/frcnn_r101.yaml", ["MODEL.DEVICE", "cpu"]))
    # An address with no file behind it (404; S3 answers 403) is named as such.
    missing = "detectron2://ImageNetPretrained/torchvision/R-18.pkl"

    def not_there(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", not_there)
    with pytest.raises(WeightsUnavailableError, match=r"does not exist \(HTTP 403 Forbidden;"):
        fetch_weights(missing)
    with pytest.raises(WeightsUnavailableError, match="weights file not found: absent.pth"):
        fetch_weights("absent.pth")


def test_the_checkpointer_alone_says_the_same(cache):
    model = torchvision.models.resnet18()  # never reached: the address fails first
    with pytest.raises(WeightsUnavailableError, match=f"{R18} cannot be downloaded"):
        BackbonesCheckpointer(model).load(R18)


# ---------------------------------------------------------------------------------------------
# The preflight and the checkpointer after it


def test_the_preflight_reads_the_cached_file_once_and_the_checkpointer_loads_it(cache, monkeypatch):
    state = seed(weights_cache_path(R18), torchvision.models.resnet18())
    reads = []
    real_read_file = weights_read.read_file

    def counting_read_file(path, **kwargs):
        reads.append(path)
        return real_read_file(path, **kwargs)

    monkeypatch.setattr(weights_read, "read_file", counting_read_file)
    cfg = load_cfg("configs/frcnn_r18.yaml", ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.WEIGHTS == R18  # the config as published, unchanged
    cached = str(cache / "models" / "resnet18-f37072fd.pth")
    assert check_weights(cfg) == cached
    model = build_model(cfg)
    checkpointer = BackbonesCheckpointer(model, cfg=cfg)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    assert reads == [cached]
    report = checkpointer.report
    assert report.path == cached and report.source == "torchvision"
    resnet = model.backbone.bottom_up.state_dict()
    assert len(report.loaded) == len(resnet)
    assert torch.equal(resnet["res3.0.conv1.weight"], state["layer2.0.conv1.weight"])
    # Nothing to fetch: no weights, or a resumed run (its checkpoint, not MODEL.WEIGHTS).
    out = cache.parent / "out"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000009.pth")
    resumed = load_cfg("configs/frcnn_r101.yaml", ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    assert check_weights(resumed, resume=True) is None
    assert check_weights(load_cfg("configs/mrcnn_r18_shapes.yaml")) is None


def test_a_cached_file_of_another_network_is_named_with_the_config_to_use(cache):
    # An R-18 where MSRA's R-50 is expected: both depths, the keys and the config for it.
    cached = weights_cache_path(MSRA_R50)
    seed(cached, torchvision.models.resnet18())
    cfg = load_cfg("configs/frcnn_r50.yaml", ["MODEL.DEVICE", "cpu"])
    with pytest.raises(WeightsArchitectureError) as error:
        check_weights(cfg, config_file="configs/frcnn_r50.yaml")
    message = str(error.value)
    assert message.startswith(
        f"MODEL.WEIGHTS {MSRA_R50} (the copy at {cached}) holds a ResNet-18 (basic blocks), not "
        "the config's network: MODEL.RESNETS.DEPTH is 50, the weights' 18;"
    )
    assert "Use configs/frcnn_r18.yaml (the config for these weights)" in message
    assert "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64" in message
    assert "\n" not in message


def test_a_local_file_of_another_depth_is_named_before_its_input_settings(tmp_path):
    # An R-18 file into frcnn_r50.yaml: one error naming the depths, not the input settings.
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsArchitectureError) as error:
        load_cfg("configs/frcnn_r50.yaml", ["MODEL.WEIGHTS", str(path)])
    message = str(error.value)
    assert "MODEL.RESNETS.DEPTH is 50, the weights' 18" in message
    assert "Use configs/frcnn_r18.yaml" in message and "INPUT.FORMAT" not in message


def _architecture(builder: str) -> dict:
    """What a torchvision or timm builder's file holds, read from its shapes (no weights made)."""
    import timm  # the test extra installs it

    with torch.device("meta"):
        make = getattr(torchvision.models, builder, None) or (lambda: timm.create_model(builder))
        return weights_from_object(make().state_dict(), builder).architecture


DEPTH = ["MODEL.RESNETS.DEPTH", "MODEL.RESNETS.RES2_OUT_CHANNELS"]
GROUPS = ["MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP"]


@pytest.mark.parametrize(
    "config, weights, expected",
    [
        ("frcnn_r50.yaml", "resnet18", DEPTH),
        ("frcnn_r18.yaml", "resnet50", DEPTH),
        ("frcnn_r101_3x.yaml", "resnext101_32x8d", GROUPS),
        ("frcnn_x101_32x8d_3x.yaml", "resnet101", GROUPS),
        ("frcnn_r50.yaml", "wide_resnet50_2", ["MODEL.RESNETS.WIDTH_PER_GROUP"]),
        ("frcnn_r18.yaml", "resnet18d", ["BACKBONES.STEM_TYPE", "BACKBONES.AVG_DOWN"]),
        ("frcnn_r152.yaml", "resnet152", []),
    ],
)
def test_architecture_conflicts_name_each_key(config, weights, expected):
    cfg = load_cfg(f"configs/{config}", ["BACKBONES.INPUT_FROM_WEIGHTS", "off"])
    assert [key for key, *_ in architecture_conflicts(cfg, _architecture(weights))] == expected


def test_the_stride_placement_is_checked_with_the_files_input_settings():
    # torchvision's R-50 (stride in the 3x3) where MSRA's (stride in the 1x1) is expected.
    cfg = load_cfg("configs/frcnn_r50.yaml")
    torchvision_r50 = PUBLISHED_WEIGHTS["detectron2://ImageNetPretrained/torchvision/R-50.pkl"]
    held, tv = torchvision_r50.architecture, SOURCES["torchvision"].input
    assert architecture_conflicts(cfg, held) == []
    assert architecture_conflicts(cfg, held, tv) == [("MODEL.RESNETS.STRIDE_IN_1X1", True, False)]


# ---------------------------------------------------------------------------------------------
# The tools, as a user runs them


def _offline(cache: Path) -> dict[str, str]:
    """The environment of a process with an empty download cache and no network, whatever this
    machine has: every download goes to a proxy that nobody serves."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    proxy = "http://127.0.0.1:9"  # the discard port: connection refused
    env.update(FVCORE_CACHE=str(cache), http_proxy=proxy, https_proxy=proxy, HTTPS_PROXY=proxy)
    env.update(HTTP_PROXY=proxy, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


@pytest.mark.parametrize("tool", ["demo", "visualize_predictions"])
def test_demo_and_visualize_check_the_weights_before_building(tool, cache, monkeypatch, capsys):
    module = load_script(ROOT / "tools" / f"{tool}.py", f"preflight_{tool}")
    run = "run_demo" if tool == "demo" else "visualize_predictions"
    monkeypatch.setattr(module, run, lambda *a, **k: pytest.fail("built a model"))
    common = ["--config-file", "configs/frcnn_r18.yaml", "--output", str(cache.parent / "out")]
    argv = [*common, "--input", "x.png"] if tool == "demo" else [*common, "--weights", R18]
    with pytest.raises(SystemExit) as exit_:
        module.main([*argv, "MODEL.DEVICE", "cpu"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [err[0]] and err[0].startswith(f"error: MODEL.WEIGHTS {R18} cannot be download")


@pytest.mark.slow
def test_offline_train_net_says_one_error_first_and_builds_nothing(tmp_path):
    # The config unchanged (its published address), on the shapes data; then --eval-only.
    shapes = ["DATASETS.TRAIN", '("shapes_train",)', "DATASETS.TEST", '("shapes_val",)']
    cases = [("configs/frcnn_r18.yaml", [], R18), ("configs/frcnn_r101.yaml", ["--eval-only"], "")]
    for config, flags, url in cases:
        proc = subprocess.run(
            [sys.executable, "tools/train_net.py", "--config-file", config, *flags]
            + [*shapes, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")],
            cwd=ROOT,
            env=dict(_offline(tmp_path / "cache"), DETECTRON2_DATASETS=str(tmp_path / "data")),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        first, *others = proc.stderr.splitlines()
        assert first.startswith(f"error: MODEL.WEIGHTS {url or 'detectron2://'}"), first
        assert str(tmp_path / "cache") in first and "Offline" in first
        assert not [line for line in others if line.startswith("error: ")]
        assert "GeneralizedRCNN" not in proc.stdout + proc.stderr  # no model was built
        assert not (tmp_path / "data" / "shapes").exists()  # nor the data generated


@pytest.mark.slow
def test_training_starts_from_the_published_weights_in_the_cache(tmp_path):
    # A user with internet, offline: the copy the download would have made, seeded.
    cached = tmp_path / "cache" / "models" / "resnet18-f37072fd.pth"
    state = seed(cached, torchvision.models.resnet18())
    data = []
    for split, n in (("train", 4), ("val", 2)):
        files = generate_shapes(tmp_path / "data", split, num_images=n)
        data += ["--dataset", f"tiny_{split}", *map(str, files)]
    output = tmp_path / "out"
    opts = [
        "DATASETS.TRAIN", '("tiny_train",)', "DATASETS.TEST", "()",
        "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", "configs/frcnn_r18.yaml"]
        + [*data, *opts],
        cwd=ROOT,
        env=_offline(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (output / "log.txt").read_text()
    assert f"Weights {R18}: the copy at {cached}" in log
    assert f"Loaded 100 tensors from {cached} (torchvision" in log  # the whole R-18
    # Training started from them: the frozen stem (MODEL.BACKBONE.FREEZE_AT 2) still holds them.
    final = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    stem = final["model"]["backbone.bottom_up.stem.conv1.weight"]
    assert torch.equal(stem, state["conv1.weight"])


# ---------------------------------------------------------------------------------------------
# Flags given after the KEY VALUE pairs


def test_flags_after_the_key_value_pairs_are_taken_as_flags():
    from backbones.engine.cli import parse_training_args

    args = parse_training_args(
        "DATASETS.TRAIN/TEST",
        ["--config-file", "c.yaml", "SOLVER.MAX_ITER", "10", "--dataset", "a", "a.json", "img",
         "OUTPUT_DIR", "out", "--resume", "SEED", "3", "--dataset", "b", "b.json", "img"],
    )  # fmt: skip
    assert args.opts == ["SOLVER.MAX_ITER", "10", "OUTPUT_DIR", "out", "SEED", "3"]
    assert args.dataset == [["a", "a.json", "img"], ["b", "b.json", "img"]] and args.resume
    lazy = parse_training_args(
        "names", ["--config-file", "c.py", "train.max_iter=4", "--eval-only"]
    )
    assert lazy.opts == ["train.max_iter=4"] and lazy.eval_only


def test_a_misplaced_flag_with_too_few_values_is_a_usage_error(capsys):
    from backbones.engine.cli import parse_training_args

    with pytest.raises(SystemExit) as exit_:
        parse_training_args("DATASETS.TRAIN/TEST", ["SOLVER.MAX_ITER", "10", "--dataset", "a"])
    assert exit_.value.code == 2 and "--dataset" in capsys.readouterr().err
