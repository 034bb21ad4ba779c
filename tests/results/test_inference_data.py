"""`pyro_vae.results.arviz`: arviz groups that mean something, and PSIS with any arviz."""

import warnings

import numpy as np
import pytest
import torch

from pyro_vae.estimators.ais import ais
from pyro_vae.estimators.importance import evaluate
from pyro_vae.results.arviz import _arviz_stats_psislw, psislw
from pyro_vae.core.stats import logmeanexp
from pyro_vae.models.vae import VAE


@pytest.fixture(scope="module")
def kept():
    torch.manual_seed(0)
    vae = VAE((6,), latent_dim=2, likelihood="gaussian", hidden=[8])
    x = torch.randn(12, 6)
    return vae, x, evaluate(vae, x, num_samples=300, k_list=(1, 10), seed=0, keep_log_weights=True)


def test_log_weights_are_draw_by_point_and_reproduce_the_estimate(kept):
    _, _, ev = kept
    idata = ev.to_inference_data()
    lw = idata["sample_stats"]["log_weight"]
    assert lw.dims == ("chain", "draw", "point") and lw.shape == (1, 300, 12)
    # log p̂(x_i) is the log-mean-exp of that point's weights: the groups agree with each other.
    again = logmeanexp(torch.as_tensor(lw.values[0].T), dim=-1)
    assert torch.allclose(again, ev.log_px, atol=1e-4)
    assert np.allclose(idata["pointwise"]["log_px"].values, ev.log_px.numpy())
    assert idata["pointwise"].attrs["units"] == "nats per point"
    assert idata["pointwise"].attrs["representation"] == "continuous"


def test_arviz_psislw_on_the_exported_weights_agrees_with_the_library_khat(kept):
    import arviz as az

    _, _, ev = kept
    stacked = ev.to_inference_data()["sample_stats"]["log_weight"].stack(__sample__=("chain", "draw"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, khat = az.psislw(stacked)
    assert np.allclose(khat.values, ev.khat.numpy(), atol=1e-6)


def test_arviz_ess_runs_on_the_weights(kept):
    import arviz as az

    _, _, ev = kept
    lw = ev.to_inference_data()["sample_stats"]["log_weight"]
    ess = az.ess(lw.to_dataset(name="log_weight"))["log_weight"]
    assert ess.shape == (12,) and np.isfinite(ess.values).all() and (ess.values > 30).all()  # independent draws


def test_without_kept_weights_there_is_no_sample_stats_and_no_fake_posterior(kept):
    vae, x, _ = kept
    idata = evaluate(vae, x, num_samples=50, k_list=(1,), seed=0).to_inference_data()
    assert "sample_stats" not in idata.groups() and "log_likelihood" not in idata.groups()
    assert "posterior" not in idata.groups()
    assert set(idata["latent"].data_vars) == {"kl_per_dim", "unit_variance"}


def test_ais_weights_ride_along(kept):
    vae, x, ev = kept
    ev.sections["ais"] = ais(vae, x, steps=5, chains=4, leapfrog=2, seed=0)
    try:
        idata = ev.to_inference_data()
        assert idata["sample_stats"]["ais_log_weight"].shape == (1, 4, 12)
        assert np.allclose(idata["pointwise"]["ais_log_px"].values, ev.sections["ais"].log_px.numpy())
    finally:
        ev.sections.clear()


def test_arviz_stats_backend_agrees_with_arviz():
    pytest.importorskip("arviz_stats")
    lw = np.random.default_rng(0).normal(size=(20, 2000)) * np.linspace(0.3, 2.0, 20)[:, None]
    _, k_old = psislw(lw)
    smoothed, k_new = _arviz_stats_psislw(lw)
    assert smoothed.shape == lw.shape
    assert np.abs(k_old - k_new).max() < 0.1  # tail-fit details differ; the verdict (0.7) does not
    assert ((k_old > 0.7) == (k_new > 0.7)).mean() >= 0.9
