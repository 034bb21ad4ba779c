"""A mixin that remembers how a part was constructed, so a checkpoint can rebuild it.

Example:
    >>> from torch import nn
    >>> class Part(RecordsSettings, nn.Module):
    ...     def __init__(self, k: int = 1, scale: float = 1.0):
    ...         super().__init__()
    >>> Part(3, scale=0.5)._part_spec[1]
    {'k': 3, 'scale': 0.5}
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

__all__ = ["RecordsSettings", "recorded_strategy", "bound_settings"]


def bound_settings(fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    """``args``/``kwargs`` of a call to ``fn`` as named settings (what a config would hold).

    A class is read through its ``__init__``: a metaclass (``PyroModule``'s) can hide the
    constructor's signature behind ``(*args, **kwargs)``.
    """
    try:
        if inspect.isclass(fn):
            params = list(inspect.signature(fn.__init__).parameters.values())[1:]  # without self
            signature = inspect.Signature(params)
        else:
            signature = inspect.signature(fn)
        bound = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return dict(kwargs)
    # A **kwargs catch-all is spread out: settings are flat in a config.
    var_kw = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    flat = {k: v for k, v in bound.items() if k not in var_kw}
    for name in var_kw:
        flat.update(bound.get(name, {}))
    return flat


class RecordsSettings:
    """Records ``(class, settings)`` of every instance in ``_part_spec`` at construction."""

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        object.__setattr__(self, "_part_spec", (cls, bound_settings(cls, args, kwargs)))
        return self


def recorded_strategy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A strategy function whose result remembers ``(fn, settings)`` instead of its own class."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        made = fn(*args, **kwargs)
        object.__setattr__(made, "_part_spec", (wrapper, bound_settings(fn, args, kwargs)))
        return made

    return wrapper
