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
    assert capsys.readouterr().err == ""
    evaluate(vae, x, num_samples=20, k_list=(1,), seed=0, progress=None)  # stderr here is not a terminal: plain lines
    err = capsys.readouterr().err
    assert "\r" not in err and "IS K=20: 30/30 points (100%)" in err.splitlines()[-1]


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


def test_training_into_a_log_prints_one_line_per_epoch(tmp_path):
    """Not a terminal: no carriage-return bar, one plain line per epoch with loss, validation ELBO and time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--epochs", "3", "--hidden", "16",
                               "--out", str(tmp_path / "run")], stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    epochs = [line for line in text.splitlines() if line.startswith("train epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["train epoch 1/3", "train epoch 2/3", "train epoch 3/3"]
    assert all("validation ELBO" in line and line.endswith(" s") for line in epochs)


def test_a_terminal_reporting_width_zero_gets_a_usable_bar(monkeypatch):
    import os

    from pyro_vae.core import progress

    monkeypatch.setattr(progress.shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((0, 0)))
    assert progress.bar_width() == progress.FALLBACK_WIDTH
