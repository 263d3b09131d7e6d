#!/usr/bin/env python3
"""Moved to dev/run_detectron2_tests.py (a developer's harness, not a user tool): this path still
runs it, with the same arguments, after saying where it went."""

import os
import runpy
import sys

if __name__ == "__main__":
    target = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "dev", "run_detectron2_tests.py"
    )
    print(
        "note: tools/run_detectron2_tests.py moved to dev/run_detectron2_tests.py", file=sys.stderr
    )
    sys.argv[0] = os.path.normpath(target)
    runpy.run_path(sys.argv[0], run_name="__main__")
