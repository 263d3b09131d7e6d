"""Shared fixtures: what one test does to process-wide logging does not reach the next."""

from __future__ import annotations

import logging

import pytest
from detectron2.utils.logger import setup_logger


@pytest.fixture(autouse=True)
def _restore_package_logging():
    """Code run in-process (a pretraining, a tool's main) may give the ``backbones`` logger a
    handler on the stream pytest captures for that test; writing to it after the test ends is a
    "Logging error" in another test's output. Restore the handlers and level after each test,
    and forget Detectron2's ``setup_logger`` calls (it caches them), so that the next test's call
    sets up its own handler."""
    logger = logging.getLogger("backbones")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
    setup_logger.cache_clear()
