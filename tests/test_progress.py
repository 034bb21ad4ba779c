"""`pyro_vae.core.progress`: every long job shows a bar when asked, and nothing when told not to."""

import json

import torch
from conftest import tiny_config

from pyro_vae.estimators.ais import ais
from pyro_vae.cli import main
from pyro_vae.jobs.compare import compare_run
from pyro_vae.estimators.importance import evaluate
from pyro_vae.baselines.mixtures import GaussianMixture
from pyro_vae.jobs.train import fit
from pyro_vae.models.vae import VAE


def _vae_and_data():
    return VAE((5,), latent_dim=2, likelihood="gaussian", hidden=[8]), torch.randn(30, 5)


def test_evaluate_bar_counts_points(capsys):
    vae, x = _vae_and_data()
    evaluate(vae, x, num_samples=20, k_list=(1,), batch_size=7, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "IS K=20" in err and "30/30" in err and "point" in err
    evaluate(vae, x, num_samples=20, k_list=(1,), seed=0, progress=False)
    evaluate(vae, x, num_samples=20, k_list=(1,), seed=0, progress=None)  # auto: stderr here is not a terminal
    assert capsys.readouterr().err == ""


def test_ais_and_em_bars(capsys):
    vae, x = _vae_and_data()
    ais(vae, x, steps=4, chains=2, leapfrog=1, seed=0, progress=True)
    GaussianMixture(2, max_iter=5, tol=0.0).fit(x, progress=True)
    err = capsys.readouterr().err
    assert "AIS" in err and "step" in err
    assert "EM gmm" in err and "5/5" in err and "log-lik" in err


def test_compare_shows_progress_and_honours_points_out_and_which(tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny_config(run, model={"likelihood": "bernoulli"}, data={"binarize": "static"}), progress=False)
    out = tmp_path / "elsewhere"
    rows = compare_run(run, baselines=["mob"], components=2, num_samples=20, num_points=25, out=out, which="last",
                       seed=3, quiet=True, progress=True)
    err = capsys.readouterr().err
    assert "IS K=20" in err and "EM mob" in err
    assert all(r["num_points"] == 25 for r in rows)
    assert (out / "compare.json").exists() and not (run / "compare.json").exists()
    # mob scores the VAE's own binarized test images: the pair gets a paired difference
    paired = rows[1]["paired_vae_minus_this"]
    assert set(paired) == {"mean", "se", "z"} and paired["se"] > 0


def test_cli_evaluate_flags_and_no_progress(tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny_config(run), progress=False)
    capsys.readouterr()
    out = tmp_path / "report"
    code = main(["evaluate", str(run), "--samples", "20", "--k-list", "1,10", "--points", "15", "--batch-size", "4",
                 "--seed", "2", "--which", "last", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_points"] == 15 and report["checkpoint"] == "last" and report["samples"] == 20
    assert "IS K=" not in capsys.readouterr().err
    code = main(["compare", str(run), "--baselines", "ppca", "--samples", "20", "--points", "10", "--out", str(out),
                 "--no-progress"])
    assert code == 0 and json.loads((out / "compare.json").read_text())[0]["num_points"] == 10
