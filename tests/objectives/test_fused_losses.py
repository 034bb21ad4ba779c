"""The objectives ask the model for its fused loss; the stock VAE's equals Pyro's traced loss, draw for draw."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.models.vae import VAE
from pyro_vae.objectives.base import scale_latents
from pyro_vae.objectives.elbo import ELBO
from pyro_vae.objectives.iwae import IWAE


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


BETA = 0.7  # the latents' weight must match too


@pytest.mark.parametrize("particles, meanfield", [(1, False), (1, True), (3, False)], ids=["elbo", "meanfield", "elbo-3-particles"])
@pytest.mark.parametrize("prior, likelihood", [("normal", "bernoulli"), ("mog", "gaussian_learned"),
                                               ("vamp", "categorical"), ("flow", "beta")])
def test_fused_elbo_equals_pyro_trace_elbo(particles, meanfield, prior, likelihood):
    vae = VAE((8, 8), latent_dim=3, prior=prior, likelihood=likelihood, hidden=(16,), levels=17)
    x, objective = data(likelihood), ELBO(num_particles=particles, meanfield=meanfield)
    assert vae.fused_elbo_loss(x, particles, meanfield, BETA) is not None
    pyro_elbo = (TraceMeanField_ELBO if meanfield else Trace_ELBO)(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    fused, fused_grads = loss_and_grads(vae, lambda: objective.training_loss(vae, x, BETA))
    traced, traced_grads = loss_and_grads(vae, lambda: pyro_elbo.differentiable_loss(
        scale_latents(vae.model, BETA), scale_latents(vae.guide, BETA), x))
    assert torch.allclose(fused, traced, rtol=1e-5), (fused, traced)
    assert fused_grads.keys() == traced_grads.keys()
    for name in fused_grads:
        assert torch.allclose(fused_grads[name], traced_grads[name], rtol=1e-4, atol=1e-5), name


def test_beta_weights_the_latents_as_the_vae_own_beta_does():
    """scale_latents(model, beta) on the stock VAE equals the VAE's own poutine.scale on "z"."""
    vae, x = VAE((8, 8), latent_dim=3, hidden=(16,)), data("bernoulli")
    elbo = Trace_ELBO()
    by_handler, _ = loss_and_grads(vae, lambda: elbo.differentiable_loss(scale_latents(vae.model, BETA),
                                                                        scale_latents(vae.guide, BETA), x))
    vae.beta = BETA
    by_attribute, _ = loss_and_grads(vae, lambda: elbo.differentiable_loss(vae.model, vae.guide, x))
    assert torch.allclose(by_handler, by_attribute, rtol=1e-6)


def test_a_subclass_that_changes_the_model_is_traced():
    class Custom(VAE):
        def model(self, x=None, num_samples=None):
            return super().model(x, num_samples)

    class CustomDecode(VAE):  # the model calls decode, so the fused loss must not bypass it
        def decode(self, z):
            return super().decode(2 * z)

    x = torch.rand(5, 4)
    for cls in (Custom, CustomDecode):
        vae = cls((4,), latent_dim=2, likelihood="gaussian", hidden=(8,))
        assert vae.fused_elbo_loss(x) is None and vae.fused_iwae_loss(x, 3) is None
        loss = ELBO().training_loss(vae, x)  # traced: still a finite, differentiable loss
        assert loss.requires_grad and torch.isfinite(loss)


def test_any_pyro_model_trains_through_the_traced_path():
    """A model that offers no fused loss is traced: loss and gradients equal Trace_ELBO's."""
    import pyro.distributions as dist
    from pyro.nn import PyroModule, PyroParam

    class Tiny(PyroModule):
        def __init__(self):
            super().__init__()
            self.w = PyroParam(torch.tensor(0.5))

        def model(self, x):
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("obs", dist.Normal(self.w * z, 1.0), obs=x)

        def guide(self, x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(0.3 * x, 0.8))

    tiny, x = Tiny(), torch.randn(6)
    ours, ours_grads = loss_and_grads(tiny, lambda: ELBO().training_loss(tiny, x, BETA))
    theirs, theirs_grads = loss_and_grads(tiny, lambda: Trace_ELBO().differentiable_loss(
        scale_latents(tiny.model, BETA), scale_latents(tiny.guide, BETA), x))
    assert torch.equal(ours, theirs)
    assert all(torch.equal(ours_grads[n], theirs_grads[n]) for n in ours_grads)


@pytest.mark.parametrize("prior, likelihood", [("normal", "bernoulli"), ("mog", "gaussian_learned"), ("vamp", "categorical")])
def test_fused_iwae_equals_traced_iwae(prior, likelihood):
    vae = VAE((8, 8), latent_dim=3, prior=prior, likelihood=likelihood, hidden=(16,), levels=17)
    x, objective = data(likelihood), IWAE(num_particles=5)
    assert vae.fused_iwae_loss(x, 5, BETA) is not None
    fused, fused_grads = loss_and_grads(vae, lambda: objective.training_loss(vae, x, BETA))
    traced, traced_grads = loss_and_grads(vae, lambda: objective.differentiable_loss(
        scale_latents(vae.model, BETA), scale_latents(vae.guide, BETA), x))
    assert torch.allclose(fused, traced, rtol=1e-5), (fused, traced)
    for name in fused_grads:  # float32 sums in another order: equal to 1e-5 of the gradient's size
        scale = traced_grads[name].abs().max().item()
        assert torch.allclose(fused_grads[name], traced_grads[name], rtol=1e-4, atol=1e-5 * scale), name
