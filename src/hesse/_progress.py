"""Progress for long computations: a tqdm bar on stderr, or nothing when ``enabled`` is False.

Every long-running public function takes ``progress: bool`` and passes it here. The library's
default is ``progress=False``; the ``hesse`` command turns it on unless ``--quiet``. Output goes to
stderr so that ``--json`` output on stdout stays clean. tqdm limits its own redraws
(``mininterval``), so an update costs a few microseconds: under 1% of the cheapest product it
counts.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

#: Seconds between redraws when stderr is not a terminal (a log file): tqdm would otherwise write
#: a line fragment every ``min_interval``.
LOG_INTERVAL = 5.0


class Progress:
    """``with Progress(total, "Lanczos", enabled) as bar: bar.update(1, info="λ=3.2")``.

    ``total=None`` counts without a bar. An iteration that stops early (a converged Lanczos run)
    ends below ``total``; ``close`` then shows the final count as a full bar, marked "done". ``count`` is kept whether or not the bar
    is shown.
    """

    def __init__(self, total: int | None, desc: str, enabled: bool = True, stream=None,
                 min_interval: float = 0.2):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self._bar = None
        if enabled:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
            self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=True, dynamic_ncols=True,
                             mininterval=min_interval if tty else max(min_interval, LOG_INTERVAL),
                             bar_format=None if total else "{desc}: {n} [{elapsed}{postfix}]")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, info: str = "") -> None:
        self.count += n
        if self._bar is not None:
            if info:
                self._bar.set_postfix_str(info, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        """Show the final count and end the line (idempotent)."""
        if self._bar is not None:
            if self.total and self.count < self.total:
                # stopped early (converged): the bar ends full at the count reached, not at 2%
                self._bar.total = self.count
                self._bar.set_postfix_str(((self._bar.postfix or "") + " done").strip(), refresh=False)
            self._bar.refresh()
            self._bar.close()
            self._bar = None


def message(text: str, enabled: bool = True) -> None:
    """One line of progress to stderr unless quiet (written through tqdm so it does not break a bar)."""
    if enabled:
        tqdm.write(text, file=sys.stderr)
