"""End-to-end runs of ``tools/train_net.py``, ``tools/visualize_predictions.py`` and
``tools/demo.py`` on CPU.

The demo config (``configs/mrcnn_r18_shapes.yaml``) shrunk to seconds: 8 training and 4
validation images of 128 px, slim heads, 4 iterations of batch 2. Each command runs in a fresh
Python, as a user runs it. The data is a user's COCO-format dataset to the tools: shapes images
and JSON written to a temporary folder and registered from the command line, by
``train_net.py --dataset`` or the ``BACKBONES.COCO_DATASETS`` config key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pycocotools.coco import COCO

from backbones.data import generate_shapes
from backbones.engine import load_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mrcnn_r18_shapes.yaml"
MAX_ITER = 4

TINY_OPTS = [
    "DATASETS.TRAIN", '("tiny_shapes_train",)',
    "DATASETS.TEST", '("tiny_shapes_val",)',
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.FPN.OUT_CHANNELS", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", str(MAX_ITER),
    "SOLVER.STEPS", "()",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """``{name: (json_file, image_root)}`` of the tiny COCO-format train and val sets."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    return {
        f"tiny_shapes_{split}": tuple(map(str, generate_shapes(root, split, num_images=n)))
        for split, n in (("train", 8), ("val", 4))
    }


def dataset_flags(tiny_data: dict[str, tuple[str, str]]) -> list[str]:
    """``train_net.py --dataset NAME JSON IMAGE_ROOT`` for each tiny set."""
    return [arg for name, files in tiny_data.items() for arg in ("--dataset", name, *files)]


def dataset_opts(tiny_data: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The tiny sets as the ``BACKBONES.COCO_DATASETS`` config key."""
    return "BACKBONES.COCO_DATASETS", repr([[name, *files] for name, files in tiny_data.items()])


def run_tool(
    tmp_path: Path, tool: str, *args: str, opts: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py`` with the tiny config; other data goes to ``tmp_path/datasets``."""
    # One OpenMP thread: the model is tiny, and threads that outnumber free cores (pytest-xdist,
    # a busy CI runner) spin-wait and made iterations up to 25x slower here.
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "tools" / f"{tool}.py"), "--config-file", str(CONFIG)]
    command += args
    start = time.perf_counter()
    proc = subprocess.run(
        [*command, *TINY_OPTS, *opts],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    print(f"{tool} {' '.join(args)}: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def copypaste_metrics(stdout: str) -> dict[str, dict[str, float]]:
    """Metrics from Detectron2's ``copypaste:`` lines (``print_csv_format``), by task."""
    lines = [
        line.split("copypaste: ", 1)[1] for line in stdout.splitlines() if "copypaste: " in line
    ]
    metrics = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            metrics[line[len("Task: ") :]] = dict(zip(names, map(float, values)))
    return metrics


def iterations(output_dir: Path) -> list[int]:
    """Training iterations recorded in ``metrics.json``, in file order (no deduplication)."""
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [r["iteration"] for r in map(json.loads, lines) if "total_loss" in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny training (with the evaluation after it), shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("trained")
    output_dir = tmp_path / "output"
    proc = run_tool(
        tmp_path, "train_net", *dataset_flags(tiny_data), opts=("OUTPUT_DIR", str(output_dir))
    )
    return output_dir, proc


def test_train_writes_checkpoints_metrics_and_curves(trained, tiny_data):
    output_dir, proc = trained
    for name in ("model_final.pth", "config.yaml", "log.txt", "loss_curve.png"):
        assert (output_dir / name).is_file(), name
    assert (output_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    # The --dataset registrations are part of the saved config, so that it runs again as is.
    saved = yaml.safe_load((output_dir / "config.yaml").read_text())
    assert [d[0] for d in saved["BACKBONES"]["COCO_DATASETS"]] == list(tiny_data)
    assert list(output_dir.glob("events.out.tfevents.*"))
    assert iterations(output_dir) == [MAX_ITER - 1]
    # log.txt is plain text: the config dumps without the console's colour codes.
    log = (output_dir / "log.txt").read_text()
    assert "Running with full config:" in log and "\x1b[" not in log
    # Evaluation after training: Trainer.build_evaluator with faster-coco-eval.
    assert "COCO evaluation of tiny_shapes_val with faster_coco_eval" in proc.stdout
    assert (output_dir / "inference" / "tiny_shapes_val" / "coco_instances_results.json").is_file()
    speed = re.search(r"Overall training speed: .* \(([\d.]+) s / it\)", proc.stdout)
    print(f"time per iteration: {speed.group(1)} s")


def test_resume_continues_iteration_numbering(trained, tiny_data, tmp_path):
    output_dir = tmp_path / "output"
    shutil.copytree(trained[0], output_dir)
    more = 2 * MAX_ITER
    proc = run_tool(
        tmp_path,
        "train_net",
        "--resume",
        *dataset_flags(tiny_data),
        opts=("OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", str(more), "DATASETS.TEST", "()"),
    )
    assert f"Starting training from iteration {MAX_ITER}" in proc.stdout
    assert iterations(output_dir) == [MAX_ITER - 1, more - 1]
    assert [r["iteration"] for r in load_metrics(output_dir / "metrics.json")][-1] == more - 1
    assert (output_dir / "last_checkpoint").read_text().strip() == "model_final.pth"


def test_eval_only_reports_bbox_and_segm(trained, tiny_data, tmp_path):
    output_dir = tmp_path / "output"
    proc = run_tool(
        tmp_path,
        "train_net",
        "--eval-only",
        *dataset_flags(tiny_data),
        # Keep every detection of the barely trained model, so that there is something to rate.
        opts=(
            "MODEL.WEIGHTS",
            str(trained[0] / "model_final.pth"),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(output_dir),
        ),
    )
    metrics = copypaste_metrics(proc.stdout)
    assert set(metrics) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(metrics[task]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert 0 <= metrics[task]["AP"] <= 100
    inference = output_dir / "inference" / "tiny_shapes_val"
    results = json.loads((inference / "coco_instances_results.json").read_text())
    assert results and {"bbox", "segmentation", "score"} <= set(results[0])
    saved = json.loads((inference / "coco_metrics.json").read_text())
    assert saved["bbox"]["AP"] == pytest.approx(metrics["bbox"]["AP"], abs=1e-3)


def test_two_cpu_processes(tiny_data, tmp_path):
    output_dir = tmp_path / "output"
    # The workers register the datasets too: --dataset travels in the config opts.
    proc = run_tool(
        tmp_path, "train_net", "--num-gpus", "2", "--dist-url", "auto", *dataset_flags(tiny_data),
        opts=("OUTPUT_DIR", str(output_dir)),
    )  # fmt: skip
    assert "World size: 2" in proc.stdout
    assert (output_dir / "log.txt.rank1").is_file()
    assert (output_dir / "model_final.pth").is_file()
    assert iterations(output_dir) == [MAX_ITER - 1]
    # Distributed inference: both ranks' predictions gathered and rated on rank 0.
    assert set(copypaste_metrics(proc.stdout)) == {"bbox", "segm"}


def test_visualize_predictions(trained, tiny_data, tmp_path):
    output_dir = tmp_path / "vis"
    proc = run_tool(
        tmp_path,
        "visualize_predictions",
        "--weights", str(trained[0] / "model_final.pth"),
        "--output", str(output_dir),
        "--num-images", "2",
        "--score-thresh", "0.0",
        opts=dataset_opts(tiny_data),
    )  # fmt: skip
    written = sorted(output_dir.glob("*.png"))
    assert len(written) == 2
    assert {str(p) for p in written} <= set(proc.stdout.splitlines())


def test_demo_with_trained_weights(trained, tiny_data, tmp_path):
    json_file, image_root = tiny_data["tiny_shapes_val"]
    output_dir = tmp_path / "demo"
    proc = run_tool(
        tmp_path,
        "demo",
        "--input", f"{image_root}/*.png",
        "--output", str(output_dir),
        "--confidence-threshold", "0.0",
        "--image-format", "jpg",
        opts=(
            *dataset_opts(tiny_data),
            "MODEL.WEIGHTS", str(trained[0] / "model_final.pth"),
            "TEST.DETECTIONS_PER_IMAGE", "10",  # fewer to draw
        ),
    )  # fmt: skip
    assert sorted(p.name for p in output_dir.glob("*.jpg")) == [f"{i:06d}.jpg" for i in range(1, 5)]
    predictions = json.loads((output_dir / "predictions.json").read_text())
    assert f"{len(predictions['annotations'])} instances on 4 images/frames" in proc.stdout
    # Class names and dataset ids of DATASETS.TEST (tiny_shapes_val), results loadable on its GT.
    assert [c["name"] for c in predictions["categories"]] == [
        "circle", "square", "triangle", "star"
    ]  # fmt: skip
    gt = COCO(json_file)
    assert {i["file_name"]: i["id"] for i in predictions["images"]} == {
        str(Path(image_root) / i["file_name"]): i["id"] for i in gt.dataset["images"]
    }
    results = gt.loadRes(predictions["annotations"])
    assert len(results.anns) == len(predictions["annotations"]) > 0
    assert set(results.getCatIds()) <= {1, 2, 3, 4}


def _visualize(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "visualize_predictions.py"), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip


def test_visualize_a_dataset_of_ones_own_with_the_runs_config(trained, tiny_data, tmp_path):
    """The run's OUTPUT_DIR/config.yaml and ``--dataset NAME JSON IMAGE_ROOT``; the mistakes a
    user makes with them are one error line each, before the model is built."""
    output_dir, _ = trained
    json_file, image_root = tiny_data["tiny_shapes_val"]
    base = ["--config-file", str(output_dir / "config.yaml")]
    base += ["--weights", str(output_dir / "model_final.pth"), "--score-thresh", "0.0"]
    proc = _visualize(
        tmp_path, *base, "--output", str(tmp_path / "vis"), "--num-images", "1",
        "--dataset", "my_val", json_file, image_root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "vis").glob("*.png"))) == 1
    for extra, status, message in (
        (["--dataset", "my_vall"], 2, "error: DATASETS.TEST: no dataset named my_vall"),
        (["--dataset", "a", "b"], 1, "error: --dataset a b: give NAME, or NAME JSON IMAGE_ROOT"),
        (
            ["MODEL.ROI_HEADS.NUM_CLASSES", "7"],
            2,
            "predicts 4 classes but the config has MODEL.ROI_HEADS.NUM_CLASSES 7: give the config "
            "the model was trained with (its OUTPUT_DIR/config.yaml)",
        ),
    ):
        proc = _visualize(tmp_path, *base, "--output", str(tmp_path / "bad"), *extra)
        assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
        assert not (tmp_path / "bad").exists()


def test_a_second_training_in_the_same_output_dir_is_refused_until_the_first_ends(
    tiny_data, tmp_path
):
    output_dir = tmp_path / "out"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
    command += dataset_flags(tiny_data) + TINY_OPTS + ["OUTPUT_DIR", str(output_dir)]
    first = subprocess.Popen(
        command + ["SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "2"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (output_dir / "last_checkpoint").is_file():  # training, with a checkpoint
            assert first.poll() is None and time.time() < deadline, "the first run stopped"
            time.sleep(0.5)
        second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        expected = f"error: OUTPUT_DIR {output_dir} is in use by another training (process "
        assert last.startswith(f"{expected}{first.pid} "), second.stderr[-3000:]
    finally:
        first.kill()
        first.wait()
    # The first is gone (killed: its lock went with it): --resume continues its checkpoints.
    third = subprocess.run(
        command + ["--resume", "SOLVER.MAX_ITER", "6", "TEST.EVAL_PERIOD", "0"],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    assert "is in use" not in third.stderr and "Loading from" in third.stdout


def _failing_run(injection: str, tiny_data, tmp_path: Path, *opts: str) -> str:
    """train_net.py on the tiny data into ``tmp_path/out``, in a Python that runs ``injection``
    first (the fault); asserts exit status 1 without a traceback and returns the last line."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [str(ROOT / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
    command += dataset_flags(tiny_data) + TINY_OPTS + ["OUTPUT_DIR", str(tmp_path / "out"), *opts]
    proc = subprocess.run(
        [sys.executable, "-c", injection, *command],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


# train_net.py as a user runs it, on a disk that fills up at the second checkpoint.
DISK_FULLS_AT_SECOND_SAVE = """
import errno, runpy, sys, torch
saves, save = [], torch.save
def full(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:
        f.write(b"partial")  # some bytes made it before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(obj, f, *args, **kwargs)
torch.save = full
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_at_a_checkpoint_is_one_error_and_keeps_the_previous_one(tiny_data, tmp_path):
    output_dir = tmp_path / "out"
    last = _failing_run(
        DISK_FULLS_AT_SECOND_SAVE, tiny_data, tmp_path, "SOLVER.CHECKPOINT_PERIOD", "2"
    )
    assert re.fullmatch(
        rf"error: cannot write the checkpoint {re.escape(str(output_dir))}/model_0000003\.pth: "
        r"the disk is full \(\d+ MiB free there; the checkpoint needs about \d+ MiB\)\. The "
        rf"previous checkpoint {re.escape(str(output_dir))}/model_0000001\.pth is whole: free "
        r"space, then --resume continues from it",
        last,
    ), last
    assert (output_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not list(output_dir.glob(".*.tmp")) and not (output_dir / "model_0000003.pth").exists()
    assert "model" in torch.load(output_dir / "model_0000001.pth", weights_only=False)


# train_net.py as a user runs it, with a data-loader worker killed (as the kernel's OOM killer
# does) while it reads its third image.
WORKER_KILLED = """
import os, runpy, signal, sys
import torch.utils.data
from detectron2.data import detection_utils
read, calls = detection_utils.read_image, []
def read_or_die(*args, **kwargs):
    calls.append(1)
    if torch.utils.data.get_worker_info() is not None and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return read(*args, **kwargs)
detection_utils.read_image = read_or_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_killed_data_loader_worker_is_named_in_one_line(tiny_data, tmp_path):
    last = _failing_run(WORKER_KILLED, tiny_data, tmp_path, "DATALOADER.NUM_WORKERS", "1")
    assert re.fullmatch(
        r"error: a data-loader worker \(process \d+\) (was killed by signal Killed|exited "
        r"unexpectedly) \(out of memory\?\); fewer workers \(DATALOADER\.NUM_WORKERS\) or a "
        r"smaller IMS_PER_BATCH need less memory, and --resume continues from the last checkpoint",
        last,
    ), last


def test_an_image_that_breaks_during_training_stops_with_its_name_or_is_skipped(
    tiny_data, tmp_path
):
    """A training image corrupted after the checks (they look for the files, not into them):
    BACKBONES.BAD_IMAGES stop (the default) names it in one line, skip trains on without it."""
    json_file, image_root = tiny_data["tiny_shapes_train"]
    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    (images / "000002.png").write_bytes(b"\\x89PNG broken")
    data = ["--dataset", "my_train", json_file, str(images)]
    data += ["--dataset", "tiny_shapes_val", *tiny_data["tiny_shapes_val"]]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
    command += data + TINY_OPTS + ["DATASETS.TRAIN", '("my_train",)', "TEST.EVAL_PERIOD", "0"]
    stop = subprocess.run(
        command + ["OUTPUT_DIR", str(tmp_path / "stop"), "DATALOADER.NUM_WORKERS", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert stop.returncode == 1 and "Traceback" not in stop.stderr, stop.stderr[-3000:]
    assert re.fullmatch(
        rf"error: {re.escape(str(images))}/000002\.png \(dataset my_train, image id 2, item 1 "
        r"of the training list\) cannot be read: .+\. Fix or remove the file, or set "
        r"BACKBONES\.BAD_IMAGES skip to train without such images",
        stop.stderr.strip().splitlines()[-1],
    ), stop.stderr[-3000:]
    skip = subprocess.run(
        command + ["OUTPUT_DIR", str(tmp_path / "skip"), "BACKBONES.BAD_IMAGES", "skip"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert skip.returncode == 0, skip.stderr[-3000:]
    assert (tmp_path / "skip" / "model_final.pth").is_file()
    assert "skipped " in skip.stdout + skip.stderr and "000002.png" in skip.stdout + skip.stderr


def test_sigterm_writes_a_checkpoint_of_the_iteration_and_resume_goes_on(tiny_data, tmp_path):
    """A scheduler's SIGTERM to a 2-process training (the process the user started): both
    processes finish the iteration, its checkpoint is written, one line says so, and --resume
    continues from it."""
    output_dir = tmp_path / "out"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
    command += ["--num-gpus", "2", *dataset_flags(tiny_data), *TINY_OPTS]
    command += ["OUTPUT_DIR", str(output_dir), "TEST.EVAL_PERIOD", "0"]
    training = subprocess.Popen(
        command + ["SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "100000"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        log = output_dir / "log.txt"
        while not (log.is_file() and "Starting training from iteration" in log.read_text()):
            assert training.poll() is None and time.time() < deadline, "the run stopped"
            time.sleep(0.5)
        time.sleep(3)  # a few iterations
        training.send_signal(signal.SIGTERM)
        out, err = training.communicate(timeout=120)
    finally:
        training.kill()
    assert training.returncode == 1 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"error: stopped by SIGTERM after iteration (\d+): wrote "
        rf"({re.escape(str(output_dir))}/model_(\d+)\.pth); --resume continues from it",
        last,
    )
    assert match, err[-3000:]
    iteration = int(match.group(1))
    assert int(match.group(3)) == iteration and Path(match.group(2)).is_file()
    assert (output_dir / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"
    resumed = subprocess.run(
        command + ["--resume", "SOLVER.MAX_ITER", str(iteration + 3)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Loading from {match.group(2)}" in resumed.stdout
    assert iterations(output_dir)[-1] == iteration + 2  # the next ones, to the end
