"""What a log-likelihood is a log-likelihood *of*: the data's representation, checked before comparing.

A log-likelihood in nats is only comparable with another one computed on the same data
in the same representation. Four representations occur:

* ``binary``: a probability mass on {0, 1} pixels (a binarized image);
* ``levels``: a probability mass on the integer levels ``0..L-1`` (categorical, Poisson);
* ``dequantized``: a density on ``(level + u) / L``, ``u ~ U(0, 1)``: with ``L`` levels it
  lower-bounds the mass of the levels, so it shares the bits/dim scale of ``levels``
  (Theis et al., 2016);
* ``continuous``: a density on real-valued data that was never quantized.

A density evaluated on *quantized* data without dequantization is none of these: it can
grow without bound as the model puts spikes on the grid, so its "log-likelihood" (and a
negative bits/dim) measures nothing. :func:`warn_if_quantized` flags such data.

Example:
    >>> a = Representation("binary")
    >>> b = Representation("dequantized", levels=256)
    >>> a.compatible(b), b.compatible(Representation("levels", levels=256))
    (False, True)
    >>> str(b)
    'dequantized (256 levels)'
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from pyro_vae.core.errors import PyroVAEError

__all__ = ["Representation", "IncompatibleUnitsError", "QuantizedDataWarning", "KINDS", "of_likelihood", "of_model",
           "check_comparable", "warn_if_quantized"]

KINDS = ("binary", "levels", "dequantized", "continuous")
# More distinct values than this and the data is treated as continuous (a float image
# quantized to 256 grey levels still counts as quantized).
MAX_QUANTIZED_VALUES = 1024


class IncompatibleUnitsError(PyroVAEError, ValueError):
    """Two log-likelihoods are of different data (representation, size or points) and cannot be compared."""


class QuantizedDataWarning(UserWarning):
    """A density is evaluated on data that takes only a few distinct values, without dequantization."""


@dataclass(frozen=True)
class Representation:
    """The representation of the data a log-likelihood scores (see the module docstring).

    Args:
        kind: One of :data:`KINDS`, or ``"unknown"`` (refuses every comparison but with itself).
        levels: Quantization levels for ``levels`` and ``dequantized``.
    """

    kind: str
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "unknown"):
            raise ValueError(f"representation must be one of {KINDS}, got {self.kind!r}.")

    def compatible(self, other: "Representation") -> bool:
        """Whether log-likelihoods of the two can be compared (subtracted, ranked, put on one axis)."""
        if "unknown" in (self.kind, other.kind):
            return False
        quantized = {"levels", "dequantized"}
        if self.kind in quantized and other.kind in quantized:
            return self.levels == other.levels
        return self.kind == other.kind

    def __str__(self) -> str:
        return f"{self.kind} ({self.levels} levels)" if self.levels and self.kind in ("levels", "dequantized") else self.kind


def of_likelihood(likelihood: Any, levels: int | None) -> Representation:
    """The representation a likelihood scores, from its support and the dequantization ``levels``.

    Args:
        likelihood: A :class:`~pyro_vae.models.likelihoods.Likelihood` (anything with ``support``).
        levels: ``transform.density_levels``: the levels of dequantized data, or ``None``.
    """
    try:
        support = likelihood.support
    except Exception:  # a user's part without a support cannot be placed
        return Representation("unknown")
    while hasattr(support, "base_constraint"):  # independent(boolean, 1) -> boolean
        support = support.base_constraint
    if support is constraints.boolean:
        return Representation("binary")
    if getattr(support, "is_discrete", False):
        return Representation("levels", getattr(likelihood, "levels", None) or levels)
    return Representation("dequantized", levels) if levels else Representation("continuous")


def of_model(vae: Any, levels: int | None) -> Representation:
    """What a model's estimates score: from its ``likelihood``'s support, else from ``levels`` alone."""
    likelihood = getattr(vae, "likelihood", None)
    if likelihood is not None and hasattr(likelihood, "support"):
        return of_likelihood(likelihood, levels)
    return Representation("dequantized", levels) if levels else Representation("unknown")


def check_comparable(a: Any, b: Any, *, paired: bool = False) -> None:
    """Raise :class:`IncompatibleUnitsError` unless ``a`` and ``b`` (``LogLikelihood``) can be compared.

    Args:
        a: An object with ``name``, ``representation``, ``num_dims`` and ``num_points``.
        b: Another such object.
        paired: Also require the same number of points (a per-point difference).
    """
    if not a.representation.compatible(b.representation):
        raise IncompatibleUnitsError(
            f"cannot compare {a.name} ({a.representation}) with {b.name} ({b.representation}): they score different "
            "data, so their nats (and bits/dim) are not on one scale; evaluate both on the same representation.")
    if a.num_dims != b.num_dims:
        raise IncompatibleUnitsError(f"cannot compare {a.name} ({a.num_dims} dims per point) with {b.name} "
                                     f"({b.num_dims}): not the same data; compare models of the same dataset.")
    if paired and a.num_points != b.num_points:
        raise IncompatibleUnitsError(f"a paired difference needs the same points: {a.name} has {a.num_points}, "
                                     f"{b.name} {b.num_points}; score both on the same split and subset.")


def warn_if_quantized(x: Tensor, representation: Representation, who: str = "evaluate") -> None:
    """Warn when a density (``continuous``) is evaluated on data that takes few distinct values.

    Such data (e.g. pixels ``k / 255``) has no density: a model can put spikes on the grid
    and its "log-likelihood" grows without limit. Dequantize it and pass ``levels``.
    """
    if representation.kind != "continuous" or x.numel() < 2 * MAX_QUANTIZED_VALUES:
        return
    sample = x.detach().flatten()[: 1 << 20]  # a million values decide it; unique() on all of MNIST is slow
    distinct = torch.unique(sample).numel()
    if distinct <= min(MAX_QUANTIZED_VALUES, sample.numel() // 2):
        warnings.warn(
            f"{who}: a density is scored on data with only {distinct} distinct values and no `levels`: on quantized "
            "data a density is unbounded, so these nats and bits/dim mean nothing. Fix: dequantize "
            "(DataTransform(levels, dequantize=True)) and pass levels=transform.density_levels, or use a discrete "
            "likelihood.", QuantizedDataWarning, stacklevel=3)
