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
``log q0``, so the weights are those of the constrained model. The densities come from
the target (:func:`pyro_vae.models.target.target_of`): ``method="trace"`` reads them off
Pyro traces of any model and guide that meet the protocol
(:func:`pyro_vae.models.target.check_protocol`: latents in the data plate, continuous);
``"fused"`` computes them with the kernels a model offers (the stock VAE's
:class:`~pyro_vae.models.fused.FusedVAE`). Both take the same random draws and give the
same numbers (tested). The batches, sharding and seeding are the harness's
(:func:`pyro_vae.estimators.harness.per_point`).

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
from torch import Tensor

from pyro_vae.core.stats import LogLikelihood, dataset_figure, logmeanexp, logmeanexp_mc_se
from pyro_vae.core.units import Representation, of_model
from pyro_vae.estimators.harness import per_point, rank_and_world
from pyro_vae.estimators.hmc import LogTerms, anneal, beta_schedule
from pyro_vae.estimators.settings import BATCH_SIZE, Settings
from pyro_vae.models.target import Annealing, target_of
from pyro_vae.results.report import json_safe

__all__ = ["AISResult", "ais", "run_chains"]


def _split_grads(z: Tensor, log_densities: Callable[[Tensor], tuple[Tensor, Tensor]]) -> LogTerms:
    """Evaluate ``(log p, log q0)`` at ``z`` and both gradients: one backward pass through the decoder.

    Validation is off: a leapfrog proposal may leave a support numerically (``exp(u)``
    underflowing to 0), which must give a non-finite density that the Metropolis test
    rejects, not an exception. The data were validated before the chains started.
    """
    with torch.enable_grad(), pyro.validation_enabled(False):
        leaf = z.detach().requires_grad_(True)
        log_p, log_q = log_densities(leaf)
        # log q0 first, keeping the graph: its backward is cheap and never reaches the decoder.
        grad_q = torch.autograd.grad(log_q.sum(), leaf, retain_graph=True)[0]
        grad_p = torch.autograd.grad(log_p.sum(), leaf)[0]
    return LogTerms(log_p.detach(), log_q.detach().expand_as(log_p), grad_p, grad_q)


def _batch(target: Any, x: Tensor, exact: dict[str, Tensor] | None, cfg: Settings,
           tick: Callable[[], None] | None) -> dict[str, Tensor]:
    """Forward AIS (and, given exact latents, reverse AIS) on one batch; per-point figures."""
    rows = cfg.chains + cfg.pilots
    path: Annealing = target.annealing(x, cfg.init, rows)
    if path.with_gradients is not None:  # the model's own kernels: no autograd graph per leapfrog step
        terms = lambda z: LogTerms(*path.with_gradients(z))  # noqa: E731
    else:
        terms = lambda z: _split_grads(z, path.log_densities)  # noqa: E731
    betas = beta_schedule(cfg.steps, cfg.schedule)
    fwd = anneal(terms, path.z0, betas, cfg.step_size, leapfrog=cfg.leapfrog, target_accept=cfg.target_accept,
                 adapt=cfg.adapt, pilots=cfg.pilots, callback=tick)
    lw = fwd.log_weights.T.contiguous()  # (B, C)
    out = {"log_px": logmeanexp(lw, dim=-1), "mc_se": logmeanexp_mc_se(lw), "log_weights": lw,
           "accept_rate": fwd.accept_prob.mean(0).double(), "step_size": fwd.step_size.log().mean(0).exp().double(),
           "grad_evals": torch.full((x.shape[0],), float(rows * fwd.evaluations), dtype=torch.float64)}
    if exact is not None:
        # Reverse AIS from the exact posterior draw, β from 1 to 0, with the forward run's per-point
        # step sizes: fixed given x and independent of the exact z, as the upper bound requires.
        z = path.flatten(exact).unsqueeze(0).expand(cfg.chains, -1, -1).contiguous()
        rev = anneal(terms, z, betas.flip(0), cfg.step_size, leapfrog=cfg.leapfrog, adapt="none",
                     schedule=fwd.schedule.flip(0), callback=tick)
        s = -rev.log_weights.T.contiguous()  # forward orientation: E[exp(-s)] = 1 / p(x)
        out.update({"upper": -logmeanexp(-s, dim=-1), "upper_mc_se": logmeanexp_mc_se(-s), "reverse_log_weights": s,
                    "reverse_accept_rate": rev.accept_prob.mean(0).double(),
                    "reverse_grad_evals": torch.full((x.shape[0],), float(cfg.chains * rev.evaluations),
                                                     dtype=torch.float64)})
    return {k: v.double() for k, v in out.items()}


def run_chains(model: Any, x: Tensor, cfg: Settings, *, exact: dict[str, Tensor] | None = None,
               batch_size: int | None = None, fabric: Any = None, seed: int | None = None, method: str = "auto",
               progress: bool | None = False) -> tuple[dict[str, Tensor], str]:
    """Check the model, then run the chains of every point through the harness; the per-point figures in order.

    The driver of :func:`ais` and :func:`pyro_vae.estimators.bdmc.bdmc`. Returns ``(per_point,
    method)``; ``exact`` (``{site: (N, ...)}``) adds the reverse chains.
    """
    target = target_of(model, method)
    batch_size = batch_size or BATCH_SIZE
    target.check(x, gradients=True, points=batch_size)
    passes = 1 if exact is None else 2
    figures = per_point(lambda batch, ex, tick: _batch(target, batch, ex or None, cfg, tick), model, x,
                        batch_size=batch_size, fabric=fabric, seed=seed, progress=progress,
                        desc="AIS" if exact is None else "BDMC", steps_per_batch=passes * cfg.steps, extra=exact)
    return figures, target.method


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


def ais(vae: Any, x: Tensor, *, steps: int = Settings.steps, chains: int = Settings.chains,
        leapfrog: int = Settings.leapfrog, schedule: str = Settings.schedule, init: str = Settings.init,
        step_size: float = Settings.step_size, target_accept: float = Settings.target_accept,
        adapt: str = Settings.adapt, pilots: int | None = Settings.pilots, batch_size: int | None = None,
        levels: int | None = None, fabric: Any = None, seed: int | None = None, method: str = "auto",
        progress: bool | None = False) -> AISResult:
    """Estimate ``log p(x_i)`` of every point by AIS with HMC transitions.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE`, or any object with Pyro ``model(x)`` and
            ``guide(x)`` that meets the protocol (:func:`pyro_vae.models.target.check_protocol`).
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
        batch_size: Points per batch (default :data:`~pyro_vae.estimators.settings.BATCH_SIZE`); memory grows
            with it times the chains.
        levels: Quantization levels if ``x`` is dequantized, for bits/dim.
        fabric: A launched Lightning ``Fabric``: rank ``r`` runs ``x[r::world]``; the
            results are gathered back into the original order on every rank.
        seed: Seed (rank ``r`` uses ``seed + r``); the global RNG is restored afterwards.
        method: ``"fused"``, ``"trace"`` or ``"auto"`` (the kernels the model offers, if any:
            :func:`pyro_vae.models.target.fast_path`).
        progress: A progress bar with ETA (rank 0): ``True``, ``False`` or ``None`` (only on a terminal).

    Returns:
        An :class:`AISResult`.

    Raises:
        ValueError: Bad settings, or a model that breaks the protocol (a latent outside the
            data plate, a discrete latent, ...), in one line naming the site.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((3,), latent_dim=1, likelihood="gaussian", hidden=[])
        >>> res = ais(vae, torch.zeros(2, 3), steps=20, chains=3, leapfrog=3, seed=0)
        >>> print(res.summary().splitlines()[0])  # doctest: +ELLIPSIS
        AIS: N=2 points, T=20 (sigmoid), 3 chains (+1 pilots), 3 leapfrog, init=guide, adapt=pilot (fused, ... s)
    """
    cfg = Settings(steps, chains, leapfrog, schedule, init, step_size, target_accept, adapt, pilots)
    tic = time.perf_counter()
    per_point, used = run_chains(vae, x, cfg, batch_size=batch_size, fabric=fabric, seed=seed, method=method,
                                 progress=progress)
    world = rank_and_world(fabric)[1]
    return AISResult(per_point["log_px"], per_point["mc_se"], per_point["accept_rate"], per_point["step_size"],
                     per_point["log_weights"], cfg, getattr(vae, "num_dims", math.prod(x.shape[1:])), levels, used,
                     time.perf_counter() - tic, int(per_point["grad_evals"].sum().item()), world,
                     representation=of_model(vae, levels))
