"""Evaluation results and their formatting: per-point figures, ``report.json``, text, arviz.

An estimator (importance sampling in :mod:`pyro_vae.estimators.importance`; annealed importance
sampling and BDMC beside it) returns a result object with ``to_dict()`` (JSON-safe figures)
and ``summary()`` (text). A report is a mapping of named sections, so a new estimator
plugs in beside the others without touching this module::

    write_report(path, evaluation, {"ais": ais_result, "bdmc": bdmc_result})

Example:
    >>> json_safe({"a": float("nan"), "b": [1.0, float("inf")]})
    {'a': None, 'b': [1.0, None]}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch
from torch import Tensor

from pyro_vae.core.stats import LogLikelihood, dataset_figure
from pyro_vae.results.arviz import to_inference_data
from pyro_vae.core.units import Representation

__all__ = ["Evaluation", "Section", "PosteriorCollapseWarning", "json_safe", "write_report", "KHAT_THRESHOLD",
           "ACTIVE_THRESHOLD", "COLLAPSE_KL"]

KHAT_THRESHOLD = 0.7  # Vehtari et al.: above it the importance sampling estimate is unreliable
ACTIVE_THRESHOLD = 0.01  # Burda et al.: a unit is active if Var_x E_q[z_u] exceeds it
COLLAPSE_KL = 0.01  # nats: below it a latent dimension carries (almost) no information


class Section(Protocol):
    """What a report section provides: JSON-safe figures and a text summary."""

    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


def write_report(path: str | Path, main: Section, sections: Mapping[str, Section] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict:
    """Write ``main``'s figures, ``extra`` and one key per further section as JSON, atomically.

    Args:
        path: The ``report.json`` to write.
        main: The section whose figures stand at the top level (importance sampling).
        sections: Further sections by name (e.g. ``{"ais": ..., "bdmc": ...}``).
        extra: Provenance (run directory, split, checkpoint, ...).

    Returns:
        The report as written.
    """
    report = {**main.to_dict(), **(extra or {})}
    for name, section in (sections or {}).items():
        report[name] = section.to_dict()
    report = json_safe(report)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return report


class PosteriorCollapseWarning(UserWarning):
    """Some (or all) latent dimensions carry almost no KL: the decoder ignores them."""


@dataclass
class Evaluation:
    """Per-datapoint importance-sampling results and their summaries (nats per point).

    Attributes:
        log_px: IS estimate ``log p̂(x_i)`` (= ``L_K``), shape ``(N,)``.
        mc_se: Delta-method Monte Carlo standard error of ``log_px``.
        elbo: ELBO per point: mean reconstruction minus KL (analytic if available).
        elbo_mc_se: Monte Carlo standard error of ``elbo``.
        reconstruction: ``E_q[log p(x|z)]`` per point.
        kl: ``KL(q(z|x) || p(z))`` per point.
        iwae: ``{k: L_k per point}`` for each evaluated ``k`` (``k = 1``: plain MC ELBO).
        iwae_mc_se: ``{k: Monte Carlo standard error of L_k per point}``.
        khat: PSIS Pareto shape per point (NaN when ``K`` is too small to fit a tail,
            ``-inf`` when all weights are equal to float precision: no tail at all).
        ess: Effective sample size ``1 / sum wbar²`` per point, in ``[1, K]``.
        unit_variance: ``Var_x E_q[z_u]`` per latent dimension, or ``None``.
        kl_per_dim: Mean KL per latent dimension, or ``None`` if the prior allows no marginal.
        num_samples: ``K``.
        num_dims: Dimensions of one datapoint, for bits/dim.
        levels: Quantization levels when ``log_px`` is a density on dequantized data.
        kl_analytic: Whether ``kl`` is exact rather than Monte Carlo.
        method: ``"fused"`` (direct VAE computation) or ``"trace"`` (Pyro traces).
        seconds: Wall time of the evaluation.
        world_size: Number of processes that shared the work.
        representation: What data ``log_px`` scores (binary, levels, dequantized,
            continuous): comparisons with other results check it.
        log_weights: The importance log-weights ``(N, K)`` (float32) when kept
            (``evaluate(..., keep_log_weights=True)``), else ``None``.
        extra: Provenance and free-form figures carried into ``report.json``.
        sections: Other estimators' results on the same points, by name (``"ais"``,
            ``"bdmc"``): each has ``to_dict()`` and ``summary()``.
    """

    log_px: Tensor
    mc_se: Tensor
    elbo: Tensor
    elbo_mc_se: Tensor
    reconstruction: Tensor
    kl: Tensor
    iwae: dict[int, Tensor]
    iwae_mc_se: dict[int, Tensor]
    khat: Tensor
    ess: Tensor
    unit_variance: Tensor | None
    kl_per_dim: Tensor | None
    num_samples: int
    num_dims: int
    levels: int | None = None
    kl_analytic: bool = False
    method: str = "fused"
    seconds: float = 0.0
    world_size: int = 1
    representation: Representation = field(default_factory=lambda: Representation("unknown"))
    log_weights: Tensor | None = None
    extra: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return self.log_px.numel()

    @property
    def log_likelihood(self) -> LogLikelihood:
        """The IS estimates as the :class:`~pyro_vae.core.stats.LogLikelihood` EM baselines also return."""
        return LogLikelihood("vae", self.log_px, self.num_dims, self.levels, mc_se=self.mc_se,
                             extra={"samples": self.num_samples}, representation=self.representation)

    @property
    def active_units(self) -> int | None:
        return None if self.unit_variance is None else int((self.unit_variance > ACTIVE_THRESHOLD).sum())

    @property
    def unreliable(self) -> Tensor:
        """Per-point flag: ``k̂ > 0.7``, the IS estimate of that point cannot be trusted."""
        return self.khat > KHAT_THRESHOLD

    @property
    def frac_unreliable(self) -> float:
        """Fraction of points flagged :attr:`unreliable` (a NaN k̂, K too small, is not flagged)."""
        return self.unreliable.double().mean().item()

    def _figure(self, values: Tensor, mc_se: Tensor) -> dict[str, float]:
        return dataset_figure(values, mc_se, self.num_dims, self.levels)

    def to_dict(self) -> dict[str, Any]:
        """Summary figures for ``report.json`` (non-finite values become ``None``)."""
        finite = self.khat[torch.isfinite(self.khat)]
        kl_dims = self.kl_per_dim
        report = {
            "num_points": self.num_points,
            "samples": self.num_samples,
            "num_dims": self.num_dims,
            "levels": self.levels,
            "representation": str(self.representation),
            "units": "nats per point",
            "method": self.method,
            "world_size": self.world_size,
            "seconds": self.seconds,
            "elbo": {**self._figure(self.elbo, self.elbo_mc_se), "reconstruction": self.reconstruction.mean().item(),
                     "kl": self.kl.mean().item(), "kl_analytic": self.kl_analytic},
            "iwae": [{"k": k, **self._figure(v, self.iwae_mc_se[k])} for k, v in sorted(self.iwae.items())],
            "log_likelihood": self._figure(self.log_px, self.mc_se),
            "diagnostics": {
                "khat_mean": finite.mean().item() if finite.numel() else None,
                "khat_median": finite.median().item() if finite.numel() else None,
                "khat_max": finite.max().item() if finite.numel() else None,
                "frac_khat_above_0_7": self.frac_unreliable,
                "ess_mean": self.ess.mean().item(),
                "ess_min": self.ess.min().item(),
                "ess_fraction_mean": self.ess.mean().item() / self.num_samples,
                "active_units": self.active_units,
                "latent_dim": None if self.unit_variance is None else self.unit_variance.numel(),
                "unit_variance": None if self.unit_variance is None else self.unit_variance.tolist(),
                "kl_per_dim": None if kl_dims is None else kl_dims.tolist(),
                "collapsed_units": None if kl_dims is None else int((kl_dims < COLLAPSE_KL).sum()),
            },
            **self.extra,
        }
        return json_safe(report)

    def to_inference_data(self):
        """The results as arviz data; see :func:`pyro_vae.results.arviz.to_inference_data` for the groups.

        ``sample_stats.log_weight`` (``(chain, draw, point)``) holds the importance
        log-weights when they were kept (``keep_log_weights=True``), ready for
        ``az.psislw``; ``pointwise`` the per-point estimates and diagnostics.
        """
        return to_inference_data(self)

    def summary(self) -> str:
        """A one-screen text summary."""
        d = self.to_dict()
        ll, elbo, diag = d["log_likelihood"], d["elbo"], d["diagnostics"]
        lines = [
            f"VAE evaluation: N={self.num_points} points, K={self.num_samples} importance samples "
            f"({self.method}, {self.seconds:.1f} s, {self.world_size} process{'es' if self.world_size > 1 else ''})",
            f"  log p(x) (IS)  {ll['mean']:10.3f} ± {ll['se']:.3f} nats  (MC SE {ll['mc_se']:.4f})  "
            f"{ll['bits_per_dim']:.4f} bits/dim",
            f"  ELBO           {elbo['mean']:10.3f} ± {elbo['se']:.3f} nats  = reconstruction {elbo['reconstruction']:.3f}"
            f" - KL {elbo['kl']:.3f} ({'analytic' if self.kl_analytic else 'MC'} KL)",
            "  bound       k        mean       ± SE     MC SE   bits/dim",
        ]
        for row in d["iwae"]:
            lines.append(f"  L_k   {row['k']:>8d}  {row['mean']:10.3f}  {row['se']:8.3f}  {row['mc_se']:8.4f}  "
                         f"{row['bits_per_dim']:.4f}")
        if diag["khat_mean"] is None:
            lines.append(f"  PSIS k̂: not estimable with K={self.num_samples} (need a tail of more than 4 draws)")
        else:
            lines.append(f"  PSIS k̂: mean {diag['khat_mean']:.3f}, median {diag['khat_median']:.3f}, max "
                         f"{diag['khat_max']:.3f}; {100 * diag['frac_khat_above_0_7']:.1f}% of points > 0.7 (unreliable)")
        lines.append(f"  ESS: mean {diag['ess_mean']:.1f} of {self.num_samples} "
                     f"({100 * diag['ess_fraction_mean']:.2f}%), min {diag['ess_min']:.2f}")
        if diag["active_units"] is not None:
            kl_text = ""
            if self.kl_per_dim is not None:
                top = ", ".join(f"{v:.2f}" for v in self.kl_per_dim.sort(descending=True).values[:8].tolist())
                kl_text = f"; KL/dim (largest): {top}; {diag['collapsed_units']} with KL < {COLLAPSE_KL} nats"
            lines.append(f"  active units: {diag['active_units']}/{diag['latent_dim']} "
                         f"(Var_x E_q[z_u] > {ACTIVE_THRESHOLD}){kl_text}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def json_safe(obj: Any) -> Any:
    """Non-finite floats become ``None`` (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
