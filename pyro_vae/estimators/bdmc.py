"""Bidirectional Monte Carlo (BDMC): sandwich the true ``log p(x)`` on simulated data.

Grosse, Ghahramani & Adams (2015): on data simulated from the model, ``(z_i, x_i) ~ p(z) p(x|z)``,
``z_i`` is an exact draw from the posterior ``p(z|x_i)``. So AIS can be run both ways:

* forward, ``β: 0 -> 1`` from ``q0`` (as :func:`pyro_vae.estimators.ais.ais`): ``E[w] = p(x)``, and
  ``lower = logmeanexp_c log w_c`` is a stochastic **lower** bound of ``log p(x)``;
* reverse, ``β: 1 -> 0`` from the exact ``z_i`` (every chain starts there): the reverse
  weights satisfy ``E[w_rev] = 1 / p(x)``, so ``upper = -logmeanexp_c log w_rev,c`` is a
  stochastic **upper** bound (Jensen on ``-log``). Here ``log w_rev = -s`` with
  ``s = Σ_t (β_t - β_{t-1}) (log p(x, z) - log q0(z))`` summed along the reverse chain.

The gap ``upper - lower`` bounds the error of either AIS estimate on such data and closes
as ``T`` grows; :func:`bdmc_curve` returns it per ``T``. The reverse chains use the
forward run's per-point step sizes (fixed given ``x``, independent of the exact ``z``),
so both bounds hold in expectation. Plain importance sampling with about the same number
of decoder evaluations is scored on the same points for comparison.

The data are simulated by :func:`pyro_vae.models.target.simulate`, through the model's own
observed site, whatever it is called; any model that meets the protocol works.

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=[8])
    >>> res = bdmc(vae, 3, steps=10, chains=2, leapfrog=2, seed=0, is_samples=20)
    >>> res.lower.shape, res.upper.shape, res.is_log_px.shape
    (torch.Size([3]), torch.Size([3]), torch.Size([3]))
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor

from pyro_vae.core.stats import dataset_figure
from pyro_vae.estimators.ais import run_chains
from pyro_vae.estimators.harness import rank_and_world
from pyro_vae.estimators.importance import evaluate
from pyro_vae.estimators.settings import BDMC_POINTS, Settings
from pyro_vae.models.target import simulate
from pyro_vae.results.report import PosteriorCollapseWarning, json_safe

__all__ = ["BDMCResult", "bdmc", "bdmc_curve"]

IS_SEED_OFFSET = 1_000_003  # the importance sampler's draws share no stream with the chains' or the simulation's


@dataclass
class BDMCResult:
    """Per-point BDMC bounds on simulated data (nats per point).

    Attributes:
        lower: Forward AIS estimate ``(N,)``, a stochastic lower bound of ``log p(x_i)``.
        lower_mc_se: Its delta-method Monte Carlo standard error.
        upper: Reverse AIS estimate ``(N,)``, a stochastic upper bound.
        upper_mc_se: Its delta-method Monte Carlo standard error.
        forward_accept: Mean acceptance probability of the forward chains per point.
        reverse_accept: Mean acceptance probability of the reverse chains per point.
        is_log_px: Importance-sampling estimate with ``is_samples`` draws, or ``None``.
        is_samples: ``K`` of the importance sampler (0: not run).
        settings: The sampler settings.
        method: ``"fused"`` or ``"trace"``.
        seconds: Wall time (simulation, both directions and importance sampling).
        grad_evals: Gradient evaluations of both directions, pilots included.
        world_size: Number of processes that shared the work.
    """

    lower: Tensor
    lower_mc_se: Tensor
    upper: Tensor
    upper_mc_se: Tensor
    forward_accept: Tensor
    reverse_accept: Tensor
    is_log_px: Tensor | None
    is_samples: int
    settings: Settings
    method: str = "fused"
    seconds: float = 0.0
    grad_evals: int = 0
    world_size: int = 1

    @property
    def gap(self) -> Tensor:
        """``upper - lower`` per point: bounds the error of either estimate (in expectation)."""
        return self.upper - self.lower

    @property
    def num_points(self) -> int:
        return self.lower.numel()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary figures."""
        figure = dataset_figure
        report = {
            "estimator": "bdmc", "num_points": self.num_points, "method": self.method, "world_size": self.world_size,
            "seconds": self.seconds, "grad_evals": self.grad_evals, "settings": self.settings.to_dict(),
            "lower": figure(self.lower, self.lower_mc_se), "upper": figure(self.upper, self.upper_mc_se),
            "gap": figure(self.gap), "accept_rate": {"forward": self.forward_accept.mean().item(),
                                                      "reverse": self.reverse_accept.mean().item()},
            "importance_sampling": None,
        }
        if self.is_log_px is not None:
            report["importance_sampling"] = {
                "samples": self.is_samples, **figure(self.is_log_px),
                "upper_minus_is": figure(self.upper - self.is_log_px),  # bounds IS's error, in expectation
                "lower_minus_is": figure(self.lower - self.is_log_px),  # > 0: IS falls short of AIS
            }
        return json_safe(report)

    def summary(self) -> str:
        """A few human-readable lines."""
        d, s = self.to_dict(), self.settings
        lines = [
            f"BDMC: N={self.num_points} simulated points, T={s.steps} ({s.schedule}), {s.chains} chains, "
            f"{s.leapfrog} leapfrog, init={s.init} ({self.method}, {self.seconds:.1f} s)",
            f"  lower (forward AIS)  {d['lower']['mean']:10.3f} ± {d['lower']['se']:.3f} nats  (MC SE {d['lower']['mc_se']:.4f})",
            f"  upper (reverse AIS)  {d['upper']['mean']:10.3f} ± {d['upper']['se']:.3f} nats  (MC SE {d['upper']['mc_se']:.4f})",
            f"  gap                  {d['gap']['mean']:10.4f} ± {d['gap']['se']:.4f} nats; accept "
            f"{d['accept_rate']['forward']:.2f} forward, {d['accept_rate']['reverse']:.2f} reverse",
        ]
        if d["importance_sampling"] is not None:
            i = d["importance_sampling"]
            lines.append(f"  IS (K={self.is_samples})  {i['mean']:10.3f} ± {i['se']:.3f} nats; below upper by "
                         f"{i['upper_minus_is']['mean']:.4f} ± {i['upper_minus_is']['se']:.4f}, below lower by "
                         f"{i['lower_minus_is']['mean']:.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def bdmc(vae: Any, num_points: int = BDMC_POINTS, *, steps: int = Settings.steps, chains: int = Settings.chains,
         leapfrog: int = Settings.leapfrog, schedule: str = Settings.schedule, init: str = Settings.init,
         step_size: float = Settings.step_size, target_accept: float = Settings.target_accept,
         adapt: str = Settings.adapt, pilots: int | None = Settings.pilots, is_samples: int | None = None,
         data: tuple[Tensor, dict[str, Tensor]] | None = None, event_shape: Sequence[int] | None = None,
         batch_size: int | None = None, fabric: Any = None, seed: int | None = None, method: str = "auto",
         progress: bool | None = False) -> BDMCResult:
    """Bound ``log p(x)`` from both sides on data simulated from the model.

    Args:
        vae: As for :func:`pyro_vae.estimators.ais.ais`; the data are simulated through its
            observed site (:func:`pyro_vae.models.target.simulate`).
        num_points: Points to simulate (ignored when ``data`` is given).
        steps: ``T`` of both directions.
        chains: Chains per point in each direction (the reverse ones all start at the exact ``z``).
        leapfrog: Leapfrog steps per transition.
        schedule: ``"sigmoid"`` or ``"linear"``.
        init: ``q0``: ``"guide"`` or ``"prior"``.
        step_size: Initial step size of the forward run.
        target_accept: Target acceptance probability of the forward adaptation.
        adapt: Forward step-size adaptation (see :func:`pyro_vae.estimators.ais.ais`).
        pilots: Forward pilot chains per point.
        is_samples: ``K`` of the importance-sampling comparison (default: the forward
            run's gradient evaluations per point, pilots included; 0 skips it).
        data: ``(x, latents)`` from :func:`~pyro_vae.models.target.simulate`, to reuse the same points.
        event_shape: The shape of one datapoint, to simulate a model without an
            ``event_shape`` attribute (ignored when ``data`` is given).
        batch_size: Points per batch.
        fabric: A launched Lightning ``Fabric`` to shard the points (every rank simulates
            the same data: pass a ``seed``).
        seed: Seeds the simulation (``seed``), the chains (``seed + 1 + rank``) and the
            importance sampler.
        method: ``"fused"``, ``"trace"`` or ``"auto"``.
        progress: A progress bar with ETA (rank 0): ``True``, ``False`` or ``None`` (only on a terminal).

    Returns:
        A :class:`BDMCResult`.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((3,), latent_dim=1, likelihood="gaussian", hidden=[])
        >>> res = bdmc(vae, 4, steps=30, chains=2, leapfrog=3, seed=0, is_samples=0)
        >>> bool(res.gap.mean() > -1.0), res.is_log_px is None
        (True, True)
    """
    cfg = Settings(steps, chains, leapfrog, schedule, init, step_size, target_accept, adapt, pilots)
    tic = time.perf_counter()
    _, world = rank_and_world(fabric)
    if data is None:
        if world > 1 and seed is None:
            raise ValueError("bdmc over several processes needs a seed, so that every rank simulates the same data.")
        data = simulate(vae, num_points, event_shape=event_shape, seed=seed, method=method)
    x, latents = data
    chain_seed = None if seed is None else seed + 1  # never the simulation's stream
    per_point, used = run_chains(vae, x, cfg, exact=latents, batch_size=batch_size, fabric=fabric,
                                 seed=chain_seed, method=method, progress=progress)
    per_chain = (cfg.chains + cfg.pilots) * (1 + (cfg.steps - 1) * cfg.leapfrog)
    k = per_chain if is_samples is None else int(is_samples)
    is_log_px = None
    if k > 0:
        is_seed = None if seed is None else seed + IS_SEED_OFFSET
        with warnings.catch_warnings():  # latent-collapse warnings are about the model, already reported on real data
            warnings.simplefilter("ignore", PosteriorCollapseWarning)
            is_log_px = evaluate(vae, x, num_samples=k, k_list=(1,), batch_size=batch_size, fabric=fabric,
                                 seed=is_seed, method=method).log_px
    grad_evals = per_point["grad_evals"].sum() + per_point["reverse_grad_evals"].sum()
    return BDMCResult(per_point["log_px"], per_point["mc_se"], per_point["upper"], per_point["upper_mc_se"],
                      per_point["accept_rate"], per_point["reverse_accept_rate"], is_log_px, k, cfg, used,
                      time.perf_counter() - tic, int(grad_evals.item()), world)


def bdmc_curve(vae: Any, steps_list: Sequence[int] = (10, 100, 1000), num_points: int = BDMC_POINTS, *,
               event_shape: Sequence[int] | None = None, seed: int | None = None, method: str = "auto",
               **kwargs: Any) -> dict[str, list]:
    """BDMC at several ``T`` on the same simulated points: the data of a sandwich-closing plot.

    Args:
        vae: As for :func:`bdmc`.
        steps_list: The ``T`` values.
        num_points: Points to simulate (once, shared by every ``T``).
        event_shape: The shape of one datapoint, if the model has no ``event_shape`` attribute.
        seed: Seeds the simulation and each run.
        method: ``"fused"``, ``"trace"`` or ``"auto"``.
        **kwargs: Passed to :func:`bdmc` (``chains``, ``leapfrog``, ``is_samples``, ...).

    Returns:
        ``{"steps", "lower", "lower_se", "lower_mc_se", "upper", "upper_se", "upper_mc_se",
        "gap", "gap_se", "is", "grad_evals", "seconds"}``: one entry per ``T``; means over
        points with their standard errors over points (``*_se``) and Monte Carlo standard
        errors (``*_mc_se``); ``is`` is ``None`` where importance sampling was skipped.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> curve = bdmc_curve(VAE((3,), latent_dim=1, likelihood="gaussian", hidden=[]), (2, 20), 3,
        ...                    chains=2, leapfrog=2, seed=0, is_samples=0)
        >>> curve["steps"], len(curve["gap"])
        ([2, 20], 2)
    """
    data = simulate(vae, num_points, event_shape=event_shape, seed=seed, method=method)
    keys = ("steps", "lower", "lower_se", "lower_mc_se", "upper", "upper_se", "upper_mc_se", "gap", "gap_se", "is",
            "grad_evals", "seconds")
    curve: dict[str, list] = {k: [] for k in keys}
    for steps in steps_list:
        d = bdmc(vae, steps=int(steps), data=data, seed=seed, method=method, **kwargs).to_dict()
        i = d["importance_sampling"]
        low, up = d["lower"], d["upper"]
        row = (int(steps), low["mean"], low["se"], low["mc_se"], up["mean"], up["se"], up["mc_se"], d["gap"]["mean"],
               d["gap"]["se"], None if i is None else i["mean"], d["grad_evals"], d["seconds"])
        for k, v in zip(keys, row):
            curve[k].append(v)
    return curve
