"""The command line, run as users run it: in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pyro_vae.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_list_shows_registries(tmp_path):
    proc = run("list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("mog(k=10, spread=1.0)", "vamp", "flow", "gaussian_learned", "categorical", "mnist10k", "digits"):
        assert name in proc.stdout


def test_train_then_sample(tmp_path):
    proc = run("train", "--epochs", "2", "--latent-dim", "2", "--hidden", "16", "--out", "run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation ELBO" in proc.stdout and "nats/point" in proc.stdout
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text())[-1]["epoch"] == 2
    proc = run("sample", "run", "--num", "16", "--out", "s.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_resume_extends_run(tmp_path):
    assert run("train", "--epochs", "1", "--hidden", "16", "--out", "run", "--no-progress", cwd=tmp_path).returncode == 0
    proc = run("train", "--resume", "run", "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [row["epoch"] for row in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [1, 2]


def test_errors_are_one_clear_line(tmp_path):
    proc = run("train", "--prior", "vampire", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: model.prior: unknown value 'vampire'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--likelihood", "bernoulli", "--epochs", "1", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2 and "needs binary data" in proc.stderr and "--binarize" in proc.stderr
    proc = run("sample", "missing_run", cwd=tmp_path)
    assert proc.returncode == 2 and "No checkpoint" in proc.stderr
