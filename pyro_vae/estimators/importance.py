"""Importance sampling: per-datapoint log-likelihoods, IWAE bounds and their diagnostics.

For each datapoint ``x_i`` the evaluator draws ``K`` samples ``z_ik ~ q(z|x_i)`` and
forms the unscaled log-weights ``log w_ik = log p(x_i, z_ik) - log q(z_ik|x_i)``. From
them, per datapoint:

* ``log p̂(x_i) = logmeanexp_k log w_ik``, the importance-sampled log-likelihood (it
  is also the IWAE bound ``L_K``: biased low by about ``mc_se² / 2``);
* ``L_k`` for each ``k`` in ``k_list``: the ``K`` draws split into ``K // k`` disjoint
  groups of ``k``, the group log-mean-exps averaged (``k = 1`` is the ELBO);
* the ELBO split into reconstruction and KL (analytic KL where torch registers one);
* the Monte Carlo standard error of ``log p̂`` by the delta method,
  ``sqrt(sum_k wbar_k² - 1/K) = sqrt(1/ESS - 1/K)`` with normalized weights ``wbar``;
* the effective sample size ``1 / sum_k wbar_k²`` and the PSIS Pareto ``k̂``
  (Vehtari et al., 2024): ``k̂ > 0.7`` means the estimate of that point is unreliable.

Dataset figures are means with standard error ``std / sqrt(N)``; the latent space is
summarised by active units (Burda et al., 2016) and KL per latent dimension.

Memory is bounded for any ``K``: points are scored in batches and draws in chunks; only a
batch's ``(batch, K)`` weight matrix (needed for PSIS) is ever held, and the batch shrinks
so that it stays under :data:`MAX_WEIGHT_BYTES` (a ``K`` too large even for one point is
refused with the memory it would need).

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> ev = evaluate(vae, torch.rand(8, 4), num_samples=50, k_list=(1, 10), seed=0)
    >>> ev.log_px.shape, sorted(ev.iwae)
    (torch.Size([8]), [1, 10])
    >>> ev.to_dict()["elbo"]["mean"] <= ev.to_dict()["log_likelihood"]["mean"] + 1.0
    True

The log-weights come from the target (:func:`pyro_vae.models.target.target_of`: Pyro traces
of any model and guide, or the fused kernels a model offers, such as the stock VAE's), the
batches, sharding and seeding from the harness (:func:`pyro_vae.estimators.harness.per_point`).
Unlike ``pyro.infer.Importance`` they stay **per datapoint** and **unscaled**: the plate's
``num_data / batch`` factor and a ``poutine.scale`` beta never leak into the estimate.
Results are :class:`~pyro_vae.results.report.Evaluation` objects.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from typing import Any, Callable, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_vae.core.stats import logmeanexp, logmeanexp_mc_se
from pyro_vae.core.units import of_model, warn_if_quantized
from pyro_vae.estimators.harness import bounded_batch, per_point, points_of_rank, rank_and_world
from pyro_vae.estimators.settings import BATCH_SIZE, IS_SAMPLES, K_LIST
from pyro_vae.models.priors import marginal_log_prob_per_dim
from pyro_vae.models.target import METHODS, target_of, weight_terms
from pyro_vae.results.arviz import psislw
from pyro_vae.results.report import COLLAPSE_KL, Evaluation, PosteriorCollapseWarning

__all__ = ["evaluate", "log_weights"]

MAX_CHUNK_BYTES = 2**28  # ~256 MB of decoder output per pass
# A batch's (batch, K) weights with their working copies (float64 rows, softmax, float32
# log-weights and log-likelihoods, arviz's PSIS sort): 50-90 bytes per weight, measured.
BYTES_PER_WEIGHT = 96
MAX_WEIGHT_BYTES = 2**29  # the batch is shrunk so that batch * K * BYTES_PER_WEIGHT stays below this
MC_KL_SAMPLES = 256  # draws for per-dimension KL when there is no analytic formula
CONSTANT_SPREAD = 1e-5  # log-weights within this relative spread are equal to float32 precision


# --------------------------------------------------------------------------- scoring


def _psis_khat(lw: Tensor) -> Tensor:
    _, khat = psislw(lw.detach().cpu().double().numpy())
    khat = torch.as_tensor(khat, dtype=torch.float64).reshape(lw.shape[0])
    # Weights equal to float32 precision (an exact posterior) have no tail: a Pareto fit
    # to rounding noise means nothing, and the estimate is exact, so k̂ = -inf. Otherwise
    # arviz's inf means K was too small to fit a tail (NaN: unknown).
    top = lw.max(-1).values.double().cpu()
    spread = top - lw.min(-1).values.double().cpu()
    constant = spread <= CONSTANT_SPREAD * top.abs().clamp(min=1.0)
    return torch.where(constant, -math.inf, torch.where(torch.isfinite(khat), khat, math.nan))


def _score_batch(vae: Any, target: Any, x: Tensor, num_samples: int, chunk: int, k_list: Sequence[int],
                 keep_log_weights: bool = False) -> dict[str, Tensor]:
    """Per-point figures of one batch; holds only this batch's ``(K, B)`` weights."""
    b = x.shape[0]
    has_q = hasattr(vae, "encode") and hasattr(vae, "prior")
    q = vae.encode(x) if has_q else None
    prior = vae.prior() if has_q else None
    log_lik = x.new_empty(num_samples, b, dtype=torch.float32)
    lw = torch.empty_like(log_lik)
    for start in range(0, num_samples, chunk):
        stop = min(num_samples, start + chunk)
        log_lik[start:stop], lw[start:stop] = target.log_weights(x, stop - start, q, prior)

    out: dict[str, Tensor] = {}
    kl_exact = None
    if has_q:
        try:
            kl_exact = torch.distributions.kl_divergence(q, prior)
        except NotImplementedError:
            pass
    recon = log_lik.double().mean(0)
    if kl_exact is not None:
        # Rao-Blackwellized: only the reconstruction is sampled.
        out["kl"], out["elbo"] = kl_exact.double(), recon - kl_exact.double()
        out["elbo_mc_se"] = log_lik.double().std(0) / math.sqrt(num_samples)
    else:
        out["kl"], out["elbo"] = recon - lw.double().mean(0), lw.double().mean(0)
        out["elbo_mc_se"] = lw.double().std(0) / math.sqrt(num_samples)
    out["reconstruction"] = recon
    out["kl_analytic"] = torch.full((b,), float(kl_exact is not None), dtype=torch.float64)

    rows = lw.T.double().contiguous()  # (B, K); contiguous rows keep the reductions below fast
    out["log_px"] = logmeanexp(rows, dim=-1)
    sumsq = torch.softmax(rows, dim=-1).pow(2).sum(-1)
    out["ess"] = 1.0 / sumsq
    out["mc_se"] = (sumsq - 1.0 / num_samples).clamp(min=0.0).sqrt()
    out["khat"] = _psis_khat(rows).to(rows.device)
    if keep_log_weights:
        out["log_weight"] = rows.float()
    for k in k_list:
        groups = num_samples // k
        per_group = logmeanexp(rows[:, : groups * k].reshape(b, groups, k), dim=-1)  # (B, groups)
        out[f"iwae_{k}"] = per_group.mean(-1)
        out[f"iwae_se_{k}"] = (per_group.std(-1) / math.sqrt(groups)) if groups > 1 else logmeanexp_mc_se(rows[:, :k])

    if has_q:
        out["post_mean"] = q.mean.double()
        out["kl_dim"] = _kl_per_dim(q, prior)
    return out


def _kl_per_dim(q: Any, prior: Any) -> Tensor:
    """KL per latent dimension per point ``(B, d)``; NaN where the prior has no marginals."""
    base_q = q.base_dist if isinstance(q, dist.Independent) else q
    base_p = prior.base_dist if isinstance(prior, dist.Independent) and prior.reinterpreted_batch_ndims == 1 else None
    if base_p is not None:
        try:
            return torch.distributions.kl_divergence(base_q, base_p).double()
        except NotImplementedError:
            pass
    z = q.rsample((MC_KL_SAMPLES,))
    log_p = marginal_log_prob_per_dim(prior, z)
    if log_p is None:
        return torch.full(q.mean.shape, math.nan, dtype=torch.float64, device=q.mean.device)
    return (base_q.log_prob(z) - log_p).double().mean(0)


# --------------------------------------------------------------------------- public API


def evaluate(
    vae: Any,
    x: Tensor,
    num_samples: int = IS_SAMPLES,
    k_list: Sequence[int] = K_LIST,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    levels: int | None = None,
    fabric: Any = None,
    seed: int | None = None,
    *,
    method: str = "auto",
    keep_log_weights: bool = False,
    progress: bool | None = False,
) -> Evaluation:
    """Importance-sample ``log p(x_i)``, the IWAE bounds and diagnostics for every point.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE`, or any object with Pyro ``model(x)`` and
            ``guide(x)`` whose sample sites all lie in the data plate (then ``encode``
            and ``prior`` enable the analytic KL, active units and KL per dimension).
        x: Model-space data ``(N, *event_shape)`` (e.g. ``transform(x_raw, train=False)``).
        num_samples: ``K``, importance samples per point.
        k_list: Bounds ``L_k`` to report; values above ``K`` are dropped.
        batch_size: Points per batch (default :data:`~pyro_vae.estimators.settings.BATCH_SIZE`), lowered when ``K`` is so large that the
            batch's weights would exceed :data:`MAX_WEIGHT_BYTES`.
        chunk_size: Draws per pass; default keeps ``batch * chunk * outputs * 4`` bytes
            near 256 MB.
        levels: Quantization levels if ``x`` is dequantized (``transform.density_levels``),
            for bits/dim; ``None`` for probability masses.
        fabric: A launched Lightning ``Fabric``: each rank scores ``x[rank::world]``
            and the per-point results are gathered back into the original order.
        seed: Seed for the draws (rank ``r`` uses ``seed + r``); the global RNG state is
            restored afterwards. ``None`` draws from the global RNG.
        method: ``"fused"`` computes the densities with the kernels the model offers
            (``vae.fused()``, fast; the draws are exactly those of the traced guide),
            ``"trace"`` reads them off Pyro traces (:func:`pyro_vae.models.target.weight_terms`,
            any model/guide), ``"auto"`` takes the kernels when offered
            (:func:`pyro_vae.models.target.fast_path`).
        keep_log_weights: Keep the ``(N, K)`` log-weights in ``Evaluation.log_weights``
            (``4 N K`` bytes), for ``to_inference_data()`` and ``az.psislw``.
        progress: A progress bar over points: ``True``, ``False`` or ``None`` (only on a terminal).

    Returns:
        An :class:`Evaluation`.

    Raises:
        ValueError: Bad sizes, data the likelihood cannot score, a ``K`` whose weights for
            one point exceed :data:`MAX_WEIGHT_BYTES`, or a model that breaks the protocol
            (:func:`pyro_vae.models.target.check_protocol`), in one line naming the site.
        TypeError: ``x`` is not a tensor (or has the wrong dtype), or a size is not an int.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((3,), latent_dim=1, likelihood="gaussian")
        >>> ev = evaluate(vae, torch.zeros(4, 3), num_samples=100, k_list=(1, 100), seed=0)
        >>> bool((ev.iwae[1] <= ev.iwae[100] + 1e-6).all())
        True
    """
    _check_arguments(vae, x, num_samples, k_list, batch_size, chunk_size, levels, seed, method)
    k_list = sorted({int(k) for k in k_list if int(k) <= num_samples})
    target = target_of(vae, method)
    total = x.shape[0]
    rank, world = rank_and_world(fabric)
    local = len(range(rank, total, world))  # this rank's points
    batch_size = _bounded_batch(batch_size or BATCH_SIZE, num_samples)
    target.check(x, points=batch_size)
    num_dims = getattr(vae, "num_dims", math.prod(x.shape[1:]))
    width = getattr(getattr(vae, "likelihood", None), "num_params", 1) * num_dims
    chunk = chunk_size or max(1, min(num_samples, MAX_CHUNK_BYTES // (4 * width * min(batch_size, max(1, local)))))

    representation = of_model(vae, levels)
    if rank == 0 and total:
        warn_if_quantized(points_of_rank(x, fabric), representation)

    tic = time.perf_counter()
    figures = per_point(
        lambda batch, extra, tick: _score_batch(vae, target, batch, num_samples, chunk, k_list, keep_log_weights),
        vae, x, batch_size=batch_size, fabric=fabric, seed=seed, progress=progress, desc=f"IS K={num_samples}")
    unit_variance = kl_dims = None
    if "post_mean" in figures:
        means = figures["post_mean"]
        unit_variance = means.var(0) if total > 1 else torch.zeros(means.shape[1], dtype=torch.float64)
        kl_dims = figures["kl_dim"].mean(0)
        if torch.isnan(kl_dims).any():
            kl_dims = None
        elif rank == 0:  # every rank holds the gathered figures; one warning is enough
            _warn_collapse(kl_dims)
    return Evaluation(
        log_px=figures["log_px"], mc_se=figures["mc_se"], elbo=figures["elbo"],
        elbo_mc_se=figures["elbo_mc_se"], reconstruction=figures["reconstruction"], kl=figures["kl"],
        iwae={k: figures[f"iwae_{k}"] for k in k_list}, iwae_mc_se={k: figures[f"iwae_se_{k}"] for k in k_list},
        khat=figures["khat"], ess=figures["ess"], unit_variance=unit_variance, kl_per_dim=kl_dims,
        num_samples=num_samples, num_dims=num_dims, levels=levels,
        kl_analytic=bool(figures["kl_analytic"].all()), method=target.method,
        seconds=time.perf_counter() - tic, world_size=world, representation=representation,
        log_weights=figures.get("log_weight"),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_arguments(vae: Any, x: Any, num_samples: Any, k_list: Any, batch_size: Any, chunk_size: Any,
                     levels: Any, seed: Any, method: str) -> None:
    """Refuse, with the fix, what :func:`evaluate` would otherwise fail on deep inside torch, pyro or arviz."""
    if not (hasattr(vae, "model") and hasattr(vae, "guide")):
        raise TypeError(f"vae must have Pyro model(x) and guide(x) methods (e.g. a pyro_vae VAE), got {type(vae).__name__}.")
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor of model-space data (N, *event_shape), got {type(x).__module__}."
                        f"{type(x).__name__}; convert it with torch.as_tensor(x, dtype=torch.float32).")
    if x.dim() < 1 or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (N, *event_shape), got {x.dtype} of shape {tuple(x.shape)}.")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if value is None and name != "num_samples":
            continue
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if isinstance(k_list, (str, bytes)) or not hasattr(k_list, "__len__") or not all(_is_int(k) for k in k_list):
        raise TypeError(f"k_list must be a sequence of ints such as (1, 10, 100), got {k_list!r}.")
    if any(k < 1 for k in k_list):
        raise ValueError(f"k_list entries must be >= 1, got {list(k_list)}.")
    if levels is not None and not (_is_int(levels) and levels >= 2):
        raise ValueError(f"levels must be None or an int >= 2 (transform.density_levels), got {levels!r}.")
    if seed is not None and not _is_int(seed):
        raise TypeError(f"seed must be an int or None, got {seed!r} ({type(seed).__name__}).")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


def _bounded_batch(batch_size: int, num_samples: int) -> int:
    """The largest batch up to ``batch_size`` whose weights fit :data:`MAX_WEIGHT_BYTES`."""
    return bounded_batch(
        batch_size, num_samples * BYTES_PER_WEIGHT, MAX_WEIGHT_BYTES,
        f"num_samples={num_samples} ({BYTES_PER_WEIGHT} bytes per draw: the (batch, K) weights PSIS needs and their "
        "working copies)", f"use num_samples <= {MAX_WEIGHT_BYTES // BYTES_PER_WEIGHT}")


def _warn_collapse(kl_dims: Tensor) -> None:
    collapsed = (kl_dims < COLLAPSE_KL).nonzero().flatten().tolist()
    if len(collapsed) == kl_dims.numel():
        warnings.warn(f"Posterior collapse: all {kl_dims.numel()} latent dimensions have KL < {COLLAPSE_KL} nats; "
                      "the decoder ignores z.", PosteriorCollapseWarning, stacklevel=3)
    elif collapsed:
        warnings.warn(f"{len(collapsed)} of {kl_dims.numel()} latent dimensions have KL < {COLLAPSE_KL} nats "
                      f"(collapsed units {collapsed[:20]}{'...' if len(collapsed) > 20 else ''}).",
                      PosteriorCollapseWarning, stacklevel=3)


@torch.no_grad()
def log_weights(
    model: Callable, guide: Callable, x: Tensor, num_samples: int, chunk_size: int | None = None,
    max_plate_nesting: int = 1, **kwargs: Any,
) -> Tensor:
    """Unscaled log importance weights ``log w_ik``, shape ``(N, K)``.

    Args:
        chunk_size: Draws per pass (memory is linear in it); default all ``K`` at once.
    """
    chunk_size = chunk_size or num_samples
    parts = []
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        terms = weight_terms(model, guide, x, num_samples=k, max_plate_nesting=max_plate_nesting, **kwargs)
        parts.append(terms.log_weight)
    return torch.cat(parts, dim=0).T
