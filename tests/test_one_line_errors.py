"""The raw tracebacks users met become one-line errors that name the problem and the fix."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from pyro_vae.core.errors import CheckpointError, ConfigError, RunDirError
from pyro_vae.jobs.train import fit
from pyro_vae.models.vae import VAE
from pyro_vae.runs import checkpoint
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.rundir import load_model

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def one_line(proc, *words):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "run"
    fit(tiny_config(out, train={"epochs": 2}), progress=False)
    return out


def edited(run, tmp_path, edit):
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    for name in ("checkpoint.pt", "best.pt"):
        state = load_checkpoint(copy / name)
        edit(state)
        save_checkpoint(copy / name, state)
    return copy


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_a_gpu(tmp_path):
    one_line(cli("train", "--accelerator", "gpu", "--epochs", "1", cwd=tmp_path), "no CUDA GPU", "--accelerator cpu")


def test_sample_count_below_one(run, tmp_path):
    for num in ("0", "-1"):
        one_line(cli("sample", str(run), "--num", num, cwd=tmp_path), f"--num must be a whole number >= 1", num)


def test_hidden_sizes_that_are_not_numbers(tmp_path):
    one_line(cli("train", "--hidden", "200,a", cwd=tmp_path), "--hidden '200,a'", "200,200")


def test_huge_latent_dim_and_particles_are_refused_with_the_figure():
    with pytest.raises(ConfigError, match=r"weights would need about [\d,]+ GiB, more than this machine's .*--latent-dim"):
        fit({"model": {"latent_dim": 10**9}}, run_dir=None, progress=False)
    with pytest.raises(ConfigError, match=r"one training step would need about [\d,]+ GiB.*--particles"):
        fit({"train": {"num_particles": 10**8}}, run_dir=None, progress=False)


def test_resume_with_an_epoch_that_is_not_a_number(run, tmp_path):
    bad = edited(run, tmp_path, lambda s: s.update(epoch="abc"))
    with pytest.raises(CheckpointError, match="its epoch is 'abc', not a whole number"):
        fit({"train": {"epochs": 3}}, resume=bad, progress=False)


def test_resume_with_an_rng_state_of_the_wrong_size(run, tmp_path):
    bad = edited(run, tmp_path, lambda s: s["rng"].update(torch=torch.zeros(7, dtype=torch.uint8)))
    with pytest.raises(CheckpointError, match="random-number state cannot be restored.*start a new run"):
        fit({"train": {"epochs": 3}}, resume=bad, progress=False)


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "model": {}})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(RunDirError, match="No space left on device.*previous file is intact.*Free disk space"):
        save_checkpoint(path, {"epoch": 2, "model": {}})
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_with_nan_weights_is_blamed_on_the_file_not_the_learning_rate(run, tmp_path):
    def poison(state):
        key = next(iter(state["model"]))
        state["model"][key] = torch.full_like(state["model"][key], float("nan"))

    bad = edited(run, tmp_path, poison)
    with pytest.raises(CheckpointError, match="non-finite weights .*damaged or edited") as caught:
        load_model(bad)
    assert "lr" not in str(caught.value)


def test_a_datapoint_without_its_batch_dimension():
    vae = VAE((8, 8), latent_dim=2, hidden=[8])
    with pytest.raises(ValueError, match=r"one datapoint without its batch dimension; pass x.unsqueeze\(0\) \(shape \(1, 8, 8\)\)"):
        vae.guide(torch.zeros(8, 8))
