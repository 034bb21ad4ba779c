"""A hand-written PyTorch VAE, the yardstick for pyro_vae's training speed.

Written in the style of the pytorch/examples VAE: the encoder gives mean and
log-variance, the loss is binary cross-entropy on logits plus the analytic KL. The
nets are built from the same layer sizes and activation as pyro_vae's MLPs, so the
two do the same arithmetic apart from the objective's bookkeeping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACT[activation]())
    return nn.Sequential(*layers)


class HandwrittenVAE(nn.Module):
    def __init__(self, num_dims: int, hidden: list[int], latent_dim: int, activation: str) -> None:
        super().__init__()
        self.encoder = mlp([num_dims, *hidden, 2 * latent_dim], activation)
        self.decoder = mlp([latent_dim, *reversed(hidden), num_dims], activation)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch (softplus scale as in pyro_vae's encoder)."""
        x = x.flatten(1)
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).sum()
        return reconstruction + kl
