"""Shared fixtures: every test starts from an empty param store with validation on."""

import warnings

import pyro
import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


@pytest.fixture(autouse=True)
def clean_pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()


def tiny_config(tmp_path=None, **sections):
    """A config that trains in about a second on digits."""
    cfg = {
        "data": {"name": "digits"},
        "model": {"latent_dim": 2, "net": {"hidden": [16]}},
        "train": {"epochs": 2, "batch_size": 256, "metrics_max_points": 256},
        "out": str(tmp_path) if tmp_path else "runs/test",
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg
