"""Your own parts by import path, through the CLI in fresh processes; registration; recording; bad parts."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pyro_vae.core.errors import ConfigError
from pyro_vae.runs.config import from_dict
from pyro_vae.core.errors import PartError
from pyro_vae.models.parts import register, spec_of
from pyro_vae.models.priors import PRIORS, mog

ROOT = Path(__file__).resolve().parents[2]
MY_PARTS = textwrap.dedent('''
    import math
    from functools import partial

    import pyro.distributions as dist
    import torch

    from pyro_vae.models.likelihoods import Generic
    from pyro_vae.models.parts import part
    from pyro_vae.models.priors import Prior


    class HeavyTail(Prior):
        """Factorized Student-t prior with a learned scale per latent dimension."""

        def __init__(self, df: float = 4.0, scale: float = 1.0):
            super().__init__()
            self.df, self.init_scale = df, scale

        def bind(self, latent_dim, encoder=None, event_shape=()):
            super().bind(latent_dim)
            self.log_scale = torch.nn.Parameter(torch.full((latent_dim,), math.log(self.init_scale)))

        def forward(self):
            return dist.StudentT(self.df, torch.zeros_like(self.log_scale), self.log_scale.exp()).to_event(1)


    @part  # a function is built from a config only when marked as a part
    def laplace_fixed(scale: float = 0.1):
        """Laplace likelihood with a fixed scale: an L1 reconstruction loss."""
        return Generic(partial(dist.Laplace, scale=scale))
''')


def run_cli(args, cwd, env):
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_custom_prior_and_likelihood_by_import_path_through_every_command(tmp_path):
    """The guide's example: YAML naming the parts by import path; train, resume, evaluate, sample, load without data."""
    (tmp_path / "my_parts.py").write_text(MY_PARTS)
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "data" / "points.npy", rng.normal(size=(300, 6)).astype(np.float32))
    (tmp_path / "heavy.yaml").write_text(yaml.safe_dump({
        "data": {"name": "data/points.npy"},
        "model": {"latent_dim": 2, "prior": {"name": "my_parts:HeavyTail", "df": 3.0},
                  "likelihood": {"name": "my_parts:laplace_fixed", "scale": 0.2}, "net": {"hidden": [16]}},
        "train": {"epochs": 2, "batch_size": 64}, "out": "runs/heavy"}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    run_cli(["train", "--config", "heavy.yaml", "--no-progress"], tmp_path, env)
    run_dir = tmp_path / "runs" / "heavy"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    assert saved["prior"] == "my_parts:HeavyTail" and saved["prior_kwargs"] == {"df": 3.0}
    assert saved["likelihood"] == "my_parts:laplace_fixed" and saved["likelihood_kwargs"] == {"scale": 0.2}

    run_cli(["train", "--resume", "runs/heavy", "--epochs", "3", "--no-progress"], tmp_path, env)
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 3
    out = run_cli(["evaluate", "runs/heavy", "--samples", "50", "--k-list", "1,10"], tmp_path, env)
    assert "log p(x) (IS)" in out
    run_cli(["sample", "runs/heavy", "--num", "4"], tmp_path, env)
    assert (run_dir / "sample_4_seed0.png").read_bytes()[:4] == b"\x89PNG"  # its own file: samples.png is training's

    shutil.rmtree(tmp_path / "data")
    code = ("from pyro_vae.runs.rundir import load_model; vae, t = load_model('runs/heavy');"
            "print(type(vae.prior).__name__, vae.prior.df, vae.likelihood.fixed)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["HeavyTail", "3.0"] and "0.2" in proc.stdout


def test_register_makes_a_short_name_usable_in_configs():
    @register("prior", "test_only_prior")
    class TestOnlyPrior(mog):
        pass

    try:
        cfg = from_dict({"model": {"prior": {"name": "test_only_prior", "k": 3}}})
        assert cfg.model.prior == "test_only_prior"
        assert spec_of("prior", TestOnlyPrior(k=3)) == ("test_only_prior", {"k": 3})
        with pytest.raises(PartError, match="already registered"):
            register("prior", "test_only_prior")(mog)
    finally:
        del PRIORS["test_only_prior"]


def test_parts_remember_their_settings_and_unimportable_ones_say_so():
    from pyro_vae.models.likelihoods import gaussian

    assert spec_of("prior", mog(3, spread=2.0)) == ("mog", {"k": 3, "spread": 2.0})
    assert spec_of("likelihood", gaussian(scale=0.05)) == ("gaussian", {"scale": 0.05})
    with pytest.raises(PartError, match="cannot be rebuilt in another process.*importable module"):
        spec_of("prior", lambda: None)


@pytest.mark.parametrize("model, fragments", [
    ({"prior": "no_such_module_xyz:Prior"}, ["model.prior", "cannot import 'no_such_module_xyz:Prior'", "PYTHONPATH"]),
    ({"prior": "pyro_vae.models.priors:HeavyTale"}, ["model.prior", "has no attribute 'HeavyTale'"]),
    ({"prior": {"name": "mog", "k": "ten"}}, ["model.prior_kwargs.k", "expects int", "'ten'"]),
    ({"prior": {"name": "mog", "k": 2.5}}, ["model.prior_kwargs.k", "expects int"]),
    ({"likelihood": {"name": "gaussian", "scale": True}}, ["model.likelihood_kwargs.scale", "expects float"]),
    ({"encoder": "pyro_vae.models.nets:MLPEncoder", "encoder_kwargs": {"latent_dim": 3}}, ["set by pyro_vae", "latent_dim"]),
    ({"decoder_kwargs": {"x": 1}}, ["model.decoder_kwargs is set but model.decoder is not"]),
    ({"prior": "pyro_vae.models.priors:mog", "prior_kwargs": {"components": 3}}, ["has no settings ['components']"]),
])
def test_bad_parts_fail_in_the_config_with_the_path_named(model, fragments):
    with pytest.raises(ConfigError) as err:
        from_dict({"model": model})
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_binarize_with_a_level_likelihood_suggests_bernoulli():
    with pytest.raises(ConfigError, match="set model.likelihood: bernoulli"):
        from_dict({"data": {"binarize": "dynamic"}, "model": {"likelihood": "categorical"}})
    assert from_dict({"data": {"binarize": "dynamic"}, "model": {"likelihood": "bernoulli"}}).data.binarize == "dynamic"


def test_cli_part_settings_reach_the_config(tmp_path):
    from pyro_vae.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--prior", "mog", "--prior-arg", "k=7", "--set", "train.lr_schedule=burda",
                                      "--set", "model.net.hidden=[32, 16]", "--likelihood", "gaussian",
                                      "--likelihood-arg", "scale=0.05"])
    cfg = _train_config(args)
    assert (cfg.model.prior, cfg.model.prior_kwargs) == ("mog", {"k": 7})
    assert cfg.model.likelihood_kwargs == {"scale": 0.05} and cfg.train.lr_schedule == "burda"
    assert cfg.model.net.hidden == [32, 16]
    commands = build_parser()._subparsers._group_actions[0].choices
    help_text = " ".join(commands["train"].format_help().split())
    from pyro_vae.runs.config import TrainConfig

    assert f"(config default: {TrainConfig().epochs})" in help_text and "--prior-arg" in help_text and "(default: None)" not in help_text
    eval_help = " ".join(commands["evaluate"].format_help().split())
    assert "(default: 1000)" in eval_help and "--method" in eval_help


def test_list_is_plain_text():
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "mog(k=10, spread=1.0)" in proc.stdout
    assert "``" not in proc.stdout and ":class:" not in proc.stdout


def test_vae_defaults_are_the_configs():
    """VAE(), the config and the CLI agree: one default per setting, read from the config's dataclasses."""
    import inspect

    from pyro_vae.runs.config import ModelConfig, NetConfig
    from pyro_vae.models.vae import VAE

    params = inspect.signature(VAE).parameters
    for name, default in (("latent_dim", ModelConfig.latent_dim), ("prior", ModelConfig.prior),
                          ("likelihood", ModelConfig.likelihood), ("net", NetConfig.kind),
                          ("activation", NetConfig.activation), ("hidden", NetConfig.hidden)):
        assert params[name].default == default, name
    assert VAE((8, 8), levels=17).likelihood.name == "categorical"  # auto with levels, as the config on digits
    assert VAE((8, 8)).likelihood.name == "bernoulli"  # auto without levels
    cfg = from_dict({"data": {"binarize": "dynamic"}})  # the user's intent: binary data
    from pyro_vae.runs.build import DataShape, build_vae

    assert build_vae(cfg, DataShape((8, 8), 17)).likelihood.name == "bernoulli"
    assert build_vae(from_dict({}), DataShape((3,), None)).likelihood.name == "gaussian_learned"


@pytest.mark.parametrize("prior, fragments", [
    (lambda: __import__("pyro.distributions", fromlist=["Normal"]).Normal(torch.zeros(3), 1.0),
     ["batch_shape (3,)", "event_shape ()", "needs batch_shape () and event_shape (2,)", ".to_event(1)"]),
    (lambda: __import__("pyro.distributions", fromlist=["Normal"]).Normal(torch.zeros(5), 1.0).to_event(1),
     ["event_shape (5,)", "latent_dim=2"]),
])
def test_a_prior_that_does_not_fit_fails_when_the_vae_is_built(prior, fragments):
    from pyro_vae.models.vae import VAE

    with pytest.raises(ValueError) as err:
        VAE((4,), latent_dim=2, prior=prior, likelihood="gaussian")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_a_likelihood_without_event_dims_fails_when_the_vae_is_built():
    from pyro_vae.models.likelihoods import Likelihood
    from pyro_vae.models.vae import VAE

    class NoEvent(Likelihood):  # forgot .to_event: one distribution per pixel, not per datapoint
        def forward(self, h):
            import pyro.distributions as dist

            return dist.Normal(h.reshape(*h.shape[:-1], *self.event_shape), 1.0)

    with pytest.raises(ValueError, match=r"returns batch_shape \(2, 4\) and event_shape \(\).*event_shape \(4,\)"):
        VAE((4,), latent_dim=2, likelihood=NoEvent())


def test_fit_takes_ready_parts_and_records_them(tmp_path):
    """fit(prior=object): recorded by name and settings when possible; a lambda must be passed again to load."""
    import pyro.distributions as dist

    from conftest import tiny_config
    from pyro_vae.core.errors import CheckpointError
    from pyro_vae.runs.rundir import load_model
    from pyro_vae.jobs.train import fit

    fit(tiny_config(tmp_path / "a", train={"epochs": 1}), prior=mog(k=3), progress=False)
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["model"]
    assert (saved["prior"], saved["prior_kwargs"]) == ("mog", {"k": 3})
    vae, _ = load_model(tmp_path / "a")
    assert type(vae.prior).__name__ == "mog" and vae.prior.k == 3

    laplace = lambda: dist.Laplace(torch.zeros(2), torch.ones(2)).to_event(1)  # noqa: E731
    with pytest.warns(UserWarning, match="cannot be rebuilt in another process"):
        trained = fit(tiny_config(tmp_path / "b", train={"epochs": 1}), prior=laplace, progress=False)
    with pytest.raises(CheckpointError, match="prior that could not be recorded.*pass the same object again: prior="):
        load_model(tmp_path / "b")
    vae, _ = load_model(tmp_path / "b", prior=laplace)
    assert torch.equal(vae.decoder.net[0].weight, trained.vae.decoder.net[0].weight)


def test_fit_takes_a_ready_vae_and_records_its_structure(tmp_path):
    """fit(model=VAE(...)) trains that very object and records it, so the run loads in a new process."""
    from conftest import tiny_config
    from pyro_vae.runs.rundir import load_model
    from pyro_vae.jobs.train import fit
    from pyro_vae.models.vae import VAE

    vae = VAE((8, 8), latent_dim=3, prior=mog(k=2), levels=17, hidden=[12], activation="tanh")
    result = fit(tiny_config(tmp_path, train={"epochs": 2}), model=vae, progress=False)
    assert result.vae is vae and result.history[-1]["val_elbo"] > result.history[0]["val_elbo"] - 5
    model = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
    assert model["latent_dim"] == 3 and model["net"]["hidden"] == [12] and model["net"]["activation"] == "tanh"
    assert (model["prior"], model["prior_kwargs"]) == ("mog", {"k": 2}) and model["likelihood"] == "categorical"
    loaded, _ = load_model(tmp_path, which="last")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    with pytest.raises(ValueError, match="either model= or the stock VAE.s parts"):
        fit(tiny_config(tmp_path / "x"), model=vae, prior=mog(k=2), progress=False)
