#!/usr/bin/env python3
"""Run Detectron2's own tests with its built-in ResNet backbones, then with ours swapped in (both
memory formats), offline, and list the tests that pass with the former and not with ours.

Each run is a pytest subprocess with dev/detectron2_swap_plugin.py; the exit status is 1 when
that list is not empty. Examples:
    python dev/run_detectron2_tests.py --detectron2-src ~/detectron2
    python dev/run_detectron2_tests.py --detectron2-src ~/detectron2 \\
        --tests tests/modeling/test_backbone.py --output output/d2_tests -- -k scriptability
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = (
    "tests/modeling/test_backbone.py",
    "tests/modeling/test_model_e2e.py",
    "tests/modeling/test_rpn.py",
    "tests/modeling/test_roi_heads.py",
    "tests/test_model_analysis.py",
    "tests/test_export_torchscript.py",
    "tests/test_checkpoint.py",
    "tests/test_engine.py",
    "tests/test_model_zoo.py",
)
# Run name -> the plugin's environment variables.
RUNS = {
    "stock": {"BACKBONES_SWAP": "stock"},
    "ours-channels_last": {"BACKBONES_SWAP": "ours", "BACKBONES_MEMORY_FORMAT": "channels_last"},
    "ours-contiguous": {"BACKBONES_SWAP": "ours", "BACKBONES_MEMORY_FORMAT": "contiguous"},
}
OUTCOMES = ("passed", "failed", "skipped", "error")


def check_source(src: Path | None) -> None:
    """Exit with instructions unless ``src`` is a Detectron2 checkout with its tests."""
    if src is None or not (src / "tests" / "modeling" / "test_backbone.py").is_file():
        problem = (
            "--detectron2-src is missing"
            if src is None
            else f"{src} is not a Detectron2 source tree (no tests/modeling/test_backbone.py)"
        )
        sys.exit(
            f"error: {problem}.\n"
            "Detectron2's tests are not part of its wheel; get them with\n"
            "    git clone https://github.com/facebookresearch/detectron2\n"
            "and pass the clone's path: --detectron2-src path/to/detectron2"
        )


def read_junit(path: Path) -> dict[str, dict[str, str]]:
    """Outcome and first message line of every test case in a pytest ``--junitxml`` file (family
    xunit1), keyed ``file::Class::test``."""
    results = {}
    for case in ET.parse(path).iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        file = case.get("file") or classname.replace(".", "/") + ".py"
        module = file[: -len(".py")].replace("/", ".")
        test_class = classname[len(module) + 1 :] if classname.startswith(module + ".") else ""
        test_id = "::".join(part for part in (file, test_class, name) if part)
        outcome, message = "passed", ""
        for tag in ("skipped", "error", "failure"):  # the last one found wins
            child = case.find(tag)
            if child is not None:
                outcome = "failed" if tag == "failure" else tag
                text = child.get("message") or child.text or ""
                message = text.strip().splitlines()[0] if text.strip() else ""
        results[test_id] = {"file": file, "outcome": outcome, "message": message}
    return results


def run_pytest(name: str, src: Path, tests: list[str], output: Path, extra: list[str]) -> dict:
    """One pytest subprocess over ``tests`` with the plugin set for run ``name``."""
    junit, log = output / f"{name}.xml", output / f"{name}.log"
    env = dict(os.environ, **RUNS[name])
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "dev"), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    command = [
        sys.executable, "-m", "pytest", *tests,
        "-p", "detectron2_swap_plugin", "-p", "no:cacheprovider",
        # importlib: never put the checkout (with its own detectron2/ sources) on sys.path.
        "--import-mode=importlib", f"--rootdir={src}", "--continue-on-collection-errors",
        f"--junitxml={junit}", "-o", "junit_family=xunit1", "-rfEs", *extra,
    ]  # fmt: skip
    print(f"[{name}] {' '.join(command[2:])}", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        # cwd=output: `python -m` puts the working directory first on sys.path.
        code = subprocess.call(command, cwd=output, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    swap_line = re.findall(r"^backbones swap: .*$", log.read_text(), re.M)
    print(f"[{name}] exit {code} in {seconds:.0f} s; {''.join(swap_line) or 'no plugin summary'}")
    return {
        "exit_code": code,
        "seconds": round(seconds, 1),
        "plugin": "".join(swap_line),
        "log": str(log),
        "tests": read_junit(junit) if junit.is_file() else {},
    }


def counts_by_file(tests: dict[str, dict[str, str]]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for result in tests.values():
        counts.setdefault(result["file"], Counter())[result["outcome"]] += 1
    return counts


def regressions(runs: dict[str, dict]) -> list[dict[str, str]]:
    """Tests that pass in the stock run and not in one of ours (missing counts as not passing)."""
    found = []
    for test_id, stock in runs["stock"]["tests"].items():
        if stock["outcome"] != "passed":
            continue
        for name, run in runs.items():
            if name == "stock":
                continue
            ours = run["tests"].get(test_id, {"outcome": "missing", "message": ""})
            if ours["outcome"] != "passed":
                found.append(dict(test=test_id, run=name, **ours))
    return found


def markdown(runs: dict[str, dict], regressed: list[dict[str, str]]) -> str:
    files = sorted({f for run in runs.values() for f in counts_by_file(run["tests"])})
    head = "| test file | " + " | ".join(f"{name} (p/f/s/e)" for name in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    totals = {name: Counter() for name in runs}
    for file in files:
        cells = []
        for name, run in runs.items():
            count = counts_by_file(run["tests"]).get(file, Counter())
            totals[name].update(count)
            cells.append("/".join(str(count[o]) for o in OUTCOMES))
        lines.append(f"| {file} | " + " | ".join(cells) + " |")
    lines.append(
        "| **total** | " + " | ".join("/".join(str(totals[n][o]) for o in OUTCOMES) for n in runs)
        + " |"
    )  # fmt: skip
    # One line per test and outcome, naming the runs it happened in.
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for r in regressed:
        grouped.setdefault((r["test"], r["outcome"], r["message"]), []).append(r["run"])
    lines += ["", f"Pass with stock, not with ours: {len(grouped)}"]
    lines += [f"- `{t}` [{', '.join(runs)}] {o}: {m}" for (t, o, m), runs in grouped.items()]
    not_passing = sorted(
        (test_id, r) for test_id, r in runs["stock"]["tests"].items() if r["outcome"] != "passed"
    )
    lines += ["", f"Not passing with stock either (out of scope): {len(not_passing)}"]
    lines += [f"- `{t}` {r['outcome']}: {r['message']}" for t, r in not_passing]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--detectron2-src", type=Path, help="a Detectron2 git clone (for its tests/)")
    ap.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="relative to the clone")
    ap.add_argument("--output", type=Path, default=ROOT / "output" / "detectron2_tests")
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (-k, -x, ...)")
    args = ap.parse_args()
    src = args.detectron2_src.expanduser().resolve() if args.detectron2_src else None
    check_source(src)
    missing = [t for t in args.tests if not (src / t).exists()]
    if missing:
        sys.exit(f"error: not in {src}: {', '.join(missing)}")
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    tests = [str(src / t) for t in args.tests]
    runs = {name: run_pytest(name, src, tests, output, args.pytest_args) for name in RUNS}
    regressed = regressions(runs)
    report = markdown(runs, regressed)
    print("\n" + report, end="")
    (output / "summary.md").write_text(report)
    summary = dict(detectron2_src=str(src), runs=runs, stock_pass_ours_not=regressed)
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"Written: {output / 'summary.md'}, {output / 'summary.json'}")
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
