"""Progress for long computations: a bar on a terminal, a line per step otherwise; quiet on demand.

Every long-running public function takes ``progress: bool`` and passes it here. Output goes to
stderr so that ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "Lanczos", enabled) as bar: bar.update(1, info="λ=3.2")``."""

    def __init__(self, total: int | None, desc: str, enabled: bool = True, stream=None,
                 min_interval: float = 0.2):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._min_interval = min_interval
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = -1  # count at the last line written
        self._info = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, info: str = "") -> None:
        self.count += n
        self._info = info
        if not self.enabled:
            return
        now = time.perf_counter()
        done = self.total is not None and self.count >= self.total
        if not done and now - self._last < self._min_interval:
            return
        self._last = now
        self._write(now, info)

    def _write(self, now: float, info: str) -> None:
        self._shown = self.count
        elapsed = now - self.start
        if self.total:
            frac = min(1.0, self.count / self.total)
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            text = f"{self.desc} [{bar}] {self.count}/{self.total} {elapsed:5.1f}s {info}"
        else:
            text = f"{self.desc} {self.count} {elapsed:5.1f}s {info}"
        if self._tty:
            self.stream.write("\r" + text.ljust(100))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Show the final count (an iteration that stops early, e.g. a converged Lanczos run, ends
        below ``total``) and end the line."""
        if not self.enabled:
            return
        if self.count != self._shown and self.count > 0:
            self._write(time.perf_counter(), (self._info + " done").strip())
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def message(text: str, enabled: bool = True) -> None:
    """One line of progress to stderr unless quiet."""
    if enabled:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
