"""The direct ELBO path in VAE.forward gives Trace_ELBO's loss and gradients, draw for draw."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro_vae.models.vae import VAE


def data(likelihood):
    g = torch.Generator().manual_seed(3)
    unit = torch.rand(20, 8, 8, generator=g)
    return {"bernoulli": torch.bernoulli(unit, generator=g), "categorical": (unit * 17).floor()}.get(likelihood, unit)


def loss_and_grads(vae, fn):
    vae.zero_grad()
    pyro.set_rng_seed(7)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", [Trace_ELBO(), TraceMeanField_ELBO(),
                                       Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)], ids=["elbo", "meanfield", "elbo-3-particles"])
@pytest.mark.parametrize("prior, likelihood", [("normal", "bernoulli"), ("mog", "gaussian_learned"),
                                               ("vamp", "categorical"), ("flow", "beta")])
def test_direct_loss_equals_pyro_trace_elbo(objective, prior, likelihood):
    vae = VAE((8, 8), latent_dim=3, prior=prior, likelihood=likelihood, hidden=(16,), levels=17)
    vae.num_data, vae.beta = 200, 0.7  # the minibatch scale and beta must match too
    x = data(likelihood)
    assert vae._direct_elbo_applies(objective)
    direct, direct_grads = loss_and_grads(vae, lambda: vae(x, objective))
    traced, traced_grads = loss_and_grads(vae, lambda: objective.differentiable_loss(vae.model, vae.guide, x))
    assert torch.allclose(direct, traced, rtol=1e-5), (direct, traced)
    assert direct_grads.keys() == traced_grads.keys()
    for name in direct_grads:
        assert torch.allclose(direct_grads[name], traced_grads[name], rtol=1e-4, atol=1e-5), name


def test_subclassed_model_uses_pyro():
    class Custom(VAE):
        def model(self, x=None, num_samples=None):
            return super().model(x, num_samples)

    vae = Custom((4,), latent_dim=2, likelihood="gaussian", hidden=(8,))
    assert not vae._direct_elbo_applies(Trace_ELBO())

    class CustomDecode(VAE):  # the model calls decode, so the direct path must not bypass it
        def decode(self, z):
            return super().decode(2 * z)

    assert not CustomDecode((4,), latent_dim=2, likelihood="gaussian", hidden=(8,))._direct_elbo_applies(Trace_ELBO())
    assert not VAE((4,), 2, likelihood="gaussian")._direct_elbo_applies(Trace_ELBO(num_particles=2))


@pytest.mark.parametrize("prior, likelihood", [("normal", "bernoulli"), ("mog", "gaussian_learned"), ("vamp", "categorical")])
def test_direct_iwae_equals_traced_iwae(prior, likelihood):
    from pyro_vae.objectives.iwae import IWAE

    vae = VAE((8, 8), latent_dim=3, prior=prior, likelihood=likelihood, hidden=(16,), levels=17)
    vae.num_data, vae.beta = 200, 0.7
    x, objective = data(likelihood), IWAE(num_particles=5)
    assert vae._direct_iwae_applies(objective)
    direct, direct_grads = loss_and_grads(vae, lambda: vae(x, objective))
    traced, traced_grads = loss_and_grads(vae, lambda: objective.differentiable_loss(vae.model, vae.guide, x))
    assert torch.allclose(direct, traced, rtol=1e-5), (direct, traced)
    for name in direct_grads:  # float32 sums in another order: equal to 1e-5 of the gradient's size
        scale = traced_grads[name].abs().max().item()
        assert torch.allclose(direct_grads[name], traced_grads[name], rtol=1e-4, atol=1e-5 * scale), name

    class Custom(VAE):
        def guide(self, x, num_samples=None):
            return super().guide(x, num_samples)

    assert not Custom((4,), latent_dim=2, likelihood="gaussian")._direct_iwae_applies(objective)
