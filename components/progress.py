"""Progress of a long step (embedding, k-NN): a live counter on a terminal, one log line per
stage otherwise (a log file, a container's log)."""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)


class Progress:
    """`with Progress("Embedding", 10000, "examples") as progress: ... progress.advance(n)`.

    On a terminal the count is redrawn in place at most twice a second; either way one line,
    "<stage>: <total> <unit> in <seconds> s", is logged when the stage ends."""

    def __init__(self, stage: str, total: int, unit: str):
        self.stage, self.total, self.unit = stage, total, unit
        self.done, self._start, self._drawn = 0, time.time(), 0.0
        stream = sys.stderr
        self._live = bool(getattr(stream, "isatty", lambda: False)())

    def __enter__(self) -> "Progress":
        return self

    def advance(self, count: int) -> None:
        self.done += count
        now = time.time()
        if self._live and now - self._drawn >= 0.5:
            self._drawn = now
            sys.stderr.write(
                f"\r{self.stage}: {self.done}/{self.total} {self.unit} "
                f"({100 * self.done / max(self.total, 1):.0f}%, {now - self._start:.0f} s)"
            )
            sys.stderr.flush()

    def __exit__(self, *exc_info) -> None:
        if self._live and self._drawn:
            sys.stderr.write("\r\033[K")  # clear the live line; the log line replaces it
            sys.stderr.flush()
        if exc_info[0] is None:
            logger.info("%s: %d %s in %.1f s", self.stage, self.done, self.unit, time.time() - self._start)
