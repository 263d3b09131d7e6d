"""The paper's experiments: a ladder of detector configs trained and reported by depth
(``sweep``), plain against residual nets (``degradation``), and both claims at small scale
(``reproduce``)."""

from .sweep import SweepResult, SweepRun, plan_sweep, run_state, run_sweep, run_training

__all__ = ["SweepResult", "SweepRun", "plan_sweep", "run_state", "run_sweep", "run_training"]
