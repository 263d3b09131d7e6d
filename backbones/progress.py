"""Progress lines for long loops: done/total, rate and ETA, logged at most every few seconds.

The lowest layer of the package (the standard library only), so that any layer can report
progress through its own logger; no tqdm, whose bars garble logs collected from processes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

__all__ = ["DEFAULT_EVERY_S", "Progress", "format_duration"]

# The least time between two progress lines where the caller does not say; tests set it to 0.
DEFAULT_EVERY_S = 5.0


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of ``seconds`` (rounded down, hours unbounded), e.g. ``0:05:10``."""
    whole = int(max(0.0, seconds)) if math.isfinite(seconds) else 0
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _format_rate(rate: float, unit: str) -> str:
    """``12.3 it/s``; below one unit a second, the seconds each takes (``6.5 s each``)."""
    if rate < 1:
        return f"{1 / rate:.1f} s each" if rate > 0 else f"0 {unit}/s"
    if rate >= 100:
        return f"{rate:.0f} {unit}/s"
    return f"{rate:.1f} {unit}/s" if rate >= 10 else f"{rate:.2f} {unit}/s"


class Progress:
    """Counts work done and logs ``what: 1200/5000 (24%), 12.3 it/s, ETA 0:05:10``.

    A line is logged on :meth:`update` at most every ``every_s`` seconds (the first one
    ``every_s`` after the start), so a loop shorter than that logs nothing; the ETA is the
    remaining work at the mean rate so far. When ``total`` is reached (or on :meth:`close`,
    or leaving a ``with`` block) a last line ``what: 5000 it in 0:06:40 (12.5 it/s)`` is logged
    if the work took ``every_s`` or more. ``total`` None (unknown) logs counts and rates only.

    Example::

        progress = Progress(len(items), what="checking results", logger=logger)
        for item in items:
            check(item)
            progress.update()
    """

    def __init__(
        self,
        total: int | None,
        *,
        what: str,
        logger: logging.Logger,
        every_s: float | None = None,
        unit: str = "it",
        level: int = logging.INFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            total: how many units the work has; None when unknown.
            what: the lines' prefix, naming the work.
            logger: where the lines go.
            every_s: the least time between two lines, in seconds; 0 logs every update, None
                :data:`DEFAULT_EVERY_S` (5 s).
            unit: what is counted, as the rate names it ("it/s", "results/s").
            level: the lines' logging level.
            clock: seconds from an arbitrary start (tests pass a fake one).

        Raises:
            ValueError: a negative ``total`` or ``every_s``.
        """
        if total is not None and total < 0:
            raise ValueError(f"total={total}: a count of units (>= 0) or None")
        every_s = DEFAULT_EVERY_S if every_s is None else every_s
        if not every_s >= 0:
            raise ValueError(f"every_s={every_s}: seconds (>= 0)")
        self.total, self.what, self.logger = total, what, logger
        self.every_s, self.unit, self.level, self.clock = every_s, unit, level, clock
        self.done = 0
        self.start = self._last_line = clock()
        self.closed = False

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; log a line if ``every_s`` has passed since the last."""
        if self.closed:
            return
        self.done += n
        if self.total is not None and self.done >= self.total:
            self.close()
            return
        now = self.clock()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            self.logger.log(self.level, self.line(now))

    def line(self, now: float | None = None) -> str:
        """The progress line at clock time ``now`` (default: the clock's now)."""
        elapsed = (self.clock() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else math.inf
        parts = [f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"]
        if self.total:
            parts[0] += f" ({100 * self.done // self.total}%)"
        if math.isfinite(rate):
            parts.append(_format_rate(rate, self.unit))
        if self.total is not None and self.done > 0 and math.isfinite(rate):
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        return f"{self.what}: {', '.join(parts)}"

    def close(self) -> None:
        """Log the last line (total and time) if the work took ``every_s`` or more; once."""
        if self.closed:
            return
        self.closed = True
        elapsed = self.elapsed
        if elapsed >= self.every_s:
            rate = f" ({_format_rate(self.done / elapsed, self.unit)})" if elapsed > 0 else ""
            self.logger.log(
                self.level,
                f"{self.what}: {self.done} {self.unit} in {format_duration(elapsed)}{rate}",
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.closed = True  # an error: no line saying the work is done
