"""Per-datapoint importance weights from Pyro traces, and the IWAE objective.

The terms themselves come from :mod:`pyro_vae.logjoint`. For datapoint ``x_i`` and a
draw ``z_ik ~ q(z|x_i)``::

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
from typing import Any, Callable

import torch
from pyro.infer.elbo import ELBO
from torch import Tensor

from .logjoint import WeightTerms, subsample_factor, weight_terms

__all__ = ["WeightTerms", "weight_terms", "log_weights", "IWAE", "subsample_factor"]

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
