"""Per-datapoint log-likelihoods by annealed importance sampling (AIS) with HMC transitions.

For each datapoint ``x_i`` and each of ``chains`` independent chains, AIS (Neal, 2001)
draws ``z_0 ~ q0`` (the guide ``q(z|x_i)``, or the prior) and moves it through the
bridges ``f_t(z) = q0(z)^(1-β_t) p(x_i, z)^β_t``, ``0 = β_0 < ... < β_T = 1``,
accumulating ``log w = Σ_t (β_t - β_{t-1}) (log p(x_i, z_{t-1}) - log q0(z_{t-1}))``
with one HMC transition leaving ``f_t`` invariant between increments (see
:mod:`pyro_vae.estimators.hmc`). ``E[w] = p(x_i)``, so ``log p̂(x_i) = logmeanexp`` over the chains
is a stochastic lower bound that tightens as ``T`` grows (Wu et al., 2017, used
``T`` up to 10 000 with a sigmoid schedule, 16 chains and 10 leapfrog steps).

The chains run in unconstrained space: a latent site with a constrained support is
mapped by ``biject_to(support)`` and the log-Jacobian is added to both ``log p`` and
``log q0``, so the weights are those of the constrained model. ``method="fused"``
computes the stock :class:`~pyro_vae.models.vae.VAE`'s densities directly
(:func:`~pyro_vae.models.target.log_joint`); ``"trace"`` reads them off Pyro traces of any
model and guide whose sample sites lie in the data plate. Both take the same random
draws and give the same numbers (tested).

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=[8])
    >>> res = ais(vae, torch.rand(3, 4), steps=10, chains=4, leapfrog=2, seed=0)
    >>> res.log_px.shape, res.log_weights.shape, res.grad_evals
    (torch.Size([3]), torch.Size([3, 4]), 285)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to

from pyro_vae.estimators.hmc import ADAPT_MODES, SCHEDULES, LogTerms, anneal, beta_schedule
from pyro_vae.models.target import PARTICLE_PLATE, log_joint, trace_log_terms, use_fused
from pyro_vae.estimators.harness import (
    evaluation_mode,
    gather_points,
    points_of_rank,
    rank_and_world,
    release_freed_memory,
    seeded,
    shard_to_device,
)
from pyro_vae.core.progress import progress_bar
from pyro_vae.results.report import json_safe
from pyro_vae.core.stats import LogLikelihood, dataset_figure, logmeanexp, logmeanexp_mc_se
from pyro_vae.core.units import Representation, of_model

__all__ = ["AISResult", "Settings", "ais", "run_chains", "INITS"]

INITS = ("guide", "prior")


@dataclass
class Settings:
    """The sampler settings shared by :func:`ais` and :func:`pyro_vae.estimators.bdmc.bdmc` (see :func:`ais`).

    Example:
        >>> Settings(steps=10, chains=8).pilots
        2
    """

    steps: int = 100
    chains: int = 16
    leapfrog: int = 10
    schedule: str = "sigmoid"
    init: str = "guide"
    step_size: float = 0.05
    target_accept: float = 0.65
    adapt: str = "pilot"
    pilots: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "chains", "leapfrog"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name, allowed in (("schedule", SCHEDULES), ("init", INITS), ("adapt", ADAPT_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not (self.step_size > 0 and 0 < self.target_accept < 1):
            raise ValueError(f"need step_size > 0 and 0 < target_accept < 1, got {self.step_size}, {self.target_accept}.")
        if self.adapt != "pilot":
            self.pilots = 0
        elif self.pilots is None:
            self.pilots = max(1, self.chains // 4)  # +25% of the work buys step sizes free of the chains' own paths
        elif self.pilots < 1:
            raise ValueError(f"adapt='pilot' needs pilots >= 1, got {self.pilots}.")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Target:
    """A batch's annealing target: ``terms`` for chains ``(R, B, D)``, and the map of exact latents to ``z``."""

    terms: Callable[[Tensor], LogTerms]
    flatten: Callable[[dict[str, Tensor]], Tensor]


def _split_grads(z: Tensor, log_p_of: Callable[[Tensor], tuple[Tensor, Tensor]]) -> LogTerms:
    """Evaluate ``(log p, log q0)`` at ``z`` and both gradients: one backward pass through the decoder.

    Validation is off: a leapfrog proposal may leave a support numerically (``exp(u)``
    underflowing to 0), which must give a non-finite density that the Metropolis test
    rejects, not an exception. The data were validated when the target was built.
    """
    with torch.enable_grad(), pyro.validation_enabled(False):
        leaf = z.detach().requires_grad_(True)
        log_p, log_q = log_p_of(leaf)
        # log q0 first, keeping the graph: its backward is cheap and never reaches the decoder.
        grad_q = torch.autograd.grad(log_q.sum(), leaf, retain_graph=True)[0]
        grad_p = torch.autograd.grad(log_p.sum(), leaf)[0]
    return LogTerms(log_p.detach(), log_q.detach().expand_as(log_p), grad_p, grad_q)


def _fused_target(vae: Any, x: Tensor, init: str, rows: int) -> tuple[_Target, Tensor]:
    q0 = vae.encode(x) if init == "guide" else vae.prior()
    # rsample: the recipe the traced guide (or model) uses, so both paths start from the same draws.
    shape = (rows,) if init == "guide" else (rows, x.shape[0])
    z0 = q0.rsample(shape) if q0.has_rsample else q0.sample(shape)
    terms = lambda z: _split_grads(z, lambda leaf: (log_joint(vae, x, leaf), q0.log_prob(leaf)))  # noqa: E731
    return _Target(terms, lambda latents: latents["z"]), z0


@dataclass
class _Site:
    name: str
    transform: Any
    shape: tuple[int, ...]  # unconstrained event shape
    start: int
    stop: int


def _trace_target(vae: Any, x: Tensor, init: str, rows: int) -> tuple[_Target, Tensor]:
    b = x.shape[0]
    fn = vae.guide if init == "guide" else vae.model
    with pyro.plate(PARTICLE_PLATE, rows, dim=-2):
        trace = poutine.trace(fn).get_trace(x)
    sites, pieces, start = [], [], 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if tuple(site["value"].shape[:2]) != (rows, b):
            raise ValueError(f"Site {name!r} has shape {tuple(site['value'].shape)}: AIS needs every latent site in "
                             "the data plate (per-datapoint chains cannot share a global latent).")
        try:
            t = biject_to(site["fn"].support)
        except NotImplementedError:
            raise ValueError(f"Site {name!r} has support {site['fn'].support}: HMC needs continuous latents.") from None
        u = t.inv(site["value"]).detach()
        size = math.prod(u.shape[2:])
        sites.append(_Site(name, t, tuple(u.shape[2:]), start, start + size))
        pieces.append(u.reshape(rows, b, size))
        start += size

    def unflatten(z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        values, log_det = {}, torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
        for s in sites:
            u = z[..., s.start : s.stop].reshape(*z.shape[:2], *s.shape)
            values[s.name] = v = s.transform(u)
            log_det = log_det + s.transform.log_abs_det_jacobian(u, v).reshape(*z.shape[:2], -1).sum(-1)
        return values, log_det

    def log_p_of(z: Tensor) -> tuple[Tensor, Tensor]:
        values, log_det = unflatten(z)
        log_prior, log_lik = trace_log_terms(vae.model, x, values)
        # With q0 = prior, log q0 is the model's own latent term: no second pass through the decoder.
        log_q = trace_log_terms(vae.guide, x, values)[0] if init == "guide" else log_prior
        return log_prior + log_lik + log_det, log_q + log_det

    def flatten(latents: dict[str, Tensor]) -> Tensor:
        return torch.cat([s.transform.inv(latents[s.name]).reshape(b, -1) for s in sites], dim=-1)

    return _Target(lambda z: _split_grads(z, log_p_of), flatten), torch.cat(pieces, dim=-1)


def _batch(vae: Any, x: Tensor, exact: dict[str, Tensor] | None, cfg: Settings, fused: bool,
           tick: Callable[[], None] | None) -> dict[str, Tensor]:
    """Forward AIS (and, given exact latents, reverse AIS) on one batch; per-point figures."""
    rows = cfg.chains + cfg.pilots
    target, z0 = (_fused_target if fused else _trace_target)(vae, x, cfg.init, rows)
    betas = beta_schedule(cfg.steps, cfg.schedule)
    fwd = anneal(target.terms, z0, betas, cfg.step_size, leapfrog=cfg.leapfrog, target_accept=cfg.target_accept,
                 adapt=cfg.adapt, pilots=cfg.pilots, callback=tick)
    lw = fwd.log_weights.T.contiguous()  # (B, C)
    out = {"log_px": logmeanexp(lw, dim=-1), "mc_se": logmeanexp_mc_se(lw), "log_weights": lw,
           "accept_rate": fwd.accept_prob.mean(0).double(), "step_size": fwd.step_size.log().mean(0).exp().double(),
           "grad_evals": torch.full((x.shape[0],), float(rows * fwd.evaluations), dtype=torch.float64)}
    if exact is not None:
        # Reverse AIS from the exact posterior draw, β from 1 to 0, with the forward run's per-point
        # step sizes: fixed given x and independent of the exact z, as the upper bound requires.
        z = target.flatten(exact).unsqueeze(0).expand(cfg.chains, -1, -1).contiguous()
        rev = anneal(target.terms, z, betas.flip(0), cfg.step_size, leapfrog=cfg.leapfrog, adapt="none",
                     schedule=fwd.schedule.flip(0), callback=tick)
        s = -rev.log_weights.T.contiguous()  # forward orientation: E[exp(-s)] = 1 / p(x)
        out.update({"upper": -logmeanexp(-s, dim=-1), "upper_mc_se": logmeanexp_mc_se(-s), "reverse_log_weights": s,
                    "reverse_accept_rate": rev.accept_prob.mean(0).double(),
                    "reverse_grad_evals": torch.full((x.shape[0],), float(cfg.chains * rev.evaluations),
                                                     dtype=torch.float64)})
    return {k: v.double() for k, v in out.items()}


def run_chains(vae: Any, x: Tensor, cfg: Settings, *, exact: dict[str, Tensor] | None = None,
               batch_size: int | None = None, fabric: Any = None, seed: int | None = None, method: str = "auto",
               progress: bool | None = False) -> tuple[dict[str, Tensor], str, int]:
    """Shard, batch and run the chains; the per-point figures gathered in the original order.

    The driver of :func:`ais` and :func:`pyro_vae.estimators.bdmc.bdmc`. Returns ``(per_point,
    method, world_size)``; ``exact`` (``{site: (N, ...)}``) adds the reverse chains.
    """
    fused = use_fused(vae, method)
    total = x.shape[0]
    rank, world = rank_and_world(fabric)
    shard, device = shard_to_device(vae, x, fabric)
    exact_shard = None if exact is None else {k: points_of_rank(v, fabric).to(device) for k, v in exact.items()}
    batch_size = batch_size or 100
    passes = 1 if exact is None else 2
    total_steps = passes * cfg.steps * math.ceil(len(shard) / batch_size)
    parts = []
    with seeded(seed, rank, device), torch.no_grad(), evaluation_mode(vae), \
            progress_bar(total_steps, "AIS" if exact is None else "BDMC", "step", progress, rank) as bar:
        for start in range(0, len(shard), batch_size):
            sl = slice(start, start + batch_size)
            ex = None if exact_shard is None else {k: v[sl] for k, v in exact_shard.items()}
            parts.append(_batch(vae, shard[sl], ex, cfg, fused, bar.update))
            release_freed_memory()
    per_point = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if world > 1:
        per_point = {k: gather_points(fabric, v, total) for k, v in per_point.items()}
    return {k: v.cpu() for k, v in per_point.items()}, "fused" if fused else "trace", world


@dataclass
class AISResult:
    """Per-datapoint AIS estimates (nats per point) and how they were made.

    Attributes:
        log_px: ``log p̂(x_i) = logmeanexp_c log w_ic``, shape ``(N,)``; a stochastic lower bound.
        mc_se: Delta-method Monte Carlo standard error of ``log_px`` from the chains'
            normalized weights, ``sqrt(sum_c wbar_c² - 1/C)`` (as in importance sampling).
        accept_rate: Mean Metropolis acceptance probability over chains and transitions.
        step_size: Final step size (geometric mean over chains).
        log_weights: AIS log-weights ``(N, chains)``.
        settings: The sampler settings (steps, chains, leapfrog, schedule, init, adaptation).
        num_dims: Dimensions of one datapoint, for bits/dim.
        levels: Quantization levels when ``log_px`` is a density on dequantized data.
        method: ``"fused"`` or ``"trace"``.
        seconds: Wall time.
        grad_evals: Log-joint gradient evaluations (one decoder forward and backward for
            one chain of one point), pilots included: ``N (chains + pilots) (1 + (T - 1) leapfrog)``.
        world_size: Number of processes that shared the work.
        representation: What data ``log_px`` scores (see :mod:`pyro_vae.core.units`).
    """

    log_px: Tensor
    mc_se: Tensor
    accept_rate: Tensor
    step_size: Tensor
    log_weights: Tensor
    settings: Settings
    num_dims: int
    levels: int | None = None
    method: str = "fused"
    seconds: float = 0.0
    grad_evals: int = 0
    world_size: int = 1
    representation: Representation = field(default_factory=lambda: Representation("unknown"))
    extra: dict = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return self.log_px.numel()

    @property
    def log_likelihood(self) -> LogLikelihood:
        """The estimates as the :class:`~pyro_vae.core.stats.LogLikelihood` every estimator returns."""
        return LogLikelihood("ais", self.log_px, self.num_dims, self.levels, mc_se=self.mc_se,
                             extra={"ais": self.settings.to_dict()}, representation=self.representation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary figures."""
        figure = dataset_figure(self.log_px, self.mc_se, self.num_dims, self.levels)
        return json_safe({
            "estimator": "ais", "num_points": self.num_points, "num_dims": self.num_dims, "levels": self.levels,
            "representation": str(self.representation), "units": "nats per point",
            "method": self.method, "world_size": self.world_size, "seconds": self.seconds, "grad_evals": self.grad_evals,
            "settings": self.settings.to_dict(), "log_likelihood": figure,
            "accept_rate": {"mean": self.accept_rate.mean().item(), "min": self.accept_rate.min().item()},
            "step_size": {"mean": self.step_size.mean().item(), "min": self.step_size.min().item(),
                          "max": self.step_size.max().item()},
            **self.extra,
        })

    def summary(self) -> str:
        """A few human-readable lines."""
        d, s = self.to_dict(), self.settings
        ll, acc = d["log_likelihood"], d["accept_rate"]
        return "\n".join([
            f"AIS: N={self.num_points} points, T={s.steps} ({s.schedule}), {s.chains} chains (+{s.pilots} pilots), "
            f"{s.leapfrog} leapfrog, init={s.init}, adapt={s.adapt} ({self.method}, {self.seconds:.1f} s)",
            f"  log p(x) (AIS)  {ll['mean']:10.3f} ± {ll['se']:.3f} nats  (MC SE {ll['mc_se']:.4f})  "
            f"{ll['bits_per_dim']:.4f} bits/dim",
            f"  accept {acc['mean']:.3f} mean, {acc['min']:.3f} min; step size {d['step_size']['mean']:.3g}; "
            f"{self.grad_evals:.3g} gradient evaluations",
        ])

    def __str__(self) -> str:
        return self.summary()


def ais(vae: Any, x: Tensor, *, steps: int = 100, chains: int = 16, leapfrog: int = 10, schedule: str = "sigmoid",
        init: str = "guide", step_size: float = 0.05, target_accept: float = 0.65, adapt: str = "pilot",
        pilots: int | None = None, batch_size: int | None = None, levels: int | None = None, fabric: Any = None,
        seed: int | None = None, method: str = "auto", progress: bool | None = False) -> AISResult:
    """Estimate ``log p(x_i)`` of every point by AIS with HMC transitions.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE`, or any object with Pyro ``model(x)`` and
            ``guide(x)`` whose sample sites all lie in the data plate.
        x: Model-space data ``(N, *event_shape)``.
        steps: ``T``, the number of annealing increments (``T - 1`` HMC transitions).
        chains: Independent chains per point.
        leapfrog: Leapfrog steps per HMC transition.
        schedule: ``"sigmoid"`` or ``"linear"`` (see :func:`pyro_vae.estimators.hmc.beta_schedule`).
        init: ``"guide"`` (``q0 = q(z|x)``) or ``"prior"`` (``q0 = p(z)``).
        step_size: Initial leapfrog step size (in unconstrained latent space).
        target_accept: Acceptance probability the step sizes adapt toward.
        adapt: ``"pilot"`` (default: per-point step sizes driven by extra pilot chains whose
            weights are dropped, keeping every weight exactly unbiased), ``"chain"``
            (per-chain adaptation on the chain's own acceptances, as in Wu et al.; not
            covered by the AIS argument) or ``"none"``; see :func:`pyro_vae.estimators.hmc.anneal`.
        pilots: Pilot chains per point (default ``max(1, chains // 4)``).
        batch_size: Points per batch (default 100); memory grows with it times the chains.
        levels: Quantization levels if ``x`` is dequantized, for bits/dim.
        fabric: A launched Lightning ``Fabric``: rank ``r`` runs ``x[r::world]``; the
            results are gathered back into the original order on every rank.
        seed: Seed (rank ``r`` uses ``seed + r``); the global RNG is restored afterwards.
        method: ``"fused"``, ``"trace"`` or ``"auto"`` (fused for a stock VAE).
        progress: A progress bar with ETA (rank 0): ``True``, ``False`` or ``None`` (only on a terminal).

    Returns:
        An :class:`AISResult`.

    Raises:
        ValueError: Bad settings, or a latent site outside the data plate.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((3,), latent_dim=1, likelihood="gaussian", hidden=[])
        >>> res = ais(vae, torch.zeros(2, 3), steps=20, chains=3, leapfrog=3, seed=0)
        >>> print(res.summary().splitlines()[0])  # doctest: +ELLIPSIS
        AIS: N=2 points, T=20 (sigmoid), 3 chains (+1 pilots), 3 leapfrog, init=guide, adapt=pilot (fused, ... s)
    """
    cfg = Settings(steps, chains, leapfrog, schedule, init, step_size, target_accept, adapt, pilots)
    tic = time.perf_counter()
    per_point, used, world = run_chains(vae, x, cfg, batch_size=batch_size, fabric=fabric, seed=seed, method=method,
                                        progress=progress)
    return AISResult(per_point["log_px"], per_point["mc_se"], per_point["accept_rate"], per_point["step_size"],
                     per_point["log_weights"], cfg, getattr(vae, "num_dims", math.prod(x.shape[1:])), levels, used,
                     time.perf_counter() - tic, int(per_point["grad_evals"].sum().item()), world,
                     representation=of_model(vae, levels))
