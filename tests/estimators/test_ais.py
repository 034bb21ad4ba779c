"""AIS against exact log-likelihoods: linear-Gaussian VAEs, a 1-D latent by quadrature, a Student-t scale mixture."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators.ais import AISResult, ais
from pyro_vae.estimators.importance import evaluate
from pyro_vae.models.fused import log_joint
from pyro_vae.core.stats import LogLikelihood
from pyro_vae.models.vae import VAE

D, LATENT, SIGMA = 6, 2, 0.5


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a busy 2-core machine, intra-op thread hand-offs made the runs 10-40x slower."""
    torch.set_num_threads(1)  # conftest's fixture sets 2 again before the next test


def linear_gaussian(seed: int = 0, n: int = 20, exact_guide: bool = False):
    """A linear VAE (``hidden=[]``) with ``p(x) = N(b, W Wᵀ + σ² I)``, data from it, and the exact log p(x).

    The encoder keeps its random initialization (a poor guide) unless ``exact_guide``:
    then ``W`` has orthogonal columns, the posterior is diagonal and the guide is it.
    """
    torch.manual_seed(seed)
    vae = VAE((D,), latent_dim=LATENT, prior="normal", likelihood="gaussian", likelihood_kwargs={"scale": SIGMA},
              hidden=[])
    W, b = torch.randn(D, LATENT), torch.randn(D)
    if exact_guide:
        W = torch.linalg.qr(W).Q * torch.tensor([2.0, 1.0])
        M = W.T @ W + SIGMA**2 * torch.eye(LATENT)
        A = torch.linalg.solve(M, W.T)  # posterior mean A (x - b), covariance σ² M⁻¹ (diagonal here)
        std = (SIGMA**2 * torch.linalg.inv(M)).diagonal().sqrt()
        with torch.no_grad():
            vae.encoder.net[0].weight.copy_(torch.cat([A, torch.zeros(LATENT, D)]))
            vae.encoder.net[0].bias.copy_(torch.cat([-A @ b, torch.log(torch.expm1(std - 1e-5))]))  # softplus⁻¹
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(D))
    x = marginal.sample((n,))
    return vae, x, marginal.log_prob(x).double()


def _within(res: AISResult, truth: torch.Tensor) -> tuple[float, float, float]:
    """(mean error, dataset MC SE, fraction of points within 3 of their own SE)."""
    err = res.log_px - truth
    return err.mean().item(), res.log_likelihood.dataset_mc_se, (err.abs() < 3 * res.mc_se + 1e-3).double().mean().item()


def test_linear_gaussian_matches_exact_log_likelihood():
    vae, x, truth = linear_gaussian()
    res = ais(vae, x, steps=200, chains=8, leapfrog=5, seed=0)
    mean_err, se, frac = _within(res, truth)
    assert abs(mean_err) < 3 * se + 0.01, (mean_err, se)
    assert frac >= 0.85, frac
    short = ais(vae, x, steps=5, chains=8, leapfrog=5, seed=0)
    assert short.log_px.mean() < res.log_px.mean() - 0.1  # few steps: far short (a stochastic lower bound)
    assert 0.5 < res.accept_rate.mean() < 0.8  # adapted toward 0.65
    assert res.grad_evals == len(x) * (8 + 2) * (1 + 199 * 5)


def test_exact_guide_gives_exact_constant_weights():
    vae, x, truth = linear_gaussian(exact_guide=True)
    res = ais(vae, x, steps=20, chains=4, leapfrog=3, seed=0)
    # q0 is the posterior, so every bridge is too and log p(x, z) - log q0(z) = log p(x) for all z.
    torch.testing.assert_close(res.log_weights, truth.unsqueeze(1).expand(-1, 4), atol=2e-4, rtol=0)
    assert res.mc_se.max() < 1e-3


def one_d_bernoulli():
    """1-D latent, a tanh decoder to 40 Bernoulli pixels, a narrow guide at z = 2 for every x; quadrature truth."""
    torch.manual_seed(0)
    vae = VAE((40,), latent_dim=1, likelihood="bernoulli", hidden=[16], activation="tanh")
    with torch.no_grad():
        vae.encoder.net[-1].weight.zero_()
        vae.encoder.net[-1].bias.copy_(torch.tensor([2.0, -2.0]))  # q(z|x) = N(2, 0.13²), far from most posteriors
    x = vae.sample(12)
    grid = torch.linspace(-10.0, 10.0, 20001)
    with torch.no_grad():
        lj = log_joint(vae, x, grid.view(-1, 1, 1).expand(-1, len(x), 1)).double()  # (G, N)
    trapezoid = torch.ones(grid.numel(), dtype=torch.float64)
    trapezoid[0] = trapezoid[-1] = 0.5
    truth = torch.logsumexp(lj + trapezoid.log().unsqueeze(1), 0) + math.log(grid[1] - grid[0])
    assert (lj[[0, -1]] - truth).max() < -30  # the grid holds all the posterior mass
    return vae, x, truth


def test_ais_beats_importance_sampling_at_equal_decoder_evaluations():
    vae, x, truth = one_d_bernoulli()
    res = ais(vae, x, steps=200, chains=4, leapfrog=5, seed=0)
    k = res.grad_evals // len(x)  # 4980 decoder evaluations per point, pilots included
    is_err = (evaluate(vae, x, num_samples=k, k_list=(1,), seed=0).log_px - truth).abs().mean().item()
    ais_err = (res.log_px - truth).abs().mean().item()
    assert ais_err < 0.25 * is_err, (ais_err, is_err)


def test_per_chain_adaptation_is_biased_and_pilot_adaptation_is_not():
    # A chain that adapts its step size on its own acceptances no longer runs kernels fixed
    # in advance, which the AIS argument needs: here it overestimates log p(x) by ~0.4 nats
    # (7 standard errors), so it is not even a lower bound. Pilot chains keep it exact.
    vae, x, truth = one_d_bernoulli()
    pilot = ais(vae, x, steps=300, chains=16, leapfrog=5, seed=0, adapt="pilot")
    chain = ais(vae, x, steps=300, chains=16, leapfrog=5, seed=0, adapt="chain")
    mean_err, se, _ = _within(pilot, truth)
    assert abs(mean_err) < 3 * se, (mean_err, se)
    mean_err, se, _ = _within(chain, truth)
    assert mean_err > 4 * se, (mean_err, se)


class ScaleMixture:
    """``s ~ Gamma(ν/2, ν/2)``, ``x | s ~ N(0, I/s)``: ``x`` is multivariate Student-t, a positive latent."""

    nu, dims = 3.0, 4

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.Gamma(self.nu / 2, self.nu / 2))
            scale = s.rsqrt().unsqueeze(-1).expand(*s.shape, self.dims)
            pyro.sample("x", dist.Normal(torch.zeros_like(scale), scale).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.LogNormal(torch.zeros(x.shape[0]), 1.0))

    def exact(self, x):
        nu, d = self.nu, self.dims
        return (math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - d / 2 * math.log(nu * math.pi)
                - (nu + d) / 2 * torch.log1p(x.pow(2).sum(-1) / nu)).double()


@pytest.mark.parametrize("init", ["guide", "prior"])
def test_trace_path_on_a_constrained_latent(init):
    # The chains run on log s: the log-Jacobian must enter both log p and log q0.
    m = ScaleMixture()
    torch.manual_seed(0)
    s = dist.Gamma(m.nu / 2, m.nu / 2).sample((20,))
    x = torch.randn(20, m.dims) * s.rsqrt().unsqueeze(-1)
    res = ais(m, x, steps=100, chains=8, leapfrog=5, seed=0, init=init)
    assert res.method == "trace"
    mean_err, se, frac = _within(res, m.exact(x))
    assert abs(mean_err) < 3 * se + 0.02 and frac >= 0.8, (mean_err, se, frac)
    with pytest.raises(ValueError, match="fused"):
        ais(m, x, steps=2, chains=2, method="fused")


@pytest.mark.parametrize("init", ["guide", "prior"])
def test_fused_and_trace_paths_take_the_same_draws_and_agree(init):
    torch.manual_seed(0)
    vae = VAE((5,), latent_dim=3, likelihood="gaussian", hidden=[8])
    x = torch.rand(7, 5)
    kw = dict(steps=30, chains=3, leapfrog=3, batch_size=4, seed=5, init=init)
    fused, trace = ais(vae, x, method="fused", **kw), ais(vae, x, method="trace", **kw)
    assert (fused.method, trace.method) == ("fused", "trace")
    for key in ("log_weights", "log_px", "accept_rate", "step_size"):
        torch.testing.assert_close(getattr(fused, key), getattr(trace, key), rtol=1e-6, atol=1e-6)
    # The standard error is a spread of float32 log-weights near -120: their rounding (2e-5 here,
    # the paths sum in different orders) enters it undivided, not relative to 120.
    torch.testing.assert_close(fused.mc_se, trace.mc_se, rtol=0, atol=2e-5)


@pytest.mark.parametrize("method", ["fused", "trace"])
def test_unscaled_by_beta_and_num_data(method):
    vae, x, _ = linear_gaussian()
    ref = ais(vae, x, steps=20, chains=4, leapfrog=3, seed=3, method=method)
    vae.beta, vae.num_data = 0.3, 10**6
    scaled = ais(vae, x, steps=20, chains=4, leapfrog=3, seed=3, method=method)
    assert (vae.beta, vae.num_data) == (0.3, 10**6)  # restored afterwards
    assert torch.equal(ref.log_weights, scaled.log_weights)


def test_result_api_seeding_and_checks():
    vae, x, _ = linear_gaussian(n=5)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    a = ais(vae, x, steps=10, chains=3, leapfrog=2, seed=7, levels=256)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone
    b = ais(vae, x, steps=10, chains=3, leapfrog=2, seed=7, levels=256)
    assert torch.equal(a.log_weights, b.log_weights)
    assert a.log_px.shape == a.mc_se.shape == a.accept_rate.shape == a.step_size.shape == (5,)
    assert not a.log_px.requires_grad and a.log_px.dtype == torch.float64
    d = json.loads(json.dumps(a.to_dict()))
    assert d["settings"]["steps"] == 10 and d["settings"]["pilots"] == 1 and d["grad_evals"] == a.grad_evals
    assert d["log_likelihood"]["mean"] == pytest.approx(a.log_px.mean().item())
    assert set(d["accept_rate"]) == {"mean", "min"} and d["levels"] == 256
    assert isinstance(a.log_likelihood, LogLikelihood) and a.log_likelihood.name == "ais"
    assert "log p(x) (AIS)" in a.summary() and "nats" in str(a)
    one = ais(vae, x, steps=1, chains=3, seed=0, adapt="none")  # T = 1 is importance sampling from q0
    assert torch.isnan(one.accept_rate).all() and one.grad_evals == 5 * 3
    json.dumps(one.to_dict())  # NaNs become null
    for bad in (dict(steps=0), dict(chains=0), dict(schedule="cosine"), dict(init="posterior"), dict(adapt="dual"),
                dict(method="fast"), dict(step_size=0.0), dict(target_accept=1.0), dict(pilots=0)):
        with pytest.raises(ValueError):
            ais(vae, x, **{"steps": 2, "chains": 2, **bad})


def test_global_latent_is_refused():
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    class Global:
        guide = staticmethod(model)

    Global.model = staticmethod(model)
    with pytest.raises(ValueError, match="data plate"):
        ais(Global(), torch.zeros(3), steps=2, chains=2, init="prior")


# --------------------------------------------------------------------------- Fabric sharding


def test_fabric_world_one_matches_unsharded():
    from lightning_fabric import Fabric

    vae, x, _ = linear_gaussian(n=7)
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    sharded = ais(vae, x, steps=10, chains=3, leapfrog=2, fabric=fabric, seed=0)
    plain = ais(vae, x, steps=10, chains=3, leapfrog=2, seed=0)
    assert torch.equal(sharded.log_weights, plain.log_weights) and sharded.world_size == 1


def _sharded_worker(fabric, states: list, xs: list) -> list:
    out = []
    for exact_guide, state, x in zip((True, False), states, xs):
        vae, _, _ = linear_gaussian(exact_guide=exact_guide)
        vae.load_state_dict(state)
        res = ais(vae, x, steps=50, chains=8, leapfrog=3, fabric=fabric, seed=0)
        # Plain lists: tensors would travel back through shared memory owned by an exiting process.
        out.append({"log_px": res.log_px.tolist(), "mc_se": res.mc_se.tolist(), "world_size": res.world_size,
                    "grad_evals": res.grad_evals})
    fabric.barrier()
    torch.distributed.destroy_process_group()  # gloo threads left running can abort the exiting rank
    return out


def test_two_process_gloo_sharding_matches_unsharded(gloo_rendezvous):
    from lightning_fabric import Fabric

    models = [linear_gaussian(exact_guide=g, n=23) for g in (True, False)]  # 23: not a multiple of 2
    try:
        fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
        out = fabric.launch(_sharded_worker, [m[0].state_dict() for m in models], [m[1] for m in models])
    except torch.multiprocessing.ProcessRaisedException:
        raise  # a Python error inside a rank is a real failure
    except Exception as e:  # noqa: BLE001 - no spawn/gloo on this machine is not a failure of ais
        pytest.skip(f"cannot spawn a 2-process gloo group here: {type(e).__name__}: {e}")
    for (vae, x, truth), got in zip(models, out):
        plain = ais(vae, x, steps=50, chains=8, leapfrog=3, seed=0)
        log_px, mc_se = torch.tensor(got["log_px"], dtype=torch.float64), torch.tensor(got["mc_se"], dtype=torch.float64)
        assert got["world_size"] == 2 and log_px.shape == (23,) and got["grad_evals"] == plain.grad_evals
        se = (mc_se.pow(2) + plain.mc_se.pow(2)).sqrt()
        assert ((log_px - plain.log_px).abs() < 4 * se + 1e-3).all()
    # The exact guide makes every weight log p(x_i) whatever the draws: the gathered order is the original.
    torch.testing.assert_close(torch.tensor(out[0]["log_px"], dtype=torch.float64), models[0][2], atol=2e-4, rtol=0)
