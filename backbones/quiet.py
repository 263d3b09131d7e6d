"""Quiet by default: the third-party deprecation notices a user can do nothing about, each a
specific message of a pinned dependency, hidden in the tools' processes and in a program that
imports ``backbones``. Standard library only.

Import-time notices of Detectron2's dependencies are hidden by ``backbones/__init__.py`` while it
imports them (import ``backbones`` before ``detectron2`` to hide those of Detectron2's own
import); :func:`quiet_third_party_warnings`, which importing ``backbones`` calls, hides the ones
raised later, at run time. Our own warnings are never filtered. The tests see every warning
(pytest.ini).
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category); never one of ours. pytest.ini keeps its own list for the tests.
THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # fvcore and Detectron2 script functions while imported; the exporters trace on purpose.
    (r"`torch\.jit\.\w+` is deprecated", FutureWarning),
    # Detectron2's anchor generator calls torch.meshgrid without indexing=.
    (r"torch\.meshgrid: in an upcoming release", UserWarning),
    (r"pkg_resources is deprecated", UserWarning),
    # DistributedDataParallel(broadcast_buffers=False), Detectron2's choice and the trainer's:
    # torch says to keep it until its replacement can skip the first sync.
    (r"`broadcast_buffers` is deprecated", FutureWarning),
)
# The same for log records, as (logger, message start).
THIRD_PARTY_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # Detectron2's ROIPooler asks torch.fx whether it is tracing.
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
    # Detectron2's environment report on a machine without CUDA (MODEL.DEVICE says so once).
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    # torch's spawn stopping the other processes after one failed; the error says why.
    ("torch.multiprocessing.spawn", "Terminating process"),
)


class _DropRecords(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_third_party_warnings() -> None:
    """Hide :data:`THIRD_PARTY_WARNINGS` and :data:`THIRD_PARTY_LOG_RECORDS` in this process.

    Called when ``backbones`` is imported, and by the tools' ``main`` (and each process they
    start: a spawned process begins with Python's default filters).
    """
    for message, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, start in THIRD_PARTY_LOG_RECORDS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropRecords) and f.start == start for f in log.filters):
            log.addFilter(_DropRecords(start))
