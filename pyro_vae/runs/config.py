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
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyro_vae.objectives.adversarial import ADVERSARIAL
from pyro_vae.core.errors import ConfigError
from pyro_vae.models import parts
from pyro_vae.data.datasets import DATASETS
from pyro_vae.models.nets import ACTIVATIONS, NETS
from pyro_vae.models.vae import DEFAULTS as VAE_DEFAULTS
from pyro_vae.data.transforms import BINARIZE_MODES

__all__ = ["DataConfig", "NetConfig", "ModelConfig", "TrainConfig", "Config", "from_dict", "to_dict", "load", "dump", "OBJECTIVES", "STOCK_MODEL"]

ADVERSARIAL_OBJECTIVES = tuple(ADVERSARIAL)
OBJECTIVES = ("elbo", "meanfield", "iwae", *ADVERSARIAL_OBJECTIVES)
PART_KEYS = ("prior", "likelihood", "encoder", "decoder", "vae")
STOCK_MODEL = "vae"  # model.name of the stock VAE, built from the other model keys
# What the library passes to a named model itself when its constructor takes it.
MODEL_RESERVED = ("event_shape", "levels")
# What the library passes to a part itself; a user's settings may not override it.
RESERVED = {"encoder": ("event_shape", "latent_dim"), "decoder": ("latent_dim", "event_shape", "num_params"),
            "vae": ("event_shape", "latent_dim", "prior", "likelihood", "net", "hidden", "activation", "encoder",
                    "decoder", "levels", "prior_kwargs", "likelihood_kwargs")}
LEVEL_LIKELIHOODS = ("categorical", "poisson")
AUTO = "auto"  # model.likelihood: chosen from the data's representation when the data is known
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "dp", "fsdp", "deepspeed", "single_device")
LR_SCHEDULES = ("none", "cosine", "step", "burda")
# Fabric's precision names that the trainer supports. The 16-bit "-true" ones are left out:
# they store the weights in 16 bits, while the trainer keeps the data float32 (see train_step).
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed")
LOGGERS = ("csv", "tensorboard")


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

    kind: str = VAE_DEFAULTS["net"]
    hidden: list[int] | None = VAE_DEFAULTS["hidden"]
    activation: str = VAE_DEFAULTS["activation"]


@dataclass
class ModelConfig:
    """The model: the stock VAE and its parts, or any Pyro model by name or import path.

    ``name: vae`` (the default) is the stock :class:`~pyro_vae.models.vae.VAE`, built from
    the keys below. Any other ``name`` is a registered model or an import path
    ``"package.module:Class"`` to anything with Pyro ``model(x)`` and ``guide(x)`` (an
    ``nn.Module``, e.g. a ``PyroModule``); then every other key of the ``model`` mapping
    is a setting of that class, passed to its constructor, with ``event_shape`` and
    ``levels`` added when its constructor takes them::

        model: {name: "mypkg.models:TwoLayerVAE", z1: 16, z2: 4}

    Attributes:
        name: ``vae`` or a model's registered name or import path.
        settings: The settings of a named model (empty for the stock VAE).
        prior: A registered prior or ``"package.module:Name"`` (a class or function
            returning a module whose ``forward()`` gives p(z)); settings in ``prior_kwargs``.
        likelihood: A registered likelihood or an import path; settings in ``likelihood_kwargs``.
            ``auto`` (the default) picks what the data's representation needs: ``bernoulli``
            when ``data.binarize`` is set, ``categorical`` on quantized levels (digits,
            MNIST), ``gaussian_learned`` on continuous data.
        encoder: ``None`` (built from ``net``) or an encoder by name/import path, called as
            ``encoder(event_shape=..., latent_dim=..., **encoder_kwargs)``.
        decoder: ``None`` (built from ``net``) or a decoder, called as
            ``decoder(latent_dim=..., event_shape=..., num_params=..., **decoder_kwargs)``.
        vae: ``None`` (the stock :class:`~pyro_vae.models.vae.VAE`) or a subclass by name/import
            path, called with the VAE's arguments and ``**vae_kwargs``.
    """

    name: str = STOCK_MODEL
    settings: dict = field(default_factory=dict)
    latent_dim: int = VAE_DEFAULTS["latent_dim"]
    prior: str = VAE_DEFAULTS["prior"]
    prior_kwargs: dict = field(default_factory=dict)
    likelihood: str = VAE_DEFAULTS["likelihood"]
    likelihood_kwargs: dict = field(default_factory=dict)
    net: NetConfig = field(default_factory=NetConfig)
    encoder: str | None = None
    encoder_kwargs: dict = field(default_factory=dict)
    decoder: str | None = None
    decoder_kwargs: dict = field(default_factory=dict)
    vae: str | None = None
    vae_kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short description for tables: ``VAE (normal prior, bernoulli)`` or the named model's class."""
        if self.name == STOCK_MODEL:
            return f"VAE ({self.prior} prior, {self.likelihood})"
        return self.name.rpartition(":")[2] or self.name


@dataclass
class TrainConfig:
    """Optimisation, devices and stopping.

    Attributes:
        objective: ``elbo`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO, analytic
            KL where registered) or ``iwae`` (importance-weighted bound with
            ``num_particles`` samples); or adversarial (:mod:`pyro_vae.objectives.adversarial`): ``aae``
            (adversarial autoencoder: reconstruction plus a discriminator on z matching
            q(z) to p(z)), ``gan`` (the decoder as a GAN generator, a discriminator on x) or
            ``ali`` (ALI/BiGAN: a discriminator on (x, z) pairs, data joint against model joint).
        adversary_hidden: Hidden widths of the ``aae``/``gan``/``ali`` discriminator.
        adversary_lr: Its Adam learning rate (``None``: ``lr``).
        adversary_weight: Weight of the adversarial term in the generator's loss.
        num_particles: Particles per datapoint (vectorized).
        beta: Final KL weight; ``warmup_epochs`` ramps it linearly from 0.
        lr_schedule: ``none``, ``cosine`` (to 0 over training), ``step`` (halve every
            ``lr_step_epochs``) or ``burda`` (Burda et al. 2016: ``lr * 10^(-i/7)`` for
            ``3^i`` epochs, i = 0..7, 3280 epochs in all; extendable, milestones are fixed epochs).
        adam_eps: Adam's epsilon (Burda et al. use 1e-4).
        grad_clip: Max gradient norm, or ``None``.
        patience: Early stopping: epochs without validation-ELBO improvement; ``None`` = off.
        devices/accelerator/strategy/num_nodes: Passed to Lightning Fabric.
        precision: Fabric precision: ``32-true``, ``64-true``, ``bf16-mixed`` (autocast; CPU
            and recent GPUs) or ``16-mixed`` (fp16 autocast; CUDA only).
        logger: ``csv`` (``metrics.csv``/``metrics.json`` only) or ``tensorboard`` (also
            TensorBoard event files in ``RUN/tensorboard`` through Fabric's logger; needs
            the ``tensorboard`` extra).
        metrics_max_points: Cap on training points re-scored for the per-epoch train split.
    """

    # The embedded default (digits, 1437 training images) converges in under a minute on 2 cores: the
    # validation ELBO is flat from about epoch 30, and longer training only overfits the small set.
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    objective: str = "elbo"
    num_particles: int = 1
    adversary_hidden: list[int] = field(default_factory=lambda: [256, 256])
    adversary_lr: float | None = None
    adversary_weight: float = 1.0
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
    precision: str = "32-true"
    logger: str = "csv"
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
    if cls is ModelConfig and raw.get("name", STOCK_MODEL) != STOCK_MODEL:
        # A named model: every key but `name` is a setting of its class (a `settings` mapping too).
        raw = dict(raw)
        name = _check_type(f"{prefix}name", raw.pop("name"), str)
        settings = _check_type(f"{prefix}settings", raw.pop("settings", None) or {}, dict)
        return ModelConfig(name=name, settings={**settings, **raw})
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
        elif cls is ModelConfig and key in PART_KEYS and isinstance(value, dict):
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


def _check_model(model: ModelConfig) -> None:
    """A named model must exist and accept its settings; the stock VAE's parts are checked one by one."""
    if model.name == STOCK_MODEL:
        if model.settings:
            raise ConfigError(f"model.settings {model.settings} is set, but model.name is {STOCK_MODEL!r} (the stock VAE, "
                              "set by model.latent_dim, model.prior, ...); name your model's class or drop the settings.")
        _check_parts(model)
        return
    if not parts.is_import_path(model.name) and model.name not in parts.KINDS["model"]:
        registered = [STOCK_MODEL, *parts.KINDS["model"]]
        hint = difflib.get_close_matches(model.name, registered, n=1)
        raise ConfigError(f"model.name: unknown model {model.name!r}; registered: {', '.join(registered)}, or an import "
                          f"path 'package.module:Class'.{f' Did you mean {hint[0]!r}?' if hint else ''}")
    try:
        strategy = parts.lookup("model", model.name)
        parts.check_settings("model", model.name, strategy, model.settings, MODEL_RESERVED)
    except parts.PartError as exc:
        raise ConfigError(str(exc) if str(exc).startswith("model") else f"model.name: {exc}") from None


def _check_parts(model: ModelConfig) -> None:
    for kind in PART_KEYS:
        name, settings = getattr(model, kind), getattr(model, f"{kind}_kwargs")
        if kind == "likelihood" and name == AUTO:
            if settings:
                raise ConfigError("model.likelihood_kwargs is set but model.likelihood is 'auto'; name the likelihood.")
            continue
        if name is None:
            if settings:
                raise ConfigError(f"model.{kind}_kwargs is set but model.{kind} is not; name the {kind} too.")
            continue
        if not parts.is_import_path(name) and name not in parts.KINDS[kind]:
            registered = list(parts.KINDS[kind])
            hint = difflib.get_close_matches(name, registered, n=1)
            raise ConfigError(f"model.{kind}: unknown value {name!r}; valid choices: {', '.join(registered) or 'none'}, "
                              f"or an import path 'package.module:Name'.{f' Did you mean {hint[0]!r}?' if hint else ''}")
        try:
            strategy = parts.lookup(kind, name)
            parts.check_settings(f"model.{kind}_kwargs", name, strategy, settings, RESERVED.get(kind, ()))
        except parts.PartError as exc:
            raise ConfigError(f"model.{kind}: {exc}" if not str(exc).startswith("model.") else str(exc)) from None
        if kind in ("prior", "likelihood"):  # cheap to build: a part checks its own settings' ranges
            try:
                strategy(**settings)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"model.{kind}_kwargs: {name!r} refuses {settings}: {exc}") from None


def _finite(key: str, value: float | None, low: float, *, strict: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    bad = value is None or not math.isfinite(value) or (value <= low if strict else value < low)
    if bad:
        raise ConfigError(f"{key} must be a finite number {'>' if strict else '>='} {low}, got {value}.")


def _validate(cfg: Config) -> None:
    if not cfg.data.name.endswith((".npy", ".npz", ".pt")):
        _choices("data.name", cfg.data.name, list(DATASETS) + ["<path to .npy/.npz/.pt>"])
    _choices("data.binarize", cfg.data.binarize, BINARIZE_MODES)
    if isinstance(cfg.data.dequantize, bool):
        cfg.data.dequantize = "true" if cfg.data.dequantize else "false"
    _choices("data.dequantize", cfg.data.dequantize, ("auto", "true", "false"))
    _choices("model.net.kind", cfg.model.net.kind, NETS)
    _choices("model.net.activation", cfg.model.net.activation, ACTIVATIONS)
    _choices("train.objective", cfg.train.objective, OBJECTIVES)
    _choices("train.lr_schedule", cfg.train.lr_schedule, LR_SCHEDULES)
    _choices("train.accelerator", cfg.train.accelerator, ("cpu", "gpu", "cuda", "mps", "tpu", "auto"))
    _choices("train.strategy", cfg.train.strategy, STRATEGIES)
    _choices("train.precision", cfg.train.precision, PRECISIONS)
    if cfg.train.precision == "16-mixed" and cfg.train.accelerator in ("cpu", "mps", "tpu"):
        # Fabric would silently switch to bf16-mixed; say so instead.
        raise ConfigError(f"train.precision: 16-mixed (fp16 autocast) needs a CUDA GPU, not accelerator "
                          f"{cfg.train.accelerator!r}; use bf16-mixed on the CPU, or accelerator: cuda.")
    _choices("train.logger", cfg.train.logger, LOGGERS)
    if cfg.train.logger == "tensorboard" and not any(
            importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ConfigError("train.logger: tensorboard needs the tensorboard package, which is not installed; "
                          "pip install 'pyro_vae[tensorboard]', or set train.logger: csv.")
    _check_model(cfg.model)
    if cfg.data.binarize != "none" and cfg.model.likelihood in LEVEL_LIKELIHOODS:
        raise ConfigError(f"data.binarize: {cfg.data.binarize} makes binary data, which likelihood "
                          f"{cfg.model.likelihood!r} (it models integer levels) cannot score; set model.likelihood: "
                          "bernoulli (CLI --likelihood bernoulli), or data.binarize: none.")
    positive = {
        "model.latent_dim": cfg.model.latent_dim, "train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
        "train.num_particles": cfg.train.num_particles, "train.devices": cfg.train.devices, "train.num_nodes": cfg.train.num_nodes,
        "train.lr_step_epochs": cfg.train.lr_step_epochs, "train.metrics_max_points": cfg.train.metrics_max_points,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}.")
    for i, size in enumerate(cfg.model.net.hidden or []):
        if size < 1:
            raise ConfigError(f"model.net.hidden[{i}] must be >= 1, got {size} (such a layer cuts z off the "
                              "decoder); use [] for a linear net.")
    if cfg.train.patience is not None and cfg.train.patience < 1:
        raise ConfigError(f"train.patience must be >= 1 epoch or null (no early stopping), got {cfg.train.patience}.")
    _finite("train.lr", cfg.train.lr, 0.0, strict=True)
    _finite("train.adam_eps", cfg.train.adam_eps, 0.0, strict=True)
    _finite("train.beta", cfg.train.beta, 0.0)
    _finite("train.warmup_epochs", cfg.train.warmup_epochs, 0.0)
    _finite("train.weight_decay", cfg.train.weight_decay, 0.0)
    _finite("train.grad_clip", cfg.train.grad_clip, 0.0, strict=True, optional=True)
    if cfg.train.objective == "iwae" and cfg.train.num_particles < 2:
        raise ConfigError("train.objective 'iwae' needs train.num_particles >= 2 (K importance samples), e.g. 5.")
    if cfg.train.objective in ADVERSARIAL_OBJECTIVES:
        _check_adversarial(cfg.train)
    for key in ("val_fraction", "test_fraction"):
        value = getattr(cfg.data, key)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"data.{key} must lie in [0, 1), got {value}.")


def _check_adversarial(train: TrainConfig) -> None:
    name = train.objective
    for i, size in enumerate(train.adversary_hidden):
        if size < 1:
            raise ConfigError(f"train.adversary_hidden[{i}] must be >= 1, got {size}; e.g. [256, 256].")
    _finite("train.adversary_lr", train.adversary_lr, 0.0, strict=True, optional=True)
    _finite("train.adversary_weight", train.adversary_weight, 0.0, strict=True)
    # Settings of the KL term, which these objectives do not have: ignoring them would be silent.
    if train.num_particles != 1:
        raise ConfigError(f"train.objective {name!r} uses one draw per point; remove train.num_particles "
                          f"(now {train.num_particles}).")
    if train.beta != 1.0 or train.warmup_epochs:
        raise ConfigError(f"train.objective {name!r} has no KL term for train.beta/warmup_epochs to weight; remove them "
                          "(train.adversary_weight weights the adversarial term).")
    if train.patience is not None:
        raise ConfigError(f"train.objective {name!r} does not train the ELBO, so its validation ELBO cannot choose "
                          "epochs; remove train.patience.")


def from_dict(raw: dict | None) -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    cfg = _build(Config, raw or {}, "")
    _validate(cfg)
    return cfg


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; anything this large is not one


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (an alias bomb expands to 10^9 leaves) and without duplicate keys."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"YAML aliases (*{event.anchor}) are not allowed in config files "
                              f"(line {event.start_mark.line + 1}); write the values out.")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); "
                                  "each key may appear once per section.")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path) -> Config:
    """Read a YAML config file (safe YAML; no aliases, no duplicate keys, at most 1 MB)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file {str(path)!r} is {path.stat().st_size} bytes, too large for a config (limit 1 MB).")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"Config file {str(path)!r}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {detail}") from None
    return from_dict(raw)


def to_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as plain data that :func:`from_dict` reads back to the same config.

    A named model is written as it is given, ``{name, **settings}``: the stock VAE's keys
    would read back as its settings.
    """
    raw = dataclasses.asdict(cfg)
    if cfg.model.name != STOCK_MODEL:
        raw["model"] = {"name": cfg.model.name, **cfg.model.settings}
    return raw


def dump(cfg: Config, path: str | Path | None = None) -> str:
    """Serialize to YAML (and write it when ``path`` is given)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
