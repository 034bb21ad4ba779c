"""The HMC kernel and the annealing engine on Gaussians, where every answer is known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.ops.integrator import velocity_verlet

from pyro_vae.estimators.hmc import LogTerms, anneal, beta_schedule, hmc_transition, leapfrog
from pyro_vae.core.stats import logmeanexp

D = 3


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: on a busy 2-core machine, intra-op thread hand-offs made the runs 10-40x slower."""
    torch.set_num_threads(1)  # conftest's fixture sets 2 again before the next test


def _gaussian(seed: int, log_z: float = 0.0):
    """A Gaussian ``N(m, Λ⁻¹)`` times ``exp(log_z)``: (mean, precision, log-density with its gradient)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g)
    precision = a @ a.T + 0.5 * torch.eye(D)
    mean = torch.randn(D, generator=g)
    mvn = torch.distributions.MultivariateNormal(mean, precision_matrix=precision)
    const = log_z + 0.5 * torch.logdet(precision).item() - 0.5 * D * math.log(2 * math.pi)

    def log_density(z):  # the quadratic form by hand: MultivariateNormal.log_prob is 20x slower here
        g = -(z - mean) @ precision  # precision is symmetric
        return 0.5 * (g * (z - mean)).sum(-1) + const, g

    return mean, precision, mvn, log_density


def _bridge_terms(log_p, log_q):
    def terms_fn(z):
        (lp, gp), (lq, gq) = log_p(z), log_q(z)
        return LogTerms(lp, lq, gp, gq)

    return terms_fn


def test_beta_schedules():
    for kind in ("sigmoid", "linear"):
        b = beta_schedule(50, kind)
        assert b.shape == (51,) and b.dtype == torch.float64
        assert b[0] == 0.0 and b[-1] == 1.0 and (b.diff() > 0).all()
    steps = beta_schedule(100).diff()
    assert steps[0] < steps[50] / 5 and steps[-1] < steps[50] / 5  # sigmoid: dense at both ends
    torch.testing.assert_close(beta_schedule(100) + beta_schedule(100).flip(0), torch.ones(101, dtype=torch.float64))
    assert beta_schedule(1).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="steps"):
        beta_schedule(0)
    with pytest.raises(ValueError, match="schedule"):
        beta_schedule(10, "cosine")


def test_leapfrog_matches_pyro_velocity_verlet_with_per_chain_step_sizes():
    _, _, _, log_p = _gaussian(0)
    _, _, _, log_q = _gaussian(1)
    terms_fn, beta = _bridge_terms(log_p, log_q), 0.3
    torch.manual_seed(0)
    z, r = torch.randn(5, 4, D), torch.randn(5, 4, D)
    eps = 0.05 + 0.3 * torch.rand(5, 4, 1)  # a different step size per chain
    z_mine, r_mine, _ = leapfrog(z, r, terms_fn(z), beta, eps, terms_fn, 7)

    def potential(zd):
        return -terms_fn(zd["z"]).log_f(beta).sum()

    zd, rd, _, _ = velocity_verlet({"z": z.clone()}, {"z": r.clone()}, potential, lambda rr: rr, eps, num_steps=7)
    torch.testing.assert_close(z_mine, zd["z"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r_mine, rd["z"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_hmc_leaves_the_gaussian_bridge_invariant(beta):
    mp, lam_p, _, log_p = _gaussian(0)
    mq, lam_q, _, log_q = _gaussian(1)
    # f_β = q^(1-β) p^β of two Gaussians is Gaussian with the precision-weighted blend.
    lam = (1 - beta) * lam_q + beta * lam_p
    mean = torch.linalg.solve(lam, (1 - beta) * lam_q @ mq + beta * lam_p @ mp)
    cov = torch.linalg.inv(lam)
    torch.manual_seed(0)
    z = torch.distributions.MultivariateNormal(mean, precision_matrix=lam).sample((1000, 4))  # exact draws
    start = z.clone()
    terms_fn = _bridge_terms(log_p, log_q)
    terms, probs = terms_fn(z), []
    eps = torch.full((1000, 4, 1), 1.5 / torch.linalg.eigvalsh(lam).max().sqrt().item())
    for _ in range(30):
        z, terms, prob = hmc_transition(z, terms, beta, eps, terms_fn, 5)
        probs.append(prob.mean().item())
    flat = z.reshape(-1, D).double()
    n = flat.shape[0]
    assert 0.3 < sum(probs) / len(probs) < 0.99  # the Metropolis test does real work
    assert (z - start).abs().mean() > 0.5 * cov.diagonal().sqrt().mean()  # the chains moved
    se = (cov.diagonal().double() / n).sqrt()
    assert ((flat.mean(0) - mean.double()).abs() < 4 * se).all(), (flat.mean(0), mean)
    rel = (torch.cov(flat.T) - cov.double()).abs() / (cov.diagonal().double().outer(cov.diagonal().double())).sqrt()
    assert rel.max() < 0.1, rel  # ~4.5 standard errors of a covariance estimate from 4000 draws
    # LogTerms cached by the kernel are those of the returned states.
    torch.testing.assert_close(terms.log_p, terms_fn(z).log_p)


def test_forward_and_reverse_ais_between_gaussians_are_unbiased():
    log_z = 2.5
    _, _, p, log_p = _gaussian(0, log_z)
    _, _, q, log_q = _gaussian(1)
    terms_fn = _bridge_terms(log_p, log_q)
    betas = beta_schedule(40)
    torch.manual_seed(0)
    fwd = anneal(terms_fn, q.sample((2000, 2)), betas, 0.2, leapfrog=3, adapt="pilot", pilots=200)
    lw = fwd.log_weights.reshape(-1)
    se = (torch.softmax(lw, 0).pow(2).sum() - 1 / lw.numel()).sqrt().item()
    assert abs(logmeanexp(lw, 0).item() - log_z) < 3 * se + 1e-3, (logmeanexp(lw, 0).item(), se)
    # Reverse: exact draws of p, β from 1 to 0, the forward run's step sizes.
    rev = anneal(terms_fn, p.sample((1800, 2)), betas.flip(0), 0.2, leapfrog=3, adapt="none",
                 schedule=fwd.schedule.flip(0))
    lw_rev = rev.log_weights.reshape(-1)  # E[exp(lw_rev)] = 1 / Z
    se_rev = (torch.softmax(lw_rev, 0).pow(2).sum() - 1 / lw_rev.numel()).sqrt().item()
    assert abs(-logmeanexp(lw_rev, 0).item() - log_z) < 3 * se_rev + 1e-3
    # Per chain, Jensen: forward log-weights average below log Z, reverse ones above.
    assert lw.mean() < log_z < -lw_rev.mean()
    assert fwd.evaluations == rev.evaluations == 1 + 39 * 3
    assert fwd.schedule.shape == (39, 2) and torch.isfinite(fwd.accept_prob).all()


def test_weights_are_exact_when_q0_is_the_normalized_target():
    log_z = -1.7
    _, _, q, log_q = _gaussian(3)

    def log_p(z):
        lq, g = log_q(z)
        return lq + log_z, g

    run = anneal(_bridge_terms(log_p, log_q), q.sample((6, 5)), beta_schedule(25), 0.1, leapfrog=2)
    torch.testing.assert_close(run.log_weights, torch.full((6, 5), log_z, dtype=torch.float64), atol=1e-5, rtol=0)


def test_non_finite_proposals_are_rejected_and_arguments_checked():
    def terms_fn(z):  # finite only on z < 1: a proposal beyond is never accepted
        lp = torch.where(z[..., 0] < 1, -0.5 * z.pow(2).sum(-1), torch.full_like(z[..., 0], math.nan))
        return LogTerms(lp, torch.zeros_like(lp), -z, torch.zeros_like(z))

    z = torch.zeros(50, 1, 1)
    torch.manual_seed(0)
    out, terms, prob = hmc_transition(z, terms_fn(z), 1.0, torch.tensor(5.0), terms_fn, 3)
    assert (out < 1).all() and torch.isfinite(terms.log_p).all() and (prob[out[..., 0] == 0] == 0).all()
    with pytest.raises(ValueError, match="adapt"):
        anneal(terms_fn, z, beta_schedule(3), 0.1, adapt="dual")
    with pytest.raises(ValueError, match="pilot"):
        anneal(terms_fn, z, beta_schedule(3), 0.1, adapt="pilot", pilots=0)
    with pytest.raises(ValueError, match="pilot"):
        anneal(terms_fn, z, beta_schedule(3), 0.1, adapt="chain", pilots=2)
