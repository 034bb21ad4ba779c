"""Shared fixtures: every test starts from an empty param store with validation on."""

import os
import tempfile
import warnings

import pyro
import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

# The tests sign their runs with a key of their own, never the user's (subprocesses inherit it).
os.environ["PYRO_VAE_TRUST_KEY"] = os.path.join(tempfile.mkdtemp(prefix="pyro_vae_tests_"), "trust.key")


@pytest.fixture(autouse=True)
def clean_pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()


@pytest.fixture
def gloo_rendezvous(monkeypatch):
    """Environment for a 2-process gloo test: a free local port (parallel runs cannot collide), one OMP thread."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)  # read by the spawned ranks only


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


def crash_in_epoch_3(config, monkeypatch):
    """Run ``fit(config)`` until a simulated crash during epoch 3 (after epoch 2's checkpoint), then restore fit."""
    import pytest
    import pyro_vae.jobs.train as train_module
    from pyro_vae.jobs.train import fit

    real_metrics, calls = train_module.epoch_metrics, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # two calls per epoch: the 5th is epoch 3's
            raise KeyboardInterrupt("simulated crash")
        return real_metrics(*args, **kwargs)

    monkeypatch.setattr(train_module, "epoch_metrics", crashing)
    with pytest.raises(KeyboardInterrupt):
        fit(config, progress=False)
    monkeypatch.setattr(train_module, "epoch_metrics", real_metrics)
