"""The README and ``docs/*.md`` as a reader meets them: every Python block runs as written on a
CPU-only machine, and a block that cannot says why.

A Python block preceded by ``<!-- not run: REASON -->`` is not run (and not collected); the reason
must be given. The blocks of one page run in order in one fresh interpreter, so later blocks use
the names of earlier ones; a failure names the page and the line of the failing block. The rules
for the pages' text (links, named files, the design tree, the README's size, no test counts) are
checked by ``make lint`` (dev/check_policies.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "datasets" / "README.md"]
# Pages whose blocks take long enough to run only with the slow tests.
# ONNX export and two torchvision detectors: about 15 s on one core.
SLOW_PAGES = {"docs/export.md"}

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
MARKER_LIKE = re.compile(r"<!--\s*not[ -]run", re.I)


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    not_run: str | None  # the reason, when marked


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a page and the problems with its markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, problems = [], []
    pending: tuple[int, str] | None = None  # a marker waiting for its block
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            marker = NOT_RUN.match(lines[i])
            if marker is not None:
                if pending is not None:
                    problems.append(f"{rel(path)}:{pending[0]}: marker without a Python block")
                pending = (i + 1, marker.group("reason").strip())
            elif MARKER_LIKE.search(re.sub(r"`[^`]*`", "", lines[i])):
                problems.append(
                    f"{rel(path)}:{i + 1}: write the marker as <!-- not run: REASON -->"
                )
            elif lines[i].strip() and pending is not None:
                problems.append(f"{rel(path)}:{pending[0]}: marker not followed by a Python block")
                pending = None
            i += 1
            continue
        indent, lang, start = len(fence.group("indent")), fence.group("lang"), i + 1
        i += 1
        body = []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            # A fence indented in a list item: its lines lose that indent.
            line = lines[i]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            i += 1
        if i == len(lines):
            problems.append(f"{rel(path)}:{start}: unclosed code fence")
        i += 1  # the closing fence
        reason = None
        if pending is not None:
            if lang != "python":
                problems.append(
                    f"{rel(path)}:{pending[0]}: marker before a {lang or 'plain'} block"
                )
            reason = pending[1]
            pending = None
        blocks.append(Block(rel(path), start + 1, lang, "\n".join(body) + "\n", reason))
    if pending is not None:
        problems.append(f"{rel(path)}:{pending[0]}: marker at the end of the page")
    return blocks, problems


PARSED = {rel(page): parse(page) for page in PAGES}


def runnable(page: str) -> list[Block]:
    return [b for b in PARSED[page][0] if b.lang == "python" and b.not_run is None]


# Runs in the fresh interpreter: the blocks in order, in one namespace, compiled under the
# page's name with their real line numbers so that tracebacks point into the page.
DRIVER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    code = "\n" * (block["line"] - 1) + block["code"]
    try:
        exec(compile(code, block["page"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"\nthe block at {block['page']}:{block['line']} failed", file=sys.stderr)
        sys.exit(1)
"""


def _page_param(page: str):
    marks = [pytest.mark.slow] if page in SLOW_PAGES else []
    return pytest.param(page, marks=marks, id=page)


@pytest.mark.parametrize("page", [_page_param(p) for p in PARSED if runnable(p)])
def test_python_blocks_run_as_written(page, tmp_path):
    blocks = [vars(b) for b in runnable(page)]
    env = dict(
        os.environ,
        MPLBACKEND="Agg",
        # Blocks write into folders they make with tempfile; datasets generated under a
        # default root land here too, never in the checkout.
        TMPDIR=str(tmp_path),
        DETECTRON2_DATASETS=str(tmp_path / "datasets"),
        CUDA_VISIBLE_DEVICES="",  # as on a CPU-only machine
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(blocks),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{page}:\n{proc.stderr[-6000:]}"


def test_not_run_markers_give_a_reason_and_precede_a_python_block():
    problems = [p for _, found in PARSED.values() for p in found]
    for page, (blocks, _) in PARSED.items():
        for block in blocks:
            if block.not_run is not None and not block.not_run:
                problems.append(f"{page}:{block.line}: <!-- not run: --> gives no reason")
    assert not problems, "\n".join(problems)


def test_every_page_has_python_that_runs_or_says_why_not():
    # Guards the parser: a page with Python blocks at all has them found.
    total = sum(len(runnable(p)) for p in PARSED)
    assert total >= 10, f"only {total} runnable Python blocks found in {list(PARSED)}"


def _blocks(lang: str) -> list[Block]:
    return [b for blocks, _ in PARSED.values() for b in blocks if b.lang == lang]


# A script run by its path finds the system Python through its shebang, or is not executable.
DIRECT_SCRIPT = re.compile(r"^\s*(\$\s+)?(python3?\s+)?(?P<path>(tools|datasets|dev)/\S+\.py)\b")


def test_shell_blocks_run_scripts_with_the_projects_python():
    problems = []
    for b in _blocks("bash"):
        lines = b.code.splitlines()
        for i, line in enumerate(lines):
            m = DIRECT_SCRIPT.match(line)
            continued = i > 0 and lines[i - 1].rstrip().endswith("\\")  # torchrun's argument
            # The bootstrap: setup_env.py makes the venv, with the system's Python 3.
            if m and not continued and not line.lstrip().startswith("python3 tools/setup_env.py"):
                problems.append(
                    f"{b.page}:{b.line + i}: {line.strip()!r}: run it as .venv/bin/python "
                    f"{m.group('path')}"
                )
    assert not problems, "\n".join(problems)


def test_yaml_blocks_merge_into_the_config(tmp_path):
    """Each YAML config block merges into Detectron2's config with ours, as a file would (its
    ``_BASE_`` read from configs/): a YAML flow mapping split at a comma fails here."""
    from detectron2.config import get_cfg

    from backbones.config import add_backbones_config

    blocks = _blocks("yaml")
    assert len(blocks) >= 4, [b.page for b in blocks]
    for index, block in enumerate(blocks):
        text = re.sub(
            r'^_BASE_:\s*"?([^"\s]+)"?', lambda m: f'_BASE_: "{ROOT / "configs" / m.group(1)}"',
            block.code, flags=re.M,
        )  # fmt: skip
        path = tmp_path / f"block{index}.yaml"
        path.write_text(text)
        cfg = add_backbones_config(get_cfg())
        try:
            cfg.merge_from_file(str(path))
        except Exception as e:  # noqa: BLE001 - any failure, named with its block
            pytest.fail(f"{block.page}:{block.line}: {type(e).__name__}: {e}")
