"""dev/check_policies.py, the rules ``make lint`` checks besides style: on a small checkout that
breaks each rule once, every violation is found with its file and line, and nothing else is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import ROOT, load_dev_script

policies = load_dev_script("check_policies")

GOOD_TREE = """\
backbones/
  __init__.py   the public API
  specs.py      data
  modeling/
    resnet.py   the net
tools/
  train.py      a tool
"""


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def checkout(root: Path, changes: dict[str, str] | None = None) -> Path:
    """A small checkout that keeps every rule, with ``changes`` ({path: text}) written over it."""
    files = {
        "backbones/__init__.py": "from .modeling.resnet import ResNet\n",
        "backbones/specs.py": "DEPTHS = {}\n",
        "backbones/modeling/__init__.py": "from .resnet import ResNet\n",
        "backbones/modeling/resnet.py": "from ..specs import DEPTHS\n\n\nclass ResNet:\n    pass\n",
        "tools/train.py": "import backbones\n",
        "README.md": "# x\n\nSee [the design](docs/design.md#the-tree).\n",
        "docs/design.md": f"# Design\n\n## The tree\n\n```text\n{GOOD_TREE}```\n",
    }
    files.update(changes or {})
    write(root, files)
    return root


def violations(root: Path) -> list[str]:
    _, found, _ = policies.run_checks(root)
    return [str(v) for v in found]


def test_a_checkout_that_keeps_the_rules_passes(tmp_path):
    summaries, found, notes = policies.run_checks(checkout(tmp_path))
    assert found == [] and notes == []
    assert all(s.startswith("ok") for s in summaries) and len(summaries) == 7


def test_an_upward_import_is_found_even_inside_a_function(tmp_path):
    lazy = "def f():\n    from ..engine.trainer import Trainer\n    return Trainer\n"
    root = checkout(tmp_path, {"backbones/modeling/fpn.py": lazy})
    root.joinpath("backbones/engine").mkdir()
    write(root, {"backbones/engine/__init__.py": "", "backbones/engine/trainer.py": ""})
    found = [v for v in violations(root) if not v.startswith("docs/design.md")]
    assert found == [
        "backbones/modeling/fpn.py:2: backbones.modeling.fpn (layer 3) imports "
        "backbones.engine.trainer (layer 6): a module imports only lower layers or its own part"
    ]


def test_the_top_package_counts_as_the_engine_layer(tmp_path):
    root = checkout(tmp_path, {"backbones/modeling/fpn.py": "import backbones\n"})
    write(root, {"backbones/study/run.py": "from backbones import ResNet\n"})
    found = [v for v in violations(root) if not v.startswith("docs/design.md")]
    assert found == [
        "backbones/modeling/fpn.py:1: backbones.modeling.fpn (layer 3) imports the top package "
        "backbones (layer 6): a module imports only lower layers or its own part"
    ]  # study (layer 7) may import it


def test_a_cycle_inside_a_part_and_a_part_without_a_layer(tmp_path):
    root = checkout(
        tmp_path,
        {
            "backbones/modeling/a.py": "from . import b\n",
            "backbones/modeling/b.py": "\nfrom .a import x\n",
            "backbones/extras/thing.py": "X = 1\n",
        },
    )
    found = [v for v in violations(root) if not v.startswith("docs/design.md")]
    assert found == [
        "backbones/extras/thing.py:1: backbones/extras has no layer: add it to LAYERS in "
        "dev/check_policies.py and to docs/design.md's import layers",
        "backbones/modeling/b.py:2: import cycle: backbones.modeling.a -> backbones.modeling.b "
        "-> backbones.modeling.a",
    ]


def test_module_size_fails_past_the_hard_limit_and_lists_the_soft_one(tmp_path):
    hard, soft = policies.HARD_LINES, policies.SOFT_LINES
    root = checkout(
        tmp_path,
        {
            "backbones/specs.py": "X = 1\n" * (hard + 1),
            "tools/train.py": "X = 1\n" * (soft + 1),
        },
    )
    _, found, notes = policies.run_checks(root)
    assert [str(v) for v in found] == [
        f"backbones/specs.py:{hard + 1}: {hard + 1} lines, over {hard}: split it by concern"
    ]
    assert notes == [f"tools/train.py: {soft + 1} lines (over {soft}; fails over {hard})"]


def test_each_docs_rule(tmp_path):
    readme = (
        "# x\n\n[design](docs/design.md#the-tree), [gone](docs/gone.md), [anchor](#nowhere)\n"
        "`make test` runs 311 tests.\n\n```bash\npython tools/missing.py  # tests/test_nope.py\n"
        "```\n" + "x" * policies.README_LIMIT
    )
    tree = GOOD_TREE.replace("    resnet.py   the net\n", "    fpn.py      gone\n")
    root = checkout(
        tmp_path,
        {
            "README.md": readme,
            "docs/design.md": f"# Design\n\n## The tree\n\n```text\n{tree}```\n",
            "docs/other.md": "# Other\n\n12 slow end-to-end tests, ```not a fence``` here.\n"
            "mAP on VOC 2007 test, sizes in steps of 32 and test size 800; 1 test only.\n",
        },
    )
    found = violations(root)
    size = len(readme)
    assert sorted(found) == sorted(
        [
            f"README.md:1: {size} bytes, over {policies.README_LIMIT}: move reference material "
            "to docs/",
            "README.md:1: does not link docs/other.md",
            "README.md:3: docs/gone.md: no such file",
            "README.md:3: #nowhere: no heading #nowhere",
            "README.md:4: a test count in prose ('311 tests'): say what is tested and how long "
            "a run takes instead",
            "README.md:7: tools/missing.py: no such file",
            "README.md:7: tests/test_nope.py: no such file",
            "docs/other.md:3: a test count in prose ('12 slow end-to-end tests'): say what is "
            "tested and how long a run takes instead",
            "docs/other.md:4: a test count in prose ('1 test'): say what is tested and how long "
            "a run takes instead",
            "docs/design.md:5: backbones/modeling/resnet.py is not in the tree: add its line",
            "docs/design.md:10: backbones/modeling/fpn.py is in the tree but not in the checkout",
        ]
    )


def test_the_command_prints_each_check_and_fails_on_a_violation(tmp_path):
    root = checkout(tmp_path, {"backbones/modeling/fpn.py": "import backbones\n"})
    command = [sys.executable, str(ROOT / "dev" / "check_policies.py"), "--root", str(root)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("FAIL import layers: ")
    assert sum(line.startswith("ok   ") for line in lines) == 5
    assert "backbones/modeling/fpn.py:1: backbones.modeling.fpn (layer 3)" in proc.stdout
    assert lines[-1] == "2 policy violations (dev/check_policies.py)"  # and the design tree
