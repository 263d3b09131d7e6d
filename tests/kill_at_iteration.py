"""``tools/train_net.py`` that SIGKILLs its own process group (itself and its data-loader
workers) right after training iteration N, for tests/test_resume.py.

Usage: kill_at_iteration.py N [train_net.py arguments]. The kill comes from a Detectron2 hook run
after the trainer's own hooks, so the checkpoints of iterations up to N are written first; the
run must be a session leader (``start_new_session=True``), or the kill reaches its parent too.
One training process only: ``--num-gpus 1``, the default.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from detectron2.engine import HookBase

from backbones.engine import Trainer

TRAIN_NET = Path(__file__).resolve().parents[1] / "tools" / "train_net.py"


class KillAfter(HookBase):
    """SIGKILL the process group after iteration ``iteration``'s step and hooks."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            print(f"killing the training after iteration {self.iteration}", flush=True)
            os.killpg(os.getpgrp(), signal.SIGKILL)


def main() -> None:
    iteration = int(sys.argv.pop(1))
    if os.getpgrp() != os.getpid():
        sys.exit("kill_at_iteration.py: start it in its own session (start_new_session=True)")
    build_hooks = Trainer.build_hooks
    Trainer.build_hooks = lambda self: [*build_hooks(self), KillAfter(iteration)]
    sys.argv[0] = str(TRAIN_NET)
    runpy.run_path(str(TRAIN_NET), run_name="__main__")


if __name__ == "__main__":
    main()
