"""Model analysis above the engine: parameter and FLOP counts per ResNet depth and per detector
(``complexity``), depth sweeps of Detectron2 trainings (``sweep``) and their report by depth
(``depth_report``). Nothing in ``backbones`` imports this subpackage."""

from .complexity import (
    NOT_COUNTED,
    PAPER_GFLOPS,
    ImageNetClassifier,
    count_gflops,
    count_parameters,
    detector_complexity,
    detector_test_size,
    format_table,
    resnet_complexity,
    write_csv,
)
from .depth_report import DepthReport, write_depth_report
from .runs import REFERENCES_FILE, Reference, RunSummary, load_references, read_run
from .sweep import SweepResult, SweepRun, plan_sweep, run_state, run_sweep, run_training

__all__ = [
    "NOT_COUNTED",
    "PAPER_GFLOPS",
    "ImageNetClassifier",
    "count_gflops",
    "count_parameters",
    "detector_complexity",
    "detector_test_size",
    "format_table",
    "resnet_complexity",
    "write_csv",
    # depth report and sweep
    "REFERENCES_FILE",
    "DepthReport",
    "Reference",
    "RunSummary",
    "write_depth_report",
    "load_references",
    "read_run",
    "SweepResult",
    "SweepRun",
    "plan_sweep",
    "run_state",
    "run_training",
    "run_sweep",
]
