"""Linear VAE = PPCA (Lucas et al., 2019) and the inference-gap split (Cremer et al., 2018)."""

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro_vae.baselines.lowrank import PPCA
from pyro_vae.data.transforms import DataTransform
from pyro_vae.data.datasets import load_dataset
from pyro_vae.estimators.gaps import inference_gaps
from pyro_vae.estimators.importance import log_weights
from pyro_vae.core.stats import logmeanexp
from pyro_vae.models.vae import VAE


@pytest.fixture(scope="module")
def dequantized_digits():
    dataset = load_dataset("digits")
    return DataTransform(dataset.levels, dequantize=True, seed=0)(dataset.train, train=False)


def test_linear_vae_reaches_ppca_maximum_likelihood(dequantized_digits):
    x = dequantized_digits
    latent = 2
    exact = PPCA(latent).fit(x, method="closed_form").log_prob(x).mean().item()

    # Linear encoder and decoder, Gaussian likelihood with one learned sigma: the linear VAE.
    vae = VAE((8, 8), latent_dim=latent, likelihood="gaussian_learned", hidden=[], prior="normal",
              likelihood_kwargs={"mode": "shared"})
    with torch.no_grad():  # start at the data mean so the fit is quick
        vae.decoder.net[0].bias.copy_(x.flatten(1).mean(0))
    # The analytic KL (TraceMeanField_ELBO) has lower-variance gradients than a sampled one, so 600 steps reach
    # the optimum (within 0.002 nats) where Trace_ELBO with 4 particles needed 2500 and over 3 minutes.
    svi = SVI(vae.model, vae.guide, pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.995}), TraceMeanField_ELBO())
    for _ in range(600):
        svi.step(x)
    log_w = log_weights(vae.model, vae.guide, x, num_samples=2000, chunk_size=500)
    is_ll = logmeanexp(log_w, dim=1)
    elbo = log_w.mean(1)
    mc_se = (torch.softmax(log_w, 1).pow(2).sum(1) - 1 / 2000).clamp_min(0).sqrt()
    slack = 3 * (mc_se.pow(2).sum().sqrt() / len(x)).item() + 1e-3
    assert abs(is_ll.mean().item() - exact) < 0.1, (is_ll.mean().item(), exact)
    assert elbo.mean().item() <= is_ll.mean().item() <= exact + slack


def test_inference_gaps_are_non_negative(dequantized_digits):
    from pyro_vae.jobs.train import fit

    result = fit({"model": {"latent_dim": 3, "likelihood": "gaussian_learned", "net": {"hidden": [32]}},
                  "train": {"epochs": 4, "batch_size": 64}}, run_dir=None, progress=False)
    x = result.transform(result.dataset.test[:40], train=False)
    gaps = inference_gaps(result.vae, x, steps=150, particles=8, num_samples=400)
    summary = gaps.summary()
    for key in ("approximation_gap", "amortization_gap"):
        assert summary[key]["mean"] > -3 * summary[key]["se"], (key, summary[key])
    # and the decomposition is exact by construction
    total = gaps.log_likelihood - gaps.elbo_amortized
    assert torch.allclose(total, gaps.approximation_gap + gaps.amortization_gap, atol=1e-4)
    assert all(p.requires_grad for p in result.vae.parameters())  # the model was left trainable


@pytest.mark.parametrize("local_params", [False, True])
def test_inference_gaps_run_in_the_mode_the_vae_was_built_in(local_params):
    # A VAE built by hand (global param store) must work as well as one built by fit (module-local params).
    with pyro.settings.context(module_local_params=local_params):
        vae = VAE((4,), latent_dim=2, prior="mog", likelihood="gaussian", hidden=(8,))
    vae.train()
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Pyro's "was not registered in the param store"
        gaps = inference_gaps(vae, torch.rand(6, 4, generator=torch.Generator().manual_seed(0)), steps=10, num_samples=20)
    assert gaps.log_likelihood.shape == (6,) and torch.isfinite(gaps.log_likelihood).all()
    assert vae.training and all(p.requires_grad for p in vae.parameters())
    assert all(torch.equal(before[n], p) for n, p in vae.named_parameters())
    assert len(pyro.get_param_store()) == 0
