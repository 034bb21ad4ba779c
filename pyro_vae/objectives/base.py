"""What every training objective is: a loss that asks the model for a fast path before tracing it.

An objective is an object with ``training_loss(model, x, beta) -> Tensor``: the negative
bound summed over the points of the batch ``x``, unscaled (the trainer multiplies by
``num_data / batch``). ``model`` is anything with Pyro ``model(x)`` and ``guide(x)``.
``beta`` weights every latent site in both model and guide (beta-VAE, KL warm-up);
:func:`scale_latents` applies it to any Pyro program.

The stock :class:`~pyro_vae.models.vae.VAE` offers fused kernels (``fused_elbo_loss``,
``fused_iwae_loss``) that give the traced loss draw for draw; an objective calls them
when the model has them and they apply, and traces the model and guide otherwise. The
model never needs to know the objectives.

Example:
    >>> import torch
    >>> import pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> trace = pyro.poutine.trace(scale_latents(model, 0.5)).get_trace(torch.zeros(3))
    >>> trace.nodes["z"]["scale"], trace.nodes["x"]["scale"]
    (0.5, 1.0)
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["Objective", "scale_latents"]


@runtime_checkable
class Objective(Protocol):
    """A training loss over any model with Pyro ``model(x)`` and ``guide(x)``."""

    name: str

    def training_loss(self, model: Any, x: Tensor, beta: float = 1.0) -> Tensor:
        """The negative bound summed over the batch's points (differentiable, not scaled to the dataset)."""
        ...


class _LatentScale(Messenger):
    # poutine.scale would weight the observed sites too; beta weights only the latents' log-densities.
    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = msg["scale"] * self.beta


def scale_latents(fn: Callable, beta: float) -> Callable:
    """``fn`` (a Pyro model or guide) with every latent sample site's log-density weighted by ``beta``.

    ``beta == 1`` returns ``fn`` itself, so the common case costs nothing.
    """
    if beta == 1.0:
        return fn
    return _LatentScale(float(beta))(fn)
