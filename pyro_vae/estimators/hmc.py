"""Vectorized Hamiltonian Monte Carlo along an annealing path, the engine of AIS and BDMC.

Every chain targets the geometric bridge ``f_β(z) = q0(z)^(1-β) · p(x, z)^β`` of its own
datapoint. States are tensors ``(R, B, d)`` (``R`` chains of ``B`` points); a chain's
log-densities come from a ``terms_fn(z) -> LogTerms`` that returns ``log p(x, z)``,
``log q0(z)`` and both gradients per chain from **one** decoder forward and backward pass
for all chains at once. Since the two terms are kept apart, the gradient at the end of
one transition is reused at the next β, so a transition costs ``leapfrog`` evaluations.

:func:`anneal` walks a β sequence, accumulating the AIS log-weight
``Σ_k (β_k - β_{k-1}) (log p(x, z) - log q0(z))`` and applying an HMC transition that
leaves ``f_{β_k}`` invariant between increments. Step sizes adapt toward a target
acceptance probability, see :data:`~pyro_vae.estimators.settings.ADAPT_MODES`.

Example:
    >>> def terms_fn(z):  # p(x, z) = N(z; 1, 1), q0 = N(0, 1)
    ...     return LogTerms(-0.5 * (z - 1).pow(2).sum(-1), -0.5 * z.pow(2).sum(-1), -(z - 1), -z)
    >>> run = anneal(terms_fn, torch.randn(8, 3, 2), beta_schedule(20), 0.3, leapfrog=4)
    >>> run.log_weights.shape, run.evaluations
    (torch.Size([8, 3]), 77)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from pyro_vae.estimators.settings import ADAPT_MODES, SCHEDULES

__all__ = ["LogTerms", "beta_schedule", "leapfrog", "hmc_transition", "anneal", "Annealed"]

SIGMOID_DELTA = 4.0  # Grosse et al. (2015), Wu et al. (2017)
ADAPT_RATE = 0.05  # log step size moves by rate * (accept prob - target) per transition, once settled
LOG_STEP_RANGE = (math.log(1e-6), math.log(10.0))


class LogTerms(NamedTuple):
    """Per-chain ``log p(x, z)``, ``log q0(z)`` (each ``(R, B)``) and their gradients ``(R, B, d)``."""

    log_p: Tensor
    log_q: Tensor
    grad_p: Tensor
    grad_q: Tensor

    def log_f(self, beta: float) -> Tensor:
        """``log f_β = (1 - β) log q0 + β log p``."""
        return (1.0 - beta) * self.log_q + beta * self.log_p

    def grad_f(self, beta: float) -> Tensor:
        return (1.0 - beta) * self.grad_q + beta * self.grad_p

    def where(self, keep_new: Tensor, old: "LogTerms") -> "LogTerms":
        """Per chain: these terms where ``keep_new`` (``(R, B)`` bool), else ``old``'s."""
        return LogTerms(*(torch.where(keep_new if a.dim() == 2 else keep_new.unsqueeze(-1), a, b)
                          for a, b in zip(self, old)))


TermsFn = Callable[[Tensor], LogTerms]


def beta_schedule(steps: int, kind: str = "sigmoid", delta: float = SIGMOID_DELTA) -> Tensor:
    """Inverse temperatures ``β_0 = 0 < β_1 < ... < β_T = 1`` for ``T = steps`` (float64, ``(T + 1,)``).

    ``"sigmoid"`` is ``σ(δ (2t/T - 1))`` rescaled to ``[0, 1]``: dense at both ends, where
    the log-weight increments are largest (Grosse et al., 2015); ``"linear"`` is ``t/T``.

    Example:
        >>> beta_schedule(4, "linear").tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> b = beta_schedule(100)
        >>> bool(b[1] - b[0] < b[51] - b[50])
        True
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}.")
    s = torch.sigmoid(delta * (2.0 * t - 1.0))
    beta = (s - s[0]) / (s[-1] - s[0])
    beta[0], beta[-1] = 0.0, 1.0  # exact ends: the weight telescopes from q0 to p(x, z)
    return beta


def leapfrog(z: Tensor, r: Tensor, terms: LogTerms, beta: float, step_size: Tensor, terms_fn: TermsFn,
             num_steps: int) -> tuple[Tensor, Tensor, LogTerms]:
    """``num_steps`` velocity-Verlet steps on ``H = -log f_β(z) + |r|²/2``, every chain at once.

    Written out instead of calling :func:`pyro.ops.integrator.velocity_verlet`, which
    would broadcast a per-chain step size just as well, but whose ``potential_fn`` must
    return one scalar: it yields the summed potential of a single β and its gradient,
    while AIS needs each chain's ``log p`` and ``log q0`` and their gradients apart (for
    the weight, the Metropolis test, and to reuse the end-point gradient at the next β
    without another decoder pass). The two agree step for step (tested).

    Args:
        z: Positions ``(R, B, d)``.
        r: Momenta ``(R, B, d)``.
        terms: :class:`LogTerms` at ``z`` (its gradients start the first step).
        beta: Inverse temperature.
        step_size: ``(R, B, 1)`` (or anything broadcasting to ``z``).
        terms_fn: ``z -> LogTerms``; called ``num_steps`` times.
        num_steps: Leapfrog steps.

    Returns:
        ``(z, r, terms)`` at the end of the trajectory.

    Example:
        >>> fn = lambda z: LogTerms(-0.5 * z.pow(2).sum(-1), torch.zeros(z.shape[:2]), -z, torch.zeros_like(z))
        >>> z, r = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
        >>> z2, r2, t2 = leapfrog(z, r, fn(z), 1.0, torch.tensor(0.1), fn, 10)
        >>> round(z2.item(), 3), round(torch.cos(torch.tensor(1.0)).item(), 3)  # harmonic oscillator
        (0.54, 0.54)
    """
    r = r + 0.5 * step_size * terms.grad_f(beta)
    for i in range(num_steps):
        z = z + step_size * r
        terms = terms_fn(z)
        r = r + (step_size if i < num_steps - 1 else 0.5 * step_size) * terms.grad_f(beta)
    return z, r, terms


def hmc_transition(z: Tensor, terms: LogTerms, beta: float, step_size: Tensor, terms_fn: TermsFn,
                   num_leapfrog: int) -> tuple[Tensor, LogTerms, Tensor]:
    """One HMC transition per chain leaving ``f_β`` invariant; identity mass matrix.

    A fresh momentum, :func:`leapfrog`, then a Metropolis test per chain. A proposal
    with a non-finite density is rejected.

    Args:
        z: States ``(R, B, d)``.
        terms: :class:`LogTerms` at ``z``.
        beta: Inverse temperature of the target.
        step_size: ``(R, B, 1)`` (or anything broadcasting to ``z``).
        terms_fn: ``z -> LogTerms``; called ``num_leapfrog`` times.
        num_leapfrog: Number of leapfrog steps.

    Returns:
        ``(z, terms, accept_prob)``, the new states, their terms, and the Metropolis
        acceptance probability ``(R, B)`` of the proposal.

    Example:
        >>> fn = lambda z: LogTerms(-0.5 * z.pow(2).sum(-1), torch.zeros(z.shape[:2]), -z, torch.zeros_like(z))
        >>> z = torch.randn(4, 2, 3)
        >>> z2, terms, prob = hmc_transition(z, fn(z), 1.0, torch.full((4, 2, 1), 0.5), fn, 5)
        >>> z2.shape, bool(((prob >= 0) & (prob <= 1)).all())
        (torch.Size([4, 2, 3]), True)
    """
    r0 = torch.randn_like(z)
    z_new, r, new = leapfrog(z, r0, terms, beta, step_size, terms_fn, num_leapfrog)
    # log α = H(z, r0) - H(z', r), with H = -log f_β(z) + |r|² / 2
    log_alpha = new.log_f(beta) - 0.5 * r.pow(2).sum(-1) - terms.log_f(beta) + 0.5 * r0.pow(2).sum(-1)
    log_alpha = torch.nan_to_num(log_alpha.clamp(max=0.0), nan=-math.inf)
    accept = torch.rand_like(log_alpha).log() < log_alpha
    return torch.where(accept.unsqueeze(-1), z_new, z), new.where(accept, terms), log_alpha.exp()


@dataclass
class Annealed:
    """What :func:`anneal` returns.

    Attributes:
        log_weights: AIS log-weights ``(C, B)`` of the estimating chains, float64.
        accept_prob: Mean Metropolis acceptance probability per estimating chain ``(C, B)``.
        step_size: Final step size per estimating chain ``(C, B)``.
        schedule: Step size per point used at each transition ``(T - 1, B)``: the
            geometric mean over the estimating chains.
        evaluations: Calls of ``terms_fn`` (each one pass over all ``R`` chains).
        z: Final states ``(C, B, d)``.
    """

    log_weights: Tensor
    accept_prob: Tensor
    step_size: Tensor
    schedule: Tensor
    evaluations: int
    z: Tensor


def anneal(terms_fn: TermsFn, z: Tensor, betas: Tensor, step_size: float | Tensor, *, leapfrog: int = 10,
           target_accept: float = 0.65, adapt: str = "chain", pilots: int = 0, schedule: Tensor | None = None,
           callback: Callable[[], None] | None = None) -> Annealed:
    """Anneal chains along ``betas``, accumulating AIS log-weights; HMC transitions in between.

    For ``k = 1..T``: ``log w += (β_k - β_{k-1}) (log p(x, z) - log q0(z))``, then, if
    ``k < T``, an HMC transition leaving ``f_{β_k}`` invariant. With ``β`` from 0 to 1
    and ``z ~ q0``, ``E[exp(log w)] = p(x)``; with ``β`` from 1 to 0 and ``z`` an exact
    posterior draw (reverse AIS), ``E[exp(log w)] = 1 / p(x)``.

    Step-size adaptation (multiplicative, ``log ε += γ_k (α - target)`` after transition
    ``k`` with ``γ_k = max(0.05, k^-1/2)``, at equilibrium where the mean acceptance
    probability ``α`` equals ``target_accept``):

    * ``"pilot"``: the last ``pilots`` rows of ``z`` are pilot chains; each point's
      step size is driven by its pilots' mean ``α`` and shared by all its chains. The
      pilots' weights are dropped, so the estimating chains' kernels depend on nothing
      in their own paths and each weight stays exactly unbiased.
    * ``"chain"``: each chain adapts on its own ``α`` (Wu et al., 2017). The kernel at
      step ``k`` then depends on the chain's past states, which the AIS argument does not
      cover: a (small) bias is possible.
    * ``"none"``: fixed step sizes, or the per-point ``schedule`` ``(T - 1, B)`` if given.

    Args:
        terms_fn: ``z -> LogTerms``, all chains in one pass.
        z: Initial states ``(C + pilots, B, d)`` (``z ~ q0``, or exact posterior draws).
        betas: ``(T + 1,)`` inverse temperatures, from 0 to 1 or from 1 to 0.
        step_size: Initial step size, a float or ``(C + pilots, B, 1)``.
        leapfrog: Leapfrog steps per transition.
        target_accept: Target mean acceptance probability.
        adapt: One of :data:`~pyro_vae.estimators.settings.ADAPT_MODES`.
        pilots: Number of pilot chains (``adapt="pilot"`` only, at least 1).
        schedule: Fixed per-point step sizes ``(T - 1, B)``; implies no adaptation.
        callback: Called after each increment (progress bars).

    Returns:
        An :class:`Annealed`.
    """
    if adapt not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}.")
    if (adapt == "pilot") != (pilots > 0) or pilots >= z.shape[0]:
        raise ValueError(f"adapt='pilot' needs 1 <= pilots < rows (and only it uses pilots); got {pilots}.")
    rows, b = z.shape[:2]
    chains = rows - pilots
    log_eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device).log().expand(rows, b, 1).clone()
    steps = betas.numel() - 1
    used = z.new_empty(max(steps - 1, 0), b)
    log_w = torch.zeros(rows, b, dtype=torch.float64, device=z.device)
    accept_sum = torch.zeros(rows, b, dtype=torch.float64, device=z.device)
    terms, evaluations = terms_fn(z), 1
    for k in range(1, steps + 1):
        log_w += (betas[k] - betas[k - 1]).item() * (terms.log_p.double() - terms.log_q.double())
        if callback is not None:
            callback()
        if k == steps:
            break
        if schedule is not None:
            log_eps = schedule[k - 1].log().to(z.dtype).view(1, b, 1).expand(rows, b, 1)
        used[k - 1] = log_eps[:chains, :, 0].mean(0).exp()
        z, terms, alpha = hmc_transition(z, terms, betas[k].item(), log_eps.exp(), terms_fn, leapfrog)
        evaluations += leapfrog
        accept_sum += alpha.double()
        rate = max(ADAPT_RATE, k**-0.5)  # large moves first, to find the scale from a poor initial step size
        if schedule is None and adapt == "chain":
            log_eps = (log_eps + rate * (alpha - target_accept).unsqueeze(-1)).clamp(*LOG_STEP_RANGE)
        elif schedule is None and adapt == "pilot":
            drive = alpha[chains:].mean(0) - target_accept  # (B,): pilots only, never the estimating chains
            log_eps = (log_eps + rate * drive.view(1, b, 1)).clamp(*LOG_STEP_RANGE)
    accept = accept_sum[:chains] / (steps - 1) if steps > 1 else torch.full_like(accept_sum[:chains], math.nan)
    return Annealed(log_w[:chains], accept, log_eps[:chains, :, 0].exp(), used, evaluations, z[:chains])
