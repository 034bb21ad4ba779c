"""Exact-likelihood baselines fitted by EM, reported in the same units as the VAE: the registry.

The driver is :mod:`pyro_vae.baselines.em`, the models :mod:`pyro_vae.baselines.lowrank` (PPCA, FA) and
:mod:`pyro_vae.baselines.mixtures` (GMM, MoB); this module names them for configs and the command line.

Each model has a closed-form marginal likelihood, so ``log_prob`` is exact and
``evaluate`` returns the same :class:`~pyro_vae.core.stats.LogLikelihood` as the VAE
evaluator (nats/point, mean ± SE, bits/dim). Computation is vectorized torch in float64:
MNIST log-likelihoods are sums of ~784 terms, and EM monotonicity checks need more than
float32's ~7 digits. Inputs of shape ``(N, ...)`` are flattened to ``(N, D)``.

Variances (noise variances, diagonal variances, covariance eigenvalues) are floored at
``min_variance`` (absolute, squared data units; default 1e-6, the size of scikit-learn's
``reg_covar``) in every M-step. The clamped update is the exact constrained maximizer,
so EM stays monotone, and constant pixels (MNIST's border) cannot send the likelihood to
infinity. Unlike ``reg_covar``, which is *added* to every variance, a floor leaves
well-estimated variances alone (``GaussianMixture(regularization="add")`` gives
scikit-learn's rule instead, and so scikit-learn's model). Dequantize discrete data first (``(v + u) / levels``:
the noise alone has variance ``1 / (12 levels^2)``, 1.3e-6 for 8-bit pixels) and pass
``levels`` to ``evaluate``. A larger floor (e.g. 1e-3 for [0, 1] pixels) regularizes:
lower train but often much higher test likelihood.

Example:
    >>> import torch
    >>> x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    >>> ll = make_baseline("ppca", 2).fit(x).evaluate(x)
    >>> ll.name, ll.num_points, ll.extra["converged"]
    ('ppca', 200, True)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from pyro_vae.baselines.em import EMBaseline
from pyro_vae.baselines.lowrank import PPCA, FactorAnalysis
from pyro_vae.baselines.mixtures import GaussianMixture, MixtureOfBernoullis

__all__ = ["BASELINES", "make_baseline"]


BASELINES: dict[str, Callable[..., EMBaseline]] = {
    "ppca": PPCA, "fa": FactorAnalysis, "mob": MixtureOfBernoullis,
    "gmm": functools.partial(GaussianMixture, covariance="diag"),
    "gmm_full": functools.partial(GaussianMixture, covariance="full"),
}


def make_baseline(name: str, n_components: int, **kwargs: Any) -> EMBaseline:
    """Build a baseline by registry name (a key of :data:`BASELINES`).

    Example:
        >>> make_baseline("gmm_full", 3, max_iter=50).name
        'gmm_full'
        >>> make_baseline("vae", 3)
        Traceback (most recent call last):
        ...
        ValueError: unknown baseline 'vae'; valid names: fa, gmm, gmm_full, mob, ppca
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid names: {', '.join(sorted(BASELINES))}")
    return BASELINES[name](n_components, **kwargs)
