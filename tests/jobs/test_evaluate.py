"""Tests for pyro_vae.jobs.evaluate: exact answers on linear-Gaussian models, bounds on a trained VAE."""

from __future__ import annotations

import json
import math
import warnings

import arviz as az
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

import pyro_vae.models.likelihoods as L
from pyro_vae.estimators.importance import evaluate
from pyro_vae.estimators.settings import K_LIST
from pyro_vae.results.report import Evaluation, PosteriorCollapseWarning
from pyro_vae.jobs.evaluate import evaluate_run
from pyro_vae.core.stats import LogLikelihood
from pyro_vae.models.vae import VAE

D, LATENT, SIGMA = 6, 2, 0.5


# --------------------------------------------------------------------------- linear-Gaussian models


class LinearEncoder(nn.Module):
    """q(z|x) = N(A x + c, diag(scale)): affine mean, fixed scale."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("c", c)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = x @ self.A.T + self.c
        return loc, self.scale.expand_as(loc)


class NarrowEncoder(nn.Module):
    """Wraps an encoder and divides its scale: a guide far too confident."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        loc, scale = self.inner(x)
        return loc, scale / self.factor


def linear_gaussian(orthogonal: bool, exact_guide: bool, seed: int = 0, narrow: float = 1.0):
    """A VAE with p(x) = N(b, W Wᵀ + σ² I) exactly, plus data drawn from it and the truth."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, LATENT, generator=g)
    if orthogonal:  # orthogonal columns make the exact posterior diagonal, so q can match it
        W = torch.linalg.qr(W).Q * torch.tensor([2.0, 1.0])
    b = torch.randn(D, generator=g)
    M = W.T @ W + SIGMA**2 * torch.eye(LATENT)
    A = torch.linalg.solve(M, W.T)  # posterior mean = A (x - b)
    post_std = (SIGMA**2 * torch.linalg.inv(M)).diagonal().sqrt()
    if exact_guide:
        scale = post_std
    else:  # deliberately off: a perturbed mean and a too-broad (but finite-variance) scale
        A = A + 0.3 * torch.randn(A.shape, generator=g)
        scale = torch.full((LATENT,), 1.5 * post_std.max().item())
    encoder = LinearEncoder(A, -A @ b, scale)
    if narrow != 1.0:
        encoder = NarrowEncoder(encoder, narrow)
    decoder = nn.Linear(LATENT, D)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    vae = VAE(event_shape=(D,), latent_dim=LATENT, likelihood=L.gaussian(scale=SIGMA), prior="normal",
              encoder=encoder, decoder=decoder)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(D))
    x = marginal.sample((40,))
    return vae, x, marginal.log_prob(x).double()


def test_is_estimate_matches_exact_log_likelihood_within_reported_se():
    vae, x, truth = linear_gaussian(orthogonal=False, exact_guide=False)
    ev = evaluate(vae, x, num_samples=10_000, k_list=(1, 100, 10_000), seed=0)
    z = (ev.log_px - truth) / ev.mc_se
    assert ev.mc_se.min() > 0
    assert (z.abs() < 3).double().mean() >= 0.9, z
    ll = ev.log_likelihood
    assert isinstance(ll, LogLikelihood) and ll.name == "vae"
    assert abs(ll.mean - truth.mean().item()) < 3 * ll.dataset_mc_se + 1e-6
    # The weights do vary (a real test, not an exact guide) and every figure is consistent.
    assert ev.ess.mean() < 0.95 * ev.num_samples
    assert torch.equal(ev.iwae[10_000], ev.log_px)
    assert (ev.iwae[1] <= ev.log_px).all()


def test_mc_se_shrinks_like_one_over_sqrt_k():
    vae, x, truth = linear_gaussian(orthogonal=False, exact_guide=False)
    small = evaluate(vae, x, num_samples=100, k_list=(1,), seed=1)
    large = evaluate(vae, x, num_samples=10_000, k_list=(1,), seed=2)
    ratio = (small.mc_se / large.mc_se).median().item()
    assert 6 < ratio < 16, ratio
    # ... and the estimate itself gets closer to the truth.
    assert (large.log_px - truth).abs().mean() < (small.log_px - truth).abs().mean()


def test_exact_posterior_gives_constant_weights():
    vae, x, truth = linear_gaussian(orthogonal=True, exact_guide=True)
    ev = evaluate(vae, x, num_samples=2000, k_list=(1, 10, 2000), seed=0)
    torch.testing.assert_close(ev.log_px, truth, atol=2e-3, rtol=0)
    # The ELBO is tight (KL(q || posterior) = 0): its plain-MC estimate is exact, while the
    # analytic-KL one still samples the reconstruction, so it is right within its MC error.
    torch.testing.assert_close(ev.iwae[1], truth, atol=2e-3, rtol=0)
    assert ((ev.elbo - truth).abs() < 4 * ev.elbo_mc_se).all()
    assert ev.mc_se.max() < 1e-3
    assert (ev.ess > 0.999 * ev.num_samples).all()
    assert torch.isneginf(ev.khat).all(), ev.khat  # weights equal to float precision: no tail
    assert ev.frac_unreliable == 0.0


def test_too_narrow_guide_is_flagged_by_khat():
    good_vae, x, _ = linear_gaussian(orthogonal=True, exact_guide=False)
    bad_vae, _, _ = linear_gaussian(orthogonal=True, exact_guide=True, narrow=20.0)
    good = evaluate(good_vae, x, num_samples=2000, k_list=(1,), seed=0)
    bad = evaluate(bad_vae, x, num_samples=2000, k_list=(1,), seed=0)
    assert good.to_dict()["diagnostics"]["khat_mean"] < 0.5
    assert good.frac_unreliable < 0.1
    assert bad.to_dict()["diagnostics"]["khat_mean"] > 0.7
    assert bad.frac_unreliable > 0.8
    assert bad.ess.mean() < 0.2 * good.ess.mean()


def test_k1_matches_trace_elbo_in_expectation():
    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    ev = evaluate(vae, x, num_samples=4000, k_list=(1,), seed=0)
    pyro.set_rng_seed(123)
    particles = 4000
    trace_elbo = -Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x) / len(x)
    mc_k1 = (ev.iwae_mc_se[1].pow(2).sum().sqrt() / len(x)).item()  # SE of Trace_ELBO's own estimator
    mc_elbo = (ev.elbo_mc_se.pow(2).sum().sqrt() / len(x)).item()
    assert ev.kl_analytic
    assert abs(ev.elbo.mean().item() - trace_elbo) < 4 * math.hypot(mc_k1, mc_elbo)
    assert abs(ev.iwae[1].mean().item() - trace_elbo) < 4 * math.sqrt(2) * mc_k1
    # Same seed, same draws: the evaluator's ELBO terms equal VAE.elbo_terms' analytic KL.
    _, kl, analytic = vae.elbo_terms(x)
    assert analytic
    torch.testing.assert_close(ev.kl, kl.double())


def test_unscaled_when_num_data_and_beta_are_set():
    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    for method in ("fused", "trace"):
        ref = evaluate(vae, x, num_samples=300, k_list=(1, 10), seed=3, method=method)
        vae.num_data, vae.beta = 10 * len(x), 0.25
        scaled = evaluate(vae, x, num_samples=300, k_list=(1, 10), seed=3, method=method)
        assert (vae.num_data, vae.beta) == (10 * len(x), 0.25)  # restored afterwards
        vae.num_data, vae.beta = None, 1.0
        for key in ("log_px", "mc_se", "elbo", "kl", "reconstruction", "khat", "ess"):
            assert torch.equal(getattr(ref, key), getattr(scaled, key)), key


def test_fused_and_trace_paths_agree_draw_for_draw():
    torch.manual_seed(0)
    vae = VAE((3, 4), latent_dim=3, likelihood="bernoulli", hidden=[8])
    x = (torch.rand(7, 3, 4) < 0.4).float()
    fused = evaluate(vae, x, num_samples=64, k_list=(1, 8, 64), batch_size=3, chunk_size=20, seed=5, method="fused")
    trace = evaluate(vae, x, num_samples=64, k_list=(1, 8, 64), batch_size=3, chunk_size=20, seed=5, method="trace")
    assert (fused.method, trace.method) == ("fused", "trace")
    for key in ("log_px", "mc_se", "elbo", "reconstruction", "kl"):
        torch.testing.assert_close(getattr(fused, key), getattr(trace, key), atol=1e-4, rtol=1e-5)
    for k in (1, 8, 64):
        torch.testing.assert_close(fused.iwae[k], trace.iwae[k], atol=1e-4, rtol=1e-5)


def test_batches_and_chunks_do_not_change_the_estimates_distribution():
    vae, x, truth = linear_gaussian(orthogonal=False, exact_guide=False)
    a = evaluate(vae, x, num_samples=3000, k_list=(1,), batch_size=7, chunk_size=128, seed=0)
    b = evaluate(vae, x, num_samples=3000, k_list=(1,), batch_size=40, seed=1)
    se = (a.mc_se.pow(2) + b.mc_se.pow(2)).sqrt()
    assert ((a.log_px - b.log_px).abs() < 4 * se + 1e-6).all()
    torch.testing.assert_close(a.kl, b.kl)  # analytic, so identical whatever the batching


def test_generic_model_and_guide_go_through_traces():
    vae, x, truth = linear_gaussian(orthogonal=False, exact_guide=False)

    class Bare:  # only model and guide: no encode, no prior
        model, guide = vae.model, vae.guide

    ev = evaluate(Bare(), x, num_samples=3000, k_list=(1, 3000), seed=0)
    assert ev.method == "trace" and not ev.kl_analytic
    assert ev.unit_variance is None and ev.kl_per_dim is None
    assert ((ev.log_px - truth).abs() < 4 * ev.mc_se + 1e-6).double().mean() > 0.9
    with pytest.raises(ValueError, match="fused"):
        evaluate(Bare(), x, num_samples=10, method="fused")


def test_posterior_collapse_warning_and_active_units():
    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)
        ev = evaluate(vae, x, num_samples=50, k_list=(1,), seed=0)
    assert ev.active_units == LATENT and (ev.kl_per_dim > 0.01).all()
    collapsed = LinearEncoder(torch.zeros(LATENT, D), torch.zeros(LATENT), torch.ones(LATENT))  # q = p(z)
    vae.encoder = collapsed
    with pytest.warns(PosteriorCollapseWarning, match="all 2 latent"):
        ev = evaluate(vae, x, num_samples=50, k_list=(1,), seed=0)
    assert ev.active_units == 0
    torch.testing.assert_close(ev.kl_per_dim, torch.zeros(LATENT, dtype=torch.float64))


def test_mc_kl_per_dim_for_a_mixture_prior():
    torch.manual_seed(0)
    vae = VAE((5,), latent_dim=3, likelihood="gaussian", prior="mog", hidden=[8])
    x = torch.randn(10, 5)
    ev = evaluate(vae, x, num_samples=200, k_list=(1, 10), seed=0)
    assert not ev.kl_analytic
    assert ev.kl_per_dim is not None and ev.kl_per_dim.shape == (3,) and torch.isfinite(ev.kl_per_dim).all()
    # MC KL is ELBO-consistent: reconstruction - KL = mean log w.
    torch.testing.assert_close(ev.elbo, ev.reconstruction - ev.kl)
    torch.testing.assert_close(ev.elbo, ev.iwae[1])


def test_argument_checks_and_k_list_filtering():
    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    ev = evaluate(vae, x[:3], num_samples=20, k_list=(1, 10, 100, 1000), seed=0)
    assert sorted(ev.iwae) == [1, 10]
    assert all(torch.isnan(ev.khat))  # K=20 is too few draws to fit a Pareto tail
    assert ev.to_dict()["diagnostics"]["khat_mean"] is None
    with pytest.raises(ValueError, match="num_samples"):
        evaluate(vae, x, num_samples=0)
    with pytest.raises(ValueError, match="k_list"):
        evaluate(vae, x, num_samples=10, k_list=(0,))
    with pytest.raises(ValueError, match="method"):
        evaluate(vae, x, num_samples=10, method="fast")


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    a = evaluate(vae, x, num_samples=100, k_list=(1,), seed=7)
    assert torch.equal(torch.rand(3), expected)
    b = evaluate(vae, x, num_samples=100, k_list=(1,), seed=7)
    assert torch.equal(a.log_px, b.log_px)


# --------------------------------------------------------------------------- Fabric sharding


def test_fabric_world_one_matches_unsharded():
    from lightning_fabric import Fabric

    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    sharded = evaluate(vae, x, num_samples=200, k_list=(1, 10), fabric=fabric, seed=0)
    plain = evaluate(vae, x, num_samples=200, k_list=(1, 10), seed=0)
    assert torch.equal(sharded.log_px, plain.log_px)
    assert sharded.world_size == 1


def _sharded_worker(fabric, state: dict, x: torch.Tensor) -> dict:
    vae, _, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    vae.load_state_dict(state)
    ev = evaluate(vae, x, num_samples=500, k_list=(1, 10), fabric=fabric, seed=0)
    # Plain lists: tensors would travel back through shared memory owned by an exiting process.
    out = {"log_px": ev.log_px.tolist(), "mc_se": ev.mc_se.tolist(), "kl": ev.kl.tolist(), "world_size": ev.world_size}
    # Tear gloo down before the rank exits: its threads left running abort the process
    # ("terminate called without an active exception") in a fraction of runs.
    fabric.barrier()
    torch.distributed.destroy_process_group()
    return out


def test_two_process_gloo_sharding_matches_unsharded(gloo_rendezvous):
    from lightning_fabric import Fabric

    vae, x, _ = linear_gaussian(orthogonal=False, exact_guide=False)
    x = x[:23]  # not a multiple of the world size: exercises the padding
    try:
        fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
        out = fabric.launch(_sharded_worker, vae.state_dict(), x)
    except torch.multiprocessing.ProcessRaisedException:
        raise  # a Python error inside a rank is a real failure
    except Exception as e:  # noqa: BLE001 - no spawn/gloo on this machine is not a failure of evaluate
        pytest.skip(f"cannot spawn a 2-process gloo group here: {type(e).__name__}: {e}")
    plain = evaluate(vae, x, num_samples=500, k_list=(1, 10), seed=0)
    out = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k, v in out.items()}
    assert out["world_size"] == 2 and out["log_px"].shape == (23,)
    torch.testing.assert_close(out["kl"], plain.kl)  # deterministic per point: proves the order is restored
    se = (out["mc_se"].pow(2) + plain.mc_se.pow(2)).sqrt()
    assert ((out["log_px"] - plain.log_px).abs() < 4 * se + 1e-6).all()


# --------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pyro_vae.jobs.train import fit

    run_dir = tmp_path_factory.mktemp("run")
    # Binarized digits with a Bernoulli decoder: the evaluator's fused fast path on a real model.
    cfg = {"data": {"name": "digits", "binarize": "dynamic"},
           "model": {"latent_dim": 4, "likelihood": "bernoulli", "net": {"hidden": [32]}},
           "train": {"epochs": 4, "batch_size": 64, "metrics_max_points": 256, "lr": 3e-3}, "out": str(run_dir)}
    result = fit(cfg, progress=False)
    return run_dir, result


def test_bounds_increase_with_k_on_a_trained_model(trained_run):
    _, result = trained_run
    x = result.transform(result.dataset.test, train=False)
    ev = evaluate(result.vae, x, num_samples=1000, k_list=K_LIST, seed=0)
    ks = [1, 10, 100, 1000]
    assert sorted(ev.iwae) == ks
    for a, b in zip(ks, ks[1:]):
        diff = ev.iwae[b] - ev.iwae[a]
        tol = 3 * (ev.iwae_mc_se[a].pow(2) + ev.iwae_mc_se[b].pow(2)).sum().sqrt().item() / len(diff)
        assert diff.mean().item() > -tol, (a, b)
    # The ELBO (analytic KL) sits below L_10 too, and the overall gap is real.
    assert ev.elbo.mean() < ev.iwae[10].mean()
    assert ev.iwae[1000].mean() - ev.iwae[1].mean() > 0.1  # ~100 MC SEs
    assert torch.equal(ev.iwae[1000], ev.log_px)


def test_evaluate_run_writes_report_and_plots(trained_run, capsys):
    run_dir, _ = trained_run
    ev = evaluate_run(run_dir, split="test", num_samples=200, k_list=(1, 10, 100))
    assert isinstance(ev, Evaluation)
    assert "log p(x) (IS)" in capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("num_points", "samples", "elbo", "iwae", "log_likelihood", "diagnostics"):
        assert key in report, key
    assert {"mean", "se", "reconstruction", "kl"} <= set(report["elbo"])
    assert [row["k"] for row in report["iwae"]] == [1, 10, 100]
    assert all({"k", "mean", "se"} <= set(row) for row in report["iwae"])
    assert {"mean", "se", "mc_se", "bits_per_dim"} <= set(report["log_likelihood"])
    assert {"khat_mean", "frac_khat_above_0_7", "ess_mean", "active_units", "kl_per_dim"} <= set(report["diagnostics"])
    assert report["samples"] == 200 and report["split"] == "test"
    assert len(report["diagnostics"]["kl_per_dim"]) == 4
    for name in ("bound_vs_k", "khat_hist", "kl_per_dim"):
        path = run_dir / f"{name}_test_is_K200_n{ev.num_points}_seed0.png"  # named after the evaluation
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    idata = ev.to_inference_data()
    assert isinstance(idata, az.InferenceData)
    assert {"pointwise", "latent"} <= set(idata.groups())  # the log-weights only when kept (test_inference_data)
    assert idata.pointwise["log_px"].shape == (ev.num_points,)
    assert {"khat", "ess", "mc_se", "elbo", "iwae_100"} <= set(idata.pointwise.data_vars)
    summary = ev.summary()
    assert summary.count("\n") < 25 and "PSIS" in summary


def test_evaluate_run_with_ais_and_bdmc_writes_the_sections(trained_run, tmp_path, capsys):
    """--method ais --bdmc N: ais and bdmc sections beside IS, the sandwich picture, and which number to quote."""
    run_dir, _ = trained_run
    ev = evaluate_run(run_dir, num_samples=200, k_list=(1, 200), out=tmp_path, method="ais", steps=40, chains=4,
                      leapfrog=4, bdmc_points=6, num_points=12)
    out = capsys.readouterr().out
    assert "AIS: N=12 points" in out and "BDMC: N=6 simulated points" in out and "Quote: AIS" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_points"] == 12 and report["ais"]["num_points"] == 12
    assert report["ais"]["settings"]["steps"] == 40 and report["bdmc"]["num_points"] == 6
    assert [row["steps"] for row in report["bdmc_curve"]] == [2, 4, 40]
    gaps = [row["gap"]["mean"] for row in report["bdmc_curve"]]
    assert gaps[0] > gaps[-1], gaps  # the sandwich closes as T grows
    assert report["quote"].startswith("Quote: AIS")
    # AIS and IS estimate the same log p(x): on a small model they agree to a few nats per point.
    assert abs(report["ais"]["log_likelihood"]["mean"] - report["log_likelihood"]["mean"]) < 3.0
    assert set(ev.sections) == {"ais", "bdmc"}
    assert (tmp_path / "bdmc_sandwich_simulated_bdmc_T40_C4_L4_n6_seed0.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / ".write_test.tmp").exists()

    # A later IS-only evaluation keeps the AIS and BDMC results and their pictures: nothing is lost.
    evaluate_run(run_dir, num_samples=50, k_list=(1, 50), out=tmp_path, num_points=12, verbose=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples"] == 50 and "ais" not in report  # the top level is the latest evaluation
    kept = report["evaluations"]
    assert set(kept) == {"test_is_K200_n12_seed0", "test_ais_T40_C4_L4_n12_seed0",
                         "simulated_bdmc_T40_C4_L4_n6_seed0", "test_is_K50_n12_seed0"}
    assert kept["test_ais_T40_C4_L4_n12_seed0"]["log_likelihood"]["mean"] == ev.sections["ais"].to_dict()["log_likelihood"]["mean"]
    assert (tmp_path / "bdmc_sandwich_simulated_bdmc_T40_C4_L4_n6_seed0.png").exists()
    text = (tmp_path / "report.txt").read_text()
    assert all(tag in text for tag in kept) and "gap" in text and text.count("\n") == 5
