"""A small progress bar on stderr: redrawn in place on a terminal, a line per tenth otherwise (logs, pipes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Counts work done out of ``total`` and shows it with the rate.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress(4, "retrieve", stream=out, clock=iter(range(10)).__next__)  # a clock that ticks 1 s per read
    >>> p.advance(2); p.advance(2); p.close()
    >>> out.getvalue().splitlines()[-1]
    'retrieve [########################] 4/4 (2.0/s)'
    """

    WIDTH = 24

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self.started = self._clock()
        self.done = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown_tenth = -1

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        tenth = 10 * self.done // self.total if self.total else 10
        if self._tty or tenth != self._shown_tenth:
            self._shown_tenth = tenth
            self._draw()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
        elapsed = max(1e-9, self._clock() - self.started)
        line = f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {self.done}/{self.total} ({self.done / elapsed:.1f}/s)"
        self.stream.write(("\r" + line) if self._tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
