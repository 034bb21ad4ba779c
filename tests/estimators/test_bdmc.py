"""BDMC: forward and reverse AIS sandwich the exact log p(x) of simulated data, and the sandwich closes."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.estimators.bdmc import BDMCResult, bdmc, bdmc_curve
from pyro_vae.models.target import simulate
from test_ais import linear_gaussian


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a busy 2-core machine, intra-op thread hand-offs made the runs 10-40x slower."""
    torch.set_num_threads(1)  # conftest's fixture sets 2 again before the next test


def _exact(vae, x):
    lin = vae.decoder.net[0]
    W, b = lin.weight.detach(), lin.bias.detach()
    sigma2 = vae.likelihood.fixed["scale"] ** 2
    return torch.distributions.MultivariateNormal(b, W @ W.T + sigma2 * torch.eye(len(b))).log_prob(x).double()


def test_sandwich_holds_and_closes_on_a_linear_gaussian_model():
    vae, _, _ = linear_gaussian()
    steps = (3, 30, 300)
    curve = bdmc_curve(vae, steps, num_points=20, chains=8, leapfrog=5, seed=0, is_samples=0)
    x, _ = simulate(vae, 20, seed=0)  # the points the curve ran on
    truth = _exact(vae, x).mean().item()
    assert curve["steps"] == list(steps) and curve["is"] == [None] * 3
    rows = zip(steps, curve["lower"], curve["lower_mc_se"], curve["upper"], curve["upper_mc_se"])
    for t, lower, lower_se, upper, upper_se in rows:
        # Stochastic bounds: they hold in expectation, so allow the reported Monte Carlo error.
        assert lower < truth + 3 * lower_se and upper > truth - 3 * upper_se, (t, lower, truth, upper)
    gaps = curve["gap"]
    assert gaps[0] > gaps[1] > gaps[2] > 0 and gaps[2] < 0.5, gaps
    assert curve["grad_evals"][2] > curve["grad_evals"][1] > curve["grad_evals"][0]


def test_bdmc_reports_and_importance_sampling_comparison():
    vae, _, _ = linear_gaussian()
    res = bdmc(vae, 12, steps=100, chains=4, leapfrog=5, seed=1)
    x, _ = simulate(vae, 12, seed=1)
    truth = _exact(vae, x)
    assert isinstance(res, BDMCResult) and res.lower.shape == res.upper.shape == res.gap.shape == (12,)
    per_chain = 1 + 99 * 5
    assert res.is_samples == (4 + 1) * per_chain  # IS gets the forward run's evaluations per point
    assert res.grad_evals == 12 * ((4 + 1) * per_chain + 4 * per_chain)
    assert (res.lower.mean() - 0.1 < truth.mean() < res.upper.mean() + 0.1)
    assert res.is_log_px.mean() < res.upper.mean()  # IS is a stochastic lower bound too
    d = json.loads(json.dumps(res.to_dict()))
    assert d["gap"]["mean"] == pytest.approx(res.gap.mean().item())
    assert d["importance_sampling"]["samples"] == res.is_samples
    assert 0.4 < d["accept_rate"]["forward"] < 0.9 and 0.4 < d["accept_rate"]["reverse"] < 0.9
    text = res.summary()
    assert "lower (forward AIS)" in text and "upper (reverse AIS)" in text and "IS (K=" in text


def test_trace_path_simulates_and_runs_like_the_fused_one():
    torch.manual_seed(0)
    from pyro_vae.models.vae import VAE

    vae = VAE((5,), latent_dim=2, likelihood="gaussian", hidden=[8])
    x, latents = simulate(vae, 6, seed=3, method="trace")
    assert x.shape == (6, 5) and set(latents) == {"z"} and latents["z"].shape == (6, 2)
    kw = dict(steps=20, chains=3, leapfrog=2, seed=2, is_samples=0, data=(x, latents))
    fused, trace = bdmc(vae, method="fused", **kw), bdmc(vae, method="trace", **kw)
    for key in ("lower", "upper", "forward_accept", "reverse_accept"):
        torch.testing.assert_close(getattr(fused, key), getattr(trace, key), rtol=1e-6, atol=1e-6)


def test_several_processes_need_a_seed():
    vae, _, _ = linear_gaussian()

    class TwoRanks:  # enough of a Fabric for the check, which comes before any communication
        global_rank, world_size = 0, 2

    with pytest.raises(ValueError, match="seed"):
        bdmc(vae, 4, steps=2, chains=2, fabric=TwoRanks())


def test_simulated_levels_are_model_space_floats():
    """A categorical model draws integer levels; BDMC scores them as the floats the model was trained on."""
    from pyro_vae.models.vae import VAE

    vae = VAE((3,), latent_dim=1, likelihood="categorical", levels=4, hidden=[4])
    x, _ = simulate(vae, 5, seed=0)
    assert x.dtype == torch.float32 and torch.equal(x, x.round()) and 0 <= x.min() and x.max() <= 3
    res = bdmc(vae, 5, steps=5, chains=2, leapfrog=2, seed=0, is_samples=10)
    assert torch.isfinite(res.lower).all() and torch.isfinite(res.is_log_px).all()
