"""Contract tests: every registered prior x likelihood works end to end."""

import functools
import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.priors import PRIORS, Prior
from pyro_vae.models.vae import VAE

EVENT = (8, 8)
LEVELS = 17


def matching_data(likelihood: str, n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, LEVELS, (n, *EVENT), generator=g).float()
    unit = (levels + torch.rand(n, *EVENT, generator=g)) / LEVELS  # dequantized, in (0, 1)
    return {"bernoulli": torch.bernoulli(unit, generator=g), "poisson": levels, "categorical": levels}.get(likelihood, unit)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
@pytest.mark.parametrize("prior", list(PRIORS))
def test_contract(prior, likelihood):
    vae = VAE(EVENT, latent_dim=3, prior=prior, likelihood=likelihood, hidden=(16,), levels=LEVELS)
    x = matching_data(likelihood)
    vae.check_data(x)
    vae.num_data = 100

    # model and guide run, with the documented sites and shapes
    guide_tr = pyro.poutine.trace(vae.guide).get_trace(x)
    model_tr = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (12, 3)
    assert model_tr.nodes["x"]["is_observed"] and model_tr.nodes["x"]["fn"].event_shape == EVENT
    assert model_tr.nodes["z"]["fn"].event_shape == (3,)

    # finite ELBO, gradients reach encoder, decoder and trainable prior/likelihood parameters
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.startswith(("encoder", "decoder", "prior")):
            assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"

    # generation through Predictive has the data's shape
    samples = Predictive(vae.model, num_samples=2)(None, 5)
    assert samples["x"].shape == (2, 5, *EVENT)
    assert vae.sample(4).shape == (4, *EVENT) and vae.reconstruct(x[:3]).shape == (3, *EVENT)

    # checkpoint round trip through the safe loader
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    clone = VAE(EVENT, latent_dim=3, prior=prior, likelihood=likelihood, hidden=(16,), levels=LEVELS)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    for (n1, p1), (n2, p2) in zip(vae.state_dict().items(), clone.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    vae.num_data = clone.num_data = None
    pyro.set_rng_seed(1)
    a = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    assert Trace_ELBO().loss(clone.model, clone.guide, x) == pytest.approx(a, rel=1e-6)


# Only priors with a closed form of their own: for the others log_density *is* self().log_prob.
CLOSED_FORM_PRIORS = [name for name, cls in PRIORS.items() if cls.log_density is not Prior.log_density]


@pytest.mark.parametrize("prior", CLOSED_FORM_PRIORS)
def test_prior_log_density_is_its_distributions_log_prob(prior):
    vae = VAE(EVENT, latent_dim=3, prior=prior, likelihood="bernoulli", hidden=(16,))
    z = 3 * torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    module = vae._modules["prior"]
    torch.testing.assert_close(module.log_density(z), module().log_prob(z), rtol=1e-6, atol=1e-5)


def test_user_constructor_likelihood():
    vae = VAE((6,), latent_dim=2, likelihood=functools.partial(dist.StudentT, df=3.0), hidden=(8,))
    assert vae.likelihood.free == ["loc", "scale"]
    d = vae.decode(torch.zeros(4, 2))
    assert isinstance(d.base_dist, dist.StudentT) and d.base_dist.df.eq(3.0).all()


def test_strategy_forms_are_equivalent():
    from pyro_vae.models.priors import mog

    for spec in ("mog", mog, mog(k=10)):
        vae = VAE(EVENT, latent_dim=2, prior=spec, likelihood="gaussian", hidden=(8,))
        assert vae.prior.k == 10
    custom = VAE(EVENT, latent_dim=2, likelihood="gaussian", prior=lambda: dist.Laplace(torch.zeros(2), 2.0).to_event(1))
    assert custom.prior().base_dist.scale.eq(2.0).all()


def test_user_svi_with_pyro_optim_trains_all_parts():
    """vae.model / vae.guide work unchanged with a user's own SVI and pyro.optim."""
    from pyro_vae.data.datasets import load_dataset

    x = (load_dataset("digits").train[:256] > 8).float()
    vae = VAE(EVENT, latent_dim=2, prior="learned_normal", likelihood="bernoulli", hidden=(16,))
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(60)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    for name, p in vae.named_parameters():
        assert not torch.equal(p, before[name]), f"SVI did not update {name}"


def test_analytic_kl_matches_closed_form():
    vae = VAE((4,), latent_dim=3, likelihood="gaussian", hidden=(8,))
    x = torch.rand(5, 4)
    _, kl, analytic = vae.elbo_terms(x)
    q = vae.encode(x).base_dist
    expected = 0.5 * (q.scale**2 + q.loc**2 - 1 - 2 * q.scale.log()).sum(-1)
    assert analytic and torch.allclose(kl, expected, atol=1e-5)


def test_minibatch_scale_and_beta():
    vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=(8,))
    x = torch.rand(10, 4)
    tr = pyro.poutine.trace(vae.model).get_trace(x)
    assert tr.nodes["x"]["scale"] == 1.0
    vae.num_data, vae.beta = 50, 0.5
    tr = pyro.poutine.trace(vae.model).get_trace(x)
    assert tr.nodes["x"]["scale"] == pytest.approx(5.0) and tr.nodes["z"]["scale"] == pytest.approx(2.5)
    gtr = pyro.poutine.trace(vae.guide).get_trace(x)
    assert gtr.nodes["z"]["scale"] == pytest.approx(2.5)


def test_shape_error_names_expected_shape():
    vae = VAE(EVENT, latent_dim=2, likelihood="gaussian", hidden=(8,))
    with pytest.raises(ValueError, match=r"models points of shape \(8, 8\)"):
        vae.model(torch.rand(3, 64))


def test_conv_nets_on_mnist_shape():
    vae = VAE((1, 28, 28), latent_dim=4, likelihood="bernoulli", net="conv")
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    assert torch.isfinite(Trace_ELBO().differentiable_loss(vae.model, vae.guide, x))
    assert vae.sample(2).shape == (2, 1, 28, 28)
