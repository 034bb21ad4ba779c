"""From a config to the objects a run is made of: data, VAE, transform, objective, optimizer.

This is the "config -> parts -> VAE" stage of the data flow. Training
(:mod:`pyro_vae.jobs.train`) and loading a finished run (:mod:`pyro_vae.runs.rundir`) both build
through here, so a saved run is rebuilt exactly as it was trained.

A VAE needs to know only the *shape* of the data (``event_shape``, ``levels``), not the
data itself: :class:`DataShape` carries that much, so a trained model can be rebuilt
from its checkpoint without the training set.

Example:
    >>> from pyro_vae.runs.config import from_dict
    >>> cfg = from_dict({"model": {"latent_dim": 2, "net": {"hidden": [8]}}})
    >>> vae = build_vae(cfg, DataShape(event_shape=(8, 8), levels=17))
    >>> vae.latent_dim, build_transform(cfg, DataShape((8, 8), 17), vae).as_levels
    (2, True)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae.runs import config as config_lib
from pyro_vae.models import parts
from pyro_vae.runs.config import MODEL_RESERVED, STOCK_MODEL, Config, TrainConfig
from pyro_vae.core.errors import ConfigError
from pyro_vae.data.datasets import Dataset, load_dataset
from pyro_vae.models.likelihoods import resolve_likelihood
from pyro_vae.models.views import dtype_and_device
from pyro_vae.objectives.adversarial import ADVERSARIAL
from pyro_vae.objectives.elbo import ELBO
from pyro_vae.objectives.iwae import IWAE
from pyro_vae.data.transforms import DataTransform
from pyro_vae.models.vae import VAE

__all__ = ["DataShape", "as_config", "load_data", "resolve_auto", "record_parts", "record_vae", "record_model", "OBJECT_KINDS",
           "build_model", "build_vae", "build_transform", "observed_support", "build_objective",
           "build_optimizer", "build_scheduler", "make_fabric"]


@dataclass(frozen=True)
class DataShape:
    """What a VAE must know of its data: the shape of one point and the number of levels.

    Attributes:
        event_shape: Shape of one datapoint, e.g. ``(1, 28, 28)``.
        levels: Quantization levels of the raw values (MNIST: 256), ``None`` if continuous.
        name: The dataset's name, for messages.
    """

    event_shape: tuple[int, ...]
    levels: int | None = None
    name: str = "data"

    @classmethod
    def of(cls, dataset: Dataset | DataShape) -> DataShape:
        return cls(tuple(dataset.event_shape), dataset.levels, dataset.name)

    def to_dict(self) -> dict[str, Any]:
        return {"event_shape": list(self.event_shape), "levels": self.levels, "name": self.name}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataShape:
        return cls(tuple(int(s) for s in raw["event_shape"]), raw.get("levels"), raw.get("name", "data"))


def as_config(cfg: Config | dict | str | Path | None) -> Config:
    """A validated :class:`~pyro_vae.runs.config.Config` from a config, a mapping, a YAML path or ``None`` (defaults)."""
    if cfg is None:
        return config_lib.from_dict({})
    if isinstance(cfg, Config):
        return config_lib.from_dict(config_lib.to_dict(cfg))  # re-validate
    if isinstance(cfg, dict):
        return config_lib.from_dict(cfg)
    return config_lib.load(cfg)


def load_data(cfg: Config, root: str | None = None, download: bool | None = None,
              recorded_root: bool = True) -> Dataset:
    """The dataset ``cfg.data`` names.

    Args:
        cfg: The config.
        root: Overrides ``cfg.data.root`` (data that moved).
        download: Overrides ``cfg.data.download``.
        recorded_root: Use ``cfg.data.root`` when ``root`` is not given; ``False`` reads the
            default folder instead (a received run's folder is its sender's choice).
    """
    d = cfg.data
    return load_dataset(d.name, root=root or (d.root if recorded_root else None),
                        download=d.download if download is None else download, split_seed=d.split_seed,
                        val_fraction=d.val_fraction, test_fraction=d.test_fraction)


def resolve_auto(cfg: Config, data: Dataset | DataShape) -> Config:
    """``cfg`` with ``model.likelihood: auto`` replaced by what the data's representation needs.

    ``bernoulli`` when ``data.binarize`` is set, ``categorical`` on quantized levels,
    ``gaussian_learned`` on continuous values. Other likelihoods are left as they are.
    """
    if cfg.model.likelihood == config_lib.AUTO:
        if cfg.data.binarize != "none":
            cfg.model.likelihood = "bernoulli"
        else:
            cfg.model.likelihood = "categorical" if data.levels is not None else "gaussian_learned"
    return cfg


OBJECT_KINDS = ("prior", "likelihood", "encoder", "decoder")


def record_parts(cfg: Config, objects: dict[str, Any]) -> dict[str, str]:
    """Write ready parts into ``cfg`` as ``(name or import path, settings)``, so a checkpoint rebuilds them.

    Returns:
        ``{kind: why}`` for the parts that cannot be recorded (a lambda, a class from
        ``__main__``, a net whose constructor settings are unknown); a run trained with
        them can only be loaded or resumed by passing the same objects again.
    """
    unrecorded = {}
    for kind, obj in objects.items():
        if obj is None:
            continue
        try:
            if kind in ("encoder", "decoder") and getattr(obj, "_part_spec", None) is None:
                raise parts.PartError(f"{kind} {type(obj).__name__}'s constructor settings are unknown (subclass "
                                      "pyro_vae.core.records.RecordsSettings to record them)")
            name, settings = parts.spec_of(kind, obj)
        except parts.PartError as exc:
            unrecorded[kind] = str(exc)
            warnings.warn(f"{exc}; loading or resuming this run will need the same {kind} passed again "
                          f"(load_model(path, {kind}=...), fit(resume=..., {kind}=...)).", stacklevel=3)
            continue
        setattr(cfg.model, kind, name)
        setattr(cfg.model, f"{kind}_kwargs", settings)
    return unrecorded


def record_vae(cfg: Config, vae: VAE) -> dict[str, Any]:
    """Write a ready VAE's structure into ``cfg`` and return its parts for :func:`record_parts`.

    The latent size and the net settings come from the VAE itself; a subclass is recorded
    by its import path (its extra constructor arguments cannot be known, so it must take
    the stock VAE's arguments to be rebuilt from a checkpoint).
    """
    made = vae.construction
    cfg.model.latent_dim = vae.latent_dim
    cfg.model.net.kind, cfg.model.net.hidden, cfg.model.net.activation = made["net"], made["hidden"], made["activation"]
    if type(vae) is not VAE:
        name = parts.registered_name("vae", type(vae))
        cfg.model.vae, cfg.model.vae_kwargs = name or f"{type(vae).__module__}:{type(vae).__qualname__}", {}
    return {"prior": vae.prior, "likelihood": vae.likelihood,
            "encoder": vae.encoder if made["encoder_given"] else None,
            "decoder": vae.decoder if made["decoder_given"] else None}


def _named_part(kind: str, name: str, settings: dict) -> tuple[Any, dict]:
    """A prior/likelihood spec for the VAE: a registered name with its settings, or the built import path."""
    if not parts.is_import_path(name):
        return name, dict(settings)
    made = parts.lookup(kind, name)(**settings)
    object.__setattr__(made, "_part_spec", (name, dict(settings)))  # rebuilt by the same path
    return made, {}


def build_vae(cfg: Config, data: Dataset | DataShape, **objects: Any) -> VAE:
    """The VAE a config describes, shaped for ``data`` (a dataset or its :class:`DataShape`).

    Args:
        cfg: The config; every part is a registered name or an import path.
        data: The dataset, or just its :class:`DataShape`.
        **objects: Ready parts that replace the config's (``prior=``, ``likelihood=``,
            ``encoder=``, ``decoder=``): what :func:`~pyro_vae.jobs.train.fit` was handed.
    """
    m = resolve_auto(cfg, data).model
    prior, prior_kwargs = (objects["prior"], {}) if objects.get("prior") is not None else \
        _named_part("prior", m.prior, m.prior_kwargs)
    likelihood, likelihood_kwargs = (objects["likelihood"], {}) if objects.get("likelihood") is not None else \
        _named_part("likelihood", m.likelihood, m.likelihood_kwargs)
    lik_for_shape = resolve_likelihood(likelihood, **likelihood_kwargs)
    lik_for_shape.bind(tuple(data.event_shape), data.levels)
    check_memory(cfg, data, lik_for_shape.num_params)
    encoder, decoder = objects.get("encoder"), objects.get("decoder")
    if encoder is None and m.encoder is not None:
        encoder = parts.lookup("encoder", m.encoder)(event_shape=tuple(data.event_shape), latent_dim=m.latent_dim,
                                                     **m.encoder_kwargs)
    if decoder is None and m.decoder is not None:
        decoder = parts.lookup("decoder", m.decoder)(latent_dim=m.latent_dim, event_shape=tuple(data.event_shape),
                                                     num_params=lik_for_shape.num_params, **m.decoder_kwargs)
    cls = VAE if m.vae is None else parts.lookup("vae", m.vae)
    return cls(
        event_shape=data.event_shape, latent_dim=m.latent_dim, prior=prior, likelihood=lik_for_shape,
        net=m.net.kind, hidden=m.net.hidden, activation=m.net.activation, levels=data.levels,
        prior_kwargs=prior_kwargs, encoder=encoder, decoder=decoder, **m.vae_kwargs,
    )


def observed_support(model: Any, event_shape: tuple[int, ...]) -> constraints.Constraint:
    """The support of the model's observed site, read off one trace on a placeholder batch of two points.

    Raises:
        ValueError: The model has no observed site, or several with different supports.
    """
    placeholder = torch.zeros(2, *event_shape, dtype=dtype_and_device(model)[0])
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # reading a trace must not shift the run's draws
        trace = poutine.trace(model.model).get_trace(placeholder)
    observed = {name: site["fn"].support for name, site in trace.nodes.items()
                if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)}
    if not observed:
        raise ValueError(f"{type(model).__name__}.model(x) has no observed sample site: it must score the data with "
                         "pyro.sample(name, distribution, obs=x).")
    supports = set(map(repr, observed.values()))
    if len(supports) > 1:
        raise ValueError(f"{type(model).__name__}.model(x) observes x at sites with different supports "
                         f"{dict((k, repr(v)) for k, v in observed.items())}; one data representation is needed.")
    return next(iter(observed.values()))


def _base_support(support: constraints.Constraint) -> constraints.Constraint:
    while hasattr(support, "base_constraint"):  # independent(...) wraps the elementwise constraint
        support = support.base_constraint
    return support


# Bytes per parameter while training: the weight, its gradient and Adam's two moments, float32.
BYTES_PER_PARAMETER = 16
# Bytes per decoder output per particle in a training step: forward values, their gradients and the
# likelihood's temporaries (measured 10-14 on the MLP VAE; rounded up).
BYTES_PER_OUTPUT = 16


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: Config, data: Dataset | DataShape, num_params: int) -> None:
    """Refuse, with the figure, a stock-VAE run whose weights or training step would not fit in memory.

    A mistyped ``--latent-dim 1000000000`` or ``--particles 10000000`` would otherwise try
    to allocate hundreds of GB deep inside torch. The estimate counts the MLP's weights
    (with gradients and Adam's moments) and one step's decoder outputs per particle.
    """
    memory = physical_memory()
    if memory is None or cfg.model.name != STOCK_MODEL or cfg.model.net.kind != "mlp":
        return
    m, tc = cfg.model, cfg.train
    pixels = math.prod(data.event_shape)
    hidden = list(m.net.hidden) if m.net.hidden is not None else [256]
    widths_in = [pixels, *hidden]
    encoder = sum(a * b for a, b in zip(widths_in, [*hidden, 2 * m.latent_dim]))
    widths_out = [m.latent_dim, *reversed(hidden)]
    decoder = sum(a * b for a, b in zip(widths_out, [*reversed(hidden), num_params * pixels]))
    weights = (encoder + decoder) * BYTES_PER_PARAMETER
    step = tc.num_particles * tc.batch_size * (num_params * pixels + sum(hidden) + m.latent_dim) * BYTES_PER_OUTPUT
    for what, need, fix in (("the VAE's weights", weights, "model.latent_dim (--latent-dim) or model.net.hidden"),
                            ("one training step", step, "train.num_particles (--particles) or train.batch_size")):
        if need > memory:
            raise ConfigError(f"{what} would need about {need / 2**30:,.0f} GiB, more than this machine's "
                              f"{memory / 2**30:.0f} GiB of memory; lower {fix}.")


def build_model(cfg: Config, data: Dataset | DataShape, **objects: Any) -> nn.Module:
    """The model a config describes, shaped for ``data``: the stock VAE, or a named model.

    A named model (``model.name``: a registered name or an import path) is called with its
    settings, plus ``event_shape`` and ``levels`` when its constructor takes them.

    Args:
        cfg: The config.
        data: The dataset, or just its :class:`DataShape`.
        **objects: Ready parts: the stock VAE's (``prior=``, ...) or, for a model whose
            checkpoint could not record it, ``model=`` itself.
    """
    ready = objects.pop("model", None)
    if ready is not None:
        return ready
    if cfg.model.name == STOCK_MODEL:
        return build_vae(cfg, data, **objects)
    given = sorted(k for k, v in objects.items() if v is not None)
    if given:
        raise ConfigError(f"{', '.join(f'{k}=' for k in given)} replace parts of the stock VAE, but model.name is "
                          f"{cfg.model.name!r}; build those parts into your model instead.")
    cls = parts.lookup("model", cfg.model.name)
    accepted = parts.settings_of(cls)
    shape = {"event_shape": tuple(data.event_shape), "levels": data.levels}
    model = cls(**cfg.model.settings, **{k: v for k, v in shape.items() if k in accepted})
    if not isinstance(model, nn.Module) or not all(callable(getattr(model, m, None)) for m in ("model", "guide")):
        raise ConfigError(f"model.name {cfg.model.name!r} built a {type(model).__name__}; a model must be an nn.Module "
                          "(e.g. a pyro.nn.PyroModule) with Pyro model(x) and guide(x) methods.")
    return model


def record_model(cfg: Config, model: nn.Module) -> dict[str, str]:
    """Write a ready model into ``cfg`` so that a checkpoint rebuilds it; what could not be recorded, as :func:`record_parts`.

    A :class:`~pyro_vae.models.vae.VAE` is recorded by its structure and parts; any other
    model by ``(registered name or import path of its class, settings)``. Its settings
    are known when the class records them (:class:`~pyro_vae.core.records.RecordsSettings`);
    ``event_shape`` and ``levels`` are left out, since the data shape supplies them.
    """
    if isinstance(model, VAE):
        return record_parts(cfg, record_vae(cfg, model))
    recorded = getattr(model, "_part_spec", None)
    cls = type(model)
    name = parts.registered_name("model", cls)
    if name is None:
        module, qualname = cls.__module__, cls.__qualname__
        if module == "__main__" or "<" in qualname:
            why = (f"model {cls.__name__} is defined in {module}{' (a local class)' if '<' in qualname else ''} and "
                   "cannot be imported by another process; move it into an importable module")
            warnings.warn(f"{why}; loading or resuming this run will need the same model passed again "
                          "(load_model(path, model=...), fit(resume=..., model=...)).", stacklevel=3)
            return {"model": why}
        name = f"{module}:{qualname}"
    settings = {k: v for k, v in (recorded[1] if recorded is not None else {}).items() if k not in MODEL_RESERVED}
    cfg.model.name, cfg.model.settings = name, settings
    # Without recorded settings, only a class that takes none beyond the data shape rebuilds as it was.
    if recorded is None and any(k not in MODEL_RESERVED for k in parts.settings_of(cls)):
        why = (f"{cls.__name__}'s constructor settings are unknown (subclass pyro_vae.core.records.RecordsSettings to "
               "record them)")
        warnings.warn(f"{why}; loading or resuming this run will need the same model passed again "
                      "(load_model(path, model=...)).", stacklevel=3)
        return {"model": why}
    return {}


def build_transform(cfg: Config, data: Dataset | DataShape, vae: Any) -> DataTransform:
    """What the likelihood sees: levels, binary values, dequantized or grey values.

    The stock VAE says what its likelihood wants; any other model is asked through the
    support of its observed site: integer levels for a discrete support other than
    ``{0, 1}``, binary values or a density otherwise.
    """
    likelihood = getattr(vae, "likelihood", None)
    if likelihood is not None and hasattr(likelihood, "wants_levels"):
        wants_levels, support = likelihood.wants_levels, likelihood.support
    else:
        support = observed_support(vae, tuple(data.event_shape))
        base = _base_support(support)
        wants_levels = bool(getattr(base, "is_discrete", False)) and base is not constraints.boolean
    if wants_levels:
        if data.levels is None:
            raise ConfigError(
                f"the model's likelihood models integer levels but dataset {cfg.data.name!r} is continuous; "
                "use a continuous likelihood such as 'gaussian'."
            )
        if cfg.data.binarize != "none" or cfg.data.dequantize == "true":
            raise ConfigError("the model's likelihood models the raw levels; set data.binarize: none and data.dequantize: auto.")
        return DataTransform(data.levels, as_levels=True, seed=cfg.data.split_seed)
    discrete = bool(getattr(support, "is_discrete", False))
    if cfg.data.dequantize == "true":
        dequantize = True
    elif cfg.data.dequantize == "false":
        dequantize = False
    else:  # auto: a density on quantized data is only a valid likelihood after dequantization
        dequantize = data.levels is not None and not discrete and cfg.data.binarize == "none"
    return DataTransform(data.levels, binarize=cfg.data.binarize, dequantize=dequantize, seed=cfg.data.split_seed)


def build_objective(train: TrainConfig):
    """The loss named by ``train.objective``: an :class:`~pyro_vae.objectives.elbo.ELBO`, the
    :class:`~pyro_vae.objectives.iwae.IWAE`, or an :mod:`~pyro_vae.objectives.adversarial` objective."""
    k = train.num_particles
    if train.objective in ADVERSARIAL:
        return ADVERSARIAL[train.objective](hidden=train.adversary_hidden, weight=train.adversary_weight)
    if train.objective == "iwae":
        return IWAE(num_particles=k)
    return ELBO(num_particles=k, meanfield=train.objective == "meanfield")


def build_optimizer(train: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam as ``train`` configures it.

    The fused kernel is the same algorithm as the default for-loop one, a single pass over
    all parameters: 3x faster on CPU for a 784-400-50 VAE (0.17 ms against 0.46 ms a step).
    """
    return torch.optim.Adam(params, lr=train.lr, eps=train.adam_eps, weight_decay=train.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule ``train.lr_schedule`` names, stepped once per optimizer step (or ``None``).

    ``none``, ``step`` and ``burda`` give every step a rate that depends on the step
    alone, so a run extended on resume (``--resume --epochs N``) equals one planned for
    ``N`` epochs from the start. ``cosine`` anneals to 0 over ``train.epochs``: its rate
    at every step depends on the planned length, so :func:`pyro_vae.jobs.train.fit` refuses
    to extend (or shorten) a cosine run.
    """
    if train.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, train.epochs * steps_per_epoch))
    if train.lr_schedule == "burda":
        # Burda et al. (2016): 3^i epochs at lr * 10^(-i/7), i = 0..7. Milestones are fixed
        # epochs, so the schedule does not depend on train.epochs and a run can be extended.
        milestones = [sum(3**j for j in range(i + 1)) * steps_per_epoch for i in range(7)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=10 ** (-1 / 7))
    if train.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_step_epochs * steps_per_epoch, gamma=0.5)
    return None


def make_fabric(train: TrainConfig, run_dir: str | Path | None = None):
    """A Lightning ``Fabric`` for ``train``'s devices (DDP when more than one process).

    ``train.precision`` goes to Fabric, which runs the model's forward pass (the whole
    Pyro model and guide) under its autocast. With ``train.logger: tensorboard`` and a
    ``run_dir``, Fabric's TensorBoard logger writes event files to ``run_dir/tensorboard``.
    """
    from lightning_fabric import Fabric  # heavy (imports Lightning's utilities); only training needs it

    if train.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.accelerator {train.accelerator!r}, but torch sees no CUDA GPU on this machine "
                          "(torch.cuda.is_available() is False); use --accelerator cpu, or install a CUDA build of torch.")
    if train.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.accelerator 'mps', but torch sees no Apple GPU (torch.backends.mps.is_available() is "
                          "False); use --accelerator cpu.")
    strategy = train.strategy
    if strategy == "auto" and train.devices * train.num_nodes > 1:
        # The adversarial objectives leave parameters out of the generator's loss (the GAN's encoder,
        # an AAE's learnable prior), which plain DDP refuses as unused after the first step.
        strategy = "ddp_find_unused_parameters_true" if train.objective in ADVERSARIAL else "ddp"
    loggers = []
    if train.logger == "tensorboard" and run_dir is not None:
        from lightning_fabric.loggers import TensorBoardLogger

        # version="" keeps one folder per run, so a resumed run appends to the same curves.
        loggers.append(TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version=""))
    return Fabric(accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes, strategy=strategy,
                  precision=train.precision, loggers=loggers or None)
