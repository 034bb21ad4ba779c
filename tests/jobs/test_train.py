"""Training: the loss goes down, resume is bit-identical, DDP ranks agree, files are right."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import crash_in_epoch_3, tiny_config
from pyro_vae.core.errors import CheckpointError
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.core.errors import ConfigError
from pyro_vae.jobs.train import fit
from pyro_vae.runs.rundir import load_run

ROOT = Path(__file__).resolve().parents[2]


def test_training_lowers_the_loss_on_digits():
    result = fit(tiny_config(train={"epochs": 6, "batch_size": 64}), run_dir=None, progress=False)
    elbos = [row["val_elbo"] for row in result.history]
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] - 5, losses
    assert elbos[-1] > elbos[0] + 5, elbos
    for row in result.history:  # the split is consistent: ELBO = reconstruction - KL
        assert row["val_elbo"] == pytest.approx(row["val_reconstruction"] - row["val_kl"], abs=1e-6)
        assert row["val_kl"] >= 0  # analytic Gaussian KL


def _params(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


@pytest.mark.parametrize("extra", [{}, {"data": {"binarize": "dynamic"}, "model": {"likelihood": "bernoulli"},
                                        "train": {"lr_schedule": "cosine", "warmup_epochs": 1.0}}],
                         ids=["categorical", "dynamic-bernoulli-cosine-warmup"])
def test_resume_after_crash_is_bit_identical(tmp_path, monkeypatch, extra):
    """Crash a 4-epoch run during epoch 3, resume it: same parameters as an uninterrupted run."""
    sections = dict(extra)
    train = {"epochs": 4, "batch_size": 128, **sections.pop("train", {})}
    full = fit(tiny_config(tmp_path / "full", train=train, **sections), progress=False)

    crash_in_epoch_3(tiny_config(tmp_path / "crashed", train=train, **sections), monkeypatch)
    assert load_checkpoint(tmp_path / "crashed")["epoch"] == 2
    resumed = fit(None, resume=tmp_path / "crashed", progress=False)

    a, b = _params(full.vae), _params(resumed.vae)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert [r["val_elbo"] for r in resumed.history] == [r["val_elbo"] for r in full.history]


def test_resume_can_extend_a_finished_run(tmp_path):
    """Training 2 epochs, then resuming to 4, equals 4 epochs straight (constant learning rate)."""
    full = fit(tiny_config(tmp_path / "full", train={"epochs": 4}), progress=False)
    fit(tiny_config(tmp_path / "split", train={"epochs": 2}), progress=False)
    resumed = fit(tiny_config(train={"epochs": 4}), resume=tmp_path / "split", progress=False)
    for key, value in _params(full.vae).items():
        assert torch.equal(value, resumed.vae.state_dict()[key]), key


def test_run_directory_contents(tmp_path):
    fit(tiny_config(tmp_path), progress=False)
    for name in ("config.yaml", "checkpoint.pt", "best.pt", "metrics.csv", "metrics.json", "samples.png", "reconstructions.png"):
        assert (tmp_path / name).exists(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"train_elbo", "train_reconstruction", "train_kl", "val_elbo", "val_reconstruction", "val_kl"} <= set(metrics[0])
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True inside
    assert state["config"]["model"]["latent_dim"] == 2 and state["epoch"] == 2
    vae, cfg, dataset, transform = load_run(tmp_path)
    assert cfg.train.epochs == 2 and vae.event_shape == (8, 8)


def test_early_stopping_stops(tmp_path):
    # lr=0 never improves after the first epoch, so patience 1 stops at epoch 2.
    result = fit(tiny_config(train={"epochs": 10, "lr": 1e-12, "patience": 1}), run_dir=None, progress=False)
    assert len(result.history) < 10


def test_kl_warmup_ramps_beta():
    result = fit(tiny_config(train={"epochs": 3, "warmup_epochs": 2.0, "beta": 2.0}), run_dir=None, progress=False)
    betas = [row["beta"] for row in result.history]
    assert betas[0] < betas[1] <= betas[2] == 2.0


def test_iwae_objective_trains():
    result = fit(tiny_config(train={"epochs": 3, "objective": "iwae", "num_particles": 4}), run_dir=None, progress=False)
    assert result.history[-1]["val_elbo"] > result.history[0]["val_elbo"]


def test_bernoulli_on_grey_digits_is_refused():
    with pytest.raises(ValueError) as err:
        fit(tiny_config(model={"likelihood": "bernoulli"}), run_dir=None, progress=False)
    message = str(err.value)
    assert "binary data" in message and "[0, 1]" in message and "17 distinct values" in message
    assert "binarize" in message and "continuous_bernoulli" in message and "gaussian" in message


def test_corrupt_checkpoint_is_reported(tmp_path):
    fit(tiny_config(tmp_path), progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        fit(None, resume=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pyro_vae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from pyro_vae.runs import checkpoint

    checkpoint.save_checkpoint(tmp_path / "c.pt", {"epoch": 1, "config": {}, "model": {}})

    def exploding_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path / "c.pt", {"epoch": 2, "config": {}, "model": {}})
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 1  # the old file survived intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_unknown_likelihood_for_continuous_levels_errors():
    with pytest.raises(ConfigError, match="valid choices"):
        fit(tiny_config(model={"likelihood": "bernouli"}), run_dir=None, progress=False)


def test_ddp_two_cpu_processes_agree(tmp_path):
    """Two gloo ranks each train on their own shard; DDP keeps their parameters identical."""
    import socket

    with socket.socket() as sock:  # a free rendezvous port, so parallel runs cannot collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    cmd = [sys.executable, "-m", "pyro_vae.cli", "train", "--devices", "2", "--epochs", "2", "--latent-dim", "2",
           "--hidden", "16", "--batch-size", "128", "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["max_param_diff"] == 0.0
    # every training point seen once per epoch across ranks (the sampler pads 1437 to 1438)
    assert ddp["examples_seen"] == 2 * 1438
    assert "DDP: 2 ranks" in proc.stdout


def test_burda_schedule_steps_at_fixed_epochs():
    """lr 1e-3 * 10^(-i/7) for 3^i epochs: milestones at epochs 1, 4, 13, ..., 1093, whatever train.epochs is."""
    from pyro_vae.runs.config import from_dict
    from pyro_vae.runs.build import build_optimizer, build_scheduler

    tc = from_dict({"train": {"lr_schedule": "burda", "epochs": 5, "lr": 1e-3, "adam_eps": 1e-4}}).train
    optimizer = build_optimizer(tc, [torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["eps"] == 1e-4
    scheduler, steps_per_epoch, lrs = build_scheduler(optimizer, tc, 3), 3, []
    for _ in range(1100 * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    per_epoch = lrs[::steps_per_epoch]
    for i, start in enumerate([0, 1, 4, 13, 40, 121, 364, 1093]):
        assert per_epoch[start] == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-9), (i, start)
    assert per_epoch[3] == pytest.approx(1e-3 * 10 ** (-1 / 7))  # epochs 1..3 (0-based) share i = 1


def test_mnist_val_fraction_zero_trains_on_every_image(tmp_path):
    """data.val_fraction: 0 on MNIST keeps all training images and refuses early stopping (nothing to select on)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from test_data import write_split  # small files in torchvision's idx format

    write_split(tmp_path / "data", "train", 30, gz=True)
    write_split(tmp_path / "data", "t10k", 10, gz=True)
    cfg = tiny_config(tmp_path / "run", data={"name": "mnist", "root": str(tmp_path / "data"), "download": False,
                                              "val_fraction": 0.0, "binarize": "dynamic"},
                      model={"likelihood": "bernoulli"}, train={"epochs": 1, "batch_size": 10})
    result = fit(cfg, progress=False)
    assert len(result.dataset.train) == 30 and len(result.dataset.val) == 0
    assert not (tmp_path / "run" / "best.pt").exists()
    with pytest.raises(ConfigError, match="no validation split"):
        fit({**cfg, "train": {**cfg["train"], "patience": 3}}, progress=False)


def test_a_second_writer_of_a_run_dir_fails_at_once(tmp_path):
    """While one process trains into a run directory, another gets a clear error before loading any data."""
    from pyro_vae.core.errors import RunDirError
    from pyro_vae.runs.rundir import locked_run_dir

    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"half a checkpoint")
    with locked_run_dir(tmp_path):
        assert not (tmp_path / ".checkpoint.pt.abc.tmp").exists()  # leftovers of a crashed write are removed
        code = ("import sys; from pyro_vae.jobs.train import fit; from pyro_vae.runs.rundir import RunDirError\n"
                f"try:\n    fit({{'train': {{'epochs': 1}}}}, run_dir={str(tmp_path)!r}, progress=False)\n"
                "except RunDirError as e:\n    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3, proc.stderr
        assert "in use by another training process" in proc.stdout and str(os.getpid()) in proc.stdout
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunDirError, match="not writable"):  # a run directory below a file cannot be made
        with locked_run_dir(tmp_path / "a_file" / "run"):
            pass


# --------------------------------------------------------------------------- divergence and schedules


def _finite(state) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values())


def test_lr_1000_stops_with_a_clear_error_and_writes_no_diverged_checkpoint(tmp_path):
    from pyro_vae.core.errors import TrainingDivergedError

    with pytest.raises(TrainingDivergedError) as err:
        fit(tiny_config(tmp_path, train={"lr": 1e3}), progress=False)
    message = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in message
    assert "epoch 1, step 2" in message and "train.lr (now 1000" in message and "train.grad_clip" in message
    assert "divergence bound" in message
    ckpt = tmp_path / "checkpoint.pt"
    assert not ckpt.exists() or _finite(load_checkpoint(ckpt))


@pytest.mark.parametrize("where", ["step", "epoch-end"])
def test_non_finite_parameters_keep_the_last_good_checkpoint(tmp_path, monkeypatch, where):
    """NaN parameters in epoch 2 stop the run; checkpoint.pt and best.pt keep epoch 1, finite."""
    import pyro_vae.jobs.train as train_module
    from pyro_vae.core.errors import TrainingDivergedError

    def poison(vae):
        with torch.no_grad():
            next(vae.parameters()).fill_(float("nan"))

    real_step, real_metrics, calls = train_module.train_step, train_module.epoch_metrics, []

    def step(fabric, module, optimizer, objective, x, *args, **kwargs):
        if where == "step" and kwargs.get("guard", args[1] if len(args) > 1 else None).epoch == 2:
            poison(module)
        return real_step(fabric, module, optimizer, objective, x, *args, **kwargs)

    def metrics(vae, *args, **kwargs):
        calls.append(1)
        result = real_metrics(vae, *args, **kwargs)
        if where == "epoch-end" and len(calls) == 4:  # epoch 2's last call, just before saving
            poison(vae)
        return result

    monkeypatch.setattr(train_module, "train_step", step)
    monkeypatch.setattr(train_module, "epoch_metrics", metrics)
    with pytest.raises(TrainingDivergedError, match="epoch 2") as err:
        fit(tiny_config(tmp_path, train={"epochs": 3}), progress=False)
    assert ("not finite" if where == "step" else "parameters") in str(err.value)
    assert "keeps epoch 1" in str(err.value)
    for name in ("checkpoint.pt", "best.pt"):
        state = load_checkpoint(tmp_path / name)
        assert state["epoch"] == 1 and _finite(state), name


@pytest.mark.parametrize("schedule", [{"lr_schedule": "step", "lr_step_epochs": 1}, {"lr_schedule": "burda"}],
                         ids=["step", "burda"])
def test_resume_extends_step_schedules_exactly(tmp_path, schedule):
    """2 epochs, then resumed to 4, equals 4 epochs planned from the start, bit for bit (lr changes in both halves)."""
    full = fit(tiny_config(tmp_path / "full", train={"epochs": 4, **schedule}), progress=False)
    fit(tiny_config(tmp_path / "split", train={"epochs": 2, **schedule}), progress=False)
    resumed = fit(tiny_config(train={"epochs": 4}), resume=tmp_path / "split", progress=False)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    assert len({r["lr"] for r in full.history}) > 1  # the schedule did step
    for key, value in _params(full.vae).items():
        assert torch.equal(value, resumed.vae.state_dict()[key]), key


def test_extending_a_cosine_run_is_refused(tmp_path):
    fit(tiny_config(tmp_path, train={"epochs": 2, "lr_schedule": "cosine"}), progress=False)
    with pytest.raises(ConfigError) as err:
        fit(tiny_config(train={"epochs": 4}), resume=tmp_path, progress=False)
    assert str(err.value) == ("train.lr_schedule 'cosine' was planned for 2 epochs; extending it to 4 would not match "
                              "a run planned for 4 from the start; start a new run or use 'step'/'burda'/'none'.")
    assert load_checkpoint(tmp_path)["epoch"] == 2  # nothing was touched
    resumed = fit(tiny_config(train={"epochs": 2}), resume=tmp_path, progress=False)  # the planned length: fine
    assert [row["epoch"] for row in resumed.history] == [1, 2]
