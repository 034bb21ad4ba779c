"""The evidence lower bound as a training objective, on any Pyro model and guide.

:class:`ELBO` is Pyro's ``Trace_ELBO`` (or ``TraceMeanField_ELBO``, with the analytic KL
where torch registers one), vectorized over particles. It first asks the model for its
fused kernel (``model.fused_elbo_loss``: the stock VAE's, which gives the traced loss
draw for draw at the speed of a hand-written VAE) and traces ``model.model`` and
``model.guide`` when the model offers none or declines.

Example:
    >>> import torch
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=[8])
    >>> ELBO(num_particles=2).training_loss(vae, torch.rand(3, 4)).shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Any

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import Tensor

from pyro_vae.objectives.base import scale_latents

__all__ = ["ELBO"]


class ELBO:
    """``-ELBO`` summed over a batch, through the model's fused kernel or Pyro's traces.

    Args:
        num_particles: Draws per datapoint (vectorized).
        meanfield: Use ``TraceMeanField_ELBO`` (analytic KL where registered).
        max_plate_nesting: Plates in the model (1: the data plate).
    """

    def __init__(self, num_particles: int = 1, meanfield: bool = False, max_plate_nesting: int = 1) -> None:
        self.num_particles, self.meanfield = int(num_particles), bool(meanfield)
        self.name = "meanfield" if meanfield else "elbo"
        cls = TraceMeanField_ELBO if meanfield else Trace_ELBO
        self.pyro_elbo = cls(num_particles=self.num_particles, vectorize_particles=self.num_particles > 1,
                             max_plate_nesting=max_plate_nesting)

    def training_loss(self, model: Any, x: Tensor, beta: float = 1.0) -> Tensor:
        fused = getattr(model, "fused_elbo_loss", None)
        loss = fused(x, self.num_particles, self.meanfield, beta) if fused is not None else None
        if loss is None:
            loss = self.pyro_elbo.differentiable_loss(scale_latents(model.model, beta), scale_latents(model.guide, beta), x)
        return loss

    def __repr__(self) -> str:
        return f"ELBO(num_particles={self.num_particles}, meanfield={self.meanfield})"
