"""The inference gap split (Cremer, Li & Duvenaud, 2018): the E-step EM would take.

For a trained VAE and datapoints ``x_i``::

    log p(x_i) - ELBO(q_amortized)
        = [log p(x_i) - ELBO(q*_i)]          approximation gap: the Gaussian family's limit
        + [ELBO(q*_i) - ELBO(q_amortized)]   amortization gap: the encoder's shortfall

``q*_i`` is a separate diagonal Gaussian per datapoint, optimized on that point's ELBO
with the decoder and prior frozen: the E-step of variational EM, with the posterior
left free of the encoder. ``log p(x_i)`` is estimated by importance sampling with
``q*_i`` as proposal (the better of the two proposals, so the estimate is tighter).
Both gaps are non-negative in expectation.

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> result = inference_gaps(vae, torch.rand(5, 4), steps=20, num_samples=50)
    >>> sorted(result.summary())[:2]
    ['amortization_gap', 'approximation_gap']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.core.stats import logmeanexp, mean_se
from pyro_vae.models.target import evaluation_mode, weight_terms

__all__ = ["InferenceGaps", "inference_gaps"]


@dataclass
class InferenceGaps:
    """Per-datapoint figures in nats, shape ``(N,)`` each."""

    log_likelihood: Tensor
    elbo_amortized: Tensor
    elbo_optimized: Tensor

    @property
    def approximation_gap(self) -> Tensor:
        return self.log_likelihood - self.elbo_optimized

    @property
    def amortization_gap(self) -> Tensor:
        return self.elbo_optimized - self.elbo_amortized

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean ± SE of each figure over the datapoints."""
        return {
            "log_likelihood": mean_se(self.log_likelihood),
            "elbo_amortized": mean_se(self.elbo_amortized),
            "elbo_optimized": mean_se(self.elbo_optimized),
            "approximation_gap": mean_se(self.approximation_gap),
            "amortization_gap": mean_se(self.amortization_gap),
        }

    def __str__(self) -> str:
        s = self.summary()
        return "\n".join(f"{key:>18}: {v['mean']:10.3f} ± {v['se']:.3f} nats" for key, v in s.items())


class _LocalGuide(nn.Module):
    """One free diagonal Gaussian per datapoint, started at the encoder's answer."""

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.loc = nn.Parameter(loc.detach().clone())
        self.raw_scale = nn.Parameter(torch.log(torch.expm1(scale.detach().clamp_min(1e-6))))

    def forward(self, x: Tensor) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(self.loc, F.softplus(self.raw_scale) + 1e-6).to_event(1))


def _elbo_per_point(model, guide, x: Tensor, num_samples: int) -> Tensor:
    with torch.no_grad():
        return weight_terms(model, guide, x, num_samples=num_samples).log_weight.mean(0)


def inference_gaps(vae: Any, x: Tensor, steps: int = 500, lr: float = 1e-2, particles: int = 16,
                   num_samples: int = 1000) -> InferenceGaps:
    """Split each datapoint's gap ``log p(x) - ELBO`` into approximation and amortization parts.

    Args:
        vae: A trained model whose guide is a diagonal Gaussian over one latent site ``"z"``
            given by ``encode(x)`` (the stock :class:`~pyro_vae.models.vae.VAE`); its
            parameters are not changed.
        x: Datapoints in model space (after the data transform).
        steps: Adam steps for the per-point posteriors.
        lr: Their learning rate.
        particles: Reparameterized draws per step for the per-point ELBO gradient.
        num_samples: Draws for the final ELBO and importance-sampling estimates.
    """
    frozen = [p for p in vae.parameters() if p.requires_grad]
    # Per-point, unscaled figures; eval mode: frozen PyroModule parameters are then read without
    # param-store registration.
    with evaluation_mode(vae):
        try:
            for p in frozen:
                p.requires_grad_(False)
            # No module_local_params context here: a PyroModule must be run in the mode it was built in.
            elbo_amortized = _elbo_per_point(vae.model, vae.guide, x, num_samples)
            q = vae.encode(x).base_dist
            local = _LocalGuide(q.loc, q.scale).to(x.device)
            optimizer = torch.optim.Adam(local.parameters(), lr=lr)
            for _ in range(steps):
                terms = weight_terms(vae.model, local, x, num_samples=particles)
                # Each point's ELBO depends only on its own q_i: summing keeps the gradients separate.
                loss = -terms.log_weight.mean(0).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            elbo_optimized = _elbo_per_point(vae.model, local, x, num_samples)
            with torch.no_grad():
                log_w = weight_terms(vae.model, local, x, num_samples=num_samples).log_weight
            log_likelihood = logmeanexp(log_w, dim=0)
        finally:
            for p in frozen:
                p.requires_grad_(True)
    return InferenceGaps(log_likelihood, elbo_amortized, elbo_optimized)
