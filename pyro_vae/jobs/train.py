"""Training: config -> data -> VAE -> SVI on Lightning Fabric -> run directory.

One code path runs on one CPU (the default) or with DDP on several devices or nodes:
the loss is computed inside ``VAE.forward`` so Fabric's DDP wrapper all-reduces the
gradients, each rank draws its own shard of every epoch, and only rank 0 writes.

The run directory holds ``config.yaml``, ``checkpoint.pt`` (latest, for ``--resume``),
``best.pt`` (best validation ELBO), ``metrics.csv``/``metrics.json`` and pictures.

A diverging run stops with :class:`TrainingDivergedError` before a bad update and before
any non-finite parameter reaches a checkpoint (the rule: :class:`DivergenceGuard`).

Example:
    >>> result = fit({"train": {"epochs": 1}}, run_dir=None, progress=False)  # doctest: +SKIP
    >>> result.history[-1]["val_elbo"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.objectives.adversarial import Adversarial, check_balance
from pyro_vae.core.errors import CheckpointError, TrainingDivergedError
from pyro_vae.core.progress import bar_width, is_terminal
from pyro_vae.runs import config as config_lib
from pyro_vae.runs import rundir as runs
from pyro_vae.runs.build import (
    DataShape,
    record_model,
    record_parts,
    as_config,
    build_objective,
    build_optimizer,
    build_scheduler,
    build_transform,
    build_model,
    load_data,
    make_fabric,
)
from pyro_vae.runs.checkpoint import capture_rng, restore_rng
from pyro_vae.runs.trust import sign
from pyro_vae.runs.config import Config, TrainConfig
from pyro_vae.core.errors import ConfigError
from pyro_vae.data.datasets import Dataset
from pyro_vae.data.transforms import DataTransform, iterate_minibatches
from pyro_vae.models.target import check_data, check_protocol, weight_terms

__all__ = ["FitResult", "fit", "train_step", "epoch_metrics", "DivergenceGuard", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 1e4  # a loss this many times its starting scale above the start has exploded


@dataclass
class DivergenceGuard:
    """Stops a run that diverges, naming the epoch, the step and the fixes.

    The rule, checked at every optimizer step before the update (so the model keeps its
    last good parameters) and at the end of every epoch before anything is saved:

    * the loss and the gradients must be finite;
    * the per-datapoint loss ``L`` must stay below
      ``L_0 + DIVERGENCE_FACTOR * max(|L_0|, 1)``, where ``L_0`` is the per-datapoint
      loss of the run's first step (the untrained model, kept across resumes);
    * at the end of an epoch the parameters and the train/validation ELBOs must be finite.

    A healthy run stays far below the bound (a loss spike of a few hundred times is
    recoverable and allowed); lr 1000 on digits crosses it at step 2. Under DDP the
    figures are all-reduced first, so every rank takes the same decision.

    Attributes:
        lr: The configured learning rate, for the message.
        reference: ``L_0``, or ``None`` before the first step.
        epoch: The current epoch, 1-based.
        step: The current optimizer step, 1-based.
        last_good: Where the last good checkpoint is, for the message.
    """

    lr: float
    reference: float | None = None
    epoch: int = 1
    step: int = 1
    last_good: str = "no checkpoint was written"

    @property
    def limit(self) -> float:
        """The per-datapoint loss above which the run has exploded (``inf`` before the first step)."""
        if self.reference is None:
            return math.inf
        return self.reference + DIVERGENCE_FACTOR * max(abs(self.reference), 1.0)

    def fail(self, what: str) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"Training diverged at epoch {self.epoch}, step {self.step}: {what}. Lower train.lr (now {self.lr:g}, "
            f"e.g. to {self.lr / 10:g}) or set train.grad_clip (a maximum gradient norm); {self.last_good}."
        )

    def check_step(self, loss: torch.Tensor, grad_norm: torch.Tensor, num_data: int, fabric: Any = None) -> None:
        """Raise if this step diverged (``loss`` is scaled to ``num_data`` points, as SVI's is)."""
        figures = torch.stack([loss.detach().double() / num_data, (~torch.isfinite(grad_norm)).double()])
        if fabric is not None and fabric.world_size > 1:
            figures = fabric.all_reduce(figures, reduce_op="mean")
        per_point, bad_grads = figures.tolist()
        if not math.isfinite(per_point):
            raise self.fail(f"the loss is {per_point} (not finite)")
        if bad_grads > 0:
            raise self.fail("the gradient norm is not finite")
        if per_point > self.limit:
            raise self.fail(f"the loss rose to {per_point:.3g} nats per datapoint, above the divergence bound "
                            f"{self.limit:.3g} (the first step's {self.reference:.3g} + {DIVERGENCE_FACTOR:g} x "
                            f"{max(abs(self.reference), 1.0):.3g})")
        if self.reference is None:
            self.reference = per_point

    def check_epoch(self, vae: torch.nn.Module, elbos: dict[str, float]) -> None:
        """Raise if the parameters or the ELBOs of the finished epoch are not finite."""
        bad = [name for name, p in vae.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise self.fail(f"parameters {bad[:3]} are not finite")
        for split, value in elbos.items():
            if not math.isfinite(value):
                raise self.fail(f"the {split} ELBO is {value}")


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, its data pipeline and history.

    ``vae`` is the trained model: the stock VAE or any model with Pyro ``model``/``guide``.
    """

    vae: Any
    config: Config
    dataset: Dataset
    transform: DataTransform
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    ddp: dict | None = None
    epochs_trained: int = -1  # epochs this call trained; 0 when a resume found nothing left to train


@torch.no_grad()
def epoch_metrics(vae: Any, x_raw: torch.Tensor, transform: DataTransform | None, fabric=None,
                  batch_size: int = 512) -> dict[str, float]:
    """Per-datapoint ELBO, reconstruction and KL (nats), means over ``x_raw``.

    ``transform`` maps raw values to model space (its fixed evaluation draw); ``None``
    means ``x_raw`` is in model space already. Under DDP each rank scores its own shard
    and the sums are all-reduced.
    """
    rank, world = (fabric.global_rank, fabric.world_size) if fabric else (0, 1)
    shard = x_raw[rank::world]
    totals = torch.zeros(3, dtype=torch.float64, device=x_raw.device)
    for start in range(0, len(shard), batch_size):
        x = shard[start : start + batch_size]
        x = x if transform is None else transform(x, train=False)
        recon, kl = elbo_terms(vae, x)
        totals += torch.stack([recon.sum(), kl.sum(), torch.tensor(float(len(x)), device=recon.device)]).double()
    if fabric is not None and world > 1:
        totals = fabric.all_reduce(totals, reduce_op="sum")
    recon, kl, n = totals.tolist()
    return {"elbo": (recon - kl) / n, "reconstruction": recon / n, "kl": kl / n}


def elbo_terms(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint reconstruction ``E_q log p(x|z)`` and ``KL(q || p)`` of one draw, unscaled.

    The model's own ``elbo_terms`` when it has one (the stock VAE's, with the analytic KL),
    else read off one traced draw of any model and guide.
    """
    own = getattr(model, "elbo_terms", None)
    if own is not None:
        recon, kl, _ = own(x)
        return recon, kl
    terms = weight_terms(model.model, model.guide, x, num_samples=1)
    return terms.log_lik[0], (terms.log_q - terms.log_prior)[0]


class TrainingLoss(nn.Module):
    """What Fabric sets up: ``forward`` is the objective's loss of the model, so DDP all-reduces its gradients.

    The loss is scaled to the data set (``scale = num_data / batch``), as SVI's is, and
    ``beta`` weights the latent sites (KL warm-up); the model itself is any Pyro program.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, objective: Any, beta: float = 1.0, scale: float = 1.0) -> torch.Tensor:
        return objective.training_loss(self.model, x, beta) * scale


def train_step(fabric, module, optimizer: torch.optim.Optimizer, objective, x: torch.Tensor,
               grad_clip: float | None = None, guard: DivergenceGuard | None = None,
               num_data: int | None = None, adversary: tuple[Any, torch.optim.Optimizer] | None = None,
               beta: float = 1.0) -> torch.Tensor:
    """One SVI step: loss, backward (all-reduced under DDP), optional clipping, update.

    ``module`` is a :class:`TrainingLoss` set up by Fabric. The loss is scaled to ``num_data``
    points (``None``: the batch is the data set). With a ``guard``, the loss (divided by
    ``num_data``) and the gradients are checked
    before the update, so a diverging step raises :class:`TrainingDivergedError` and
    leaves the parameters as they were. With an adversarial ``objective`` (``aae``/``gan``)
    the ``adversary`` pair (discriminator, its optimizer) then takes its own step on the
    real and generated points of this one; its loss is left in ``objective.last_loss``.
    """
    try:
        # Fabric's own forward minus its input conversion, which under bf16-mixed would round the
        # (dequantized) data itself to bf16: only the networks' arithmetic is lowered. The loss
        # is then cast to float32, as Fabric's output conversion does for every precision.
        with fabric.autocast():
            scale = 1.0 if num_data is None else num_data / x.shape[0]
            loss = module._forward_module(x, objective, beta, scale).float()
    except ValueError as exc:  # torch's distribution validation, on NaN network outputs
        if guard is None or not str(exc).startswith("Expected parameter"):
            raise
        raise guard.fail(f"the network outputs are not finite ({str(exc).splitlines()[0][:160]})") from exc
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    grad_norm = None
    if grad_clip:
        # Non-finite gradients are the guard's to report (torch's error would name no epoch).
        grad_norm = fabric.clip_gradients(module, optimizer, max_norm=grad_clip, error_if_nonfinite=guard is None)
    if guard is not None:
        if grad_norm is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        guard.check_step(loss, grad_norm, num_data or x.shape[0], fabric)
    optimizer.step()
    if adversary is not None:
        _discriminator_step(fabric, objective, *adversary, grad_clip, guard)
    return loss.detach()


def _discriminator_step(fabric, objective: Adversarial, discriminator, optimizer: torch.optim.Optimizer,
                        grad_clip: float | None, guard: DivergenceGuard | None) -> None:
    real, fake = objective.pair
    with fabric.autocast():
        loss = objective.discriminator_loss(discriminator, real, fake).float()
    if guard is not None and not bool(torch.isfinite(loss)):
        raise guard.fail(f"the discriminator's loss is {loss.item()} (not finite)")
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    if grad_clip:
        fabric.clip_gradients(discriminator, optimizer, max_norm=grad_clip, error_if_nonfinite=guard is None)
    optimizer.step()
    objective.last_loss = loss.detach()


def fit(
    config: Config | dict | str | Path | None = None,
    *,
    run_dir: str | Path | None = "from-config",
    resume: str | Path | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
    prior: Any = None,
    likelihood: Any = None,
    encoder: Any = None,
    decoder: Any = None,
    model: Any = None,
    trust_code: bool = False,
) -> FitResult:
    """Train a VAE, or any Pyro model and guide, with SVI.

    Args:
        config: A :class:`~pyro_vae.runs.config.Config`, a mapping, a YAML path, or ``None``
            for the embedded default (digits).
        run_dir: Where to write; ``"from-config"`` uses ``config.out``; ``None`` writes nothing.
        resume: A run directory (or checkpoint) to continue. Its own config is used,
            except that ``config.train.epochs``, when given, may extend the run.
        progress: Report progress: a bar with the running loss on a terminal, one line per
            epoch (loss, validation ELBO, time) on stderr otherwise.
        dataset: Use this dataset instead of loading ``config.data``.
        prior: A ready prior (anything :class:`~pyro_vae.models.vae.VAE` accepts) replacing the
            config's; recorded in the checkpoint by import path and settings when it can be.
        likelihood: A ready likelihood, likewise.
        encoder: A ready encoder module, likewise.
        decoder: A ready decoder module, likewise.
        model: A ready model to train instead of building one from the config: a
            :class:`~pyro_vae.models.vae.VAE` (or subclass), whose structure and parts are
            recorded into the run's config, or any ``nn.Module`` with Pyro ``model(x)`` and
            ``guide(x)`` whose latent sites lie in the data plate, recorded as
            ``model: {name: "package.module:Class", **settings}`` (its settings are known
            when it subclasses :class:`~pyro_vae.core.records.RecordsSettings`).
        trust_code: With ``resume``, import the run's recorded import paths even though
            this user did not write or trust it (see :mod:`pyro_vae.runs.trust`).

    Returns:
        A :class:`FitResult`.

    Raises:
        TrainingDivergedError: The loss became non-finite or exploded; nothing diverged was saved.
    """
    objects = {"prior": prior, "likelihood": likelihood, "encoder": encoder, "decoder": decoder}
    if model is not None and any(v is not None for v in objects.values()):
        raise ValueError("pass either model= or the stock VAE's parts (prior=, likelihood=, encoder=, decoder=), not both.")
    objects["model"] = model
    state, source = None, None
    if resume is not None:
        source, state = runs.read_checkpoint(resume, "last", trust_code,
                                             require=("config", "model", "optimizer", "epoch", "rng", "history"))
        run_dir = runs.run_home(source)
        cfg, changes = _resume_config(state, config, source)
        done = state["epoch"]
        if cfg.train.epochs <= done:
            # Nothing to train: say so (FitResult.epochs_trained == 0) and write nothing.
            vae, transform = runs.load_model(source, "last", trust_code, **objects)
            return FitResult(vae=vae, config=cfg, dataset=None, transform=transform, history=list(state["history"]),
                             run_dir=run_dir, epochs_trained=0)
        state["resumed_with"] = changes
    else:
        cfg = as_config(config)
        run_dir = Path(cfg.out) if run_dir == "from-config" else (Path(run_dir) if run_dir else None)
    tc = cfg.train

    fabric = make_fabric(tc, run_dir)
    fabric.launch()
    with ExitStack() as stack:
        if run_dir is not None and fabric.is_global_zero:  # before any expensive work: fail fast
            stack.enter_context(runs.locked_run_dir(run_dir))
        return _fit(cfg, fabric, run_dir, state, progress, dataset, source, objects)


# What a resumed run may change, and why the rest may not: a resume continues the run in the checkpoint.
RESUMABLE = ("train.epochs", "train.lr", "train.grad_clip", "train.patience", "train.devices", "train.accelerator",
             "train.num_nodes", "train.strategy", "train.logger", "train.metrics_max_points", "data.root", "data.download")
FIXED_BECAUSE = {
    "model": "it changes the model whose weights the checkpoint holds",
    "data": "it changes the data the run trains on",
    "train": "it changes how the run was planned (its steps, draws, objective or schedule), so the resumed run would "
             "not continue the one in the checkpoint",
}


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("settings",) and not key.endswith("_kwargs"):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _resume_config(state: dict, config: Any, source: Path) -> tuple[Config, dict[str, list]]:
    """The config a resumed run continues with, and what the caller changed: ``{path: [old, new]}``.

    ``config`` (a mapping, a Config, a YAML path or ``None``) states what to change; for a
    mapping only the keys it names count. Changes in :data:`RESUMABLE` are applied; any
    other is refused with the reason, as is a checkpoint whose config was edited after it ran.
    """
    recorded = state["config"]
    cfg = config_lib.from_dict(recorded)
    given = {} if config is None else config if isinstance(config, dict) else config_lib.to_dict(as_config(config))
    old, new = _flatten(recorded), _flatten(given)
    ran_at = _optimizer_lr(state)
    if "train.lr" not in new:  # an explicit rate replaces whatever the optimizer ran at
        _check_optimizer_matches(cfg, ran_at, source)
    changes = {path: [old.get(path), value] for path, value in new.items()
               if path != "out" and (old.get(path) != value or path == "train.lr")}
    if "train.lr" in changes:
        changes["train.lr"][0] = ran_at if ran_at is not None else cfg.train.lr
        if changes["train.lr"][0] == changes["train.lr"][1]:
            del changes["train.lr"]
    if not changes:
        return cfg, {}
    refused = [path for path in changes if path not in RESUMABLE]
    if refused:
        path = refused[0]
        raise ConfigError(
            f"cannot change {', '.join(f'{p} ({changes[p][0]!r} -> {changes[p][1]!r})' for p in refused)} when resuming "
            f"{str(runs.run_home(source))!r}: {FIXED_BECAUSE[path.split('.')[0]]}; start a new run (--out) instead. "
            f"A resume may change: {', '.join(RESUMABLE)}."
        )
    if "train.lr" in changes and cfg.train.lr_schedule != "none":
        raise ConfigError(f"cannot change train.lr when resuming a run with train.lr_schedule {cfg.train.lr_schedule!r}: "
                          "the schedule sets the rate of every step; start a new run (--out) instead.")
    raw = config_lib.to_dict(cfg)
    for path, (_, value) in changes.items():
        section, key = path.split(".", 1)
        raw[section][key] = value
    updated = config_lib.from_dict(raw)
    if "train.epochs" in changes:
        done = state["epoch"]
        if updated.train.epochs < done:
            raise ConfigError(f"{str(runs.run_home(source))!r} has trained {done} epochs; train.epochs "
                              f"{updated.train.epochs} cannot undo them: ask for more than {done} to continue it.")
        _check_extension(cfg.train, updated.train.epochs, done)
    return updated, changes


def _optimizer_lr(state: dict) -> float | None:
    """The base learning rate the checkpoint's optimizer ran at."""
    groups = state["optimizer"].get("param_groups") or [{}]
    return groups[0].get("initial_lr", groups[0].get("lr"))


def _check_optimizer_matches(cfg: Config, ran: float | None, source: Path) -> None:
    """Refuse a checkpoint whose recorded learning rate is not the one its optimizer ran at (an edited config)."""
    if ran is not None and not math.isclose(ran, cfg.train.lr, rel_tol=1e-9):
        raise CheckpointError(f"{str(source)!r}: its config says train.lr {cfg.train.lr:g} but its optimizer ran at "
                              f"{ran:g}, so the config was edited after the run; restore it, or change the rate "
                              "explicitly with --lr (train.lr) when resuming.")


def _check_extension(planned: TrainConfig, epochs: int, done: int) -> None:
    """Refuse to change the length of a run whose learning rates depend on it.

    ``none``, ``step`` and ``burda`` schedules are functions of the step alone, so a run
    extended on resume equals one planned with the final length from the start (tested
    bit for bit). Cosine's rate at every step depends on the planned total, so no
    extension of a cosine run can equal a run planned for the new length.
    """
    if planned.lr_schedule == "cosine" and epochs != planned.epochs and epochs > done:
        change = "extending" if epochs > planned.epochs else "shortening"
        raise ConfigError(
            f"train.lr_schedule 'cosine' was planned for {planned.epochs} epochs; {change} it to {epochs} would not "
            f"match a run planned for {epochs} from the start; start a new run or use 'step'/'burda'/'none'."
        )


def _fit(cfg: Config, fabric: Any, run_dir: Path | None, state: dict | None, progress: bool,
         dataset: Dataset | None, source: Path | None, objects: dict[str, Any]) -> FitResult:
    tc = cfg.train
    ready = objects.pop("model", None)
    if state is None:
        custom = record_model(cfg, ready) if ready is not None else record_parts(cfg, objects)
    else:
        custom = dict(state.get("custom_parts") or {})
        if ready is not None and "model" not in custom:
            raise ValueError("resume= continues a saved run; its model is rebuilt from the checkpoint, so drop model=.")
        runs.require_custom_parts(custom, {**objects, "model": ready}, source)
    pyro.set_rng_seed(tc.seed)
    dataset = dataset or load_data(cfg)
    selects_on_val = not (dataset.val_is_test or dataset.no_validation)
    if not selects_on_val and tc.patience is not None:
        why = "no validation split (data.val_fraction: 0)" if dataset.no_validation else \
            "no separate validation split (validation is the test split)"
        raise ConfigError(
            f"dataset {cfg.data.name!r} has {why}, so early stopping cannot select on it; remove train.patience."
        )
    with pyro.settings.context(module_local_params=True):
        vae = ready if ready is not None else build_model(cfg, dataset, **objects)
    if not isinstance(vae, nn.Module) or not (callable(getattr(vae, "model", None)) and callable(getattr(vae, "guide", None))):
        raise TypeError(f"fit trains an nn.Module (e.g. a PyroModule) with Pyro model(x) and guide(x) methods; got "
                        f"{type(vae).__name__}.")
    shape = getattr(vae, "event_shape", None)
    if shape is not None and tuple(shape) != tuple(dataset.event_shape):
        raise ConfigError(f"the model's points have shape {tuple(shape)} but {cfg.data.name!r} has "
                          f"{tuple(dataset.event_shape)}; build it with event_shape={tuple(dataset.event_shape)}.")
    # A PyroModule must run in the parameter mode it was built in: ours are built with
    # module-local parameters; a ready VAE built outside that context keeps Pyro's global store.
    local_params = ready is None or hasattr(getattr(vae, "_pyro_context", None), "param_state")
    transform = build_transform(cfg, dataset, vae)
    probe = transform(dataset.train[:2000], train=False)
    check_data(vae, probe)
    # A model that breaks the protocol (a latent outside the data plate, nothing observed, model and guide
    # disagreeing) is refused now, in one line naming the site, not after training when it is evaluated.
    check_protocol(vae.model, vae.guide, probe[: tc.batch_size])
    num_data = len(dataset.train)

    optimizer = build_optimizer(tc, vae.parameters())
    per_rank = math.ceil(len(dataset.train) / fabric.world_size)
    steps_per_epoch = math.ceil(per_rank / tc.batch_size)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)
    module, optimizer = fabric.setup(TrainingLoss(vae), optimizer)
    objective = build_objective(tc)
    adversary, discriminator = None, None
    if isinstance(objective, Adversarial):
        discriminator = objective.bind(vae)
        adversary = fabric.setup(discriminator, build_optimizer(replace(tc, lr=tc.adversary_lr or tc.lr),
                                                                discriminator.parameters()))
        # None of them trains the ELBO (the GAN not even its encoder): the validation ELBO through their
        # encoder is a loose bound that can fall while the model improves, so best.pt is the last epoch.
        selects_on_val = False

    history: list[dict] = []
    resumes: list[dict] = []  # each resume of this run: the epoch it continued from and what it changed
    start_epoch, global_step, best, bad_epochs = 0, 0, -math.inf, 0
    guard = DivergenceGuard(lr=tc.lr, last_good="no checkpoint was written (no epoch finished)" if run_dir is not None
                            else "nothing was saved (run_dir=None)")
    if state is not None:
        runs.load_weights(vae, state["model"], source)
        runs.load_weights(optimizer, state["optimizer"], source, "optimizer")
        if scheduler is not None and state.get("scheduler"):
            runs.load_weights(scheduler, state["scheduler"], source, "lr schedule")
        start_epoch, global_step = state["epoch"], state["global_step"]
        history, best, bad_epochs = list(state["history"]), state["best_val_elbo"], state["bad_epochs"]
        if adversary is not None:
            if "adversary" not in state:
                raise ConfigError(f"{source} holds no discriminator, so it was not trained with train.objective "
                                  f"{tc.objective!r}; resume it with the objective it was trained with.")
            runs.load_weights(discriminator, state["adversary"], source, "discriminator")
            runs.load_weights(adversary[1], state["adversary_optimizer"], source, "discriminator optimizer")
        guard.reference = state.get("loss_reference")
        guard.last_good = f"{source} keeps epoch {start_epoch}, the last good one"
        restore_rng(state["rng"])
        changes = state.get("resumed_with") or {}
        if "train.lr" in changes:  # the checkpoint's optimizer carries the old rate; the new one is the caller's
            for group in optimizer.param_groups:
                group["lr"] = tc.lr
        resumes = [*state.get("resumes", []), {"epoch": start_epoch, "changed": changes}]
    if run_dir is not None and fabric.is_global_zero:
        runs.prepare_run_dir(run_dir, cfg)

    # Under 64-true Fabric has made the parameters float64; the (float32) transformed data follows them.
    dtype = next(vae.parameters()).dtype
    train_x = dataset.train.to(fabric.device)
    # Evaluation draws are fixed, so the metric sets are transformed once, not every epoch.
    metric_x = transform(train_x[: tc.metrics_max_points], train=False).to(dtype)
    val_x = transform(dataset.val.to(fabric.device), train=False).to(dtype) if len(dataset.val) else dataset.val
    warmup_steps = tc.warmup_epochs * steps_per_epoch
    beta = tc.beta
    seen = 0
    # On a terminal a bar; into a log file (CI, nohup, a cluster job) one plain line per epoch instead.
    report = progress and fabric.is_global_zero
    on_terminal = report and is_terminal()
    bar = tqdm(total=(tc.epochs - start_epoch) * steps_per_epoch, disable=not on_terminal, desc="train", unit="step",
               ncols=bar_width())
    with pyro.settings.context(module_local_params=local_params), bar:
        for epoch in range(start_epoch, tc.epochs):
            tic, loss_sum, disc_sum, batches = time.perf_counter(), 0.0, 0.0, 0
            vae.train()
            for x_raw in iterate_minibatches(train_x, tc.batch_size, seed=tc.seed, epoch=epoch,
                                             rank=fabric.global_rank, world_size=fabric.world_size):
                beta = tc.beta * min(1.0, (global_step + 1) / warmup_steps) if warmup_steps > 0 else tc.beta
                guard.epoch, guard.step = epoch + 1, global_step + 1
                loss = train_step(fabric, module, optimizer, objective, transform(x_raw, train=True).to(dtype), tc.grad_clip,
                                  guard, num_data, adversary, beta)
                if adversary is not None:
                    disc_sum += objective.last_loss.item()
                if scheduler is not None:
                    scheduler.step()
                global_step, batches, seen = global_step + 1, batches + 1, seen + len(x_raw)
                loss_sum += loss.item() / num_data
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / batches:.3f}")
            vae.eval()
            train_m = epoch_metrics(vae, metric_x, None, fabric)
            val_m = epoch_metrics(vae, val_x, None, fabric) if len(val_x) else {"elbo": math.nan, "reconstruction": math.nan, "kl": math.nan}
            # Before anything is saved: checkpoints never receive non-finite parameters.
            guard.check_epoch(vae, {"train": train_m["elbo"], **({"validation": val_m["elbo"]} if len(val_x) else {})})
            if discriminator is not None:
                guard.check_epoch(discriminator, {})
            row = {"epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[0]["lr"], "beta": beta,
                   "train_loss": loss_sum / max(batches, 1),
                   **({"train_discriminator_loss": disc_sum / max(batches, 1)} if adversary is not None else {}),
                   **{f"train_{k}": v for k, v in train_m.items()}, **{f"val_{k}": v for k, v in val_m.items()},
                   "seconds": time.perf_counter() - tic}
            history.append(row)
            if report and not on_terminal:
                print(f"train epoch {epoch + 1}/{tc.epochs}: loss {row['train_loss']:.3f}, validation ELBO "
                      f"{row['val_elbo']:.3f} nats/point, {row['seconds']:.1f} s", file=sys.stderr, flush=True)
            # To Fabric's loggers (TensorBoard), if any; metrics.csv is written below regardless.
            fabric.log_dict({k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}, step=epoch + 1)
            # Where validation is the test split, "best" would be chosen on the test set: keep only the last.
            improved = selects_on_val and val_m["elbo"] > best
            best, bad_epochs = (val_m["elbo"], 0) if improved else (best, bad_epochs + 1)
            stop = tc.patience is not None and bad_epochs >= tc.patience
            if run_dir is not None:
                recorded = config_lib.to_dict(cfg)
                # Signed with this user's key: rebuilding the run here needs no --trust-code.
                ckpt = {"config": recorded, "signature": sign(recorded), "model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler else None, "epoch": epoch + 1,
                        "global_step": global_step, "rng": capture_rng(), "history": history,
                        "best_val_elbo": best, "bad_epochs": bad_epochs, "data_shape": DataShape.of(dataset).to_dict(), "custom_parts": custom,
                        "loss_reference": guard.reference, "resumes": resumes}
                if adversary is not None:
                    ckpt.update(adversary=discriminator.state_dict(), adversary_optimizer=adversary[1].state_dict())
                if fabric.is_global_zero:
                    runs.save_epoch(run_dir, ckpt, improved)
                    runs.write_metrics(run_dir, history)
                    if resumes:
                        (run_dir / "resumes.json").write_text(json.dumps(resumes, indent=2))
                fabric.barrier()
                guard.last_good = f"{run_dir / runs.CHECKPOINT} keeps epoch {epoch + 1}, the last good one"
            if stop:
                break

    if adversary is not None and fabric.is_global_zero:
        check_balance(tc.objective, history)
    for logger in fabric.loggers:  # flush the event files before the run is read back
        logger.finalize("success")
    ddp = None
    if fabric.world_size > 1:
        trained = [*vae.parameters(), *(discriminator.parameters() if discriminator is not None else ())]
        flat = torch.cat([p.detach().flatten() for p in trained])
        gathered = fabric.all_gather(flat)
        seen_all = fabric.all_reduce(torch.tensor(float(seen), device=fabric.device), reduce_op="sum")
        ddp = {"world_size": fabric.world_size, "max_param_diff": (gathered - gathered[0]).abs().max().item(),
               "examples_seen": int(seen_all.item())}
        if run_dir is not None and fabric.is_global_zero:
            (run_dir / "ddp.json").write_text(json.dumps(ddp, indent=2))
    result = FitResult(vae=vae, config=cfg, dataset=dataset, transform=transform, history=history, run_dir=run_dir, ddp=ddp,
                       epochs_trained=len(history) - start_epoch)
    if run_dir is not None and fabric.is_global_zero and history:
        runs.save_run_pictures(result)
    return result
