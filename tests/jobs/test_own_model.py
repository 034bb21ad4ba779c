"""A user's own Pyro model, written as a plain PyroModule, goes everywhere the stock VAE goes.

The model lives in a temporary module that the test writes, is named in YAML by its
import path, and is trained, resumed, evaluated (IS, AIS, BDMC), sampled and loaded
back through the command line and the API, as a user would.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

# The model is the user guide's own example ("Your own model"), so the page's code runs here.
GUIDE = ROOT / "docs" / "guide" / "own_model.md"
TWO_LAYER = GUIDE.read_text().split("<!-- own-model-module -->\n```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def own_model(tmp_path, monkeypatch):
    """A folder with the model's module, binary 8x8 digits in a data folder, and a config naming both."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_models.py").write_text(TWO_LAYER)
    monkeypatch.syspath_prepend(str(code))
    from sklearn.datasets import load_digits

    data = tmp_path / "data"
    data.mkdir()
    images = (load_digits().images > 7).astype(np.float32)
    np.save(data / "binary_digits.npy", images)
    config = {"data": {"name": str(data / "binary_digits.npy")},
              "model": {"name": "my_models:TwoLayerVAE", "z1": 6, "z2": 3, "hidden": 32},
              "train": {"epochs": 4, "batch_size": 128, "metrics_max_points": 256, "lr": 0.01}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd / "code")])}
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_own_two_layer_model_through_the_command_line(own_model):
    from pyro_vae.runs.checkpoint import load_checkpoint
    from pyro_vae.runs.rundir import load_model

    cli("train", "--config", "config.yaml", "--out", "full", "--no-progress", cwd=own_model)
    cli("train", "--config", "config.yaml", "--epochs", "2", "--out", "split", "--no-progress", cwd=own_model)
    out = cli("train", "--resume", "split", "--epochs", "4", "--no-progress", cwd=own_model)
    assert "epoch 4" in out
    full, split = load_checkpoint(own_model / "full"), load_checkpoint(own_model / "split")
    assert full["config"]["model"] == {"name": "my_models:TwoLayerVAE", "z1": 6, "z2": 3, "hidden": 32}
    assert full["model"].keys() == split["model"].keys()
    for key in full["model"]:  # resumed bit for bit
        assert torch.equal(full["model"][key], split["model"][key]), key
    history = json.loads((own_model / "full" / "metrics.json").read_text())
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]  # it learned
    for picture in ("samples.png", "reconstructions.png", "curves.png"):
        assert (own_model / "full" / picture).stat().st_size > 1000, picture

    cli("evaluate", "full", "--samples", "200", "--k-list", "1,10", "--points", "30", "--no-progress", cwd=own_model)
    cli("evaluate", "full", "--method", "ais", "--steps", "30", "--chains", "4", "--leapfrog", "3", "--samples", "200",
        "--k-list", "1,10", "--points", "30", "--bdmc", "8", "--no-progress", cwd=own_model)
    report = json.loads((own_model / "full" / "report.json").read_text())
    is_figure, ais_figure = report["log_likelihood"]["mean"], report["ais"]["log_likelihood"]["mean"]
    assert report["elbo"]["mean"] <= is_figure + 0.5 and abs(ais_figure - is_figure) < 5.0
    bdmc = report["bdmc"][-1] if isinstance(report["bdmc"], list) else report["bdmc"]
    assert bdmc["lower"]["mean"] <= bdmc["upper"]["mean"] + 1.0  # the sandwich, within Monte Carlo error

    cli("compare", "full", "--baselines", "mob", "--components", "5", "--samples", "100", "--points", "30",
        "--no-progress", cwd=own_model)
    rows = json.loads((own_model / "full" / "compare.json").read_text())
    assert [row["model"] for row in rows] == ["TwoLayerVAE", "mob (EM, 5 components)"]

    cli("sample", "full", "--num", "16", "--out", "own_samples.png", cwd=own_model)
    assert (own_model / "own_samples.png").stat().st_size > 1000

    shutil.rmtree(own_model / "data")  # the model needs no data to be loaded
    model, transform = load_model(own_model / "full")
    assert type(model).__name__ == "TwoLayerVAE" and (model.z1, model.z2) == (6, 3)
    assert all(torch.equal(p, full["model"][k]) for k, p in model.state_dict().items())


def _one_epoch(tmp_path, out):
    return {"data": {"name": str(tmp_path / "data" / "binary_digits.npy")},
            "train": {"epochs": 1, "batch_size": 256, "metrics_max_points": 64}, "out": str(tmp_path / out)}


def test_a_ready_object_is_recorded_when_its_class_records_its_settings(own_model):
    """fit(model=obj): a RecordsSettings class is rebuilt from the checkpoint; a plain one needs the object again."""
    import my_models
    from pyro_vae.core.errors import CheckpointError
    from pyro_vae.core.records import RecordsSettings
    from pyro_vae.jobs.train import fit
    from pyro_vae.runs.rundir import load_model

    with pytest.warns(UserWarning, match="constructor settings are unknown"):
        plain = fit(_one_epoch(own_model, "plain"), model=my_models.TwoLayerVAE(z1=5, z2=2), progress=False)
    with pytest.raises(CheckpointError, match="pass the same object again: model="):
        load_model(plain.run_dir)
    again, _ = load_model(plain.run_dir, model=my_models.TwoLayerVAE(z1=5, z2=2))
    assert all(torch.equal(p, plain.vae.state_dict()[k]) for k, p in again.state_dict().items())

    class Recorded(RecordsSettings, my_models.TwoLayerVAE):
        pass

    my_models.Recorded = Recorded  # importable by its path, as a class in a user's module is
    Recorded.__module__, Recorded.__qualname__ = "my_models", "Recorded"
    result = fit(_one_epoch(own_model, "recorded"), model=Recorded(z1=5, z2=2, hidden=16), progress=False)
    assert result.config.model.name == "my_models:Recorded"
    assert result.config.model.settings == {"z1": 5, "z2": 2, "hidden": 16}
    rebuilt, _ = load_model(result.run_dir)
    assert type(rebuilt) is Recorded and (rebuilt.z1, rebuilt.z2) == (5, 2)


def test_named_model_flags_and_settings_are_checked(own_model):
    from pyro_vae.core.errors import ConfigError
    from pyro_vae.runs.config import from_dict

    with pytest.raises(ConfigError, match=r"has no settings \['z3'\]; valid settings: z1, z2, hidden"):
        from_dict({"model": {"name": "my_models:TwoLayerVAE", "z3": 2}})
    with pytest.raises(ConfigError, match="model.name: unknown model 'two_layer'"):
        from_dict({"model": {"name": "two_layer"}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(own_model / "code")])}
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--config", "config.yaml", "--latent-dim", "3"],
                          cwd=own_model, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--latent-dim set parts of the stock VAE, but model.name is" in proc.stderr
