"""Progress for every long job (training, evaluation, AIS, BDMC, EM baselines), the way logs expect.

``progress`` everywhere takes three values: ``True`` and ``None`` (the default) show
progress, ``False`` (``--no-progress``) shows none. On a terminal progress is a tqdm bar
with ETA; into a file or a pipe (CI, ``nohup``, a cluster job) a carriage-return bar would
be one endless line, so it is plain lines instead, one per tenth of the work (and one per
epoch in training). Only rank 0 of a sharded job reports.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> with progress_bar(4, "IS K=100", "point", stream=out) as bar:
    ...     bar.update(2); bar.update(2)
    >>> print(out.getvalue().splitlines()[-1].split(",")[0])
    IS K=100: 4/4 points (100%)
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import IO, Any

__all__ = ["progress_bar", "is_terminal", "bar_width", "LineProgress"]

MIN_WIDTH = 20  # a terminal that reports fewer columns (0 on some pseudo-terminals) gets FALLBACK_WIDTH
FALLBACK_WIDTH = 80
LINES = 10  # plain-line progress reports every tenth of the work


class _NoBar:
    """What a disabled bar is: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class LineProgress(_NoBar):
    """Progress as plain lines, ``desc: done/total units (pct%), elapsed, ETA``, at every tenth of the work."""

    def __init__(self, total: int, desc: str, unit: str, stream: IO[str] | None = None) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.reported, self.start, self.postfix = 0, 0, time.perf_counter(), ""

    def update(self, n: int = 1) -> None:
        self.done += n
        step = max(1, -(-self.total // LINES))
        if self.done >= min(self.total, self.reported + step):
            self._line()

    def close(self) -> None:
        if self.done != self.reported:  # work that ended early (EM converged) still gets its last line
            self._line()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _line(self) -> None:
        self.reported = self.done
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), {elapsed:.1f} s elapsed, "
              f"ETA {eta:.0f} s{extra}", file=self.stream, flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def bar_width() -> int:
    """The terminal's width, or :data:`FALLBACK_WIDTH` when it reports a nonsense one (0 on some pseudo-terminals)."""
    columns = shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns
    return columns if columns >= MIN_WIDTH else FALLBACK_WIDTH


def progress_bar(total: int, desc: str, unit: str, enabled: bool | None = None, rank: int = 0,
                 stream: IO[str] | None = None) -> Any:
    """A tqdm bar on a terminal, plain lines otherwise, or nothing when disabled or not rank 0.

    Args:
        total: Units of work in all.
        desc: The label (e.g. ``"IS K=5000"``).
        unit: What one unit is (``"point"``, ``"step"``, ``"iteration"``).
        enabled: ``True`` or ``None`` to show progress, ``False`` for none.
        rank: This process's rank; only rank 0 reports.
        stream: Where to write (default stderr).
    """
    if enabled is False or rank != 0:
        return _NoBar()
    if not is_terminal(stream):
        return LineProgress(total, desc, unit, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, ncols=bar_width(), file=stream)
