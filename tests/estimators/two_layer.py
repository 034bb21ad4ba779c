"""Users' own Pyro models, written as plain ``PyroModule``s (not :class:`~pyro_vae.models.vae.VAE` subclasses).

Shared by the tests of the estimators on user models and of the command line:

* :class:`TwoLayerVAE`: two stochastic layers ``z2 -> z1 -> pixels`` with a Bernoulli
  likelihood at an observed site called ``"obs"``, bottom-up inference ``q(z1|x) q(z2|z1)``;
  ``z1`` is ``(N, z1)``, ``z2`` is a matrix per point ``(N, z2, 2)``;
* :class:`LinearTwoLayer`: the same structure, linear and Gaussian, so ``log p(x)`` and the
  posterior are known in closed form; with ``exact_guide=True`` the guide is the exact
  posterior, and every importance weight equals ``log p(x)``.

Both are deterministic given the torch seed at construction.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn
from torch.distributions.transforms import ReshapeTransform

__all__ = ["TwoLayerVAE", "LinearTwoLayer"]


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs))


class TwoLayerVAE(PyroModule):
    """``p(z2) p(z1|z2) p(x|z1)`` with ``z2 ~ N(0, I)`` of shape ``(z2, 2)``, Bernoulli pixels at site ``"obs"``."""

    def __init__(self, event_shape=(8, 8), z1=8, z2=4, hidden=32):
        super().__init__()
        self.event_shape, self.z1, self.z2 = tuple(event_shape), z1, z2
        pixels = math.prod(self.event_shape)
        self.top_down, self.to_pixels = mlp(2 * z2, hidden, 2 * z1), mlp(z1, hidden, pixels)
        self.bottom_up, self.to_top = mlp(pixels, hidden, 2 * z1), mlp(z1, hidden, 4 * z2)

    @staticmethod
    def normal(h, event_shape):
        loc, scale = h.chunk(2, -1)
        shape = (*h.shape[:-1], *event_shape)
        return dist.Normal(loc.reshape(shape), F.softplus(scale).reshape(shape) + 1e-3).to_event(len(event_shape))

    def model(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(n, self.z2, 2), 1.0).to_event(2))
            z1 = pyro.sample("z1", self.normal(self.top_down(z2.flatten(-2)), (self.z1,)))
            # *z1.shape[:-1]: the estimators add a dimension of draws in front of the data's.
            logits = self.to_pixels(z1).reshape(*z1.shape[:-1], *self.event_shape)
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(len(self.event_shape)), obs=x)

    def guide(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z1 = pyro.sample("z1", self.normal(self.bottom_up(x.reshape(n, -1)), (self.z1,)))
            pyro.sample("z2", self.normal(self.to_top(z1), (self.z2, 2)))


class LinearTwoLayer(PyroModule):
    """``z2 ~ N(0, I)`` ``(2, 2)``, ``z1 | z2 ~ N(A vec z2, s1² I)`` ``(3,)``, ``x | z1 ~ N(B z1 + c, s2² I)`` ``(5,)``.

    Attributes:
        marginal: The exact ``p(x)``, a ``MultivariateNormal``.
    """

    def __init__(self, exact_guide: bool = True, s1: float = 0.6, s2: float = 0.4):
        super().__init__()
        self.event_shape, self.s1, self.s2 = (5,), s1, s2
        self.A, self.B, self.c = torch.randn(3, 4) / 2, torch.randn(5, 3), torch.randn(5)
        cov1 = self.A @ self.A.T + s1**2 * torch.eye(3)  # marginal covariance of z1
        self.marginal = dist.MultivariateNormal(self.c, self.B @ cov1 @ self.B.T + s2**2 * torch.eye(5))
        # Exact posterior p(z1|x) = N(P Bᵀ (x - c) / s2², P) and p(z2|z1, x) = p(z2|z1) = N(Q Aᵀ z1 / s1², Q).
        self.P = torch.linalg.inv(torch.linalg.inv(cov1) + self.B.T @ self.B / s2**2)
        self.Q = torch.linalg.inv(torch.eye(4) + self.A.T @ self.A / s1**2)
        self.widen = 1.0 if exact_guide else 1.5  # a poorer guide: the posterior covariances inflated

    def model(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(n, 2, 2), 1.0).to_event(2))
            z1 = pyro.sample("z1", dist.Normal(z2.flatten(-2) @ self.A.T, self.s1).to_event(1))
            pyro.sample("obs", dist.Normal(z1 @ self.B.T + self.c, self.s2).to_event(1), obs=x)

    def guide(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            loc1 = (x - self.c) @ self.B @ self.P / self.s2**2  # P is symmetric
            z1 = pyro.sample("z1", dist.MultivariateNormal(loc1, self.widen * self.P))
            loc2 = z1 @ self.A @ self.Q / self.s1**2
            vec = dist.MultivariateNormal(loc2, self.widen * self.Q)
            pyro.sample("z2", dist.TransformedDistribution(vec, [ReshapeTransform((4,), (2, 2))]))
