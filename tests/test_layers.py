"""The package's shape: imports point one way between layers (lazily or not), no cycles inside a
subpackage, modules stay small, and the public API at the top imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import backbones

PACKAGE = Path(backbones.__file__).parent
# Each part of the package and its layer: a module imports only from lower layers, or from its
# own part (docs/design.md explains the layers).
LAYERS = {
    "specs": 0,
    "errors": 0,
    "progress": 0,
    "weights": 1,
    "modeling": 2,
    "config": 3,
    "checkpoint": 4,
    "data": 4,
    "evaluation": 4,
    "engine": 5,
    "inference": 5,
    "export": 5,
    "benchmark": 5,
    "quiet": 0,
    "coco_json": 0,
    "study": 6,
}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted names below ``backbones`` (``modeling.resnet``), the top ``__init__`` left out."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """The ``backbones`` modules ``path`` imports anywhere in it, as dotted names below the
    package (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "backbones":
                module = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # "from . import blocks" names a module
                candidate = f"{module}.{alias.name}" if module else alias.name
                targets.add(candidate if candidate in MODULES else module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "backbones":
                    targets.add(alias.name.partition(".")[2])
    return {t for t in targets if t and t != name}


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_layers(name):
    part = name.split(".")[0]
    assert part in LAYERS, f"backbones/{part}: give it a layer in LAYERS and docs/design.md"
    for target in _imports(name, MODULES[name]):
        target_part = target.split(".")[0]
        assert target_part == part or LAYERS[target_part] < LAYERS[part], (
            f"backbones.{name} (layer {LAYERS[part]}) imports backbones.{target} "
            f"(layer {LAYERS[target_part]})"
        )


def test_no_import_cycle_inside_a_part():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name) :]))
        for target in graph.get(name, ()):
            if target.split(".")[0] == name.split(".")[0] and not name.startswith(target + "."):
                visit(target, trail + [name])

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"backbones.{name} has {lines} lines: split it by concern"


def test_public_api():
    required = {
        "add_backbones_config",
        "make_resnet",
        "make_resnet_fpn",
        "BackbonesCheckpointer",
        "read_weights",
        "load_weights",
        "DEPTHS",
        "PRESETS",
        "load_cfg",
    }
    assert required <= set(backbones.__all__)
    assert len(set(backbones.__all__)) == len(backbones.__all__)
    for name in backbones.__all__:
        assert getattr(backbones, name) is not None, name
