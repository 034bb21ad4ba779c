"""The family table: every model on the same points, the EM row exact, pairs consistent, scores cached."""

import pytest
from conftest import tiny_config
from pyro_vae.jobs import family
from pyro_vae.baselines.registry import make_baseline
from pyro_vae.jobs.family import family_table, markdown_table, sample_grids
from pyro_vae.jobs.train import fit

BINARY = {"data": {"binarize": "threshold"}, "model": {"latent_dim": 2, "likelihood": "bernoulli", "net": {"hidden": [16]}}}
SCORING = {"points": 15, "steps": 5, "chains": 3, "leapfrog": 2, "bdmc_points": 4, "is_samples": 10}


@pytest.fixture(scope="module")
def models():
    return {name: fit(tiny_config(**BINARY, train={"objective": objective, "adversary_hidden": [16]}), run_dir=None,
                      progress=False) for name, objective in (("VAE", "elbo"), ("GAN", "gan"))}


def test_rows_score_the_same_points_and_pair_with_an_exact_baseline(models):
    rows = family_table(models, **SCORING)
    assert [r["model"] for r in rows] == ["VAE", "GAN", "mob (EM, 10 components)"]
    assert [r["init"] for r in rows] == ["guide", "prior", "exact"]
    first = models["VAE"]
    x = first.transform(first.dataset.test[:15], train=False)
    exact = make_baseline("mob", 10).fit(first.transform(first.dataset.train, train=False), seed=0).evaluate(x)
    assert rows[-1]["log_px"] == pytest.approx(exact.mean)
    for row in rows[:2]:
        # A paired mean is the difference of the two means, whatever the pairing does to its SE.
        assert row["vs_baseline"]["mean"] == pytest.approx(row["log_px"] - exact.mean)
        assert row["vs_baseline"]["z"] == pytest.approx(row["vs_baseline"]["mean"] / row["vs_baseline"]["se"])
        assert row["bdmc_gap"] is not None and row["is"] is not None
    table = markdown_table(rows)
    assert table.count("\n") == 1 + len(rows) and "gan, AIS from the prior" in table and "exact log-likelihood" in table


def test_cached_scores_are_reused_only_for_the_same_settings(models, tmp_path, monkeypatch):
    first = family_table(models, baseline=None, cache=tmp_path, **SCORING)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["GAN.pt", "VAE.pt"]

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached score was recomputed")

    monkeypatch.setattr(family, "ais", no_sampling)
    assert family_table(models, baseline=None, cache=tmp_path, **SCORING) == first
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: the cache does not apply
        family_table(models, baseline=None, cache=tmp_path, **{**SCORING, "steps": 6})


def test_models_on_different_data_cannot_share_a_table(models):
    other = fit(tiny_config(**{**BINARY, "data": {"binarize": "static"}}), run_dir=None, progress=False)
    with pytest.raises(ValueError, match="different data or representations"):
        family_table({"VAE": models["VAE"], "other": other}, **SCORING)


def test_sample_grids_draw_one_panel_per_model_beside_the_data(models, tmp_path):
    fig = sample_grids(models, tmp_path / "samples.png", n=16)
    assert [ax.get_title() for ax in fig.axes] == ["test data", "VAE", "GAN"]
    assert (tmp_path / "samples.png").stat().st_size > 1000
