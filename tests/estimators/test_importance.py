"""Tests for pyro_vae.estimators.importance: per-datapoint unscaled weights and the IWAE objective."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

from pyro_vae.objectives.iwae import IWAE
from pyro_vae.estimators.importance import log_weights
from pyro_vae.models.target import weight_terms
from pyro_vae.models.vae import VAE

N, DIM, LATENT = 4, 5, 4  # N * LATENT = 16: whole blocks of torch's vectorized normal sampler


@pytest.fixture
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE((DIM,), latent_dim=LATENT, likelihood="gaussian", hidden=[8])


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(N, DIM, generator=torch.Generator().manual_seed(1))


def seeded(fn, seed=0):
    pyro.set_rng_seed(seed)
    return fn()


def test_log_weights_shape_and_terms(vae, x):
    lw = seeded(lambda: log_weights(vae.model, vae.guide, x, num_samples=7))
    assert lw.shape == (N, 7)
    terms = seeded(lambda: weight_terms(vae.model, vae.guide, x, num_samples=7))
    torch.testing.assert_close(terms.log_weight.T, lw)
    assert terms.data_scale == 1.0
    # By hand: the same draws scored with the VAE's own distributions.
    pyro.set_rng_seed(0)
    q = vae.encode(x)
    z = q.rsample((7,))
    expected = vae.decode(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(lw, expected.T.detach())


def test_weights_are_per_datapoint(vae, x):
    x2 = x.clone()
    x2[2] += 1.0
    a = seeded(lambda: log_weights(vae.model, vae.guide, x, num_samples=6))
    b = seeded(lambda: log_weights(vae.model, vae.guide, x2, num_samples=6))
    changed = (a != b).any(dim=1)
    assert changed.tolist() == [False, False, True, False]


def test_chunking_matches_one_pass(vae, x):
    # torch draws normals in blocks of 16, so chunks of N * LATENT * k values replay one pass exactly.
    whole = seeded(lambda: log_weights(vae.model, vae.guide, x, num_samples=12))
    chunked = seeded(lambda: log_weights(vae.model, vae.guide, x, num_samples=12, chunk_size=5))
    torch.testing.assert_close(whole, chunked)


def test_log_weights_are_unscaled(vae, x):
    ref = seeded(lambda: log_weights(vae.model, vae.guide, x, num_samples=9))
    vae.num_data, vae.beta = 10 * N, 0.3
    scaled = seeded(lambda: log_weights(vae.model, vae.guide, x, num_samples=9))
    torch.testing.assert_close(ref, scaled)
    terms = seeded(lambda: weight_terms(vae.model, vae.guide, x, num_samples=9))
    assert terms.data_scale == 10.0
    # The training weight keeps beta (KL weighting inside w) but not the subsample factor.
    torch.testing.assert_close(terms.weighted, terms.log_lik + 0.3 * (terms.log_prior - terms.log_q))


def test_iwae_scaling_commutes_but_renyi_does_not(vae, x):
    k = 8
    iwae_plain = seeded(lambda: IWAE(num_particles=k).differentiable_loss(vae.model, vae.guide, x)).item()
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    renyi_plain = seeded(lambda: renyi.loss(vae.model, vae.guide, x))
    vae.num_data = 10 * N
    iwae_scaled = seeded(lambda: IWAE(num_particles=k).differentiable_loss(vae.model, vae.guide, x)).item()
    renyi_scaled = seeded(lambda: renyi.loss(vae.model, vae.guide, x))
    assert iwae_scaled == pytest.approx(10 * iwae_plain, rel=1e-5)
    # pyro issue #3104: RenyiELBO scales each particle's log-weight before the log-sum-exp,
    # so its minibatch estimate is not 10x the batch bound (here it is off by whole nats).
    assert abs(renyi_scaled - 10 * renyi_plain) > 1.0
    assert abs(renyi_scaled - 10 * renyi_plain) > 100 * abs(iwae_scaled - 10 * iwae_plain)


def test_iwae_with_one_particle_is_trace_elbo(vae, x):
    iwae = seeded(lambda: IWAE(num_particles=1).differentiable_loss(vae.model, vae.guide, x))
    elbo = seeded(lambda: Trace_ELBO().differentiable_loss(vae.model, vae.guide, x))
    torch.testing.assert_close(iwae, elbo)


def test_iwae_is_tighter_than_the_elbo_on_average(vae, x):
    iwae = [seeded(lambda: IWAE(num_particles=50).loss(vae.model, vae.guide, x), s) for s in range(5)]
    elbo = [seeded(lambda: Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
                   .loss(vae.model, vae.guide, x), s) for s in range(5)]
    assert sum(iwae) / 5 < sum(elbo) / 5


def test_iwae_gradients_train_the_model(vae, x):
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    objective = IWAE(num_particles=5)
    losses = []
    for step in range(30):
        optimizer.zero_grad()
        losses.append(seeded(lambda: objective.loss_and_grads(vae.model, vae.guide, x), step))
        optimizer.step()
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])


def _global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _global_guide(x):
    pyro.sample("mu", dist.Normal(0.0, 1.0))


def test_global_latent_is_refused_with_a_clear_message():
    x = torch.randn(6)
    with pytest.raises(ValueError, match="global latents"):
        log_weights(_global_model, _global_guide, x, num_samples=3)
    # K == N must not let the particle dimension pass for the data dimension.
    with pytest.raises(ValueError, match="'mu'"):
        log_weights(_global_model, _global_guide, x, num_samples=6)
