"""Training objectives beyond Pyro's own ELBOs.

:class:`IWAE` is the importance-weighted bound (Burda et al., 2016) as a Pyro loss. It
reads the per-datapoint log-weights off traces (:func:`pyro_vae.models.target.weight_terms`)
and applies the minibatch scale *after* the log-sum-exp over the ``K`` draws.
``RenyiELBO(alpha=0)`` applies it before, which is not the IWAE bound under
subsampling (pyro issue #3104).

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> float(IWAE(num_particles=3).loss(vae.model, vae.guide, torch.rand(2, 4))) > 0
    True
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from pyro.infer.elbo import ELBO
from torch import Tensor

from pyro_vae.models.target import weight_terms
from pyro_vae.objectives.base import scale_latents

__all__ = ["IWAE"]


class IWAE(ELBO):
    """The importance-weighted bound (Burda et al., 2016) as a Pyro loss.

    ``L_K = sum_i log (1/K) sum_k w_ik``, with each datapoint's term multiplied by the
    data plate's subsample factor after the log-sum-exp, so a minibatch gives an
    unbiased estimate of the full-data bound. A ``poutine.scale`` beta on a site
    weights that site's log-probability inside ``w``.

    Args:
        num_particles: ``K``, draws per datapoint (vectorized).
        max_plate_nesting: Plates in the model (1 for :class:`~pyro_vae.models.vae.VAE`).

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
        >>> IWAE(num_particles=5).differentiable_loss(vae.model, vae.guide, torch.rand(3, 4)).shape
        torch.Size([])
    """

    name = "iwae"

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def training_loss(self, model: Any, x: Tensor, beta: float = 1.0) -> Tensor:
        """The loss of the training step: the model's fused kernel (``fused_iwae_loss``) if it offers one, else traced."""
        fused = getattr(model, "fused_iwae_loss", None)
        loss = fused(x, self.num_particles, beta) if fused is not None and self.max_plate_nesting == 1 else None
        if loss is None:
            loss = self.differentiable_loss(scale_latents(model.model, beta), scale_latents(model.guide, beta), x)
        return loss

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
