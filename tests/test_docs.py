"""The README and ``docs/*.md`` as a reader meets them: every Python block runs as written on a
CPU-only machine, every relative link resolves, and the README stays the front door.

A Python block preceded by ``<!-- not run: REASON -->`` is not run (and not collected); the reason
must be given. The blocks of one page run in order in one fresh interpreter, so later blocks use
the names of earlier ones; a failure names the page and the line of the failing block.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "datasets" / "README.md"]
# Detectron2's README is 2.5 KB; ours holds what it is, the two commands, a quick start and a map.
README_LIMIT = 12 * 1024
# Pages whose blocks take long enough to run only with the slow tests.
# ONNX export and two torchvision detectors: about 15 s on one core.
SLOW_PAGES = {"docs/export.md"}

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
MARKER_LIKE = re.compile(r"<!--\s*not[ -]run", re.I)
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$")
# "311 tests", "18 slow end-to-end tests": counts that go stale at every commit.
# Files of the checkout named in the pages (prose and code blocks) must exist.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:backbones|tools|configs|datasets|tests|docs)/[\w./-]*\w\.(?:py|yaml|md))\b"
)
TEST_FILE = re.compile(r"(?<![\w./-])(test_\w+\.py)\b")
TEST_COUNT = re.compile(r"\b\d[\d,]*\s+(?:[\w-]+\s+){0,3}tests?\b", re.I)


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    not_run: str | None  # the reason, when marked


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse(path: Path) -> tuple[list[Block], list[str], list[tuple[int, str]]]:
    """The fenced blocks of a page, the problems with its markers, and its prose lines
    (outside fences) with their line numbers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, problems, prose = [], [], []
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
            prose.append((i + 1, lines[i]))
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
    return blocks, problems, prose


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
    problems = [p for _, found, _ in PARSED.values() for p in found]
    for page, (blocks, _, _) in PARSED.items():
        for block in blocks:
            if block.not_run is not None and not block.not_run:
                problems.append(f"{page}:{block.line}: <!-- not run: --> gives no reason")
    assert not problems, "\n".join(problems)


def test_every_page_has_python_that_runs_or_says_why_not():
    # Guards the parser: a page with Python blocks at all has them found.
    total = sum(len(runnable(p)) for p in PARSED)
    assert total >= 10, f"only {total} runnable Python blocks found in {list(PARSED)}"


def _slugs(path: Path) -> set[str]:
    """GitHub's heading anchors of a page."""
    seen: Counter[str] = Counter()
    slugs = set()
    for _, line in PARSED[rel(path)][2]:
        heading = HEADING.match(line)
        if heading is None:
            continue
        text = re.sub(r"`|\[([^\]]*)\]\([^)]*\)", r"\1", heading.group("text").lower())
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        slugs.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return slugs


def test_relative_links_resolve():
    broken = []
    for page, (_, _, prose) in PARSED.items():
        here = (ROOT / page).parent
        for number, line in prose:
            for link in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                target = link.group("target")
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                file, _, anchor = target.partition("#")
                path = (here / file).resolve() if file else ROOT / page
                if not path.exists():
                    broken.append(f"{page}:{number}: {target} (no such file)")
                elif anchor and path.suffix == ".md" and anchor not in _slugs(path):
                    broken.append(f"{page}:{number}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_readme_is_the_front_door():
    readme = ROOT / "README.md"
    size = readme.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material to docs/"
    text = readme.read_text(encoding="utf-8")
    unlinked = [rel(p) for p in PAGES[1:] if f"]({rel(p)}" not in text]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_no_test_counts_in_prose():
    # They go stale at every commit; say what is tested and how long a run takes instead.
    found = [
        f"{page}:{number}: {m.group(0)!r}"
        for page, (_, _, prose) in PARSED.items()
        for number, line in prose
        for m in TEST_COUNT.finditer(line)
    ]
    assert not found, "\n".join(found)


def test_named_files_exist():
    missing = []
    for page in PARSED:
        text = (ROOT / page).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            for m in REPO_PATH.finditer(line):
                if not (ROOT / m.group(1)).exists():
                    missing.append(f"{page}:{number}: {m.group(1)}")
            for m in TEST_FILE.finditer(line):
                if not (ROOT / "tests" / m.group(1)).exists():
                    missing.append(f"{page}:{number}: tests/{m.group(1)}")
    assert not missing, "\n".join(missing)


def _tree_paths(block: Block) -> set[str]:
    """The files of an indented tree (``name/`` opens a folder), as paths."""
    paths, folders = set(), []  # (indent, name) of the open folders
    for line in block.code.splitlines():
        entry = re.match(r"^(\s*)(\S+)", line)
        if entry is None:
            continue
        indent, name = len(entry.group(1)), entry.group(2)
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if name.endswith("/"):
            folders.append((indent, name.rstrip("/")))
        elif name.endswith(".py"):
            paths.add("/".join([f for _, f in folders] + [name]))
    return paths


def test_design_tree_lists_every_module():
    # docs/design.md gives one line per module; a module added, moved or removed shows here.
    blocks, _, _ = PARSED["docs/design.md"]
    listed = _tree_paths(next(b for b in blocks if b.lang == "text"))
    # A subpackage's __init__.py (its re-exports) is its folder's line.
    actual = {
        rel(p)
        for folder in ("backbones", "tools", "dev")
        for p in (ROOT / folder).rglob("*.py")
        if p.name != "__init__.py" or p.parent == ROOT / "backbones"
    }
    unlisted, gone = sorted(actual - listed), sorted(listed - actual)
    assert not unlisted, f"not in the tree of docs/design.md: {unlisted}"
    assert not gone, f"in the tree of docs/design.md but not in the checkout: {gone}"
