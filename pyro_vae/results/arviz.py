"""Evaluation results as arviz data, and PSIS from whichever arviz pip resolved.

:func:`to_inference_data` turns an :class:`~pyro_vae.results.report.Evaluation` into arviz's
container (``InferenceData`` below arviz 1.0, an ``xarray.DataTree`` from 1.0 on) with
these groups:

* ``sample_stats``: ``log_weight`` with dims ``(chain, draw, point)``, shape ``(1, K, N)``:
  the importance log-weights ``log p(x_i, z_ik) - log q(z_ik | x_i)``, present when the
  evaluation kept them (``evaluate(..., keep_log_weights=True)``). Draw ``k`` of point
  ``i`` and draw ``k`` of point ``j`` are *independent* draws from two different
  proposals: stack ``(chain, draw)`` into ``__sample__`` and hand the array to
  ``az.psislw`` (one Pareto fit per point) or ``az.ess``. With AIS in the evaluation's
  sections, ``ais_log_weight`` (dims ``(chain, ais_draw, point)``, ``(1, chains, N)``) holds the AIS log-weights the same way.
* ``pointwise``: one value per point (dim ``point``): ``log_px`` (the IS estimate
  ``log p̂(x_i)``), ``mc_se``, ``elbo``, ``reconstruction``, ``kl``, ``iwae_<k>`` for each
  bound, ``khat`` and ``ess``; and ``ais_log_px``/``ais_mc_se`` with AIS.
* ``latent``: ``kl_per_dim`` and ``unit_variance`` (dim ``latent``) when known.

The attributes say what the numbers are: units (nats per point), the data's
representation, ``K``, the number of dimensions. What the data is **not**: a posterior
over parameters. There are no shared posterior draws, so ``az.loo``, ``az.waic`` and
``az.summary`` over ``posterior`` do not apply; the ``log_likelihood`` group is left
empty on purpose, so that they fail instead of returning numbers that mean nothing.

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> from pyro_vae.estimators.importance import evaluate
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> ev = evaluate(vae, torch.rand(8, 4), num_samples=200, k_list=(1,), seed=0, keep_log_weights=True)
    >>> idata = to_inference_data(ev)
    >>> idata["sample_stats"]["log_weight"].shape
    (1, 200, 8)
    >>> _, khat = psislw(idata["sample_stats"]["log_weight"].values[0].T)
    >>> bool(np.allclose(khat, ev.khat.numpy(), equal_nan=True))
    True
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["to_inference_data", "psislw", "arviz_major"]


def arviz_major() -> int:
    """The installed arviz's major version (0 before the 1.0 refactor)."""
    import arviz as az

    return int(az.__version__.split(".")[0])


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed log-weights and ``k̂`` along the last axis, with any arviz.

    arviz below 1.0 has ``az.psislw``; from 1.0 it lives in ``arviz_stats`` (array
    functions in ``arviz_stats.base.array_stats``). Both fit a generalized Pareto tail
    (Vehtari et al., 2024); their ``k̂`` differ by a few hundredths (tail-fit details),
    far below the 0.7 threshold's resolution.

    Args:
        log_weights: Array ``(..., S)`` of unnormalized log-weights, ``S`` draws last.

    Returns:
        ``(smoothed log-weights (..., S), khat (...))``.
    """
    with warnings.catch_warnings():
        # arviz warns about large k̂ (pyro_vae reports k̂ itself) and about its own refactor.
        warnings.simplefilter("ignore")
        import arviz as az

        if hasattr(az, "psislw"):
            return az.psislw(np.asarray(log_weights, dtype=np.float64), reff=1.0)
        return _arviz_stats_psislw(log_weights)


def _arviz_stats_psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        from arviz_stats.base import array_stats
    except ImportError:
        raise ImportError("arviz >= 1.0 keeps PSIS in arviz_stats, which is not installed; "
                          "pip install arviz-stats (or arviz < 1.0).") from None
    # arviz_stats takes *log-likelihoods* (PSIS-LOO's weights are 1/p(y_i|theta)) and negates
    # them; minus the log-weights gives back the weights themselves.
    return array_stats.psislw(-np.asarray(log_weights, dtype=np.float64), r_eff=1.0, axis=-1)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _groups(evaluation: Any) -> dict[str, Any]:
    import xarray as xr

    point = {"point": np.arange(evaluation.num_points)}
    pointwise = {"log_px": evaluation.log_px, "mc_se": evaluation.mc_se, "elbo": evaluation.elbo,
                 "reconstruction": evaluation.reconstruction, "kl": evaluation.kl, "khat": evaluation.khat,
                 "ess": evaluation.ess, **{f"iwae_{k}": v for k, v in sorted(evaluation.iwae.items())}}
    sample_stats: dict[str, Any] = {}
    if evaluation.log_weights is not None:  # (N, K) -> (chain=1, draw=K, point=N)
        sample_stats["log_weight"] = (("chain", "draw", "point"), _numpy(evaluation.log_weights).T[None])
    ais = evaluation.sections.get("ais")
    if ais is not None:
        pointwise.update(ais_log_px=ais.log_px, ais_mc_se=ais.mc_se)
        sample_stats["ais_log_weight"] = (("chain", "ais_draw", "point"), _numpy(ais.log_weights).T[None])
    groups = {"pointwise": xr.Dataset({k: ("point", _numpy(v)) for k, v in pointwise.items()}, coords=point)}
    if sample_stats:
        groups["sample_stats"] = xr.Dataset(sample_stats, coords=point)
    latent = {k: v for k, v in (("kl_per_dim", evaluation.kl_per_dim), ("unit_variance", evaluation.unit_variance))
              if v is not None}
    if latent:
        groups["latent"] = xr.Dataset({k: ("latent", _numpy(v)) for k, v in latent.items()})
    attrs = {"units": "nats per point", "representation": str(evaluation.representation), "samples": evaluation.num_samples,
             "num_dims": evaluation.num_dims, "levels": evaluation.levels or 0, "estimator": "importance sampling",
             "method": evaluation.method, "proposal": "the guide q(z|x), one per point (not a shared posterior)"}
    for ds in groups.values():
        ds.attrs.update(attrs)
    return groups


def to_inference_data(evaluation: Any) -> Any:
    """The evaluation as arviz data: ``az.InferenceData`` (arviz < 1) or ``xarray.DataTree`` (arviz >= 1).

    See the module docstring for the groups and what they are not.
    """
    groups = _groups(evaluation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz's refactor banner
        import arviz as az

        if hasattr(az, "InferenceData"):
            return az.InferenceData(**groups)
    import xarray as xr

    return xr.DataTree.from_dict({f"/{name}": ds for name, ds in groups.items()})
