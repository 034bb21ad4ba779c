"""Typed configuration: YAML in, validated dataclasses out.

Every key is checked: an unknown key, a wrong type or an unknown prior, likelihood,
dataset or net name raises :class:`ConfigError` with the valid choices. A prior or
likelihood may be given by name, or as a mapping with ``name`` and its settings::

    model:
      prior: {name: mog, k: 20}
      likelihood: gaussian_learned
      likelihood_kwargs: {mode: per_dim}

Example:
    >>> cfg = from_dict({"model": {"prior": {"name": "mog", "k": 5}}, "train": {"epochs": 3}})
    >>> cfg.model.prior, cfg.model.prior_kwargs, cfg.train.epochs
    ('mog', {'k': 5}, 3)
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DATASETS
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS, NETS
from .priors import PRIORS
from .transforms import BINARIZE_MODES

__all__ = ["ConfigError", "DataConfig", "NetConfig", "ModelConfig", "TrainConfig", "Config", "from_dict", "load", "dump", "OBJECTIVES"]

OBJECTIVES = ("elbo", "meanfield", "iwae")
LR_SCHEDULES = ("none", "cosine", "step", "burda")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and the valid choices."""


@dataclass
class DataConfig:
    """Which data, and how the model sees it.

    Attributes:
        name: A registered dataset (``digits``, ``mnist``, ``fashion_mnist``, ``kmnist``,
            ``mnist10k``) or a path to a ``.npy``/``.npz``/``.pt`` file.
        root: Folder holding (or receiving) torchvision downloads.
        download: Let torchvision download when the files are missing.
        binarize: ``none``, ``dynamic`` (redrawn every minibatch), ``static`` (one
            fixed draw) or ``threshold`` (> 0.5).
        dequantize: ``auto`` (on for continuous likelihoods on quantized data), ``true``
            or ``false`` (YAML booleans work too).
        split_seed: Seed of the fixed train/val/test split (not the training seed).
        val_fraction: Fraction held out for validation.
        test_fraction: Fraction held out for test (datasets without an official test split).
    """

    name: str = "digits"
    root: str | None = None
    download: bool = True
    binarize: str = "none"
    dequantize: str | bool = "auto"
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class NetConfig:
    """The encoder and (mirrored) decoder: ``kind`` (``mlp``/``conv``), hidden sizes, activation.

    ``hidden=None`` takes the net's own default: ``[256]`` units for ``mlp``, ``[32, 64]``
    channels for ``conv``. ``[]`` makes the ``mlp`` nets linear.
    """

    kind: str = "mlp"
    hidden: list[int] | None = None
    activation: str = "relu"


@dataclass
class ModelConfig:
    """The VAE's parts. ``prior``/``likelihood`` are registered names (see ``pyro-vae list``)."""

    latent_dim: int = 8
    prior: str = "normal"
    prior_kwargs: dict = field(default_factory=dict)
    likelihood: str = "categorical"
    likelihood_kwargs: dict = field(default_factory=dict)
    net: NetConfig = field(default_factory=NetConfig)


@dataclass
class TrainConfig:
    """Optimisation, devices and stopping.

    Attributes:
        objective: ``elbo`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO, analytic
            KL where registered) or ``iwae`` (importance-weighted bound with
            ``num_particles`` samples).
        num_particles: Particles per datapoint (vectorized).
        beta: Final KL weight; ``warmup_epochs`` ramps it linearly from 0.
        lr_schedule: ``none``, ``cosine`` (to 0 over training), ``step`` (halve every
            ``lr_step_epochs``) or ``burda`` (Burda et al. 2016: ``lr * 10^(-i/7)`` for
            ``3^i`` epochs, i = 0..7, 3280 epochs in all; extendable, milestones are fixed epochs).
        adam_eps: Adam's epsilon (Burda et al. use 1e-4).
        grad_clip: Max gradient norm, or ``None``.
        patience: Early stopping: epochs without validation-ELBO improvement; ``None`` = off.
        devices/accelerator/strategy/num_nodes: Passed to Lightning Fabric.
        metrics_max_points: Cap on training points re-scored for the per-epoch train split.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    objective: str = "elbo"
    num_particles: int = 1
    beta: float = 1.0
    warmup_epochs: float = 0.0
    lr_schedule: str = "none"
    lr_step_epochs: int = 10
    adam_eps: float = 1e-8
    grad_clip: float | None = None
    patience: int | None = None
    seed: int = 0
    devices: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    num_nodes: int = 1
    metrics_max_points: int = 2000


@dataclass
class Config:
    """A whole run. ``out`` is the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"


def _choices(key: str, value: Any, valid: typing.Iterable[str]) -> None:
    valid = list(valid)
    if value not in valid:
        hint = difflib.get_close_matches(str(value), valid, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{key}: unknown value {value!r}; valid choices: {', '.join(valid)}.{extra}")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {annotation}, got {value!r} ({type(value).__name__}).")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}.")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool) and isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {getattr(annotation, '__name__', annotation)}, got {value!r} ({type(value).__name__}).")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"Unknown config key {full!r}; valid keys here: {', '.join(names)}.{extra}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, f"{full}.")
        elif cls is ModelConfig and key in ("prior", "likelihood") and isinstance(value, dict):
            # `prior: {name: mog, k: 10}` is shorthand for prior + prior_kwargs.
            value = dict(value)
            if "name" not in value:
                raise ConfigError(f"{full}: a mapping needs a 'name' key, e.g. {{name: mog, k: 10}}.")
            kwargs[key] = _check_type(full, value.pop("name"), str)
            kwargs[f"{key}_kwargs"] = {**raw.get(f"{key}_kwargs", {}), **value}
        elif key.endswith("_kwargs") and key in kwargs:
            continue  # already merged with the mapping shorthand
        else:
            kwargs[key] = _check_type(full, value, annotation)
    return cls(**kwargs)


def _settings(strategy: Any) -> list[str]:
    """The named settings a prior/likelihood strategy accepts (not ``*args``/``**kwargs``)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in inspect.signature(strategy).parameters.values() if p.kind not in kinds]


def _validate(cfg: Config) -> None:
    if not cfg.data.name.endswith((".npy", ".npz", ".pt")):
        _choices("data.name", cfg.data.name, list(DATASETS) + ["<path to .npy/.npz/.pt>"])
    _choices("data.binarize", cfg.data.binarize, BINARIZE_MODES)
    if isinstance(cfg.data.dequantize, bool):
        cfg.data.dequantize = "true" if cfg.data.dequantize else "false"
    _choices("data.dequantize", cfg.data.dequantize, ("auto", "true", "false"))
    _choices("model.prior", cfg.model.prior, PRIORS)
    _choices("model.likelihood", cfg.model.likelihood, LIKELIHOODS)
    _choices("model.net.kind", cfg.model.net.kind, NETS)
    _choices("model.net.activation", cfg.model.net.activation, ACTIVATIONS)
    _choices("train.objective", cfg.train.objective, OBJECTIVES)
    _choices("train.lr_schedule", cfg.train.lr_schedule, LR_SCHEDULES)
    for kind, name, kwargs, registry in (
        ("model.prior_kwargs", cfg.model.prior, cfg.model.prior_kwargs, PRIORS),
        ("model.likelihood_kwargs", cfg.model.likelihood, cfg.model.likelihood_kwargs, LIKELIHOODS),
    ):
        params = _settings(registry[name])
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"{kind}: {name!r} has no settings {unknown}; valid settings: {', '.join(params) or 'none'}.")
    positive = {
        "model.latent_dim": cfg.model.latent_dim, "train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
        "train.num_particles": cfg.train.num_particles, "train.devices": cfg.train.devices, "train.num_nodes": cfg.train.num_nodes,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}.")
    if not cfg.train.adam_eps > 0:
        raise ConfigError(f"train.adam_eps must be > 0, got {cfg.train.adam_eps}.")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.train.lr}.")
    if cfg.train.beta < 0:
        raise ConfigError(f"train.beta must be >= 0, got {cfg.train.beta}.")
    if cfg.train.objective == "iwae" and cfg.train.num_particles < 2:
        raise ConfigError("train.objective 'iwae' needs train.num_particles >= 2 (K importance samples), e.g. 5.")
    if not 0 <= cfg.data.val_fraction < 1 or not 0 <= cfg.data.test_fraction < 1:
        raise ConfigError("data.val_fraction and data.test_fraction must lie in [0, 1).")


def from_dict(raw: dict | None) -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    cfg = _build(Config, raw or {}, "")
    _validate(cfg)
    return cfg


def load(path: str | Path) -> Config:
    """Read a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {exc}") from exc
    return from_dict(raw)


def dump(cfg: Config, path: str | Path | None = None) -> str:
    """Serialize to YAML (and write it when ``path`` is given)."""
    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
