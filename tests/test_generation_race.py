"""The embedded data sets created by several processes at once (``torchrun`` on a fresh
checkout): one process generates each set under a lock, the others wait with a message and then
read the complete set; no reader sees a missing file (issue 21, item 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from detectron2.data import DatasetCatalog
from backbones.data import register_shapes
train, _ = register_shapes(sys.argv[1], name="race", num_train=40, num_val=4)
print(len(DatasetCatalog.get(train)))
"""

SYNTHETIC = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from backbones.study.data.synthetic_classes import ensure_synthetic_split
import numpy as np
folder = ensure_synthetic_split(sys.argv[1], "train", num_images=400, num_classes=4, image_size=32)
print(len(np.load(folder / "labels.npy")))
"""


def run_at_once(script: str, root: Path, processes: int = 3) -> list[subprocess.CompletedProcess]:
    started = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for process in started:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def test_shapes_created_by_three_processes_at_once_are_generated_once(tmp_path):
    results = run_at_once(SHAPES, tmp_path / "shapes")
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    assert [r.stdout.split() for r in results] == [["40"]] * 3
    logs = [r.stderr for r in results]
    assert sum("Generating 40 images" in log for log in logs) == 1, logs
    # The others waited for it (saying so) or came after it was complete; none failed.
    assert all("Traceback" not in log for log in logs), logs


def test_the_synthetic_set_created_by_three_processes_at_once_is_drawn_once(tmp_path):
    results = run_at_once(SYNTHETIC, tmp_path / "synthetic")
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    assert [r.stdout.split() for r in results] == [["400"]] * 3
    assert sum("Generating 400 synthetic" in r.stderr for r in results) == 1
