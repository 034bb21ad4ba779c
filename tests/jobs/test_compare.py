"""`compare_run`: baselines fitted on the run's train split, scored with the VAE on one split."""

import json

import pytest
from conftest import tiny_config
from pyro_vae.jobs.compare import compare_run
from pyro_vae.jobs.train import fit


def test_compare_writes_rows_in_shared_units(tmp_path):
    fit(tiny_config(tmp_path, model={"likelihood": "gaussian_learned"}), progress=False)
    rows = compare_run(tmp_path, baselines=["ppca", "gmm", "mob"], components=2, num_samples=50, quiet=True)
    assert [r["model"].split(" ")[0] for r in rows] == ["VAE", "ppca", "gmm", "mob"]
    assert rows[0]["data"] == rows[1]["data"] == "dequantized" and rows[3]["data"] == "binary"
    for row in rows:
        assert row["num_points"] == 180  # digits test split, the same points for every model
        ll = row["log_likelihood"]
        assert ll["se"] > 0 and set(ll) == {"mean", "se", "mc_se", "bits_per_dim"}
    assert rows[0]["log_likelihood"]["mc_se"] > 0 and rows[1]["log_likelihood"]["mc_se"] == 0  # IS vs exact
    assert rows[0]["elbo"] <= rows[0]["iwae_largest"] + 1e-6
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert len(saved) == 4 and (tmp_path / "compare.png").stat().st_size > 1000
    assert "| ppca (EM, 2 components) | dequantized |" in (tmp_path / "compare.md").read_text()


def test_unknown_baseline_lists_choices(tmp_path):
    fit(tiny_config(tmp_path), progress=False)
    with pytest.raises(ValueError, match="choose from ppca, fa, gmm, gmm_full, mob"):
        compare_run(tmp_path, baselines=["pca"], quiet=True)
