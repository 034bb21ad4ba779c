"""Fabric options: ``train.precision`` reaches Fabric's autocast, ``train.logger`` writes TensorBoard events."""

import importlib.util
import math

import pytest
import torch

from conftest import tiny_config
from pyro_vae.core.errors import ConfigError
from pyro_vae.runs.config import TrainConfig, from_dict
from pyro_vae.jobs import train as train_module
from pyro_vae.jobs.train import fit


def _linear_output_dtypes(monkeypatch, config, **fit_kwargs):
    """Train ``config`` and collect the dtypes of every Linear layer's output inside a training step."""
    seen, in_step = set(), [False]
    step = train_module.train_step

    def recording_step(*args, **kwargs):
        in_step[0] = True
        try:
            return step(*args, **kwargs)
        finally:
            in_step[0] = False

    def hook(module, inputs, output):
        if in_step[0] and isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        result = fit(config, progress=False, **fit_kwargs)
    finally:
        handle.remove()
    return result, seen


def test_bf16_mixed_runs_the_networks_in_bfloat16_and_still_learns(monkeypatch):
    result, dtypes = _linear_output_dtypes(monkeypatch, tiny_config(train={"epochs": 4, "precision": "bf16-mixed"}), run_dir=None)
    assert dtypes == {torch.bfloat16}  # Fabric's autocast was applied to the model and guide networks
    assert next(result.vae.parameters()).dtype == torch.float32  # mixed: the weights stay float32
    elbos = [row["val_elbo"] for row in result.history]
    assert all(math.isfinite(e) for e in elbos) and elbos[-1] > elbos[0]


def test_default_precision_is_float32_throughout(monkeypatch):
    _, dtypes = _linear_output_dtypes(monkeypatch, tiny_config(train={"epochs": 1}), run_dir=None)
    assert dtypes == {torch.float32}


def test_64_true_trains_in_float64(tmp_path):
    result = fit(tiny_config(tmp_path, train={"epochs": 2, "precision": "64-true"}), progress=False)
    assert next(result.vae.parameters()).dtype == torch.float64
    assert math.isfinite(result.history[-1]["val_elbo"])
    assert (tmp_path / "samples.png").exists()


def test_fp16_autocast_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"16-mixed .*needs a CUDA GPU.*use bf16-mixed"):
        from_dict(tiny_config(train={"precision": "16-mixed"}))


def test_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match=r"train.precision: unknown value 'bf16'.*bf16-mixed"):
        from_dict(tiny_config(train={"precision": "bf16"}))


def test_tensorboard_logger_without_the_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'pyro_vae\[tensorboard\]'"):
        from_dict(tiny_config(train={"logger": "tensorboard"}))


def test_tensorboard_logger_writes_every_epoch_metric(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fit(tiny_config(tmp_path, train={"epochs": 3, "logger": "tensorboard"}), progress=False)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file was written"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    val = acc.Scalars("val_elbo")
    assert [e.step for e in val] == [1, 2, 3]
    assert [e.value for e in val] == pytest.approx([row["val_elbo"] for row in result.history], rel=1e-6)


def test_csv_logger_is_the_default_and_writes_no_event_files(tmp_path):
    assert TrainConfig().logger == "csv" and TrainConfig().precision == "32-true"
    fit(tiny_config(tmp_path, train={"epochs": 1}), progress=False)
    assert (tmp_path / "metrics.csv").exists() and not (tmp_path / "tensorboard").exists()
