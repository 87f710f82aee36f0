"""Plain-text progress bars for the command line (stderr, one line, no dependencies)."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, label: str, total: float = 1.0, stream=None, width: int = 30) -> None:
        self.label, self.total, self.width = label, float(total), width
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()
        self._last = -1.0
        self._tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, done: float) -> None:
        frac = min(max(done / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        if not self._tty and frac < 1.0 and frac - self._last < 0.25:
            return    # logs and CI: a few lines, not hundreds
        self._last = frac
        elapsed = time.monotonic() - self.t0
        # no estimate before the first step is done (nothing to extrapolate from)
        left = (f", ~{elapsed * (1 - frac) / frac:4.0f} s left" if frac > 0 else
                ", time left not known yet")
        bar = "#" * int(frac * self.width)
        end = "\r" if self._tty and frac < 1.0 else "\n"
        self.stream.write(f"{self.label:<14} [{bar:<{self.width}}] {100 * frac:5.1f}% "
                          f"{elapsed:5.1f} s{left}{end}" if frac < 1.0 else
                          f"{self.label:<14} [{bar:<{self.width}}] done in {elapsed:.1f} s{end}")
        self.stream.flush()

    def close(self) -> None:
        if self._last < 1.0:
            self.update(self.total)
