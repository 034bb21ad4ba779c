"""`pyro_vae.core.units`: a log-likelihood knows what data it scores, and incompatible ones refuse to be compared."""

import warnings

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators.importance import evaluate
from pyro_vae.baselines.lowrank import PPCA
from pyro_vae.baselines.mixtures import MixtureOfBernoullis
from pyro_vae.core.stats import LogLikelihood
from pyro_vae.core.units import IncompatibleUnitsError, QuantizedDataWarning, Representation, of_likelihood
from pyro_vae.models.vae import VAE


def test_compatibility_table():
    binary, cont = Representation("binary"), Representation("continuous")
    deq256, lev256, deq16 = Representation("dequantized", 256), Representation("levels", 256), Representation("dequantized", 16)
    assert binary.compatible(binary) and cont.compatible(cont)
    assert deq256.compatible(lev256) and lev256.compatible(deq256)  # Theis et al.: one bits/dim scale
    assert not deq256.compatible(deq16)  # different quantization, different data
    assert not binary.compatible(deq256) and not binary.compatible(cont) and not cont.compatible(deq256)
    assert not Representation("unknown").compatible(Representation("unknown"))
    with pytest.raises(ValueError, match="representation must be one of"):
        Representation("grey")


@pytest.mark.parametrize("likelihood, levels, expected", [
    ("bernoulli", None, "binary"), ("gaussian", None, "continuous"), ("gaussian", 17, "dequantized (17 levels)"),
    ("categorical", 17, "levels (17 levels)"), ("beta", 256, "dequantized (256 levels)"),
])
def test_representation_from_the_likelihoods_support(likelihood, levels, expected):
    vae = VAE((6,), latent_dim=2, likelihood=likelihood, levels=levels if likelihood == "categorical" else None)
    assert str(of_likelihood(vae.likelihood, levels)) == expected


def test_paired_difference_is_the_mean_of_per_point_differences():
    rep = Representation("continuous")
    a = LogLikelihood("a", torch.tensor([-1.0, -2.0, -4.0]), 3, representation=rep)
    b = LogLikelihood("b", torch.tensor([-1.5, -2.0, -5.0]), 3, representation=rep)
    d = a.paired_difference(b)
    diffs = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    assert d["mean"] == pytest.approx(0.5)
    assert d["se"] == pytest.approx((diffs.std() / 3**0.5).item())
    assert d["z"] == pytest.approx(d["mean"] / d["se"])


def test_binary_against_dequantized_refuses_with_the_reason():
    bern = VAE((16,), latent_dim=2, likelihood="bernoulli")
    gauss = VAE((16,), latent_dim=2, likelihood="gaussian")
    x_bin = torch.bernoulli(torch.full((40, 16), 0.3))
    ev_bin = evaluate(bern, x_bin, num_samples=20, k_list=(1,), seed=0)
    ev_deq = evaluate(gauss, (torch.randint(0, 16, (40, 16)) + torch.rand(40, 16)) / 16, num_samples=20, k_list=(1,),
                      seed=0, levels=16)
    assert str(ev_bin.representation) == "binary" and str(ev_deq.representation) == "dequantized (16 levels)"
    assert ev_bin.to_dict()["representation"] == "binary"
    with pytest.raises(IncompatibleUnitsError, match=r"vae \(binary\) with vae \(dequantized \(16 levels\)\).*different data"):
        ev_bin.log_likelihood.paired_difference(ev_deq.log_likelihood)


def test_paired_difference_needs_the_same_points_and_sizes():
    rep = Representation("binary")
    a = LogLikelihood("a", torch.zeros(5), 4, representation=rep)
    with pytest.raises(IncompatibleUnitsError, match="same points: a has 5, b 4"):
        a.paired_difference(LogLikelihood("b", torch.zeros(4), 4, representation=rep))
    with pytest.raises(IncompatibleUnitsError, match="4 dims per point"):
        a.paired_difference(LogLikelihood("c", torch.zeros(5), 8, representation=rep))


def test_em_baselines_say_what_they_score():
    x_bin = torch.bernoulli(torch.full((60, 8), 0.4))
    assert str(MixtureOfBernoullis(2).fit(x_bin).evaluate(x_bin).representation) == "binary"
    x = torch.randn(60, 8)
    assert str(PPCA(2).fit(x).evaluate(x).representation) == "continuous"
    assert str(PPCA(2).fit(x).evaluate(x, levels=256).representation) == "dequantized (256 levels)"
    vae_bin = evaluate(VAE((8,), latent_dim=2, likelihood="bernoulli"), x_bin, num_samples=10, k_list=(1,), seed=0)
    with pytest.raises(IncompatibleUnitsError):
        vae_bin.log_likelihood.paired_difference(PPCA(2).fit(x).evaluate(x, levels=256))
    vae_bin.log_likelihood.paired_difference(MixtureOfBernoullis(2).fit(x_bin).evaluate(x_bin))  # same data: fine


def test_a_density_on_quantized_data_without_levels_warns():
    vae = VAE((64,), latent_dim=2, likelihood="gaussian")
    grid = torch.randint(0, 17, (100, 64)) / 16.0  # digits-like: 17 grey levels, not dequantized
    with pytest.warns(QuantizedDataWarning, match="only 17 distinct values.*dequantize.*levels=transform.density_levels"):
        evaluate(vae, grid, num_samples=5, k_list=(1,), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuantizedDataWarning)
        evaluate(vae, grid + torch.rand_like(grid) / 16, num_samples=5, k_list=(1,), seed=0, levels=17)  # dequantized
        evaluate(vae, torch.rand(100, 64), num_samples=5, k_list=(1,), seed=0)  # truly continuous
        evaluate(VAE((64,), latent_dim=2, likelihood="bernoulli"), torch.bernoulli(grid), num_samples=5, k_list=(1,), seed=0)


def test_a_custom_distribution_likelihood_is_placed_by_its_support():
    vae = VAE((4,), latent_dim=2, likelihood=dist.Laplace)
    assert str(of_likelihood(vae.likelihood, None)) == "continuous"
