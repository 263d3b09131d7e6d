"""Measuring models and runs for the depth study: parameter and FLOP counts per ResNet depth and
per detector (``complexity``), training runs read (``runs``) and reported by depth
(``depth_report``, ``depth_plots``), pretraining curves and the degradation figure
(``pretrain_plots``)."""

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
    # depth report
    "REFERENCES_FILE",
    "DepthReport",
    "Reference",
    "RunSummary",
    "write_depth_report",
    "load_references",
    "read_run",
]
