"""Priors p(z): swappable by name, by class, by instance, or by any callable.

Every prior is an :class:`torch.nn.Module` whose ``forward()`` returns a Pyro
distribution over ``z`` with ``batch_shape == ()`` and ``event_shape == (latent_dim,)``.
Priors that need the latent size (or the encoder, for the VampPrior) create their
parameters lazily in :meth:`Prior.bind`, which the :class:`~pyro_vae.models.vae.VAE` calls once.
That is what lets a strategy be written before the model exists, as in numpyro::

    VAE(..., prior="mog")          # by name (config files)
    VAE(..., prior=mog)            # the strategy itself, default settings
    VAE(..., prior=mog(k=20))      # the strategy with settings
    VAE(..., prior=lambda: dist.Laplace(torch.zeros(4), 1.0).to_event(1))  # any callable

Example:
    >>> prior = resolve_prior("mog", k=3)
    >>> prior.bind(latent_dim=2)
    >>> prior().event_shape
    torch.Size([2])
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.core.records import RecordsSettings

__all__ = [
    "Prior",
    "normal",
    "learned_normal",
    "mog",
    "vamp",
    "flow",
    "laplace",
    "studentt",
    "PRIORS",
    "resolve_prior",
    "prior_log_density",
    "marginal_log_prob_per_dim",
]


class Prior(RecordsSettings, nn.Module):
    """Base class: a module whose ``forward()`` returns p(z).

    Subclasses create parameters in :meth:`bind`, which receives the latent size
    and the VAE's encoder (used by priors defined through the encoder). Every
    instance remembers its constructor's settings, so a checkpoint can rebuild it.
    """

    latent_dim: int | None = None

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        self.latent_dim = latent_dim

    def log_density(self, z: Tensor) -> Tensor:
        """``log p(z)`` summed over the latent dim: ``self().log_prob(z)``, which a prior may compute faster."""
        return self().log_prob(z)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


def prior_log_density(module: nn.Module, z: Tensor, prior: dist.Distribution | None = None) -> Tensor:
    """``log p(z)`` of a prior module: its own closed-form ``log_density`` when it defines one, else
    the log-density of its distribution (``prior``, when the caller has already built it).

    A user's prior may be any module returning a distribution, so ``log_density`` is optional.
    """
    if getattr(type(module), "log_density", Prior.log_density) is not Prior.log_density:
        return module.log_density(z)
    return (prior if prior is not None else module()).log_prob(z)


def _zeros(prior: Prior) -> Tensor:
    # Follow the module's device so a prior without parameters still moves with .to().
    return prior.anchor.new_zeros(prior.latent_dim)


class normal(Prior):
    """Standard normal N(0, I), the classic VAE prior."""

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        super().bind(latent_dim)
        self.register_buffer("anchor", torch.zeros(()))

    def forward(self) -> dist.Distribution:
        loc = _zeros(self)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def log_density(self, z: Tensor) -> Tensor:
        # The closed form skips building the distribution and its (z - 0) / 1 passes: on the
        # training path this is one of the few per-step costs a hand-written VAE does not pay.
        return z.square().sum(-1).mul_(-0.5).sub_(0.5 * z.shape[-1] * math.log(2 * math.pi))


class learned_normal(Prior):
    """Diagonal Gaussian with trainable mean and scale."""

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        super().bind(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        # softplus^-1(1) so training starts at the standard normal.
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), 0.5413))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, F.softplus(self.raw_scale) + 1e-5).to_event(1)


class mog(Prior):
    """Trainable mixture of ``k`` diagonal Gaussians.

    Args:
        k: Number of components.
        spread: Standard deviation of the random initial component means; spreading
            them breaks the symmetry between components.
    """

    def __init__(self, k: int = 10, spread: float = 1.0) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"mog prior needs k >= 1 components, got k={k}.")
        if not spread > 0:
            raise ValueError(f"mog prior needs spread > 0, got spread={spread}.")
        self.k, self.spread = k, spread

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        super().bind(latent_dim)
        self.logits = nn.Parameter(torch.zeros(self.k))
        self.locs = nn.Parameter(self.spread * torch.randn(self.k, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((self.k, latent_dim), 0.5413))

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.locs, F.softplus(self.raw_scales) + 1e-5).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, k={self.k}"


class vamp(Prior):
    """VampPrior (Tomczak & Welling, 2018): p(z) = 1/K sum_k q(z | u_k).

    The ``k`` pseudo-inputs ``u_k`` are trainable and live in data space; the prior
    reuses the VAE's encoder, so it moves with the approximate posterior.

    Args:
        k: Number of pseudo-inputs.
        init_scale: Pseudo-inputs start at ``0.5 + init_scale * noise`` (mid-grey).
    """

    def __init__(self, k: int = 50, init_scale: float = 0.01) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"vamp prior needs k >= 1 pseudo-inputs, got k={k}.")
        self.k, self.init_scale = k, init_scale

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        if encoder is None:
            raise ValueError("The vamp prior needs the VAE's encoder; build it through VAE(prior='vamp').")
        super().bind(latent_dim)
        self.pseudo_inputs = nn.Parameter(0.5 + self.init_scale * torch.randn(self.k, *event_shape))
        # Held without registering as a submodule: the encoder belongs to the VAE.
        self.__dict__["encoder"] = encoder

    def forward(self) -> dist.Distribution:
        loc, scale = self.encoder(self.pseudo_inputs)
        components = dist.Normal(loc, scale).to_event(1)
        mixing = dist.Categorical(logits=loc.new_zeros(self.k))
        return dist.MixtureSameFamily(mixing, components)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, k={self.k}"


_FLOWS: dict[str, Callable[[int], T.TransformModule]] = {
    "affine_autoregressive": T.affine_autoregressive,
    "spline_autoregressive": T.spline_autoregressive,
    "spline_coupling": T.spline_coupling,
    "spline": T.spline,
}


class flow(Prior):
    """Standard normal pushed through Pyro's own normalizing-flow transforms.

    The flow is applied in the *density* direction: ``log p(z)`` costs one pass
    through each transform, which is what training needs on every step; sampling
    (only for generation) pays the autoregressive inverse instead.

    Args:
        kind: One of ``affine_autoregressive``, ``spline_autoregressive``,
            ``spline_coupling``, ``spline`` (element-wise).
        num_layers: Number of stacked transforms (permutations between them).
    """

    def __init__(self, kind: str = "spline_coupling", num_layers: int = 2) -> None:
        super().__init__()
        if kind not in _FLOWS:
            raise ValueError(f"Unknown flow kind {kind!r}; choose one of {sorted(_FLOWS)}.")
        if num_layers < 1:
            raise ValueError(f"flow prior needs num_layers >= 1, got num_layers={num_layers}.")
        self.kind, self.num_layers = kind, num_layers

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        if latent_dim < 2 and self.kind != "spline":
            raise ValueError(f"flow kind {self.kind!r} needs latent_dim >= 2; use kind='spline' for 1-D latents.")
        super().bind(latent_dim)
        self.register_buffer("anchor", torch.zeros(()))
        self.transforms = nn.ModuleList(_FLOWS[self.kind](latent_dim) for _ in range(self.num_layers))

    def forward(self) -> dist.Distribution:
        loc = _zeros(self)
        base = dist.Normal(loc, torch.ones_like(loc)).to_event(1)
        # Reversing the order between layers lets every coordinate condition on every other.
        reverse = T.Permute(torch.arange(self.latent_dim - 1, -1, -1, device=loc.device))
        layers: list = []
        for i, t in enumerate(self.transforms):
            layers += [t, reverse] if i + 1 < len(self.transforms) else [t]
        # Each transform maps z -> noise in its fast direction, so the prior uses the inverses.
        return dist.TransformedDistribution(base, [t.inv for t in reversed(layers)])

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, kind={self.kind!r}, num_layers={self.num_layers}"


class laplace(Prior):
    """Factorized Laplace(0, scale): heavier tails than the Gaussian, sparser codes."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"laplace prior needs scale > 0, got scale={scale}.")
        self.scale = scale

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        super().bind(latent_dim)
        self.register_buffer("anchor", torch.zeros(()))

    def forward(self) -> dist.Distribution:
        loc = _zeros(self)
        return dist.Laplace(loc, torch.full_like(loc, self.scale)).to_event(1)


class studentt(Prior):
    """Factorized Student-t with ``df`` degrees of freedom."""

    def __init__(self, df: float = 3.0, scale: float = 1.0) -> None:
        super().__init__()
        if df <= 0:
            raise ValueError(f"studentt prior needs df > 0, got df={df}.")
        if not scale > 0:
            raise ValueError(f"studentt prior needs scale > 0, got scale={scale}.")
        self.df, self.scale = df, scale

    def bind(self, latent_dim: int, encoder: nn.Module | None = None, event_shape: tuple = ()) -> None:
        super().bind(latent_dim)
        self.register_buffer("anchor", torch.zeros(()))

    def forward(self) -> dist.Distribution:
        loc = _zeros(self)
        return dist.StudentT(torch.full_like(loc, self.df), loc, torch.full_like(loc, self.scale)).to_event(1)


PRIORS: dict[str, type[Prior]] = {
    "normal": normal,
    "learned_normal": learned_normal,
    "mog": mog,
    "vamp": vamp,
    "flow": flow,
    "laplace": laplace,
    "studentt": studentt,
}


class _CallablePrior(Prior):
    """Wraps a user's zero-argument function (or a fixed distribution) as a prior."""

    def __init__(self, fn: Callable[[], dist.Distribution]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self) -> dist.Distribution:
        return self.fn()


def _check_kwargs(kind: str, name: str, cls: Callable, kwargs: dict) -> None:
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    params = [p.name for p in inspect.signature(cls).parameters.values() if p.kind not in kinds]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = ", ".join(params) or "none"
        raise ValueError(f"{kind} {name!r} got unknown settings {unknown}; valid settings: {valid}.")


def resolve_prior(spec: Any = "normal", **kwargs: Any) -> nn.Module:
    """Turn any prior specification into a module whose ``forward()`` returns p(z).

    Args:
        spec: A registered name (see :data:`PRIORS`), a :class:`Prior` class or
            instance, any ``nn.Module`` whose forward returns a distribution, a
            distribution, or a zero-argument callable returning one.
        **kwargs: Settings for a named prior (e.g. ``k=10`` for ``"mog"``).

    Raises:
        ValueError: Unknown name (the message lists the valid ones) or unknown settings.
    """
    if isinstance(spec, str):
        if spec not in PRIORS:
            raise ValueError(f"Unknown prior {spec!r}; registered priors: {', '.join(PRIORS)}.")
        _check_kwargs("prior", spec, PRIORS[spec], kwargs)
        return PRIORS[spec](**kwargs)
    if kwargs:
        raise ValueError("Prior settings can only be given with a prior name; pass them to the prior itself instead.")
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, torch.distributions.Distribution):
        return _CallablePrior(lambda: spec)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec()
    if callable(spec):
        made = spec()
        if isinstance(made, nn.Module):
            return made
        if isinstance(made, torch.distributions.Distribution):
            return _CallablePrior(spec)
        raise TypeError(f"The prior callable returned {type(made).__name__}; it must return a distribution over z.")
    raise TypeError(f"Cannot use {spec!r} as a prior; give a name from {list(PRIORS)}, a module or a callable.")


def marginal_log_prob_per_dim(prior: dist.Distribution, z: Tensor) -> Tensor | None:
    """Per-dimension marginal ``log p(z_u)`` where the prior allows it, else ``None``.

    Factorized priors give it directly; a mixture of diagonal Gaussians gives a 1-D
    mixture per dimension. Used for the KL-per-dimension diagnostic.
    """
    if isinstance(prior, dist.Independent) and prior.reinterpreted_batch_ndims == 1:
        return prior.base_dist.log_prob(z)
    if isinstance(prior, torch.distributions.MixtureSameFamily):
        comp = prior.component_distribution
        if isinstance(comp, dist.Independent) and isinstance(comp.base_dist, dist.Normal):
            log_mix = torch.log_softmax(prior.mixture_distribution.logits, -1)  # (K,)
            per = comp.base_dist.log_prob(z.unsqueeze(-2))  # (..., K, D)
            return torch.logsumexp(per + log_mix.unsqueeze(-1), dim=-2)
    return None
