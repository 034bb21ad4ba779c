"""Shared summary statistics, so every estimator reports in the same units.

All log-likelihood figures in pyro_vae are **nats per datapoint**; a figure is a
mean over datapoints with its standard error (std / sqrt(N)). Bits per dimension
are derived from nats the same way everywhere (see :func:`bits_per_dim`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pyro_vae.core.units import Representation, check_comparable

__all__ = ["LogLikelihood", "mean_se", "dataset_figure", "bits_per_dim", "logmeanexp", "logmeanexp_mc_se"]


def mean_se(values: Tensor) -> dict[str, float]:
    """Mean and standard error of per-datapoint values.

    Args:
        values: A 1-D tensor of per-datapoint figures (e.g. log-likelihoods in nats).

    Returns:
        ``{"mean": ..., "se": ...}`` where ``se = std / sqrt(N)`` (0 when N == 1).

    Example:
        >>> mean_se(torch.tensor([1.0, 2.0, 3.0]))
        {'mean': 2.0, 'se': 0.5773502691896258}
    """
    values = values.detach().double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("mean_se needs at least one value, got an empty tensor.")
    se = values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else 0.0
    return {"mean": values.mean().item(), "se": se}


def dataset_figure(values: Tensor, mc_se: Tensor | None = None, num_dims: int | None = None,
                   levels: int | None = None) -> dict[str, float]:
    """Mean ± SE over points, plus the dataset Monte Carlo SE and bits/dim when given what they need.

    The Monte Carlo SE of the mean is ``sqrt(sum_i mc_se_i²) / N`` (independent per-point errors).

    Example:
        >>> dataset_figure(torch.tensor([-1.0, -3.0]), mc_se=torch.tensor([0.3, 0.4], dtype=torch.float64))
        {'mean': -2.0, 'se': 1.0, 'mc_se': 0.25}
    """
    out = mean_se(values)
    if mc_se is not None:
        out["mc_se"] = (mc_se.detach().double().pow(2).sum().sqrt() / values.numel()).item()
    if num_dims is not None:
        out["bits_per_dim"] = bits_per_dim(out["mean"], num_dims, levels)
    return out


def bits_per_dim(log_likelihood_nats: float, num_dims: int, levels: int | None = None) -> float:
    """Convert a per-datapoint log-likelihood in nats to bits per dimension.

    For data quantized to ``levels`` values and scaled to ``[0, 1)`` (the dequantized
    convention ``(level + u) / levels``), a density on the unit cube is converted to a
    probability mass on the discrete levels by subtracting ``num_dims * log(levels)``
    (Theis et al., 2016). Discrete models (categorical, Bernoulli) already give a mass:
    pass ``levels=None`` for those.

    Args:
        log_likelihood_nats: Mean log-likelihood per datapoint, in nats.
        num_dims: Number of dimensions of one datapoint (e.g. 784 for MNIST).
        levels: Number of quantization levels when the figure is a density on the
            ``[0, 1)`` scaled cube, else ``None``.

    Example:
        >>> round(bits_per_dim(-784 * math.log(2), 784), 6)
        1.0
    """
    log_mass = log_likelihood_nats - (num_dims * math.log(levels) if levels else 0.0)
    return -log_mass / (num_dims * math.log(2.0))


def logmeanexp(x: Tensor, dim: int) -> Tensor:
    """Numerically stable ``log(mean(exp(x), dim))``.

    Example:
        >>> logmeanexp(torch.zeros(3, 4), dim=-1)
        tensor([0., 0., 0.])
    """
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def logmeanexp_mc_se(log_w: Tensor) -> Tensor:
    """Delta-method Monte Carlo SE of ``logmeanexp`` over the last dim: ``sqrt(sum wbar² - 1/K)``, float64.

    ``wbar`` are the normalized weights; ``1 / sum wbar²`` is the effective sample size,
    so this is ``sqrt(1/ESS - 1/K)``: 0 for equal weights.

    Example:
        >>> logmeanexp_mc_se(torch.zeros(2, 5)).abs().max().item() < 1e-6  # equal weights: no error
        True
    """
    # In float64: in float32, sum wbar² - 1/K has a rounding floor of ~1e-8, an SE of ~1e-4.
    return (torch.softmax(log_w.double(), dim=-1).pow(2).sum(-1) - 1.0 / log_w.shape[-1]).clamp(min=0.0).sqrt()


@dataclass
class LogLikelihood:
    """Per-datapoint log-likelihoods and their summary, shared by every estimator.

    The VAE evaluator (importance sampling) and the exact EM baselines both return
    one of these, so their figures print and serialize identically.

    Attributes:
        name: What produced the figures (e.g. ``"vae"``, ``"ppca"``).
        per_point: Log-likelihood of each datapoint, in nats, shape ``(N,)``.
        num_dims: Dimensions of one datapoint, for bits/dim.
        levels: Quantization levels if ``per_point`` is a density on dequantized
            ``[0, 1)`` data, ``None`` for a probability mass or unquantized data.
        mc_se: Per-datapoint Monte Carlo standard error of the estimate (zeros for
            exact log-likelihoods), shape ``(N,)``.
        extra: Free-form figures to carry into the report (e.g. fit time).
        representation: What data the figures score (:class:`~pyro_vae.core.units.Representation`);
            default: ``dequantized`` when ``levels`` is given, else ``unknown``, which
            refuses every comparison: name it to compare.

    Example:
        >>> ll = LogLikelihood("exact", torch.tensor([-1.0, -3.0]), num_dims=2, representation=Representation("continuous"))
        >>> ll.to_dict()["log_likelihood"]["mean"]
        -2.0
        >>> other = LogLikelihood("other", torch.tensor([-2.0, -3.5]), num_dims=2, representation=Representation("continuous"))
        >>> ll.paired_difference(other)["mean"]
        0.75
    """

    name: str
    per_point: Tensor
    num_dims: int
    levels: int | None = None
    mc_se: Tensor | None = None
    extra: dict = field(default_factory=dict)
    representation: Representation | None = None

    def __post_init__(self) -> None:
        if self.representation is None:
            self.representation = Representation("dequantized", self.levels) if self.levels else Representation("unknown")
        self.per_point = self.per_point.detach().double().flatten().cpu()
        if self.mc_se is None:
            self.mc_se = torch.zeros_like(self.per_point)
        self.mc_se = self.mc_se.detach().double().flatten().cpu()
        if not torch.isfinite(self.per_point).all():
            bad = (~torch.isfinite(self.per_point)).sum().item()
            raise ValueError(
                f"{self.name}: {bad} of {self.per_point.numel()} per-datapoint log-likelihoods are not finite; "
                "check the data for values outside the model's support."
            )

    @property
    def num_points(self) -> int:
        return self.per_point.numel()

    @property
    def mean(self) -> float:
        return self.per_point.mean().item()

    @property
    def se(self) -> float:
        """Standard error over datapoints (std / sqrt(N))."""
        return mean_se(self.per_point)["se"]

    @property
    def dataset_mc_se(self) -> float:
        """Monte Carlo standard error of the dataset mean (independent per-point errors)."""
        return dataset_figure(self.per_point, self.mc_se)["mc_se"]

    @property
    def bits_per_dim(self) -> float:
        return bits_per_dim(self.mean, self.num_dims, self.levels)

    def paired_difference(self, other: "LogLikelihood") -> dict[str, float]:
        """``self - other`` per point: mean, paired SE and ``z = mean / se``.

        Pairing removes the spread of the points' difficulty, which dominates the unpaired
        SE; the two must score the same points in the same representation.

        Raises:
            IncompatibleUnitsError: Different representations, sizes or numbers of points.
        """
        check_comparable(self, other, paired=True)
        d = mean_se(self.per_point - other.per_point)
        if d["se"] > 0:
            z = d["mean"] / d["se"]
        else:  # identical differences on every point: the sign is certain, zero means "no difference"
            z = math.copysign(math.inf, d["mean"]) if d["mean"] else math.nan
        return {**d, "z": z}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "representation": str(self.representation),
            "num_points": self.num_points,
            "log_likelihood": {
                "mean": self.mean,
                "se": self.se,
                "mc_se": self.dataset_mc_se,
                "bits_per_dim": self.bits_per_dim,
            },
            **self.extra,
        }

    def __str__(self) -> str:
        return (
            f"{self.name}: log p(x) = {self.mean:.3f} ± {self.se:.3f} nats "
            f"(MC SE {self.dataset_mc_se:.3f}; {self.bits_per_dim:.4f} bits/dim; N={self.num_points})"
        )
