"""The import layers at run time, in a fresh interpreter: ``import backbones`` loads the core a
detector needs and leaves the training engine unloaded until first used and the paper study
unloaded. (``make lint`` checks every import statement against the layers, lazy ones included:
dev/check_policies.py, tested by tests/test_check_policies.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter from the checkout; its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


LAZY_ENGINE = r"""
import json, sys
def parts():
    return sorted({m.split(".")[1] for m in sys.modules if m.startswith("backbones.")})
import backbones
at_import = parts()
load_cfg = backbones.load_cfg
after_load_cfg = parts()
from backbones.engine import Trainer, load_cfg as engine_load_cfg
same = load_cfg is engine_load_cfg and backbones.Trainer is Trainer
print(json.dumps({"at_import": at_import, "after_load_cfg": after_load_cfg, "same": same}))
"""


def test_the_engine_loads_on_first_use_and_the_study_never():
    seen = json.loads(_python(LAZY_ENGINE))
    assert "engine" not in seen["at_import"] and "study" not in seen["at_import"]
    # The core a detector needs is there at import: weights, models, configs, data.
    assert {"weights", "modeling", "config", "data"} <= set(seen["at_import"])
    assert "engine" in seen["after_load_cfg"] and "study" not in seen["after_load_cfg"]
    assert seen["same"], "backbones.load_cfg / Trainer are not the engine's"
