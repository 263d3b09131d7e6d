#!/usr/bin/env python3
"""The project's rules that are not behaviour, checked by ``make lint``: import layers, module
size, the README as the front door, the docs' prose, the design tree, named files and links.

Standard library only; it reads the files and runs none of them. Prints each check with what it
covered, then each violation as ``FILE:LINE: message``; exit status 1 when there is any.
Behaviour stays in the tests (tests/test_docs.py runs the docs' Python blocks). Examples::

    python dev/check_policies.py
    python dev/check_policies.py --root /path/to/checkout
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each part of the package and its layer, numbered as in docs/design.md ("Import layers"): a
# module imports only from lower layers or from its own part, lazily or not. A new part needs a
# row here and a line there.
LAYERS = {
    "specs": 1,
    "errors": 1,
    "progress": 1,
    "quiet": 1,
    "coco_json": 1,
    "weights": 2,
    "modeling": 3,
    "config": 4,
    "checkpoint": 5,
    "data": 5,
    "evaluation": 5,
    "engine": 6,
    "inference": 6,
    "export": 6,
    "benchmark": 6,
    "study": 7,
}
# ``import backbones`` itself: its __init__ imports the core up to the engine (lazily).
TOP_PACKAGE_LAYER = 6

# Module size, in lines. Past SOFT_LINES a module is listed (a hint to split it by concern);
# past HARD_LINES it fails. The hard limit sits well above today's largest module, so that the
# rule does not bend the design (splitting a module only to pass a line count); Detectron2's
# modeling/backbone/resnet.py is about 700 lines.
SOFT_LINES = 500
HARD_LINES = 800
SIZED_FOLDERS = ("backbones", "tools", "dev", "datasets")

# Detectron2's README is 2.5 KB; ours holds what it is, the two commands, a quick start, a map.
README_LIMIT = 12 * 1024

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
FENCE_END = re.compile(r"^\s*```\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$")
# "311 tests", "18 slow end-to-end tests", "1 test": counts that go stale at every commit. A
# number before a singular "test" is a split or a size ("VOC 2007 test", "32 and test size").
TEST_COUNT = re.compile(r"\b\d[\d,]*\s+(?:[\w-]+\s+){0,3}tests\b|\b1\s+test\b", re.I)
# Files of the checkout named in the pages (prose and code blocks) must exist.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:backbones|tools|configs|datasets|tests|docs|dev)/[\w./-]*\w\.(?:py|yaml|md))\b"
)
TEST_FILE = re.compile(r"(?<![\w./-])(test_\w+\.py)\b")


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the checkout
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Page:
    """A Markdown page: its prose lines (outside code fences) and its fenced blocks."""

    path: str
    text: str
    prose: list[tuple[int, str]]  # (1-based line, text)
    blocks: list[tuple[int, str, str]]  # (line of the opening fence, language, code)


def read_page(root: Path, path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").splitlines()
    prose, blocks = [], []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not FENCE_END.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        blocks.append((start, fence.group("lang"), "\n".join(body)))
    return Page(path.relative_to(root).as_posix(), "\n".join(lines), prose, blocks)


def doc_pages(root: Path) -> list[Page]:
    """README.md, docs/*.md and datasets/README.md."""
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    paths += [p for p in [root / "datasets" / "README.md"] if p.exists()]
    return [read_page(root, p) for p in paths if p.exists()]


# ---------------------------------------------------------------- the package's import layers


def package_modules(package: Path) -> dict[str, Path]:
    """Dotted names below the package (``modeling.resnet``; ``modeling`` for its __init__), the
    top __init__ left out (it re-exports the public API from every part)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts == ("__init__",):
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def module_imports(
    package: Path, name: str, path: Path, modules: dict[str, Path]
) -> list[tuple[str, int]]:
    """The package's modules that ``path`` imports anywhere in it (inside functions too), as
    (dotted name below the package, line); ``""`` is the top package itself."""
    top = package.name
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == top:
                module = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # "from . import blocks" names a module
                candidate = f"{module}.{alias.name}" if module else alias.name
                found.append((candidate if candidate in modules else module, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    found.append((alias.name.partition(".")[2], node.lineno))
    return [(target, line) for target, line in found if target != name]


def check_layers(
    root: Path, package: Path, layers: dict[str, int] = LAYERS
) -> tuple[str, list[Violation]]:
    """Every import inside the package points down the layers or stays in its part; no import
    cycle inside a part."""
    modules = package_modules(package)
    graph = {n: module_imports(package, n, p, modules) for n, p in modules.items()}
    violations = []

    def where(name: str, line: int) -> tuple[str, int]:
        return modules[name].relative_to(root).as_posix(), line

    unknown = sorted({n.split(".")[0] for n in modules} - set(layers))
    for part in unknown:
        first = min(n for n in modules if n.split(".")[0] == part)
        violations.append(
            Violation(
                *where(first, 1),
                f"{package.name}/{part} has no layer: add it to LAYERS in dev/check_policies.py "
                "and to docs/design.md's import layers",
            )
        )
    count = 0
    for name, targets in graph.items():
        part = name.split(".")[0]
        if part not in layers:
            continue
        for target, line in targets:
            count += 1
            target_part = target.split(".")[0]
            if target_part == part and target:
                continue
            target_layer = TOP_PACKAGE_LAYER if not target else layers.get(target_part)
            if target_layer is None or target_layer < layers[part]:
                continue  # an unknown part is reported above
            shown = f"{package.name}.{target}" if target else f"the top package {package.name}"
            violations.append(
                Violation(
                    *where(name, line),
                    f"{package.name}.{name} (layer {layers[part]}) imports {shown} (layer "
                    f"{target_layer}): a module imports only lower layers or its own part",
                )
            )

    # Cycles inside a part (between parts, the layers already rule them out).
    seen_cycles: set[frozenset[str]] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycle = trail[trail.index(name) :]
            if frozenset(cycle) not in seen_cycles:
                seen_cycles.add(frozenset(cycle))
                line = next(ln for t, ln in graph[cycle[-1]] if t == name)
                chain = " -> ".join(f"{package.name}.{n}" for n in cycle + [name])
                violations.append(Violation(*where(cycle[-1], line), f"import cycle: {chain}"))
            return
        for target, _ in graph.get(name, ()):
            same_part = target.split(".")[0] == name.split(".")[0]
            # A module of a subpackage importing its own package's __init__ is not a cycle.
            if target in graph and same_part and not name.startswith(target + "."):
                visit(target, trail + [name])

    for name in graph:
        visit(name, [])
    summary = (
        f"import layers: {len(modules)} modules of {package.name}/, {count} imports of its own "
        f"modules (inside functions too), each pointing down the layers; no cycle inside a part"
    )
    return summary, violations


def check_module_size(
    root: Path, folders: tuple[str, ...] = SIZED_FOLDERS
) -> tuple[str, list[Violation], list[str]]:
    """Modules past HARD_LINES fail; those past SOFT_LINES are listed (not a failure)."""
    violations, notes = [], []
    paths = [p for folder in folders for p in sorted((root / folder).rglob("*.py"))]
    for path in paths:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        shown = path.relative_to(root).as_posix()
        if lines > HARD_LINES:
            violations.append(
                Violation(
                    shown, HARD_LINES + 1, f"{lines} lines, over {HARD_LINES}: split it by concern"
                )
            )
        elif lines > SOFT_LINES:
            notes.append(f"{shown}: {lines} lines (over {SOFT_LINES}; fails over {HARD_LINES})")
    summary = (
        f"module size: {len(paths)} modules under {', '.join(f + '/' for f in folders)}; "
        f"over {HARD_LINES} lines fails, over {SOFT_LINES} is listed"
    )
    return summary, violations, notes


# ---------------------------------------------------------------- the docs


def check_readme(root: Path, pages: list[Page]) -> tuple[str, list[Violation]]:
    """The README stays under README_LIMIT bytes and links every other page."""
    readme = root / "README.md"
    violations = []
    size = readme.stat().st_size
    if size > README_LIMIT:
        violations.append(
            Violation(
                "README.md",
                1,
                f"{size} bytes, over {README_LIMIT}: move reference material to docs/",
            )
        )
    text = readme.read_text(encoding="utf-8")
    for page in pages:
        if page.path != "README.md" and f"]({page.path}" not in text:
            violations.append(Violation("README.md", 1, f"does not link {page.path}"))
    return f"README: at most {README_LIMIT} bytes ({size} now), links every page", violations


def check_test_counts(pages: list[Page]) -> tuple[str, list[Violation]]:
    """No test counts in prose: they go stale at every commit."""
    violations = [
        Violation(
            page.path,
            number,
            f"a test count in prose ({m.group(0)!r}): say what is tested and how long a run "
            "takes instead",
        )
        for page in pages
        for number, line in page.prose
        for m in TEST_COUNT.finditer(line)
    ]
    return f"no test counts in the prose of {len(pages)} pages", violations


def heading_anchors(page: Page) -> set[str]:
    """GitHub's heading anchors of a page."""
    seen: Counter[str] = Counter()
    slugs = set()
    for _, line in page.prose:
        heading = HEADING.match(line)
        if heading is None:
            continue
        text = re.sub(r"`|\[([^\]]*)\]\([^)]*\)", r"\1", heading.group("text").lower())
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        slugs.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return slugs


def check_links(root: Path, pages: list[Page]) -> tuple[str, list[Violation]]:
    """Every relative link of the prose resolves, with its #anchor on Markdown pages."""
    by_path = {root / p.path: p for p in pages}
    violations, count = [], 0
    for page in pages:
        here = (root / page.path).parent
        for number, line in page.prose:
            for link in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                target = link.group("target")
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                count += 1
                file, _, anchor = target.partition("#")
                path = (here / file).resolve() if file else root / page.path
                if not path.exists():
                    violations.append(Violation(page.path, number, f"{target}: no such file"))
                    continue
                if anchor and path.suffix == ".md":
                    linked = by_path.get(path) or read_page(root, path)
                    if anchor not in heading_anchors(linked):
                        violations.append(
                            Violation(page.path, number, f"{target}: no heading #{anchor}")
                        )
    return f"relative links: {count} in the pages' prose, each resolving", violations


def check_named_files(root: Path, pages: list[Page]) -> tuple[str, list[Violation]]:
    """Files of the checkout named in the pages (prose and code blocks) exist; link targets
    are check_links' part."""
    violations, count = [], 0
    for page in pages:
        for number, line in enumerate(page.text.splitlines(), start=1):
            line = re.sub(r"\]\([^)\s]*", "](", line)
            for m in REPO_PATH.finditer(line):
                count += 1
                if not (root / m.group(1)).exists():
                    violations.append(Violation(page.path, number, f"{m.group(1)}: no such file"))
            for m in TEST_FILE.finditer(line):
                count += 1
                if not (root / "tests" / m.group(1)).exists():
                    violations.append(
                        Violation(page.path, number, f"tests/{m.group(1)}: no such file")
                    )
    return f"named files: {count} mentions of checkout files, each existing", violations


def tree_paths(code: str) -> Iterator[tuple[int, str]]:
    """The .py files of an indented tree (``name/`` opens a folder), as (line offset, path)."""
    folders: list[tuple[int, str]] = []  # (indent, name) of the open folders
    for offset, line in enumerate(code.splitlines()):
        entry = re.match(r"^(\s*)(\S+)", line)
        if entry is None:
            continue
        indent, name = len(entry.group(1)), entry.group(2)
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if name.endswith("/"):
            folders.append((indent, name.rstrip("/")))
        elif name.endswith(".py"):
            yield offset, "/".join([f for _, f in folders] + [name])


def check_design_tree(
    root: Path, pages: list[Page], folders: tuple[str, ...] = ("backbones", "tools", "dev")
) -> tuple[str, list[Violation]]:
    """The tree of docs/design.md lists every module (a subpackage's __init__.py is its
    folder's line), and nothing that is gone."""
    page = next((p for p in pages if p.path == "docs/design.md"), None)
    tree = next((b for b in page.blocks if b[1] == "text"), None) if page else None
    if tree is None:
        return "design tree", [Violation("docs/design.md", 1, "no ```text tree of the modules")]
    start, _, code = tree
    listed = {path: start + 1 + offset for offset, path in tree_paths(code)}
    actual = {
        p.relative_to(root).as_posix()
        for folder in folders
        for p in (root / folder).rglob("*.py")
        if p.name != "__init__.py" or p.parent == root / folders[0]
    }
    violations = [
        Violation("docs/design.md", start, f"{path} is not in the tree: add its line")
        for path in sorted(actual - set(listed))
    ]
    violations += [
        Violation("docs/design.md", listed[path], f"{path} is in the tree but not in the checkout")
        for path in sorted(set(listed) - actual)
    ]
    return f"design tree: docs/design.md lists the {len(actual)} modules", violations


# ---------------------------------------------------------------- all of them


def run_checks(root: Path) -> tuple[list[str], list[Violation], list[str]]:
    """Every check on the checkout at ``root``: (summaries, violations, notes)."""
    pages = doc_pages(root)
    checks: list[Callable[[], tuple]] = [
        lambda: check_layers(root, root / "backbones"),
        lambda: check_module_size(root),
        lambda: check_readme(root, pages),
        lambda: check_test_counts(pages),
        lambda: check_links(root, pages),
        lambda: check_named_files(root, pages),
        lambda: check_design_tree(root, pages),
    ]
    summaries, violations, notes = [], [], []
    for check in checks:
        summary, found, *more = check()
        summaries.append(f"{'FAIL' if found else 'ok  '} {summary}")
        violations += found
        notes += [n for extra in more for n in extra]
    return summaries, violations, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    args = parser.parse_args(argv)
    summaries, violations, notes = run_checks(args.root.resolve())
    print("\n".join(summaries))
    for note in notes:
        print(f"note: {note}")
    for violation in violations:
        print(violation)
    if violations:
        print(f"{len(violations)} policy violations (dev/check_policies.py)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
