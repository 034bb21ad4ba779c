"""The EM driver shared by the exact baselines: fitting, restarts, convergence, evaluation.

A baseline subclasses :class:`EMBaseline` with an E-step and an M-step (or a one-pass
``_step``); the driver here runs EM to convergence with restarts, keeps the monotone
log-likelihood history, and scores points exactly (``log_prob``/``evaluate``). The
models are in :mod:`pyro_vae.baselines.lowrank` (PPCA, factor analysis) and
:mod:`pyro_vae.baselines.mixtures` (Gaussian mixtures, mixtures of Bernoullis); the registry by
name is :mod:`pyro_vae.baselines.registry`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

from pyro_vae.baselines import kernels as kernels
from pyro_vae.core.progress import progress_bar
from pyro_vae.core.stats import LogLikelihood
from pyro_vae.core.units import Representation

__all__ = ["EMBaseline", "as_data", "assert_finite", "LOG_2PI"]

LOG_2PI = math.log(2.0 * math.pi)
_Model = TypeVar("_Model", bound="EMBaseline")


def as_data(x: Any, who: str, num_dims: int | None = None, check_finite: bool = True) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(
            f"{who}: expected a batch of shape (N, D) or (N, ...), got shape {tuple(x.shape)}; "
            "for a single datapoint pass x[None]."
        )
    x = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    if x.numel() == 0:
        raise ValueError(f"{who}: got an empty batch of shape {tuple(x.shape)}.")
    if check_finite:
        assert_finite(x, float(x.sum()), who)  # one reduction is far cheaper than an elementwise mask
    if num_dims is not None and x.shape[1] != num_dims:
        raise ValueError(f"{who}: the model was fitted on D={num_dims} dims but got D={x.shape[1]} (after flattening).")
    return x


def assert_finite(x: Tensor, total: float, who: str) -> None:
    """Raise if ``x`` has NaN/inf, given any reduction ``total`` of it (finite iff ``x`` is, barring overflow)."""
    if math.isfinite(total):
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(
            f"{who}: {bad} of {x.numel()} values are not finite (NaN or inf); drop or impute those datapoints first."
        )


class EMBaseline:
    """Shared EM driver: input checks, restarts, convergence, history, evaluation.

    Subclasses provide ``_prepare`` (sufficient statistics, computed once), ``_init``,
    ``_e_step`` (mean train log-likelihood of the *current* parameters, plus what the
    M-step needs), ``_m_step`` and ``_log_prob`` (or override ``_step`` to fuse an E- and
    M-step); fitted parameters are plain tensor
    attributes listed in ``_param_names``, so they can be inspected or set by hand.

    Args:
        n_components: Latent dimensions (PPCA, FA) or mixture components.
        max_iter: Maximum EM iterations (M-steps) per restart.
        tol: Stop when the mean train log-likelihood changes by less than this (nats/point).
        n_restarts: Independent EM runs; the one with the highest train likelihood is kept.
        seed: Seed for initialization.
        min_variance: Variance floor applied in every M-step (see the module docstring).

    Attributes:
        history: Mean train log-likelihood (nats/point) of the initial parameters and
            after each M-step of the kept run; ``history[-1]`` is that of the returned
            parameters.
        iterations, converged, fit_seconds, restart_log_likelihoods: Fit diagnostics.
    """

    name = "baseline"
    data_kind = "continuous"  # a density on real values; "binary" for Bernoulli mixtures (see pyro_vae.core.units)
    _param_names: tuple[str, ...] = ()
    _em_threads: int | None = None  # thread cap for the EM loop (after _prepare)

    def __init__(
        self, n_components: int, *, max_iter: int = 200, tol: float = 1e-4, n_restarts: int = 1, seed: int = 0,
        min_variance: float = 1e-6,
    ) -> None:
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"{type(self).__name__}: n_components must be a positive int, got {n_components!r}.")
        if not min_variance > 0:
            raise ValueError(f"{type(self).__name__}: min_variance must be > 0, got {min_variance}.")
        self.n_components, self.min_variance = n_components, float(min_variance)
        self.max_iter, self.tol, self.n_restarts, self.seed = max_iter, tol, n_restarts, seed
        self.history: list[float] = []
        self.restart_log_likelihoods: list[float] = []
        self.num_dims: int | None = None
        self.fit_seconds, self.iterations, self.converged = float("nan"), 0, False

    def _step(self, data: dict, p: dict) -> tuple[float, Callable[[], dict]]:
        """One EM iteration: the mean train log-likelihood of ``p`` and a thunk for the next
        parameters (called only if EM goes on). Subclasses may fuse both into one data pass."""
        ll, aux = self._e_step(data, p)
        return ll, lambda: self._m_step(data, p, aux)

    def _check_fit_data(self, x: Tensor) -> None:
        if x.shape[0] < self.n_components:
            raise ValueError(f"{self.name}: {x.shape[0]} datapoints cannot support n_components={self.n_components}.")

    def fit(
        self: _Model, x: Any, *, max_iter: int | None = None, tol: float | None = None,
        n_restarts: int | None = None, seed: int | None = None, init: EMBaseline | dict[str, Any] | None = None,
        progress: bool | None = False,
    ) -> _Model:
        """Fit by EM. Arguments left as ``None`` fall back to the constructor's values.

        Args:
            x: Training data of shape ``(N, ...)`` (tensor or array), flattened to ``(N, D)``.
            init: Start EM from these parameters instead of the model's initialization: a
                fitted baseline of the same kind (to refine it, e.g. on more data) or a dict
                with every name in ``_param_names``. One run is made (restarts would repeat it).
            progress: A bar over EM iterations (all restarts; it ends early on convergence):
                ``True``, ``False`` or ``None`` (only on a terminal).

        Returns:
            ``self``, with fitted parameters and ``history``.
        """
        start = time.perf_counter()
        max_iter = self.max_iter if max_iter is None else max_iter
        tol = self.tol if tol is None else tol
        n_restarts = self.n_restarts if n_restarts is None else n_restarts
        if n_restarts < 1 or max_iter < 0:
            raise ValueError(f"{self.name}: need n_restarts >= 1 and max_iter >= 0, got {n_restarts}, {max_iter}.")
        x = as_data(x, f"{self.name}.fit")
        self._check_fit_data(x)
        data = self._prepare(x)
        start_params = None if init is None else self._start_params(init, x)
        if start_params is not None:
            n_restarts = 1
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        best, self.restart_log_likelihoods = None, []
        with kernels.torch_threads(self._em_threads if x.device.type == "cpu" else None), \
                progress_bar(n_restarts * max_iter, f"EM {self.name}", "iteration", progress) as bar:
            for restart in range(n_restarts):
                p = self._init(data, g, restart) if start_params is None else start_params
                ll, advance = self._step(data, p)
                history, converged = [ll], False
                for _ in range(max_iter):
                    p = advance()
                    ll, advance = self._step(data, p)
                    history.append(ll)
                    bar.update()
                    bar.set_postfix_str(f"log-lik {ll:.3f}")
                    if abs(history[-1] - history[-2]) < tol:
                        converged = True
                        break
                self.restart_log_likelihoods.append(history[-1])
                if best is None or history[-1] > best[1][-1]:
                    best = (p, history, converged)
        self._finish(x, *best, start)
        return self

    def _start_params(self, init: EMBaseline | dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        if isinstance(init, EMBaseline):
            if type(init) is not type(self) or init.num_dims is None:
                raise ValueError(f"{self.name}: init must be a fitted {type(self).__name__} or a dict of parameters.")
            init = {key: getattr(init, key) for key in self._param_names}
        missing = [key for key in self._param_names if key not in init]
        unknown = sorted(set(init) - set(self._param_names))
        if missing or unknown:
            raise ValueError(
                f"{self.name}: init needs exactly the parameters {', '.join(self._param_names)}; "
                f"missing {missing or 'none'}, unknown {unknown or 'none'}."
            )
        p = {key: torch.as_tensor(init[key]).to(dtype=x.dtype, device=x.device) for key in self._param_names}
        # the likelihood of x under p both checks the shapes against x and must be finite to start EM
        try:
            ok = bool(torch.isfinite(self._log_prob(x[:1], p)).all())
        except (RuntimeError, IndexError, ValueError) as error:
            raise ValueError(f"{self.name}: init parameters do not fit data of D={x.shape[1]}: {error}") from None
        if not ok:
            raise ValueError(f"{self.name}: init parameters give a non-finite log-likelihood; check variances/probabilities.")
        return p

    def _finish(self, x: Tensor, p: dict, history: list[float], converged: bool, start: float) -> None:
        for key in self._param_names:
            setattr(self, key, p[key])
        self.num_dims, self.history, self.converged = x.shape[1], history, converged
        self.iterations = len(history) - 1
        self.fit_seconds = time.perf_counter() - start

    def log_prob(self, x: Any) -> Tensor:
        """Exact log-likelihood of each datapoint in nats, shape ``(N,)``, float64."""
        if self.num_dims is None:
            raise RuntimeError(f"{self.name}: call fit(x) before log_prob/evaluate.")
        x = as_data(x, f"{self.name}.log_prob", self.num_dims)
        p = {key: getattr(self, key) for key in self._param_names}
        return self._log_prob(x.to(p[self._param_names[0]].device), p)

    def evaluate(self, x: Any, levels: int | None = None) -> LogLikelihood:
        """Per-datapoint log-likelihoods as a :class:`LogLikelihood`, fit diagnostics in ``extra``.

        Args:
            x: Data of shape ``(N, ...)``.
            levels: Quantization levels if ``x`` is dequantized ``(v + u) / levels`` data (bits/dim
                are then those of a probability mass), else ``None``.
        """
        extra = {
            "fit_seconds": self.fit_seconds, "iterations": self.iterations, "converged": self.converged,
            "n_components": self.n_components, "n_restarts": len(self.restart_log_likelihoods),
            "train_log_likelihood": self.history[-1] if self.history else float("nan"),
        }
        kind = "dequantized" if levels and self.data_kind == "continuous" else self.data_kind
        return LogLikelihood(self.name, self.log_prob(x), num_dims=self.num_dims, levels=levels, extra=extra,
                             representation=Representation(kind, levels if kind == "dequantized" else None))
