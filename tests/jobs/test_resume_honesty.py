"""A resumed run continues exactly or says why not: refused flags, applied flags, nothing to train, edited configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from pyro_vae.core.errors import CheckpointError, ConfigError
from pyro_vae.jobs.train import fit
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    fit(tiny_config(out, train={"epochs": 2}), progress=False)
    return out


def test_flags_that_cannot_change_are_refused_and_nothing_changes(run, tmp_path):
    before = snapshot(run)
    proc = cli("train", "--resume", str(run), "--lr", "0.5", "--batch-size", "7", "--epochs", "3", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot change train.batch_size (256 -> 7)" in proc.stderr and "start a new run" in proc.stderr
    proc = cli("train", "--resume", str(run), "--latent-dim", "5", cwd=tmp_path)
    assert proc.returncode == 2 and "model.latent_dim (2 -> 5)" in proc.stderr and "weights the checkpoint holds" in proc.stderr
    assert snapshot(run) == before


def test_flags_that_can_change_are_applied_and_recorded(run, tmp_path):
    proc = cli("train", "--resume", str(run), "--lr", "0.001", "--epochs", "3", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(run)
    assert state["epoch"] == 3 and state["config"]["train"]["lr"] == 0.001
    assert all(group["lr"] == 0.001 for group in state["optimizer"]["param_groups"])  # the rate that ran
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.001  # the config that ran
    assert [row["lr"] for row in json.loads((run / "metrics.json").read_text())] == [0.003, 0.003, 0.001]
    resumes = json.loads((run / "resumes.json").read_text())
    assert resumes == [{"epoch": 2, "changed": {"train.epochs": [2, 3], "train.lr": [0.003, 0.001]}}]


def test_a_resume_with_nothing_to_train_says_so_and_changes_nothing(run, tmp_path):
    before = snapshot(run)
    proc = cli("train", "--resume", str(run), cwd=tmp_path)
    assert proc.returncode == 0 and "Nothing to train" in proc.stdout and "--epochs" in proc.stdout
    assert "validation ELBO" not in proc.stdout
    proc = cli("train", "--resume", str(run), "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "has trained 2 epochs; train.epochs 1 cannot undo them" in proc.stderr
    assert snapshot(run) == before


def test_an_edited_checkpoint_config_is_refused_not_silently_overruled(run):
    for name in ("checkpoint.pt", "best.pt"):
        state = load_checkpoint(run / name)
        state["config"]["train"]["lr"] = 1000.0
        save_checkpoint(run / name, state)
    with pytest.raises(CheckpointError, match="says train.lr 1000 but its optimizer ran at 0.003"):
        fit({"train": {"epochs": 3}}, resume=run, progress=False)
    result = fit({"train": {"epochs": 3, "lr": 0.002}}, resume=run, progress=False)  # an explicit rate is applied
    assert result.history[-1]["lr"] == 0.002 and yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 0.002


def test_resume_api_refuses_what_the_cli_refuses(run):
    with pytest.raises(ConfigError, match="cannot change train.seed"):
        fit({"train": {"epochs": 3, "seed": 5}}, resume=run, progress=False)
    unchanged = fit(None, resume=run, progress=False)
    assert unchanged.epochs_trained == 0 and len(unchanged.history) == 2
    assert all(torch.equal(p, load_checkpoint(run)["model"][k]) for k, p in unchanged.vae.state_dict().items())
