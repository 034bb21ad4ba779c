"""The estimators on users' own Pyro models: IS, AIS and BDMC over one target, and the model protocol's errors.

The models (:mod:`two_layer`) are plain ``PyroModule``s with two latent sites of different
shapes, ``z1 (N, d)`` and ``z2 (N, k, 2)``, and an observed site called ``"obs"``.
"""

from __future__ import annotations

import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch
from two_layer import LinearTwoLayer, TwoLayerVAE

from pyro_vae.estimators.ais import ais
from pyro_vae.estimators.bdmc import bdmc, bdmc_curve
from pyro_vae.estimators.harness import per_point
from pyro_vae.estimators.importance import evaluate
from pyro_vae.estimators.settings import BDMC_POINTS, IS_SAMPLES, K_LIST, Settings
from pyro_vae.models.fused import FusedVAE
from pyro_vae.models.target import check_protocol, fast_path, simulate, target_of, trace_log_joint, weight_terms
from pyro_vae.models.vae import VAE


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs only cost time


def linear(exact_guide: bool = True, n: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    m = LinearTwoLayer(exact_guide=exact_guide)
    x = m.marginal.sample((n,))
    return m, x, m.marginal.log_prob(x).double()


def binary_points(m: TwoLayerVAE, n: int = 6, seed: int = 0) -> torch.Tensor:
    return simulate(m, n, seed=seed)[0]


# --------------------------------------------------------------------------- the target


def test_trace_log_joint_is_the_sum_of_the_sites_densities():
    torch.manual_seed(0)
    m = TwoLayerVAE(event_shape=(3, 4), z1=5, z2=3, hidden=8)
    x = (torch.rand(4, 3, 4) > 0.5).float()
    z1, z2 = torch.randn(2, 4, 5), torch.randn(2, 4, 3, 2)
    got = trace_log_joint(m.model, x, {"z1": z1, "z2": z2})
    by_hand = (dist.Normal(0.0, 1.0).log_prob(z2).sum((-2, -1)) + m.normal(m.top_down(z2.flatten(-2)), (5,)).log_prob(z1)
               + dist.Bernoulli(logits=m.to_pixels(z1).reshape(2, 4, 3, 4)).log_prob(x).sum((-2, -1)))
    torch.testing.assert_close(got, by_hand)


def test_exact_guide_gives_every_weight_the_closed_form_log_likelihood():
    m, x, truth = linear()
    terms = weight_terms(m.model, m.guide, x, num_samples=7)
    torch.testing.assert_close(terms.log_weight.double(), truth.expand(7, -1), atol=2e-4, rtol=0)


# --------------------------------------------------------------------------- IS, AIS, BDMC against closed forms


def test_importance_sampling_on_a_user_model_matches_the_closed_form():
    m, x, truth = linear()
    exact = evaluate(m, x, num_samples=20, k_list=(1, 20), seed=0)
    assert exact.method == "trace"
    torch.testing.assert_close(exact.log_px, truth, atol=2e-4, rtol=0)  # exact guide: every weight is log p(x)
    m, x, truth = linear(exact_guide=False)
    ev = evaluate(m, x, num_samples=2000, k_list=(1, 10, 2000), seed=0)
    assert ((ev.log_px - truth).abs() < 4 * ev.mc_se + 0.02).double().mean() >= 0.9
    assert (ev.log_px <= truth + 4 * ev.mc_se + 0.02).all()  # IS is a stochastic lower bound
    assert ev.iwae[1].mean() < ev.iwae[10].mean() < ev.log_px.mean() + 1e-9


def test_ais_on_a_user_model_matches_the_closed_form():
    m, x, truth = linear(exact_guide=False, n=10)
    res = ais(m, x, steps=60, chains=6, leapfrog=4, seed=0)
    assert res.method == "trace"
    err = res.log_px - truth
    assert abs(err.mean().item()) < 3 * res.log_likelihood.dataset_mc_se + 0.05, err
    m, x, truth = linear(exact_guide=True, n=4)
    exact = ais(m, x, steps=5, chains=3, leapfrog=2, seed=0)  # q0 is the posterior: constant weights
    torch.testing.assert_close(exact.log_weights, truth.unsqueeze(1).expand(-1, 3), atol=5e-4, rtol=0)


def test_bdmc_on_a_user_model_is_exact_with_the_exact_guide():
    m, _, _ = linear(n=1)
    res = bdmc(m, 4, steps=4, chains=2, leapfrog=2, seed=0, is_samples=0)
    x, _ = simulate(m, 4, seed=0)
    truth = m.marginal.log_prob(x).double()
    torch.testing.assert_close(res.lower, truth, atol=5e-4, rtol=0)
    torch.testing.assert_close(res.upper, truth, atol=5e-4, rtol=0)


def test_bdmc_sandwich_on_the_two_layer_vae_closes_with_T():
    torch.manual_seed(0)
    m = TwoLayerVAE(event_shape=(4, 4), z1=4, z2=2, hidden=16)
    with torch.no_grad():  # a decoder that depends on z, so the posterior is not the prior
        m.to_pixels[2].weight.mul_(6.0)
    curve = bdmc_curve(m, (2, 60), 6, chains=4, leapfrog=3, seed=0, is_samples=0)
    lower, upper, gap = curve["lower"], curve["upper"], curve["gap"]
    for lo, up, se_lo, se_up in zip(lower, upper, curve["lower_mc_se"], curve["upper_mc_se"]):
        assert lo <= up + 3 * (se_lo + se_up) + 0.05, (lower, upper)
    assert gap[-1] < gap[0] and gap[-1] < 1.0, gap


def test_is_ais_and_bdmc_run_on_the_two_layer_vae_and_agree():
    torch.manual_seed(0)
    m = TwoLayerVAE(event_shape=(4, 4), z1=4, z2=2, hidden=16)
    x = binary_points(m, 5)
    ev = evaluate(m, x, num_samples=3000, k_list=(1, 3000), seed=0)
    res = ais(m, x, steps=40, chains=4, leapfrog=3, seed=0)
    assert ev.method == res.method == "trace" and ev.log_px.shape == res.log_px.shape == (5,)
    assert (ev.elbo <= ev.log_px + 1e-6).all()
    assert ((res.log_px - ev.log_px).abs() < 4 * (res.mc_se + ev.mc_se) + 0.1).all()  # both near log p(x)
    with pytest.raises(ValueError, match="method='fused' needs a model that offers fused kernels"):
        evaluate(m, x, num_samples=10, method="fused")


# --------------------------------------------------------------------------- simulate


def test_simulate_draws_through_the_models_own_observed_site():
    torch.manual_seed(0)
    m = TwoLayerVAE(event_shape=(8, 8), z1=8, z2=4, hidden=32)
    state = torch.get_rng_state()
    x, latents = simulate(m, 7, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is restored
    assert x.shape == (7, 8, 8) and x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
    assert sorted(latents) == ["z1", "z2"] and latents["z1"].shape == (7, 8) and latents["z2"].shape == (7, 4, 2)
    again, _ = simulate(m, 7, seed=3)
    assert torch.equal(x, again)
    bare = Custom(m.model, m.guide)  # no event_shape attribute: the shape comes from the caller
    with pytest.raises(ValueError, match="pass event_shape=") as err:
        simulate(bare, 3)
    assert "\n" not in str(err.value)
    assert simulate(bare, 3, event_shape=(8, 8))[0].shape == simulate(bare, 3, like=x)[0].shape == (3, 8, 8)


def test_simulated_data_follow_the_models_marginal():
    m, _, _ = linear()
    x, latents = simulate(m, 4000, seed=0)
    torch.testing.assert_close(x.mean(0), m.c, atol=0.15, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), m.marginal.covariance_matrix, atol=0.35, rtol=0.1)
    assert latents["z2"].shape == (4000, 2, 2)


def test_simulate_with_the_stock_vae_takes_the_fused_draws_by_default():
    torch.manual_seed(0)
    vae = VAE((5,), latent_dim=2, hidden=[4])
    fused, traced = simulate(vae, 6, seed=1), simulate(vae, 6, seed=1, method="trace")
    assert torch.equal(fused[0], traced[0]) and torch.equal(fused[1]["z"], traced[1]["z"])


# --------------------------------------------------------------------------- the protocol's one-line errors


def _data_model(latent_outside=False, observe=True, extra_model_latent=False, discrete=False):
    def model(x):
        if latent_outside:
            pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            if extra_model_latent:
                pyro.sample("u", dist.Normal(0.0, 1.0))
            if discrete:
                pyro.sample("c", dist.Bernoulli(0.5))
            if observe:
                pyro.sample("obs", dist.Normal(z.sum(-1), 1.0), obs=x)
    return model


def _data_guide(extra=False, wrong_shape=False, discrete=False, latent_outside=False):
    def guide(x):
        if latent_outside:
            pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 3 if wrong_shape else 2), 1.0).to_event(1))
            if extra:
                pyro.sample("v", dist.Normal(0.0, 1.0))
            if discrete:
                pyro.sample("c", dist.Bernoulli(0.5))
    return guide


class Custom:
    def __init__(self, model, guide):
        self.model, self.guide = model, guide


@pytest.mark.parametrize("model, guide, gradients, message", [
    (_data_model(latent_outside=True), _data_guide(latent_outside=True), False,
     "latent site 'w' of the model lies outside the data plate 'data': expected every latent inside the plate"),
    (_data_model(observe=False), _data_guide(), False, "the model observes no site (latent sites: 'z'): expected"),
    (_data_model(), _data_guide(extra=True), False, "the guide samples 'v', which the model does not have"),
    (_data_model(extra_model_latent=True), _data_guide(), False, "the model's latent site 'u' has no site in the guide"),
    (_data_model(), _data_guide(wrong_shape=True), False, "latent site 'z' has shape (4, 3) in the guide but (4, 2)"),
    (_data_model(discrete=True), _data_guide(discrete=True), True,
     "latent site 'c' of the model has support Boolean(): AIS and BDMC move the latents along gradients"),
])
def test_protocol_errors_are_one_line_and_name_the_site(model, guide, gradients, message):
    with pytest.raises(ValueError) as err:
        check_protocol(model, guide, torch.zeros(4), gradients=gradients)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_estimators_refuse_a_broken_model_before_computing():
    x = torch.zeros(4)
    outside = Custom(_data_model(latent_outside=True), _data_guide(latent_outside=True))
    for run in (lambda: evaluate(outside, x, num_samples=5), lambda: ais(outside, x, steps=2, chains=2)):
        with pytest.raises(ValueError, match="lies outside the data plate 'data'"):
            run()
    discrete = Custom(_data_model(discrete=True), _data_guide(discrete=True))
    assert evaluate(discrete, x, num_samples=5, k_list=(1,), seed=0).log_px.shape == (4,)  # IS takes any guide
    with pytest.raises(ValueError, match="latent site 'c' of the model has support"):
        ais(discrete, x, steps=2, chains=2)
    with pytest.raises(ValueError, match="the model observes no site"):
        simulate(Custom(_data_model(observe=False), _data_guide()), 3, event_shape=())


def test_data_outside_the_observed_sites_support_is_refused_in_one_line():
    torch.manual_seed(0)
    m = TwoLayerVAE(event_shape=(2, 2), z1=2, z2=1, hidden=4)
    x = torch.zeros(3, 2, 2)
    x[1, 0, 1] = 0.5
    for run in (lambda: evaluate(m, x, num_samples=5), lambda: ais(m, x, steps=2, chains=2)):
        with pytest.raises(ValueError) as err:
            run()
        assert str(err.value) == ("x lies outside the support Boolean() of the model's observed site 'obs' (value 0.5 at "
                                  "point 1); transform the data to match it (see data.binarize, data.dequantize).")


def test_several_observed_sites_are_summed_and_simulation_asks_for_one():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("left", dist.Normal(z, 1.0), obs=x[:, 0])
            pyro.sample("right", dist.Normal(z, 1.0), obs=x[:, 1])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.sum(-1) / 3, (1 / 3) ** 0.5))  # the exact posterior

    x = torch.randn(5, 2)
    truth = dist.MultivariateNormal(torch.zeros(2), torch.eye(2) + 1).log_prob(x).double()
    ev = evaluate(Custom(model, guide), x, num_samples=4, k_list=(1,), seed=0)
    torch.testing.assert_close(ev.log_px, truth, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"found 'left', 'right': expected exactly one"):
        simulate(Custom(model, guide), 3, event_shape=(2,))


# --------------------------------------------------------------------------- fused kernels, harness, defaults


def test_fused_kernels_are_offered_by_the_stock_vae_only():
    vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    assert isinstance(vae.fused(), FusedVAE) and target_of(vae).method == "fused"
    assert fast_path(vae, "trace") is None and target_of(vae, "trace").method == "trace"

    class OwnGuide(VAE):
        def guide(self, x, num_samples=None):
            return super().guide(x)

    assert OwnGuide((4,), latent_dim=2, likelihood="gaussian").fused() is None
    assert fast_path(TwoLayerVAE(), "auto") is None
    with pytest.raises(ValueError, match="method must be one of"):
        fast_path(vae, "fast")


def test_harness_keeps_order_seeds_and_restores_the_rng():
    x = torch.arange(7.0)
    state = torch.get_rng_state()

    def fn(batch, extra, tick):
        for _ in range(3):
            tick()
        return {"x": batch, "noise": torch.rand(len(batch)), "twice": extra["twice"]}

    a = per_point(fn, None, x, batch_size=3, seed=5, steps_per_batch=3, extra={"twice": 2 * x})
    b = per_point(fn, None, x, batch_size=3, seed=5, steps_per_batch=3, extra={"twice": 2 * x})
    assert torch.equal(a["x"], x) and torch.equal(a["twice"], 2 * x) and torch.equal(a["noise"], b["noise"])
    assert torch.equal(torch.get_rng_state(), state)


def test_every_default_is_read_from_one_home():
    from pyro_vae.cli import build_parser
    from pyro_vae.jobs.evaluate import evaluate_run
    from pyro_vae.jobs.family import family_table

    for fn in (ais, bdmc, evaluate_run, family_table):
        params = inspect.signature(fn).parameters
        for name in ("steps", "chains", "leapfrog"):
            assert params[name].default == getattr(Settings, name), (fn.__name__, name)
    for name in ("schedule", "init", "step_size", "target_accept", "adapt", "pilots"):
        assert inspect.signature(ais).parameters[name].default == getattr(Settings, name)
        assert inspect.signature(bdmc).parameters[name].default == getattr(Settings, name)
    assert inspect.signature(evaluate).parameters["num_samples"].default == IS_SAMPLES
    assert inspect.signature(evaluate_run).parameters["num_samples"].default == IS_SAMPLES
    assert inspect.signature(family_table).parameters["is_samples"].default == IS_SAMPLES
    assert inspect.signature(evaluate).parameters["k_list"].default == K_LIST
    assert inspect.signature(bdmc).parameters["num_points"].default == BDMC_POINTS
    args = build_parser().parse_args(["evaluate", "run"])
    assert (args.samples, args.steps, args.chains, args.leapfrog) == (IS_SAMPLES, Settings.steps, Settings.chains,
                                                                      Settings.leapfrog)
    assert tuple(int(k) for k in args.k_list.split(",")) == K_LIST
