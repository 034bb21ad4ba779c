"""Properties of the exact EM baselines: monotone EM, agreement with closed forms,
brute-force densities and scikit-learn, and clear input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import datasets, decomposition, mixture

from pyro_vae.baselines.registry import BASELINES, make_baseline
from pyro_vae.baselines.lowrank import PPCA, FactorAnalysis
from pyro_vae.baselines.mixtures import GaussianMixture, MixtureOfBernoullis
from pyro_vae.core.stats import LogLikelihood


def assert_monotone(history: list[float]) -> None:
    h = torch.tensor(history, dtype=torch.float64)
    assert len(h) >= 2, "EM ran no iterations; the check would be vacuous"
    drops = h[:-1] - h[1:]
    assert (drops <= 1e-9 * h[:-1].abs().clamp_min(1.0)).all(), f"EM decreased the log-likelihood by {drops.max():.3g}"


@pytest.fixture(scope="module")
def low_rank() -> torch.Tensor:
    """1000 points in 10-D from a 3-factor model with anisotropic noise (EM converges in a few hundred steps)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(10, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.5, 1.0], dtype=torch.float64)
    z = torch.randn(1000, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(1000, 10, generator=g, dtype=torch.float64) * torch.linspace(0.5, 1.0, 10, dtype=torch.float64)
    return z @ w.T + noise + 4.0


@pytest.fixture(scope="module")
def blobs() -> torch.Tensor:
    """Three well-separated anisotropic Gaussian clusters in 5-D, unequal weights."""
    g = torch.Generator().manual_seed(2)
    centers = torch.tensor([[0.0] * 5, [12.0] * 5, [0.0, 12.0, -12.0, 0.0, 12.0]], dtype=torch.float64)
    parts = []
    for c, n in zip(centers, (600, 400, 200)):
        a = torch.randn(5, 5, generator=g, dtype=torch.float64) * 0.5 + torch.eye(5, dtype=torch.float64)
        parts.append(torch.randn(n, 5, generator=g, dtype=torch.float64) @ a + c)
    return torch.cat(parts)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, np.ndarray]:
    """sklearn's 8x8 digits (values 0..16), dequantized as (v + u) / 17, plus the raw values."""
    v = datasets.load_digits().data
    u = np.random.default_rng(0).random(v.shape)
    return torch.as_tensor((v + u) / 17.0), v


# --- PPCA ----------------------------------------------------------------------------


def test_ppca_log_prob_equals_brute_force_mvn(low_rank):
    model = PPCA(3).fit(low_rank)
    cov = model.loadings @ model.loadings.T + model.noise_variance * torch.eye(10, dtype=torch.float64)
    brute = torch.distributions.MultivariateNormal(model.mean, cov).log_prob(low_rank)
    torch.testing.assert_close(model.log_prob(low_rank), brute, rtol=0, atol=1e-9)
    # history[-1] is the train log-likelihood of the returned parameters
    assert model.history[-1] == pytest.approx(brute.mean().item(), abs=1e-9)


def test_ppca_history_with_noise_floor_active_is_the_exact_log_likelihood(low_rank):
    # min_variance above the discarded eigenvalues' mean: sigma^2 is clamped and the spectral
    # formula for the train log-likelihood must still equal the brute-force density.
    model = PPCA(3, min_variance=2.0).fit(low_rank)
    assert model.noise_variance.item() == 2.0
    cov = model.loadings @ model.loadings.T + 2.0 * torch.eye(10, dtype=torch.float64)
    brute = torch.distributions.MultivariateNormal(model.mean, cov).log_prob(low_rank).mean().item()
    assert model.history[-1] == pytest.approx(brute, abs=1e-9)


def test_ppca_float32_closed_form_matches_float64():
    g = torch.Generator().manual_seed(0)
    x = 5.0 + torch.randn(2000, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 40, generator=g, dtype=torch.float64)
    exact, fast = PPCA(5).fit(x, float32=False), PPCA(5).fit(x, float32=True)
    assert fast.noise_variance == pytest.approx(exact.noise_variance.item(), rel=1e-5)
    # second order in the rounding: far tighter than the ~1e-6 relative error of S itself
    assert fast.log_prob(x).mean().item() == pytest.approx(exact.history[-1], abs=1e-9)
    assert fast.history[-1] == pytest.approx(exact.history[-1], abs=1e-4)


def test_ppca_em_converges_to_closed_form(low_rank):
    exact = PPCA(3).fit(low_rank)
    em = PPCA(3).fit(low_rank, method="em", max_iter=5000, tol=1e-12, seed=3)
    assert em.converged
    assert_monotone(em.history)
    assert abs(em.history[-1] - exact.history[-1]) < 1e-4
    assert em.history[-1] <= exact.history[-1] + 1e-9  # the closed form is the global maximum
    # W is identified only up to rotation; W W^T and sigma^2 are identified.
    wwt = exact.loadings @ exact.loadings.T
    torch.testing.assert_close(em.loadings @ em.loadings.T, wwt, rtol=0, atol=1e-4 * wwt.abs().max().item())
    assert em.noise_variance.item() == pytest.approx(exact.noise_variance.item(), rel=1e-4)
    torch.testing.assert_close(em.log_prob(low_rank), exact.log_prob(low_rank), rtol=0, atol=1e-3)


def test_ppca_matches_sklearn_pca(low_rank):
    x = low_rank.numpy()
    ours = PPCA(3).fit(low_rank)
    sk = decomposition.PCA(3).fit(x)
    # (b) sklearn's PCA.score_samples is the PPCA likelihood at its (N-1)-normalized fit: the
    # fitted mean train LL must agree, and ours (the exact MLE) can only be higher.
    sk_ll = sk.score_samples(x).mean()
    assert 0 <= ours.history[-1] - sk_ll < 1e-4
    # (a) identical parameters give identical per-point log-likelihoods.
    u, s, _ = torch.linalg.svd(ours.loadings, full_matrices=False)
    sigma2 = ours.noise_variance.item()
    sk.mean_, sk.components_ = ours.mean.numpy(), u.T.numpy()
    sk.explained_variance_, sk.noise_variance_ = (s**2 + sigma2).numpy(), sigma2
    np.testing.assert_allclose(ours.log_prob(x).numpy(), sk.score_samples(x), rtol=0, atol=1e-8)


def test_ppca_digits_bits_per_dim(digits):
    x, _ = digits
    train, test = x[:1400], x[1400:]
    model = PPCA(10).fit(train)
    ll = model.evaluate(test, levels=17)
    assert isinstance(ll, LogLikelihood) and ll.name == "ppca" and ll.num_points == len(test)
    # A dequantized density lower-bounds the discrete log-mass (Jensen), which is <= 0.
    assert 0 < ll.bits_per_dim < math.log2(17)
    assert {"fit_seconds", "iterations", "converged"} <= set(ll.extra)


# --- Factor analysis -----------------------------------------------------------------


def test_fa_matches_sklearn(low_rank):
    x = low_rank.numpy()
    ours = FactorAnalysis(3, tol=1e-12, max_iter=20000).fit(low_rank)
    assert ours.converged
    assert_monotone(ours.history)
    # sklearn's tol is on the summed log-likelihood: 1e-9 / 1000 points is as tight as ours.
    sk = decomposition.FactorAnalysis(3, tol=1e-9, max_iter=20000, svd_method="lapack").fit(x)
    # (b) both reach the same maximum (the likelihood is flat in psi, so psi agrees less tightly)
    assert abs(ours.history[-1] - sk.score(x)) < 1e-6
    np.testing.assert_allclose(ours.noise_variance.numpy(), sk.noise_variance_, rtol=2e-4)
    # (a) identical parameters give identical per-point log-likelihoods
    sk.mean_, sk.components_, sk.noise_variance_ = ours.mean.numpy(), ours.loadings.T.numpy(), ours.noise_variance.numpy()
    np.testing.assert_allclose(ours.log_prob(x).numpy(), sk.score_samples(x), rtol=0, atol=1e-8)


def test_fa_random_init_monotone_on_digits_with_constant_pixels(digits):
    _, v = digits
    raw = torch.as_tensor(v / 16.0)  # not dequantized: some pixels are exactly 0 for every image
    assert (raw.var(0) == 0).any()
    model = FactorAnalysis(5, init="random", max_iter=150, tol=0.0).fit(raw)
    assert_monotone(model.history)
    assert model.noise_variance.min().item() == pytest.approx(model.min_variance)  # floor is active
    assert torch.isfinite(model.log_prob(raw)).all()


# --- Gaussian mixtures ---------------------------------------------------------------


def _sklearn_gmm_with(ours: GaussianMixture, x: np.ndarray) -> mixture.GaussianMixture:
    kind = ours.covariance
    sk = mixture.GaussianMixture(ours.n_components, covariance_type=kind, max_iter=1, init_params="random_from_data")
    with pytest.warns(Warning):  # one iteration does not converge; we only want a fitted object
        sk.fit(x)
    cov = ours.covariances.numpy()
    sk.weights_, sk.means_, sk.covariances_ = ours.weights.numpy(), ours.means.numpy(), cov
    if kind == "diag":
        sk.precisions_cholesky_ = 1.0 / np.sqrt(cov)
    else:
        sk.precisions_cholesky_ = np.stack([np.linalg.inv(np.linalg.cholesky(c)).T for c in cov])
    return sk


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_matches_sklearn_on_digits_with_same_parameters(digits, covariance):
    x, _ = digits
    ours = GaussianMixture(3, covariance=covariance, max_iter=30, seed=0).fit(x)
    assert_monotone(ours.history)
    sk = _sklearn_gmm_with(ours, x.numpy())
    np.testing.assert_allclose(ours.log_prob(x).numpy(), sk.score_samples(x.numpy()), rtol=1e-12, atol=1e-8)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_fit_matches_sklearn_fit(blobs, covariance):
    x = blobs.numpy()
    ours = GaussianMixture(3, covariance=covariance, tol=1e-10, max_iter=500, n_restarts=2).fit(blobs)
    sk = mixture.GaussianMixture(3, covariance_type=covariance, tol=1e-10, max_iter=500, random_state=0).fit(x)
    assert ours.converged and sk.converged_
    assert_monotone(ours.history)
    assert abs(ours.history[-1] - sk.score(x)) < 1e-3
    np.testing.assert_allclose(np.sort(ours.weights.numpy()), np.sort(sk.weights_), atol=1e-6)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_additive_regularization_is_sklearns_m_step(digits, covariance):
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    _, v = digits
    x = torch.as_tensor(v[:600] / 16.0)  # constant pixels: the regularization decides their variance
    resp = torch.softmax(torch.randn(600, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1)
    model = GaussianMixture(3, covariance=covariance, regularization="add", min_variance=1e-3)
    ours = model._m_step(model._prepare(x), {}, resp)
    _, means, cov = _estimate_gaussian_parameters(x.numpy(), resp.numpy(), 1e-3, covariance)
    np.testing.assert_allclose(ours["means"].numpy(), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours["covariances"].numpy(), cov, rtol=1e-8, atol=1e-12)
    floored = GaussianMixture(3, covariance=covariance, min_variance=1e-3)._m_step(model._prepare(x), {}, resp)
    assert not torch.allclose(floored["covariances"], ours["covariances"])  # the two rules really differ


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gmm_m_step_with_exactly_zero_responsibilities_is_sklearns(digits, covariance):
    # The full M-step gathers only rows with nonzero responsibility and the diagonal one runs in
    # cached row blocks (1100 rows: two full blocks and a partial one); both must stay exact.
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    _, v = digits
    x = torch.as_tensor(v[:1100] / 16.0)
    g = torch.Generator().manual_seed(1)
    resp = torch.softmax(4 * torch.randn(1100, 3, generator=g, dtype=torch.float64), 1)
    resp[torch.rand(1100, 3, generator=g) < 0.6] = 0.0  # most (point, component) pairs exactly zero
    resp[resp.sum(1) == 0, 0] = 1.0
    resp = resp / resp.sum(1, keepdim=True)
    assert (resp == 0).double().mean() > 0.4
    model = GaussianMixture(3, covariance=covariance, regularization="add", min_variance=1e-3)
    ours = model._m_step(model._prepare(x), {}, resp)
    weights, means, cov = _estimate_gaussian_parameters(x.numpy(), resp.numpy(), 1e-3, covariance)
    np.testing.assert_allclose(ours["weights"].numpy(), weights / weights.sum(), rtol=1e-12)
    np.testing.assert_allclose(ours["means"].numpy(), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours["covariances"].numpy(), cov, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("regularization", ["floor", "add"])
def test_gmm_diag_fused_step_equals_separate_e_and_m_steps(digits, regularization):
    _, v = digits
    x = torch.as_tensor((v[:1100] + 0.5) / 17.0)
    model = GaussianMixture(4, regularization=regularization, min_variance=1e-4)
    data = model._prepare(x)
    p = model._init(data, torch.Generator().manual_seed(0), 0)
    fused_ll, advance = model._step(data, p)
    ll, resp = model._e_step(data, p)  # the generic path: whole-batch E-step, then the M-step
    assert fused_ll == pytest.approx(ll, rel=1e-13)
    fused, separate = advance(), model._m_step(data, p, resp)
    for key in separate:
        torch.testing.assert_close(fused[key], separate[key], rtol=1e-11, atol=1e-14)


def test_gmm_diag_fit_is_bit_identical_with_one_or_two_worker_threads(digits):
    _, v = digits
    x = torch.as_tensor((v[:1100] + 0.5) / 17.0)  # 5 blocks of 256 rows
    threads = torch.get_num_threads()
    fits = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            fits.append(GaussianMixture(4, max_iter=15, tol=0.0, min_variance=1e-4).fit(x))
    finally:
        torch.set_num_threads(threads)
    one, two = fits
    assert one.history == two.history  # exact: per-block sums are added in block order
    torch.testing.assert_close(one.covariances, two.covariances, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fa", "gmm", "gmm_full", "mob"])
def test_fit_from_init_continues_em_exactly(digits, name):
    _, v = digits
    x = torch.as_tensor((v[:600] > 8).astype(np.float64)) if name == "mob" else torch.as_tensor((v[:600] + 0.5) / 17.0)
    kwargs = {"tol": 0.0, "min_variance": 1e-3}
    if name.startswith("gmm"):
        kwargs["init"] = "random"  # slow start: EM still moves after 10 iterations
    whole = make_baseline(name, 3, max_iter=10, **kwargs).fit(x)
    first = make_baseline(name, 3, max_iter=4, **kwargs).fit(x)
    rest = make_baseline(name, 3, max_iter=6, **kwargs).fit(x, init=first)
    assert whole.iterations == 10 and rest.iterations == 6
    assert rest.history[0] == pytest.approx(first.history[-1], rel=1e-12)
    np.testing.assert_allclose(rest.history, whole.history[4:], rtol=1e-10)
    # a dict of parameters works the same way
    as_dict = {key: getattr(first, key) for key in first._param_names}
    assert make_baseline(name, 3, max_iter=6, **kwargs).fit(x, init=as_dict).history[-1] == pytest.approx(
        rest.history[-1], rel=1e-12)


def test_fit_init_errors_name_the_problem(digits):
    _, v = digits
    x = torch.as_tensor((v[:300] + 0.5) / 17.0)
    with pytest.raises(ValueError, match=r"missing \['means', 'covariances'\], unknown \['scale'\]"):
        GaussianMixture(2).fit(x, init={"weights": torch.ones(2) / 2, "scale": 1.0})
    with pytest.raises(ValueError, match="must be a fitted FactorAnalysis"):
        FactorAnalysis(2).fit(x, init=PPCA(2).fit(x))
    with pytest.raises(ValueError, match="do not fit data of D=64"):
        GaussianMixture(2).fit(x, init={"weights": torch.ones(2) / 2, "means": torch.zeros(2, 10),
                                        "covariances": torch.ones(2, 10)})
    with pytest.raises(ValueError, match="non-finite log-likelihood"):
        GaussianMixture(2).fit(x, init={"weights": torch.ones(2) / 2, "means": torch.zeros(2, 64),
                                        "covariances": torch.zeros(2, 64)})


@pytest.mark.parametrize("covariance,init", [("diag", "random"), ("full", "kmeans++")])
def test_gmm_em_monotone_with_floor_active(digits, covariance, init):
    _, v = digits
    raw = torch.as_tensor(v[:800] / 16.0)  # constant pixels: variance floor must bind without breaking EM
    model = GaussianMixture(4 if covariance == "diag" else 2, covariance=covariance, init=init, max_iter=40, tol=0.0)
    model.fit(raw)
    assert_monotone(model.history)
    assert torch.isfinite(model.log_prob(raw)).all()


def test_gmm_restarts_keep_best_and_seed_is_deterministic(digits):
    x, _ = digits
    model = GaussianMixture(5, max_iter=20, n_restarts=3, seed=7).fit(x)
    assert len(model.restart_log_likelihoods) == 3
    assert model.history[-1] == max(model.restart_log_likelihoods)
    assert model.log_prob(x).mean().item() == pytest.approx(model.history[-1], abs=1e-9)
    again = GaussianMixture(5, max_iter=20, n_restarts=3, seed=7).fit(x)
    torch.testing.assert_close(again.means, model.means, rtol=0, atol=0)


# --- Mixture of Bernoullis -----------------------------------------------------------


@pytest.fixture(scope="module")
def planted_binary() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    probs = torch.where(torch.rand(3, 40, generator=g) < 0.5, 0.1, 0.9).double()
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    z = torch.multinomial(weights, 3000, replacement=True, generator=g)
    x = (torch.rand(3000, 40, generator=g, dtype=torch.float64) < probs[z]).double()
    return x, weights, probs


def test_mob_recovers_planted_components(planted_binary):
    x, weights, probs = planted_binary
    model = MixtureOfBernoullis(3, n_restarts=3, tol=1e-8).fit(x)
    assert_monotone(model.history)
    match = torch.cdist(probs, model.probs, p=1).argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2]
    assert (model.probs[match] - probs).abs().max() < 0.07
    torch.testing.assert_close(model.weights[match], weights, rtol=0, atol=0.03)


def test_mob_log_prob_equals_brute_force(planted_binary):
    x, _, _ = planted_binary
    x = x[:300]
    model = MixtureOfBernoullis(4, max_iter=20).fit(x)
    per_component = torch.distributions.Bernoulli(probs=model.probs).log_prob(x[:, None, :]).sum(-1)
    brute = torch.logsumexp(per_component + model.weights.log(), dim=1)
    torch.testing.assert_close(model.log_prob(x), brute, rtol=0, atol=1e-9)
    ll = model.evaluate(x)
    assert ll.levels is None and 0 < ll.bits_per_dim < 1


def test_mob_on_binarized_digits(digits):
    _, v = digits
    x = torch.as_tensor(v > 8).double()
    model = MixtureOfBernoullis(10, max_iter=100, min_prob=1e-3).fit(x[:1400])
    assert_monotone(model.history)
    assert model.probs.min() >= 1e-3 and model.probs.max() <= 1 - 1e-3
    assert model.evaluate(x[1400:]).bits_per_dim < 0.5  # coin flips would be 1 bit/dim


# --- Input handling and errors -------------------------------------------------------


def test_trailing_dims_are_flattened(digits):
    x, _ = digits
    flat = GaussianMixture(2, max_iter=5).fit(x).log_prob(x)
    image = GaussianMixture(2, max_iter=5).fit(x.reshape(-1, 8, 8)).log_prob(x.reshape(-1, 8, 8))
    torch.testing.assert_close(flat, image, rtol=0, atol=0)


def test_non_finite_values_are_counted():
    x = torch.randn(50, 4, dtype=torch.float64)
    x[0, 0], x[3, 1], x[7, 2] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(ValueError, match=r"3 of 200 values are not finite"):
        FactorAnalysis(2).fit(x)


def test_wrong_ndim_explains_expected_shape():
    with pytest.raises(ValueError, match=r"shape \(N, D\).*got shape \(5,\).*x\[None\]"):
        PPCA(1).fit(torch.randn(5))


@pytest.mark.parametrize(
    "model,shape,pattern",
    [
        (PPCA(5), (4, 10), r"needs N > n_components, got N=4"),
        (PPCA(10), (50, 10), r"n_components=10 must be < D=10"),
        (FactorAnalysis(12), (50, 10), r"must be < D=10"),
        (GaussianMixture(6), (5, 3), r"5 datapoints cannot support n_components=6"),
        (GaussianMixture(3, covariance="full"), (60, 30), r"need at least n_components \* \(D \+ 1\) = 93.*covariance='diag'"),
    ],
)
def test_too_few_points_or_too_many_components(model, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.fit(torch.randn(*shape))


def test_mob_rejects_non_binary_data_and_suggests_binarizing():
    x = torch.tensor([[0.0, 1.0, 0.25], [1.0, 0.7, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"2 values are not, e\.g\. 0\.25, 0\.7; binarize first.*x > 0\.5"):
        MixtureOfBernoullis(2).fit(x)
    model = MixtureOfBernoullis(1).fit((x > 0.5).double())
    with pytest.raises(ValueError, match="already a probability mass"):
        model.evaluate((x > 0.5).double(), levels=256)


def test_log_prob_checks_fit_and_dimension():
    with pytest.raises(RuntimeError, match=r"call fit\(x\)"):
        PPCA(1).log_prob(torch.randn(3, 4))
    model = PPCA(1).fit(torch.randn(30, 4))
    with pytest.raises(ValueError, match=r"fitted on D=4 dims but got D=5"):
        model.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"unknown method 'svd'"):
        PPCA(1).fit(torch.randn(30, 4), method="svd")


def test_gmm_rejects_unknown_regularization():
    with pytest.raises(ValueError, match="unknown regularization 'clip'; use 'floor' or 'add'"):
        GaussianMixture(2, regularization="clip")


def test_registry():
    assert set(BASELINES) == {"ppca", "fa", "gmm", "gmm_full", "mob"}
    assert isinstance(make_baseline("fa", 2), FactorAnalysis)
    full = make_baseline("gmm_full", 2, max_iter=3)
    assert full.covariance == "full" and full.name == "gmm_full" and full.max_iter == 3
    assert make_baseline("gmm", 2).covariance == "diag"
    with pytest.raises(ValueError, match=r"unknown baseline 'vae'; valid names: fa, gmm, gmm_full, mob, ppca"):
        make_baseline("vae", 2)
