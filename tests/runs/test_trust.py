"""A received run directory runs none of its sender's code until the user trusts it.

Hostile run directories of each kind are built from a real run by editing its recorded
config: an import path to a standard-library callable, ``runpy`` of a file shipped in the
run directory, a module shipped in the run directory, and a data folder of the sender's
choosing with downloads on. Every entry point must refuse them with a message that lists
the import paths, and no marker file may appear.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from pyro_vae.core.errors import PartError, UntrustedRunError
from pyro_vae.jobs.compare import compare_run
from pyro_vae.jobs.train import fit
from pyro_vae.runs import trust
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.rundir import load_model, load_run, trust_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    fit(tiny_config(run, train={"epochs": 1}), progress=False)
    return run


def plant(trained, tmp_path, model=None, data=None, files=None):
    """A copy of ``trained`` whose recorded config is edited as a sender could (the signature no longer matches)."""
    import shutil

    run = tmp_path / "received"
    shutil.copytree(trained, run)
    for name in ("checkpoint.pt", "best.pt"):
        state = load_checkpoint(run / name)
        state["config"]["model"].update(model or {})
        state["config"]["data"].update(data or {})
        save_checkpoint(run / name, state)
    for name, text in (files or {}).items():
        (run / name).write_text(text)
    return run


def cli(*args, cwd, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def hostile_kinds(tmp_path):
    marker = tmp_path / "MARKER"
    return marker, {
        "stdlib callable (subprocess:run)": dict(model={"prior": "subprocess:run",
                                                        "prior_kwargs": {"args": f"touch {marker}", "shell": True}}),
        "stdlib callable (os:system)": dict(model={"likelihood": "os:system",
                                                   "likelihood_kwargs": {"command": f"touch {marker}"}}),
        "runpy of a shipped file": dict(model={"prior": "runpy:run_path", "prior_kwargs": {"path_name": "payload.py"}},
                                        files={"payload.py": f"open({str(marker)!r}, 'w').close()\n"}),
        "a shipped module": dict(model={"name": "evil_mod:Model"},
                                 files={"evil_mod.py": f"open({str(marker)!r}, 'w').close()\nclass Model: pass\n"}),
    }


@pytest.mark.parametrize("kind", ["stdlib callable (subprocess:run)", "stdlib callable (os:system)",
                                  "runpy of a shipped file", "a shipped module"])
def test_hostile_run_is_refused_by_every_api_entry_point(trained, tmp_path, monkeypatch, kind):
    marker, kinds = hostile_kinds(tmp_path)
    run = plant(trained, tmp_path, **kinds[kind])
    monkeypatch.chdir(run)  # a user working inside the received folder
    monkeypatch.syspath_prepend(str(run))
    paths = trust.import_paths(load_checkpoint(run)["config"])
    entry_points = {
        "load_model": lambda: load_model(run),
        "load_run": lambda: load_run(run),
        "fit(resume=)": lambda: fit({"train": {"epochs": 2}}, resume=run, progress=False),
        "compare_run": lambda: compare_run(run, baselines=["ppca"], num_samples=10, quiet=True),
    }
    for name, call in entry_points.items():
        with pytest.raises(UntrustedRunError) as caught:
            call()
        message = str(caught.value)
        assert all(p in message for p in paths) and "pyro-vae trust" in message and "--trust-code" in message, name
        assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["stdlib callable (subprocess:run)", "stdlib callable (os:system)",
                                  "runpy of a shipped file"])
def test_even_trusted_a_run_can_only_name_parts(trained, tmp_path, kind):
    """Defence in depth: with consent, an import path must still resolve to a part; a bare callable never runs."""
    marker, kinds = hostile_kinds(tmp_path)
    run = plant(trained, tmp_path, **kinds[kind])
    with pytest.raises((PartError, ValueError), match="pyro_vae builds only parts from import paths"):
        load_model(run, trust_code=True)
    assert not marker.exists()


def test_hostile_run_is_refused_by_every_command(trained, tmp_path):
    marker, kinds = hostile_kinds(tmp_path)
    run = plant(trained, tmp_path, **kinds["a shipped module"])
    for args in (["evaluate", "."], ["sample", "."], ["compare", "."], ["train", "--resume", "."]):
        proc = cli(*args, cwd=run)  # run from inside the received folder: its module is importable
        assert proc.returncode == 2, (args, proc.stderr[-1000:])
        assert "error:" in proc.stderr and "evil_mod:Model" in proc.stderr and "pyro-vae trust" in proc.stderr, args
        assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_received_data_folder_and_download_are_not_followed(trained, tmp_path, monkeypatch):
    elsewhere = tmp_path / "sender_chose_this"
    run = plant(trained, tmp_path, data={"name": "mnist", "root": str(elsewhere), "download": True})
    default = tmp_path / "default_data"
    monkeypatch.setenv("PYRO_VAE_DATA", str(default))
    with pytest.raises(Exception) as caught:
        load_run(run)
    assert not elsewhere.exists(), "a received run's data folder was created"
    assert not any(default.rglob("*.gz")), "something was downloaded"
    assert "data-root" in str(caught.value) or "download" in str(caught.value)


def test_a_colleagues_run_with_own_parts_opens_once_trusted(tmp_path, monkeypatch):
    """Signed with another key it is refused; `pyro-vae trust` signs it with ours, then it opens with no flag."""
    (tmp_path / "my_prior.py").write_text(
        "import torch, pyro.distributions as dist\nfrom pyro_vae.models.priors import Prior\n"
        "class Wide(Prior):\n"
        "    def bind(self, latent_dim, encoder=None, event_shape=()):\n"
        "        super().bind(latent_dim)\n"
        "        self.log_scale = torch.nn.Parameter(torch.zeros(latent_dim))\n"
        "    def forward(self):\n"
        "        return dist.Normal(torch.zeros_like(self.log_scale), self.log_scale.exp()).to_event(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "colleague.key"))
    run = tmp_path / "colleague_run"
    fit(tiny_config(run, train={"epochs": 1}, model={"latent_dim": 2, "prior": "my_prior:Wide", "net": {"hidden": [16]}}),
        progress=False)
    load_model(run)  # the colleague opens their own run with no flag

    monkeypatch.setenv(trust.KEY_ENV, str(tmp_path / "mine.key"))
    with pytest.raises(UntrustedRunError, match="my_prior:Wide"):
        load_model(run)
    proc = cli("trust", str(run), cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
    assert proc.returncode == 0 and "my_prior:Wide" in proc.stdout, proc.stderr
    model, _ = load_model(run)
    assert type(model.prior).__name__ == "Wide"
    assert all(torch.equal(p, load_checkpoint(run / "best.pt")["model"][k]) for k, p in model.state_dict().items())
