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


def test_train_help_quotes_the_config_defaults():
    """Each `(config default: X)` in `pyro-vae train --help` is the dataclass default of the key the flag sets."""
    import dataclasses
    import re

    from pyro_vae import cli
    from pyro_vae.runs import config

    sections = {f.name: f.default_factory() for f in dataclasses.fields(config.Config) if f.name in ("data", "model", "train")}
    train = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))
    quoted = {}
    for action in train._actions:
        match = re.search(r"\(config default: ([^)]*)\)", action.help or "")
        if match and action.dest in cli.TRAIN_FLAGS:
            quoted[action.dest] = match.group(1)
    assert {"epochs", "batch_size", "lr", "latent_dim", "dataset", "prior"} <= set(quoted)
    for dest, text in quoted.items():
        section, key = cli.TRAIN_FLAGS[dest]
        default = getattr(sections[section], key)
        assert text == str(default), f"--{dest.replace('_', '-')} says {text!r}, the config default is {default!r}"
