"""Config validation: every bad key or value names the problem and the valid choices."""

import pytest
from pyro_vae.core.errors import ConfigError
from pyro_vae.runs.config import dump, from_dict, load


def test_defaults_and_shorthand():
    cfg = from_dict({"model": {"prior": {"name": "mog", "k": 4}, "likelihood": "gaussian_learned",
                               "likelihood_kwargs": {"mode": "per_dim"}}})
    assert (cfg.model.prior, cfg.model.prior_kwargs) == ("mog", {"k": 4})
    assert cfg.model.likelihood_kwargs == {"mode": "per_dim"}
    assert cfg.data.name == "digits" and cfg.train.objective == "elbo"


def test_yaml_round_trip(tmp_path):
    cfg = from_dict({"train": {"epochs": 3, "grad_clip": 5}, "model": {"net": {"hidden": [32, 16]}}})
    dump(cfg, tmp_path / "c.yaml")
    again = load(tmp_path / "c.yaml")
    assert again == cfg and again.train.grad_clip == 5.0


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"trian": {}}, ["Unknown config key 'trian'", "valid keys here: data, model, train, out", "Did you mean 'train'"]),
        ({"train": {"epoch": 3}}, ["'train.epoch'", "Did you mean 'epochs'"]),
        ({"train": {"epochs": "ten"}}, ["train.epochs", "expected int", "'ten'"]),
        ({"train": {"epochs": True}}, ["train.epochs", "expected int"]),
        ({"model": {"prior": "vampire"}}, ["model.prior", "'vampire'", "normal, learned_normal, mog, vamp, flow", "Did you mean 'vamp'"]),
        ({"model": {"likelihood": "gauss"}}, ["model.likelihood", "bernoulli", "categorical"]),
        ({"model": {"prior": {"name": "mog", "components": 3}}}, ["'mog' has no settings ['components']", "valid settings: k, spread"]),
        ({"model": {"prior": {"k": 3}}}, ["needs a 'name' key"]),
        ({"data": {"name": "cifar"}}, ["data.name", "digits, mnist", ".npy/.npz/.pt"]),
        ({"data": {"binarize": "yes"}}, ["data.binarize", "none, dynamic, static, threshold"]),
        ({"train": {"objective": "iwae", "num_particles": 1}}, ["num_particles >= 2"]),
        ({"train": {"batch_size": 0}}, ["train.batch_size must be >= 1"]),
        ({"model": {"net": {"hidden": "wide"}}}, ["model.net.hidden", "expected list[int] | None", "'wide'"]),
        ({"model": {"net": {"activation": "sigmoidal"}}}, ["model.net.activation", "relu"]),
    ],
)
def test_errors_name_problem_and_choices(raw, fragments):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")
