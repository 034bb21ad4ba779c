"""Likelihoods p(x|z): the decoder's output unpacked into a distribution's parameters.

A likelihood is an :class:`torch.nn.Module` that knows how many decoder outputs it
needs per data element (:attr:`Likelihood.num_params`) and turns the decoder output
into a Pyro distribution whose ``event_shape`` is the data's shape. Any distribution
constructor works: its free arguments are read from ``arg_constraints`` and each
decoder channel is mapped into its constraint (``logits`` is preferred to ``probs``)::

    VAE(..., likelihood="bernoulli")
    VAE(..., likelihood=gaussian(scale=0.05))
    VAE(..., likelihood=partial(dist.StudentT, df=3.0))   # loc and scale from the decoder

Example:
    >>> lik = resolve_likelihood("gaussian_learned", mode="shared")
    >>> lik.bind(event_shape=(2, 2))
    >>> lik(torch.zeros(5, lik.num_params * 4)).event_shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import pyro.distributions as dist
from pyro.distributions.torch_distribution import TorchDistributionMixin
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints, transform_to

from pyro_vae.core import ops
from pyro_vae.core.records import RecordsSettings, recorded_strategy

__all__ = [
    "Likelihood",
    "Generic",
    "bernoulli",
    "continuous_bernoulli",
    "gaussian",
    "gaussian_learned",
    "laplace",
    "beta",
    "poisson",
    "categorical",
    "LIKELIHOODS",
    "resolve_likelihood",
    "check_support",
]


class Likelihood(RecordsSettings, nn.Module):
    """Base class for p(x|z).

    Attributes:
        num_params: Decoder outputs per data element (e.g. 2 for loc and scale).
        event_shape: Shape of one datapoint, set by :meth:`bind`.
        wants_levels: True when the likelihood models integer levels (counts,
            categories) rather than values scaled to ``[0, 1]``.
    """

    num_params: int = 1
    wants_levels: bool = False
    event_shape: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return getattr(self, "_name", type(self).__name__)

    def bind(self, event_shape: tuple[int, ...], levels: int | None = None) -> None:
        self.event_shape = tuple(event_shape)

    @property
    def numel(self) -> int:
        return math.prod(self.event_shape)

    def unpack(self, h: Tensor) -> tuple[Tensor, ...]:
        """Split decoder output ``(..., num_params * numel)`` (or any shape with that
        many trailing elements) into ``num_params`` tensors of shape ``(..., *event_shape)``."""
        batch = h.shape[: h.dim() - self._trailing_dims(h)]
        return h.reshape(*batch, self.num_params, *self.event_shape).unbind(len(batch))

    def _trailing_dims(self, h: Tensor) -> int:
        # The decoder may emit flat vectors or image-shaped maps; count trailing dims
        # until they hold exactly one datapoint's worth of parameters.
        total, n = 1, 0
        for size in reversed(h.shape):
            total, n = total * size, n + 1
            if total == self.num_params * self.numel:
                return n
        raise ValueError(
            f"Decoder output of shape {tuple(h.shape)} does not end in {self.num_params} x {self.event_shape} "
            f"values; the decoder must output num_params * prod(event_shape) = {self.num_params * self.numel} per point."
        )

    def log_likelihood(self, h: Tensor, x: Tensor) -> Tensor:
        """``log p(x | h)`` summed over the event, for decoder output ``h``: ``self(h).log_prob(x)``.

        Subclasses may compute it without building the distribution (see :class:`Generic`).
        """
        return self(h).log_prob(x)

    def mean(self, d: dist.Distribution) -> Tensor:
        """The mean image of ``d``, on the same scale as the data it models."""
        return d.mean

    @property
    def support(self) -> constraints.Constraint:
        return self(torch.zeros(self.num_params * self.numel)).support


_PAIRS = (("probs", "logits"),)


class Generic(Likelihood):
    """Any element-wise distribution, parameters from the decoder.

    Args:
        constructor: A distribution class, or a ``functools.partial`` of one with some
            arguments fixed (``partial(dist.StudentT, df=3.0)``). torch classes are
            swapped for their Pyro twins so the result works with ``pyro.sample``.
        min_positive: Floor added to positive parameters so densities stay finite.

    Example:
        >>> lik = Generic(dist.Laplace)
        >>> lik.bind((3,))
        >>> lik.num_params, lik.free
        (2, ['loc', 'scale'])
    """

    def __init__(self, constructor: Callable[..., dist.Distribution], min_positive: float = 1e-4) -> None:
        super().__init__()
        fixed: dict[str, Any] = {}
        cls = constructor
        if isinstance(constructor, functools.partial):
            cls, fixed = constructor.func, dict(constructor.keywords)
        if not (isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution)):
            raise TypeError(f"A likelihood constructor must be a distribution class or partial of one, got {constructor!r}.")
        cls = getattr(dist, cls.__name__, cls) if not issubclass(cls, TorchDistributionMixin) else cls
        self.cls, self.fixed, self.min_positive = cls, fixed, min_positive
        free = [name for name in cls.arg_constraints if name not in fixed]
        for a, b in _PAIRS:  # alternative parametrizations: keep the numerically stable one
            if a in free and b in free:
                free.remove(a)
            if (a in fixed or b in fixed) and (a in free or b in free):
                free = [n for n in free if n not in (a, b)]
        if not free:
            raise ValueError(f"{cls.__name__} has all its parameters fixed; leave at least one for the decoder.")
        self.free = free
        self._name = cls.__name__
        self.num_params = len(free)
        self.wants_levels = bool(getattr(cls.support, "is_discrete", False)) and cls.support is not constraints.boolean

    def _constrain(self, name: str, raw: Tensor) -> Tensor:
        constraint = self.cls.arg_constraints[name]
        if constraint is constraints.real:
            return raw
        if constraint is constraints.positive:
            return F.softplus(raw) + self.min_positive
        return transform_to(constraint)(raw)

    def forward(self, h: Tensor) -> dist.Distribution:
        params = {name: self._constrain(name, raw) for name, raw in zip(self.free, self.unpack(h))}
        return self.cls(**params, **self.fixed).to_event(len(self.event_shape))

    @property
    def plain_bernoulli(self) -> bool:
        """A Bernoulli on decoder logits with nothing fixed: the case with a fused log-density."""
        return self.cls is dist.Bernoulli and self.free == ["logits"] and not self.fixed

    def log_likelihood(self, h: Tensor, x: Tensor) -> Tensor:
        """As :meth:`Likelihood.log_likelihood`; a plain Bernoulli takes :func:`pyro_vae.core.ops.bernoulli_log_prob`,
        which broadcasts ``x`` over the particle dim instead of expanding it and saves two tensors for backward."""
        if not self.plain_bernoulli:
            return super().log_likelihood(h, x)
        logits = h.reshape(*h.shape[: h.dim() - self._trailing_dims(h)], self.numel)
        return ops.bernoulli_log_prob(logits, x.reshape(*x.shape[: x.dim() - len(self.event_shape)], self.numel))

    def extra_repr(self) -> str:
        return f"{self.cls.__name__}, free={self.free}, fixed={self.fixed}"


@recorded_strategy
def bernoulli() -> Generic:
    """Bernoulli on binary data, parametrized by logits (the BCE loss, done right)."""
    return Generic(dist.Bernoulli)


@recorded_strategy
def continuous_bernoulli() -> Generic:
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): a proper density on [0, 1]."""
    return Generic(dist.ContinuousBernoulli)


@recorded_strategy
def gaussian(scale: float = 0.1) -> Generic:
    """Gaussian with fixed ``scale``; its negative log-density is MSE / (2 scale^2) + const."""
    if scale <= 0:
        raise ValueError(f"gaussian likelihood needs scale > 0, got {scale}.")
    return Generic(functools.partial(dist.Normal, scale=scale))


@recorded_strategy
def laplace() -> Generic:
    """Laplace with loc and scale from the decoder (an L1 reconstruction loss with learned scale)."""
    return Generic(dist.Laplace)


@recorded_strategy
def beta() -> Generic:
    """Beta on (0, 1): both concentrations from the decoder. Needs dequantized data."""
    return Generic(dist.Beta)


@recorded_strategy
def poisson() -> Generic:
    """Poisson on integer levels (counts)."""
    return Generic(dist.Poisson)


class gaussian_learned(Likelihood):
    """Gaussian whose scale is learned.

    Args:
        mode: ``"shared"`` (one scalar sigma), ``"per_dim"`` (one sigma per data
            element), or ``"decoder"`` (sigma predicted per datapoint and element).
        init_scale: Starting sigma for the ``shared`` and ``per_dim`` modes.
        min_scale: Floor on sigma; keeps the density bounded on near-constant pixels.
    """

    MODES = ("shared", "per_dim", "decoder")

    def __init__(self, mode: str = "shared", init_scale: float = 0.1, min_scale: float = 1e-3) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"gaussian_learned mode must be one of {self.MODES}, got {mode!r}.")
        if not (init_scale > 0 and min_scale > 0):
            raise ValueError(f"gaussian_learned needs init_scale > 0 and min_scale > 0, got {init_scale}, {min_scale}.")
        self.mode, self.init_scale, self.min_scale = mode, init_scale, min_scale
        self.num_params = 2 if mode == "decoder" else 1

    def bind(self, event_shape: tuple[int, ...], levels: int | None = None) -> None:
        super().bind(event_shape)
        if self.mode != "decoder":
            shape = () if self.mode == "shared" else self.event_shape
            raw = math.log(math.expm1(max(self.init_scale - self.min_scale, 1e-6)))
            self.raw_scale = nn.Parameter(torch.full(shape, raw))

    def scale(self, raw: Tensor | None = None) -> Tensor:
        return F.softplus(self.raw_scale if raw is None else raw) + self.min_scale

    def forward(self, h: Tensor) -> dist.Distribution:
        parts = self.unpack(h)
        scale = self.scale(parts[1]) if self.mode == "decoder" else self.scale().expand_as(parts[0])
        return dist.Normal(parts[0], scale).to_event(len(self.event_shape))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, min_scale={self.min_scale}"


class categorical(Likelihood):
    """Categorical over a fixed number of discrete levels per element (e.g. 0-16, 0-255).

    The exact discrete likelihood for quantized data: no dequantization, no
    continuous approximation. ``levels`` defaults to the dataset's.
    """

    wants_levels = True

    def __init__(self, levels: int | None = None) -> None:
        super().__init__()
        if levels is not None and levels < 2:
            raise ValueError(f"categorical likelihood needs levels >= 2, got levels={levels}.")
        self.levels = levels

    def bind(self, event_shape: tuple[int, ...], levels: int | None = None) -> None:
        super().bind(event_shape)
        self.levels = self.levels or levels
        if not self.levels or self.levels < 2:
            raise ValueError(
                "categorical likelihood needs the number of levels: the dataset has none (continuous data). "
                "Pass categorical(levels=L) or use a continuous likelihood such as 'gaussian'."
            )
        self.num_params = self.levels

    def forward(self, h: Tensor) -> dist.Distribution:
        logits = torch.stack(self.unpack(h), dim=-1)
        return dist.Categorical(logits=logits).to_event(len(self.event_shape))

    def mean(self, d: dist.Distribution) -> Tensor:
        probs = d.base_dist.probs
        return (probs * torch.arange(self.levels, dtype=probs.dtype, device=probs.device)).sum(-1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


LIKELIHOODS: dict[str, Callable[..., Likelihood]] = {
    "bernoulli": bernoulli,
    "continuous_bernoulli": continuous_bernoulli,
    "gaussian": gaussian,
    "gaussian_learned": gaussian_learned,
    "laplace": laplace,
    "beta": beta,
    "poisson": poisson,
    "categorical": categorical,
}


def resolve_likelihood(spec: Any = "bernoulli", **kwargs: Any) -> Likelihood:
    """Turn any likelihood specification into a :class:`Likelihood` module.

    Args:
        spec: A registered name (see :data:`LIKELIHOODS`), a strategy function or
            class (``gaussian``), a configured one (``gaussian(scale=0.05)``), or any
            distribution class / partial (``partial(dist.StudentT, df=3.0)``).
        **kwargs: Settings for a named likelihood.
    """
    if isinstance(spec, str):
        if spec not in LIKELIHOODS:
            raise ValueError(f"Unknown likelihood {spec!r}; registered likelihoods: {', '.join(LIKELIHOODS)}.")
        kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        params = [p.name for p in inspect.signature(LIKELIHOODS[spec]).parameters.values() if p.kind not in kinds]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(
                f"likelihood {spec!r} got unknown settings {unknown}; valid settings: {', '.join(params) or 'none'}."
            )
        made = LIKELIHOODS[spec](**kwargs)
        made._name = spec
        object.__setattr__(made, "_part_spec", (spec, dict(kwargs)))
        return made
    if kwargs:
        raise ValueError("Likelihood settings can only be given with a likelihood name.")
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, functools.partial) or (isinstance(spec, type) and issubclass(spec, torch.distributions.Distribution)):
        return Generic(spec)
    if callable(spec):
        made = spec()
        if isinstance(made, Likelihood):
            return made
    raise TypeError(
        f"Cannot use {spec!r} as a likelihood; give a name from {list(LIKELIHOODS)}, a Likelihood, "
        "or a distribution class / functools.partial of one."
    )


_GREY_FIXES = (
    "set data.binarize to 'dynamic', 'static' or 'threshold' (--binarize), or use a likelihood for grey "
    "levels: 'continuous_bernoulli', 'beta', 'gaussian', 'gaussian_learned' or 'categorical'"
)


def check_support(likelihood: Likelihood, x: Tensor, name: str = "likelihood") -> None:
    """Refuse data the likelihood cannot score, naming what was found and the fixes.

    Checks finiteness, the distribution's support, and that the log-density is finite
    (a Beta at exactly 0 or 1 is in the closed support but has no finite density).
    """
    if not torch.is_tensor(x) or x.dim() < 1 + len(likelihood.event_shape):
        raise ValueError(f"Data must be a tensor of shape (N, {likelihood.event_shape}), got {getattr(x, 'shape', type(x))}.")
    if tuple(x.shape[-len(likelihood.event_shape) :]) != likelihood.event_shape:
        raise ValueError(
            f"Data points have shape {tuple(x.shape[1:])} but the model was built for {likelihood.event_shape}."
        )
    nonfinite = (~torch.isfinite(x)).sum().item()
    if nonfinite:
        raise ValueError(f"Data has {nonfinite} NaN/inf values; clean or impute them before training.")
    d = likelihood(x.new_zeros(*x.shape[:1], likelihood.num_params * likelihood.numel))
    ok = d.support.check(x)
    lo, hi = x.min().item(), x.max().item()
    distinct = torch.unique(x[:1000]).numel()
    if not ok.all():
        bad = (~ok).sum().item()
        support = d.support
        while hasattr(support, "base_constraint"):
            support = support.base_constraint
        if support is constraints.boolean:
            raise ValueError(
                f"{name} needs binary data (values in {{0, 1}}), but {bad} of {x.shape[0]} points have other values: "
                f"found values in [{lo:.4g}, {hi:.4g}] with {distinct} distinct values in the first 1000 points. "
                f"A Bernoulli on grey pixels is not a likelihood. Fix: {_GREY_FIXES}."
            )
        raise ValueError(
            f"{name} has support {support} but {bad} of {x.shape[0]} points fall outside it "
            f"(found values in [{lo:.4g}, {hi:.4g}], {distinct} distinct in the first 1000 points). "
            "Fix: rescale or dequantize the data (data.dequantize), or choose a likelihood whose support covers it."
        )
    log_p = d.log_prob(x)
    if not torch.isfinite(log_p).all():
        raise ValueError(
            f"{name} gives an infinite log-density on {(~torch.isfinite(log_p)).sum().item()} points "
            f"(values in [{lo:.4g}, {hi:.4g}]); boundary values such as exact 0 or 1 have no finite density. "
            "Fix: use data.dequantize so values lie strictly inside the support."
        )
