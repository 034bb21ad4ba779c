"""AIS's hand-written decoder term and gradient (pyro_vae.models.fused.decoder_log_lik_and_grad) against autograd."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.estimators.ais import _split_grads, ais
from pyro_vae.estimators.bdmc import bdmc
from pyro_vae.models.fused import decoder_log_lik_and_grad
from pyro_vae.models.vae import VAE


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _data(likelihood: str, n: int = 6, d: int = 5, levels: int = 4) -> torch.Tensor:
    if likelihood == "categorical":
        return torch.randint(0, levels, (n, d)).float()
    return torch.bernoulli(torch.full((n, d), 0.4))


@pytest.mark.parametrize("likelihood", ["categorical", "bernoulli"])
@pytest.mark.parametrize("hidden,activation", [([8], "relu"), ([7, 9], "tanh"), ([6], "sigmoid"), ([], "relu")])
def test_kernel_matches_autograd(likelihood, hidden, activation):
    torch.manual_seed(0)
    kw = {"levels": 4} if likelihood == "categorical" else {}
    vae = VAE((5,), latent_dim=3, likelihood=likelihood, hidden=hidden, activation=activation.replace("sigmoid", "relu"),
              **kw).eval()
    if activation == "sigmoid":  # no option of the package, but an activation the buffered decoder takes
        for i, module in enumerate(vae.decoder.net):
            if isinstance(module, torch.nn.ReLU):
                vae.decoder.net[i] = torch.nn.Sigmoid()
    x, z = _data(likelihood), 2 * torch.randn(4, 6, 3)
    kernel = decoder_log_lik_and_grad(vae, x)
    assert kernel is not None
    log_lik, grad = kernel(z)
    for _ in range(2):  # the buffers are reused: a second call gives the same numbers
        again = kernel(z)
    leaf = z.clone().requires_grad_(True)
    auto = vae.decode(leaf).log_prob(x)
    auto_grad = torch.autograd.grad(auto.sum(), leaf)[0]
    torch.testing.assert_close(log_lik, auto.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, auto_grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(again[0], log_lik, rtol=0, atol=0)
    # Another number of chains (BDMC's reverse run has no pilots): new buffers, the same numbers per
    # chain up to the matmul's rounding, which may block other row counts differently.
    torch.testing.assert_close(kernel(z[:2])[1], grad[:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["guide", "prior"])
def test_annealing_terms_match_autograd(init):
    torch.manual_seed(1)
    vae = VAE((5,), latent_dim=2, likelihood="categorical", levels=4, hidden=[8]).eval()
    x = _data("categorical")
    with torch.no_grad():
        path = vae.fused().annealing(x, init, 3)
        assert path.with_gradients is not None
        auto = _split_grads(path.z0, path.log_densities)
        mine = path.with_gradients(path.z0)
    for a, b in zip(auto, mine):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-4)


def test_kernel_offered_only_where_it_gives_the_same_numbers():
    x = torch.rand(3, 5)
    assert decoder_log_lik_and_grad(VAE((5,), latent_dim=2, likelihood="gaussian", hidden=[4]), x) is None
    conv = VAE((8, 8), latent_dim=2, likelihood="bernoulli", net="conv")
    assert decoder_log_lik_and_grad(conv, torch.bernoulli(torch.rand(3, 8, 8))) is None

    class OwnDecode(VAE):
        def decode(self, z):
            return super().decode(z)

    assert decoder_log_lik_and_grad(OwnDecode((5,), latent_dim=2, likelihood="bernoulli", hidden=[4]), x.round()) is None
    softplus = VAE((5,), latent_dim=2, likelihood="bernoulli", hidden=[4], activation="softplus")
    assert decoder_log_lik_and_grad(softplus, x.round()) is None
    hooked = VAE((5,), latent_dim=2, likelihood="bernoulli", hidden=[4])
    hooked.decoder.register_forward_hook(lambda *a: None)
    assert decoder_log_lik_and_grad(hooked, x.round()) is None


@pytest.mark.parametrize("likelihood", ["categorical", "bernoulli"])
def test_ais_with_the_kernel_agrees_with_the_traced_path(likelihood):
    torch.manual_seed(2)
    kw = {"levels": 4} if likelihood == "categorical" else {}
    vae = VAE((5,), latent_dim=2, likelihood=likelihood, hidden=[8], **kw)
    x = _data(likelihood, n=7)
    settings = dict(steps=20, chains=3, leapfrog=3, batch_size=4, seed=5)
    fused, trace = ais(vae, x, method="fused", **settings), ais(vae, x, method="trace", **settings)
    # Float rounding differs (hand-written vs autograd), so a Metropolis test could in principle flip;
    # on these short runs every chain takes the same path.
    torch.testing.assert_close(fused.log_weights, trace.log_weights, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(fused.accept_rate, trace.accept_rate, rtol=1e-4, atol=1e-4)
    b1 = bdmc(vae, 4, steps=10, chains=2, leapfrog=2, seed=0, is_samples=0, method="fused")
    b2 = bdmc(vae, 4, steps=10, chains=2, leapfrog=2, seed=0, is_samples=0, method="trace")
    torch.testing.assert_close(b1.upper, b2.upper, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b1.lower, b2.lower, rtol=1e-4, atol=1e-3)
