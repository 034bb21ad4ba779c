"""Per-datapoint importance weights from Pyro traces, and the IWAE objective.

For datapoint ``x_i`` and a draw ``z_ik ~ q(z|x_i)``::

    log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i)

This module reads those terms off ordinary Pyro traces of *any* model and guide
(no per-model code), with the ``K`` draws vectorized in an extra plate. Two things
set it apart from ``pyro.infer.Importance`` / ``vectorized_importance_weights``:

* weights stay **per datapoint** (shape ``(N, K)``) instead of being summed over the
  batch, so ``log p(x_i)`` is estimated for each ``i``;
* log-probabilities are **unscaled**: the plate's ``num_data / batch`` factor and a
  ``poutine.scale`` beta never leak into the estimate.

:class:`IWAE` uses the same weights as a training loss, applying the minibatch scale
*after* the log-sum-exp. ``RenyiELBO(alpha=0)`` applies it before, which is not the
IWAE bound under subsampling (pyro issue #3104).

Example:
    >>> from pyro_vae.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> log_weights(vae.model, vae.guide, torch.rand(3, 4), num_samples=10).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["WeightTerms", "weight_terms", "log_weights", "IWAE", "subsample_factor"]

PARTICLE_PLATE = "_importance_particles"


@dataclass
class WeightTerms:
    """Unscaled per-datapoint log-probability sums, each of shape ``(K, N)``.

    Attributes:
        log_lik: Observed model sites, log p(x|z).
        log_prior: Latent model sites, log p(z).
        log_q: Guide sites, log q(z|x).
        weighted: ``log p(x,z) - log q(z|x)`` with each site's beta (``poutine.scale``)
            kept but the subsample factor removed: the IWAE training weight.
        data_scale: The subsample factor ``num_data / batch`` of the data plate.
    """

    log_lik: Tensor
    log_prior: Tensor
    log_q: Tensor
    weighted: Tensor
    data_scale: float

    @property
    def log_weight(self) -> Tensor:
        return self.log_lik + self.log_prior - self.log_q


def subsample_factor(site: dict) -> float:
    """The product of ``full_size / size`` over the subsampled plates of ``site``."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            factor *= frame.full_size / frame.size
    return factor


def _per_datapoint(name: str, site: dict, log_p: Tensor, k: int, n: int) -> Tensor:
    # The shape alone cannot tell a global latent from a per-point one when K == N (the
    # particle dim would pass for the data dim), so also require a data-sized plate.
    in_data_plate = any(f.name != PARTICLE_PLATE and f.size == n for f in site["cond_indep_stack"])
    if not in_data_plate or log_p.dim() == 0 or log_p.shape[-1] != n:
        raise ValueError(
            f"Site {name!r} has log-prob shape {tuple(log_p.shape)}, which has no datapoint dimension of size {n}; "
            "per-datapoint weights need every sample site inside the data plate (global latents cannot be split per point)."
        )
    return log_p.expand(k, n) if log_p.dim() == 1 else log_p.reshape(k, n)


def weight_terms(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1, num_points: int | None = None,
    max_plate_nesting: int = 1, **kwargs: Any,
) -> WeightTerms:
    """Trace ``guide`` then ``model`` with ``num_samples`` vectorized draws per datapoint.

    Args:
        model: A Pyro callable; every sample site must lie in the data plate.
        guide: A Pyro callable; every sample site must lie in the data plate.
        *args: Passed to both (e.g. the data batch ``x``).
        num_samples: Draws per datapoint ``K``.
        num_points: Batch size ``N``; inferred from the first argument when omitted.
        max_plate_nesting: Plates in the model; the particle plate goes one further out.
        **kwargs: Passed to both.
    """
    n = num_points if num_points is not None else args[0].shape[0]
    particles = pyro.plate(PARTICLE_PLATE, num_samples, dim=-(max_plate_nesting + 1))
    with particles:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    with particles:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    zero = torch.zeros(())
    log_lik = log_prior = log_q = weighted = zero
    data_scale = 1.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            # A plate records its subsample indices as a "sample" site; it has no density.
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_p = _per_datapoint(name, site, site["fn"].log_prob(site["value"]), num_samples, n)
            if site.get("mask") is not None and site["mask"] is not True:
                log_p = log_p * site["mask"]
            factor = subsample_factor(site)
            beta = site["scale"] / factor
            weighted = weighted + sign * beta * log_p
            if sign < 0:
                log_q = log_q + log_p
            elif site["is_observed"]:
                log_lik, data_scale = log_lik + log_p, factor
            else:
                log_prior = log_prior + log_p
    return WeightTerms(*(t.expand(num_samples, n) for t in (log_lik, log_prior, log_q, weighted)), data_scale=data_scale)


@torch.no_grad()
def log_weights(
    model: Callable, guide: Callable, x: Tensor, num_samples: int, chunk_size: int | None = None,
    max_plate_nesting: int = 1, **kwargs: Any,
) -> Tensor:
    """Unscaled log importance weights ``log w_ik``, shape ``(N, K)``.

    Args:
        chunk_size: Draws per pass (memory is linear in it); default all ``K`` at once.
    """
    chunk_size = chunk_size or num_samples
    parts = []
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        terms = weight_terms(model, guide, x, num_samples=k, max_plate_nesting=max_plate_nesting, **kwargs)
        parts.append(terms.log_weight)
    return torch.cat(parts, dim=0).T


class IWAE(ELBO):
    """The importance-weighted bound (Burda et al., 2016) as a Pyro loss.

    ``L_K = sum_i log (1/K) sum_k w_ik``, with each datapoint's term multiplied by the
    data plate's subsample factor after the log-sum-exp, so a minibatch gives an
    unbiased estimate of the full-data bound. A ``poutine.scale`` beta on a site
    weights that site's log-probability inside ``w``.

    Args:
        num_particles: ``K``, draws per datapoint (vectorized).
        max_plate_nesting: Plates in the model (1 for :class:`~pyro_vae.vae.VAE`).

    Example:
        >>> from pyro_vae.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
        >>> IWAE(num_particles=5).differentiable_loss(vae.model, vae.guide, torch.rand(3, 4)).shape
        torch.Size([])
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        terms = weight_terms(
            model, guide, *args, num_samples=self.num_particles, max_plate_nesting=self.max_plate_nesting, **kwargs
        )
        bound = torch.logsumexp(terms.weighted, dim=0) - math.log(self.num_particles)
        return -terms.data_scale * bound.sum()

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        # The particles are vectorized inside ``weight_terms``; there is no per-particle trace.
        raise NotImplementedError("IWAE traces all particles at once; use differentiable_loss.")

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()
