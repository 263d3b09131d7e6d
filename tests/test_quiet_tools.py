"""The tools' warning filter (``backbones.quiet``) as a user meets it: each pattern matches what
its dependency really says and hides it, our own warnings still show, and a tool run as a user
runs it (fresh process, Python's default filters) prints our messages on stderr and none of the
notices we hide.

A warning a dependency adds later is not ours to fail on: it is reported (a
``DependencyNotice`` in pytest's warnings summary) and the test passes. The tests themselves see
every warning (pytest.ini).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from backbones.quiet import THIRD_PARTY_LOG_RECORDS, THIRD_PARTY_WARNINGS

ROOT = Path(__file__).resolve().parents[1]
# make_resnet's own UserWarning for FrozenBN without weights (backbones/modeling/constructors.py).
OWN_WARNING = "UserWarning: make_resnet: norm='FrozenBN' with no weights"


class DependencyNotice(UserWarning):
    """Text on a tool's stderr that is neither ours nor one of the notices we hide."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


# ------------------------------------------------------------ the filter against the real notices

# In a fresh interpreter, with every warning shown: each dependency call that raises one of the
# notices we hide (the calls the tools make through Detectron2 and torch), then the same notices
# again after quiet_third_party_warnings(), and our own FrozenBN warning.
TRIGGERS = r"""
import builtins, json, logging, sys, warnings
warnings.simplefilter("always")
shown, logged = [], []
warnings.showwarning = lambda message, category, *rest: shown.append(
    [category.__name__, str(message)]
)
class Keep(logging.Handler):
    def emit(self, record):
        logged.append([record.name, record.getMessage()])
for name in json.loads(sys.argv[1]):
    logging.getLogger(name).addHandler(Keep())

import torch
import torch.distributed as dist
import detectron2.model_zoo  # imports pkg_resources
from detectron2.utils.tracing import is_fx_tracing

@torch.jit.script  # as fvcore and Detectron2 script their helpers
def add_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1

torch.meshgrid(torch.arange(2), torch.arange(2))  # as Detectron2's anchor generator
is_fx_tracing()  # as Detectron2's ROIPooler
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1), broadcast_buffers=False)
dist.destroy_process_group()
# Not cheap to cause for real (CUDA_HOME without a GPU; a process of a spawn failing): the
# dependency's own calls (torch/utils/cpp_extension.py, torch/multiprocessing/spawn.py).
logging.getLogger("torch.utils.cpp_extension").warning(
    "No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda"
)
logging.getLogger("torch.multiprocessing.spawn").warning(
    "Terminating process %s via signal SIGTERM", 12345
)
raised, records = list(shown), list(logged)

from backbones.quiet import quiet_third_party_warnings
quiet_third_party_warnings()
shown.clear(); logged.clear()
for category, message in raised:
    warnings.warn(message, getattr(builtins, category))
for name, message in records:
    logging.getLogger(name).warning(message)
from backbones import make_resnet
make_resnet(18, stem_out_channels=8, res2_out_channels=8)  # FrozenBN without weights
print(json.dumps(dict(raised=raised, records=records, shown=shown, logged=logged)))
"""


@pytest.fixture(scope="module")
def triggered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[str]]]:
    script = tmp_path_factory.mktemp("triggers") / "triggers.py"
    script.write_text(TRIGGERS)  # a file: TorchScript reads the function's source
    loggers = json.dumps(sorted({name for name, _ in THIRD_PARTY_LOG_RECORDS}))
    proc = subprocess.run(
        [sys.executable, str(script), loggers],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _filtered(pattern: str, category: type[Warning], shown: list[list[str]]) -> list[str]:
    # As the warnings module applies filterwarnings(message=...): case-insensitive, at the start.
    return [
        m
        for name, m in shown
        if name == category.__name__ and re.compile(pattern, re.I).match(m) is not None
    ]


@pytest.mark.parametrize(
    "pattern, category",
    [
        pytest.param(p, c, id=re.sub(r"\W+", "_", p).strip("_")[:40])
        for p, c in THIRD_PARTY_WARNINGS
    ],
)
def test_each_pattern_matches_its_dependency_and_hides_it(triggered, pattern, category):
    said = _filtered(pattern, category, triggered["raised"])
    raised = sorted({f"{name}: {message[:80]}" for name, message in triggered["raised"]})
    assert said, (
        f"no dependency raises {category.__name__} {pattern!r} any more; it raised {raised}. "
        "Update or remove the pattern in backbones/quiet.py"
    )
    assert not _filtered(pattern, category, triggered["shown"]), "shown after the filter"


@pytest.mark.parametrize("logger, start", THIRD_PARTY_LOG_RECORDS)
def test_each_log_record_is_dropped(triggered, logger, start):
    assert [logger, start] in [[n, m[: len(start)]] for n, m in triggered["records"]]
    assert not [m for n, m in triggered["logged"] if n == logger and m.startswith(start)]


def test_our_own_warning_is_not_filtered(triggered):
    ours = [m for c, m in triggered["shown"] if m.startswith("make_resnet: norm='FrozenBN'")]
    assert len(ours) == 1, triggered["shown"]


# ---------------------------------------------------------------- the tools as a user runs them


def _coco_files(folder: Path) -> list[str]:
    """A two-image ground truth and three results, boxes and polygons."""
    square = [[5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0, 25.0]]
    gt = {
        "images": [{"id": i, "height": 40, "width": 60, "file_name": f"{i}.png"} for i in (1, 2)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400.0}
            | {"iscrowd": 0, "segmentation": square}
            for i in (1, 2)
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [6, 6, 20, 20], "score": 0.7},
        {"image_id": 2, "category_id": 1, "bbox": [30, 10, 10, 10], "score": 0.2},
    ]
    for r in results:
        x, y, w, h = r["bbox"]
        r["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "dt.json").write_text(json.dumps(results))
    return ["--gt", str(folder / "gt.json"), "--dt", str(folder / "dt.json")]


# Each tool on a tiny input and what it prints on stderr (regexes, each matched once): the
# notices of fvcore and Detectron2 at import, TorchScript's (export), Detectron2's anchors and
# ROIPooler (a detector's FLOPs), pycocotools and faster-coco-eval (COCO), and
# DistributedDataParallel's in the two processes a pretraining starts (--num-gpus 2).
TOOLS: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "export_backbone": (
        lambda tmp: [
            "--depth", "18", "--set", "stem_out_channels=8", "--set", "res2_out_channels=8",
            "--size", "64", "64", "--output", str(tmp / "r18.pt"),
        ],
        [r"tools/export_backbone\.py:\d+: " + re.escape(OWN_WARNING)],
    ),
    "analyze_model": (
        lambda tmp: [
            "--config-file", str(ROOT / "configs" / "mrcnn_r18_shapes.yaml"), "--size", "64", "64",
        ],
        [r"configs/mrcnn_r18_shapes\.yaml: counting at 64x64\.\.\.$"],
    ),
    "coco_eval": (lambda tmp: _coco_files(tmp) + ["--iou-type", "bbox", "segm"], []),
    "pretrain_classifier": (
        lambda tmp: [
            "--depth", "18", "--output", str(tmp / "r18"), "--num-gpus", "2",
            "--synthetic-root", str(tmp / "synthetic"), "--num-classes", "4", "--num-train", "16",
            "--num-val", "8", "--image-size", "32", "--batch-size", "8", "--max-iter", "2",
            "stem_out_channels", "8", "res2_out_channels", "8",
        ],
        [],
    ),
}  # fmt: skip
# Two CPU processes, each importing torch and Detectron2: the slow one.
SLOW_TOOLS = {"pretrain_classifier"}
WARNING_LINE = re.compile(r"^\S.*?:\d+: \w+: ")  # file:line: Category: message
NEVER = ("Traceback (most recent call last)", "--- Logging error ---")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], subprocess.CompletedProcess]:
    """``run(tool)``: the tool run once, as a user runs it (cached for the module)."""
    done: dict[str, subprocess.CompletedProcess] = {}

    def run_tool(tool: str) -> subprocess.CompletedProcess:
        if tool not in done:
            tmp = tmp_path_factory.mktemp(tool)
            command = [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *TOOLS[tool][0](tmp)]
            done[tool] = subprocess.run(
                command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
            )
            assert done[tool].returncode == 0, done[tool].stderr[-3000:]
        return done[tool]

    return run_tool


def split_stderr(text: str, ours: list[str]) -> tuple[dict[str, int], list[str]]:
    """How many lines each pattern of ``ours`` matched, and the other entries: each other Python
    warning with the lines after it up to the next of ours (its source line, the rest of its
    message), and each other line."""
    counts = dict.fromkeys(ours, 0)
    others: list[str] = []
    owner = None  # whose warning the lines that follow belong to: "ours", "other" or None
    for line in text.splitlines():
        mine = [p for p in ours if re.search(p, line)]
        for pattern in mine:
            counts[pattern] += 1
        if mine:
            owner = "ours"
        elif WARNING_LINE.match(line):
            others.append(line)
            owner = "other"
        elif owner == "other":
            others[-1] += "\n" + line
        elif owner == "ours" and line.startswith("  "):
            continue  # the source line Python shows under our warning
        elif line.strip():
            others.append(line)
            owner = None
    return counts, others


@pytest.mark.parametrize(
    "tool", [pytest.param(t, marks=[pytest.mark.slow] if t in SLOW_TOOLS else []) for t in TOOLS]
)
def test_a_tool_prints_our_messages_and_none_of_the_hidden_notices(run, tool):
    proc = run(tool)
    for pattern, _ in THIRD_PARTY_WARNINGS:
        found = re.search(pattern, proc.stderr + proc.stdout, re.I)
        assert found is None, f"{tool} printed a notice we hide: {found.group(0)!r}"
    for _, start in THIRD_PARTY_LOG_RECORDS:
        assert start not in proc.stderr + proc.stdout, f"{tool} logged {start!r}"
    counts, others = split_stderr(proc.stderr, TOOLS[tool][1])
    assert all(n == 1 for n in counts.values()), f"{tool}: {counts}\n{proc.stderr[-3000:]}"
    for entry in others:
        assert not any(text in entry for text in NEVER), f"{tool}:\n{proc.stderr[-3000:]}"
        # Not ours and not one we hide: a dependency's, reported for a look, not a failure.
        warnings.warn(f"{tool} printed on stderr: {entry}", DependencyNotice)


def test_our_own_warnings_still_show(run):
    assert OWN_WARNING in run("export_backbone").stderr


def test_split_stderr_tells_ours_from_a_dependency():
    stderr = (
        "/x/tools/demo.py:3: UserWarning: make_resnet: ours\n  model = make()\n"
        "/lib/dep.py:9: DeprecationWarning: dep says\nsomething more\n  call()\n"
        "configs/a.yaml: counting...\n"
        "plain line\n"
    )
    counts, others = split_stderr(stderr, [r"UserWarning: make_resnet: ", r"counting\.\.\."])
    assert counts == {r"UserWarning: make_resnet: ": 1, r"counting\.\.\.": 1}
    assert others == [
        "/lib/dep.py:9: DeprecationWarning: dep says\nsomething more\n  call()",
        "plain line",
    ]


# ------------------------------------------------------------ library use, as the README shows it


def test_the_readme_snippets_print_nothing_but_what_they_ask_for(tmp_path):
    """The README's Python blocks in a fresh interpreter with Python's default filters: on
    stderr only our CUDA fallback line (the config asks for cuda; this machine has none)."""
    from test_docs import runnable

    code = "\n".join(block.code for block in runnable("README.md"))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(_env(), DETECTRON2_DATASETS=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        "MODEL.DEVICE=cuda, but this machine has no CUDA: running on the CPU instead (add "
        "MODEL.DEVICE cpu to choose it and hide this line)"
    ], proc.stderr
