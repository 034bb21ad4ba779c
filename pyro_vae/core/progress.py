"""One progress bar for every long job (evaluation, AIS, BDMC, EM baselines).

``progress`` everywhere takes three values: ``True`` (always show), ``False`` (never:
``--no-progress``) and ``None`` (the default: show only when stderr is a terminal, so
logs and pipes stay clean). Only rank 0 of a sharded job draws a bar.

Example:
    >>> with progress_bar(3, "IS", "point", enabled=False) as bar:
    ...     bar.update(3)
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    """What a disabled bar is: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool | None = None, rank: int = 0) -> Any:
    """A tqdm bar with ETA, or a do-nothing bar when disabled or not rank 0.

    Args:
        total: Units of work in all.
        desc: The bar's label (e.g. ``"IS K=5000"``).
        unit: What one unit is (``"point"``, ``"step"``, ``"iteration"``).
        enabled: ``True``, ``False`` or ``None`` (only on a terminal).
        rank: This process's rank; only rank 0 draws.
    """
    if enabled is False or rank != 0:
        return _NoBar()
    from tqdm.auto import tqdm

    # tqdm's disable=None is its own "not a TTY -> off"; True must mean on, even into a pipe.
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else False, dynamic_ncols=True)
