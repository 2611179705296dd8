"""A one-line progress bar in plain stdlib: redrawn in place on a terminal, silent otherwise.

`Progress(total, label)` draws `label [#####.....] done/total  errors N  rate/s  elapsed` on standard
error, at most every `interval` seconds, and finishes the line on `close()`. When the stream is not a
TTY (pipes, CI logs, tests) it writes nothing unless `enabled=True` is forced.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        width: int = 30,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.errors = 0
        self._start = clock()
        self._last_draw = float("-inf")
        self._closed = False

    def advance(self, n: int = 1, *, errors: int = 0) -> None:
        """Count `n` finished items, `errors` of them failed; redraw if the interval has passed."""
        self.done += n
        self.errors += errors
        now = self.clock()
        if now - self._last_draw >= self.interval or self.done >= self.total:
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        """The bar's current text (without the carriage return)."""
        now = self.clock() if now is None else now
        elapsed = max(now - self._start, 0.0)
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        label = f"{self.label} " if self.label else ""
        return f"{label}[{bar}] {self.done}/{self.total}  errors {self.errors}  {rate:.0f}/s  {elapsed:.1f}s"

    def _draw(self, now: float) -> None:
        if not self.enabled or self._closed:
            return
        self._last_draw = now
        self.stream.write("\r" + self.render(now) + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line (nothing when disabled)."""
        if self._closed:
            return
        self._draw(self.clock())
        self._closed = True
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
