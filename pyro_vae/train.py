"""Training: config -> data -> VAE -> SVI on Lightning Fabric -> run directory.

One code path runs on one CPU (the default) or with DDP on several devices or nodes:
the loss is computed inside ``VAE.forward`` so Fabric's DDP wrapper all-reduces the
gradients, each rank draws its own shard of every epoch, and only rank 0 writes.

The run directory holds ``config.yaml``, ``checkpoint.pt`` (latest, for ``--resume``),
``best.pt`` (best validation ELBO), ``metrics.csv``/``metrics.json`` and pictures.

Example:
    >>> result = fit({"train": {"epochs": 1}}, run_dir=None, progress=False)  # doctest: +SKIP
    >>> result.history[-1]["val_elbo"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from . import config as config_lib
from . import runs
from .build import (DataShape, as_config, build_objective, build_optimizer, build_scheduler, build_transform,
                    build_vae, load_data, make_fabric)
from .checkpoint import capture_rng, load_checkpoint, restore_rng
from .config import Config, ConfigError
from .data import Dataset
from .runs import load_run
from .transforms import DataTransform, iterate_minibatches
from .vae import VAE

# build_* and load_run are re-exported: they were defined here before pyro_vae.build and pyro_vae.runs.
__all__ = ["FitResult", "fit", "train_step", "epoch_metrics", "build_vae", "build_transform", "build_objective",
           "build_optimizer", "load_run"]


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, its data pipeline and history."""

    vae: VAE
    config: Config
    dataset: Dataset
    transform: DataTransform
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    ddp: dict | None = None


@torch.no_grad()
def epoch_metrics(vae: VAE, x_raw: torch.Tensor, transform: DataTransform | None, fabric=None,
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
        recon, kl, _ = vae.elbo_terms(x)
        totals += torch.stack([recon.sum(), kl.sum(), torch.tensor(float(len(x)), device=recon.device)]).double()
    if fabric is not None and world > 1:
        totals = fabric.all_reduce(totals, reduce_op="sum")
    recon, kl, n = totals.tolist()
    return {"elbo": (recon - kl) / n, "reconstruction": recon / n, "kl": kl / n}


def train_step(fabric, module, optimizer: torch.optim.Optimizer, objective, x: torch.Tensor,
               grad_clip: float | None = None) -> torch.Tensor:
    """One SVI step: loss, backward (all-reduced under DDP), optional clipping, update."""
    loss = module(x, objective)
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    if grad_clip:
        fabric.clip_gradients(module, optimizer, max_norm=grad_clip)
    optimizer.step()
    return loss.detach()


def fit(
    config: Config | dict | str | Path | None = None,
    *,
    run_dir: str | Path | None = "from-config",
    resume: str | Path | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> FitResult:
    """Train a VAE with SVI.

    Args:
        config: A :class:`~pyro_vae.config.Config`, a mapping, a YAML path, or ``None``
            for the embedded default (digits).
        run_dir: Where to write; ``"from-config"`` uses ``config.out``; ``None`` writes nothing.
        resume: A run directory (or checkpoint) to continue. Its own config is used,
            except that ``config.train.epochs``, when given, may extend the run.
        progress: Show a tqdm bar with the running loss.
        dataset: Use this dataset instead of loading ``config.data``.

    Returns:
        A :class:`FitResult`.
    """
    state = None
    if resume is not None:
        state = load_checkpoint(resume, require=("config", "model", "optimizer", "epoch", "rng", "history"))
        cfg = config_lib.from_dict(state["config"])
        if config is not None:
            cfg.train.epochs = as_config(config).train.epochs
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    else:
        cfg = as_config(config)
        run_dir = Path(cfg.out) if run_dir == "from-config" else (Path(run_dir) if run_dir else None)
    tc = cfg.train

    fabric = make_fabric(tc)
    fabric.launch()
    with ExitStack() as stack:
        if run_dir is not None and fabric.is_global_zero:  # before any expensive work: fail fast
            stack.enter_context(runs.locked_run_dir(run_dir))
        return _fit(cfg, fabric, run_dir, state, progress, dataset)


def _fit(cfg: Config, fabric: Any, run_dir: Path | None, state: dict | None, progress: bool,
         dataset: Dataset | None) -> FitResult:
    tc = cfg.train
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
        vae = build_vae(cfg, dataset)
    transform = build_transform(cfg, dataset, vae)
    vae.check_data(transform(dataset.train[:2000], train=False))
    vae.num_data = len(dataset.train)

    optimizer = build_optimizer(tc, vae.parameters())
    per_rank = math.ceil(len(dataset.train) / fabric.world_size)
    steps_per_epoch = math.ceil(per_rank / tc.batch_size)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)
    module, optimizer = fabric.setup(vae, optimizer)
    objective = build_objective(tc)

    history: list[dict] = []
    start_epoch, global_step, best, bad_epochs = 0, 0, -math.inf, 0
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, global_step = state["epoch"], state["global_step"]
        history, best, bad_epochs = list(state["history"]), state["best_val_elbo"], state["bad_epochs"]
        restore_rng(state["rng"])
    if run_dir is not None and fabric.is_global_zero:
        runs.prepare_run_dir(run_dir, cfg)

    train_x = dataset.train.to(fabric.device)
    # Evaluation draws are fixed, so the metric sets are transformed once, not every epoch.
    metric_x = transform(train_x[: tc.metrics_max_points], train=False)
    val_x = transform(dataset.val.to(fabric.device), train=False) if len(dataset.val) else dataset.val
    warmup_steps = tc.warmup_epochs * steps_per_epoch
    seen = 0
    bar = tqdm(total=(tc.epochs - start_epoch) * steps_per_epoch, disable=not (progress and fabric.is_global_zero),
               desc="train", unit="step")
    with pyro.settings.context(module_local_params=True):
        for epoch in range(start_epoch, tc.epochs):
            tic, loss_sum, batches = time.perf_counter(), 0.0, 0
            vae.train()
            for x_raw in iterate_minibatches(train_x, tc.batch_size, seed=tc.seed, epoch=epoch,
                                             rank=fabric.global_rank, world_size=fabric.world_size):
                vae.beta = tc.beta * min(1.0, (global_step + 1) / warmup_steps) if warmup_steps > 0 else tc.beta
                loss = train_step(fabric, module, optimizer, objective, transform(x_raw, train=True), tc.grad_clip)
                if scheduler is not None:
                    scheduler.step()
                global_step, batches, seen = global_step + 1, batches + 1, seen + len(x_raw)
                loss_sum += loss.item() / vae.num_data
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / batches:.3f}")
            vae.eval()
            train_m = epoch_metrics(vae, metric_x, None, fabric)
            val_m = epoch_metrics(vae, val_x, None, fabric) if len(val_x) else {"elbo": math.nan, "reconstruction": math.nan, "kl": math.nan}
            row = {"epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[0]["lr"], "beta": vae.beta,
                   "train_loss": loss_sum / max(batches, 1),
                   **{f"train_{k}": v for k, v in train_m.items()}, **{f"val_{k}": v for k, v in val_m.items()},
                   "seconds": time.perf_counter() - tic}
            history.append(row)
            # Where validation is the test split, "best" would be chosen on the test set: keep only the last.
            improved = selects_on_val and val_m["elbo"] > best
            best, bad_epochs = (val_m["elbo"], 0) if improved else (best, bad_epochs + 1)
            stop = tc.patience is not None and bad_epochs >= tc.patience
            if run_dir is not None:
                ckpt = {"config": asdict(cfg), "model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler else None, "epoch": epoch + 1,
                        "global_step": global_step, "rng": capture_rng(), "history": history,
                        "best_val_elbo": best, "bad_epochs": bad_epochs, "data_shape": DataShape.of(dataset).to_dict()}
                if fabric.is_global_zero:
                    runs.save_epoch(run_dir, ckpt, improved)
                    runs.write_metrics(run_dir, history)
                fabric.barrier()
            if stop:
                break
    bar.close()

    ddp = None
    if fabric.world_size > 1:
        flat = torch.cat([p.detach().flatten() for p in vae.parameters()])
        gathered = fabric.all_gather(flat)
        seen_all = fabric.all_reduce(torch.tensor(float(seen), device=fabric.device), reduce_op="sum")
        ddp = {"world_size": fabric.world_size, "max_param_diff": (gathered - gathered[0]).abs().max().item(),
               "examples_seen": int(seen_all.item())}
        if run_dir is not None and fabric.is_global_zero:
            (run_dir / "ddp.json").write_text(json.dumps(ddp, indent=2))
    result = FitResult(vae=vae, config=cfg, dataset=dataset, transform=transform, history=history, run_dir=run_dir, ddp=ddp)
    if run_dir is not None and fabric.is_global_zero and history:
        runs.save_run_pictures(result)
    return result
