"""Exact-likelihood baselines fitted by EM, reported in the same units as the VAE.

Each model has a closed-form marginal likelihood, so ``log_prob`` is exact and
``evaluate`` returns the same :class:`~pyro_vae.stats.LogLikelihood` as the VAE
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
    >>> x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    >>> ll = make_baseline("ppca", 2).fit(x).evaluate(x)
    >>> ll.name, ll.num_points, ll.extra["converged"]
    ('ppca', 200, True)
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

from pyro_vae import _em_kernels as kernels
from pyro_vae.stats import LogLikelihood

__all__ = ["EMBaseline", "PPCA", "FactorAnalysis", "GaussianMixture", "MixtureOfBernoullis", "BASELINES", "make_baseline"]

_LOG_2PI = math.log(2.0 * math.pi)
_Model = TypeVar("_Model", bound="EMBaseline")


def _as_data(x: Any, who: str, num_dims: int | None = None, check_finite: bool = True) -> Tensor:
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
        _check_finite(x, float(x.sum()), who)  # one reduction is far cheaper than an elementwise mask
    if num_dims is not None and x.shape[1] != num_dims:
        raise ValueError(f"{who}: the model was fitted on D={num_dims} dims but got D={x.shape[1]} (after flattening).")
    return x


def _check_finite(x: Tensor, total: float, who: str) -> None:
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
    ) -> _Model:
        """Fit by EM. Arguments left as ``None`` fall back to the constructor's values.

        Args:
            x: Training data of shape ``(N, ...)`` (tensor or array), flattened to ``(N, D)``.
            init: Start EM from these parameters instead of the model's initialization: a
                fitted baseline of the same kind (to refine it, e.g. on more data) or a dict
                with every name in ``_param_names``. One run is made (restarts would repeat it).

        Returns:
            ``self``, with fitted parameters and ``history``.
        """
        start = time.perf_counter()
        max_iter = self.max_iter if max_iter is None else max_iter
        tol = self.tol if tol is None else tol
        n_restarts = self.n_restarts if n_restarts is None else n_restarts
        if n_restarts < 1 or max_iter < 0:
            raise ValueError(f"{self.name}: need n_restarts >= 1 and max_iter >= 0, got {n_restarts}, {max_iter}.")
        x = _as_data(x, f"{self.name}.fit")
        self._check_fit_data(x)
        data = self._prepare(x)
        start_params = None if init is None else self._start_params(init, x)
        if start_params is not None:
            n_restarts = 1
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        best, self.restart_log_likelihoods = None, []
        with kernels.torch_threads(self._em_threads if x.device.type == "cpu" else None):
            for restart in range(n_restarts):
                p = self._init(data, g, restart) if start_params is None else start_params
                ll, advance = self._step(data, p)
                history, converged = [ll], False
                for _ in range(max_iter):
                    p = advance()
                    ll, advance = self._step(data, p)
                    history.append(ll)
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
        x = _as_data(x, f"{self.name}.log_prob", self.num_dims)
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
        return LogLikelihood(self.name, self.log_prob(x), num_dims=self.num_dims, levels=levels, extra=extra)


class _LowRankGaussian(EMBaseline):
    """``N(x | mean, W W^T + Psi)`` with W of shape (D, k); PPCA ties ``Psi = sigma^2 I``."""

    _param_names = ("mean", "loadings", "noise_variance")
    _isotropic = True
    _em_threads = 1  # iterations are O(D^2 k) flops in small calls (see kernels.torch_threads)

    def _check_fit_data(self, x: Tensor) -> None:
        n, d = x.shape
        if self.n_components >= d:
            raise ValueError(
                f"{self.name}: n_components={self.n_components} must be < D={d}; with k >= D the model is "
                "a full-covariance Gaussian. Use fewer components."
            )
        if n <= self.n_components:
            raise ValueError(f"{self.name}: needs N > n_components, got N={n}, n_components={self.n_components}.")

    def _prepare(self, x: Tensor) -> dict[str, Any]:
        mean = x.mean(0)
        # The mean and the ML covariance S are sufficient: EM never touches the N points again.
        return {"mean": mean, "s": kernels.gram(x - mean) / x.shape[0]}

    @staticmethod
    def _factor(w: Tensor, psi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Woodbury and the determinant lemma: only the k x k matrix I + W^T Psi^-1 W is factorized.
        v = w / psi[:, None]
        chol = torch.linalg.cholesky(torch.eye(w.shape[1], dtype=w.dtype, device=w.device) + w.T @ v)
        return v, chol, psi.log().sum() + 2 * chol.diagonal().log().sum()

    def _e_step(self, data: dict, p: dict) -> tuple[float, Any]:
        s = data["s"]
        psi = p["noise_variance"].expand(s.shape[0])
        v, chol, logdet = self._factor(p["loadings"], psi)
        sv = s @ v
        vsv = v.T @ sv
        trace = (s.diagonal() / psi).sum() - torch.cholesky_solve(vsv, chol).trace()  # tr(C^-1 S)
        return float(-0.5 * (s.shape[0] * _LOG_2PI + logdet + trace)), (sv, vsv, chol)

    def _m_step(self, data: dict, p: dict, aux: Any) -> dict[str, Tensor]:
        # Rubin & Thayer (1982) written with S alone: O(D^2 k) per iteration, independent of N.
        sv, vsv, chol = aux
        g_inv = torch.cholesky_inverse(chol)
        s_beta = sv @ g_inv  # data average of (x - mu) E[z | x]^T
        ezz = g_inv + g_inv @ vsv @ g_inv  # data average of E[z z^T | x]
        w = torch.linalg.solve(ezz, s_beta.T).T
        psi = data["s"].diagonal() - (w * s_beta).sum(1)
        psi = psi.mean() if self._isotropic else psi
        return {"mean": data["mean"], "loadings": w, "noise_variance": psi.clamp_min(self.min_variance)}

    def _closed_form(self, data: dict) -> dict[str, Tensor]:
        return self._from_eigen(data["mean"], *self._top_eigen(data["s"]))

    def _top_eigen(self, s: Tensor) -> tuple[Tensor, Tensor, float]:
        """The top ``n_components`` eigenpairs of S (ascending) and its trace, in float64."""
        evals, evecs = kernels.eigh(s)
        return evals[-self.n_components :], evecs[:, -self.n_components :], float(s.diagonal().sum())

    def _from_eigen(self, mean: Tensor, evals: Tensor, evecs: Tensor, trace: float) -> dict[str, Tensor]:
        # Tipping & Bishop (1999): sigma^2 is the mean of the discarded eigenvalues (via the trace).
        d, k = evecs.shape
        top, u = evals.flip(0), evecs.flip(1)
        sigma2 = ((trace - top.sum()) / (d - k)).clamp_min(self.min_variance)
        return {"mean": mean, "loadings": u * (top - sigma2).clamp_min(0).sqrt(), "noise_variance": sigma2}

    def _random_init(self, data: dict, g: torch.Generator) -> dict[str, Tensor]:
        var = data["s"].diagonal()
        w = torch.randn(var.shape[0], self.n_components, generator=g, dtype=var.dtype).to(var.device)
        psi = var.mean() if self._isotropic else var
        w = w * (var.mean() / self.n_components).sqrt()
        return {"mean": data["mean"], "loadings": w, "noise_variance": psi.clamp_min(self.min_variance)}

    def _log_prob(self, x: Tensor, p: dict) -> Tensor:
        diff = x - p["mean"]
        psi = p["noise_variance"].expand(x.shape[1])
        v, chol, logdet = self._factor(p["loadings"], psi)
        proj = torch.linalg.solve_triangular(chol, (diff @ v).T, upper=False)
        maha = (diff * diff / psi).sum(1) - (proj * proj).sum(0)
        return -0.5 * (x.shape[1] * _LOG_2PI + logdet + maha)


class PPCA(_LowRankGaussian):
    """Probabilistic PCA (Tipping & Bishop, 1999): ``x ~ N(mean, W W^T + sigma^2 I)``.

    Fitted attributes: ``mean`` (D,), ``loadings`` W (D, k), ``noise_variance`` sigma^2
    (0-d tensor). Constructor arguments as for :class:`EMBaseline`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g)
        >>> exact = PPCA(2).fit(x).history[-1]
        >>> em = PPCA(2).fit(x, method="em", tol=1e-10, max_iter=5000).history[-1]
        >>> abs(exact - em) < 1e-4
        True
    """

    name = "ppca"

    def fit(
        self, x: Any, *, method: str = "closed_form", max_iter: int | None = None, tol: float | None = None,
        n_restarts: int | None = None, seed: int | None = None, float32: bool | None = None,
        init: EMBaseline | dict[str, Any] | None = None,
    ) -> PPCA:
        """Fit by the closed-form MLE (eigendecomposition of S) or by EM from a random start.

        Args:
            x: Training data of shape ``(N, ...)``.
            method: ``"closed_form"`` (the EM arguments and ``init`` are then unused) or ``"em"``.
            float32: Closed form only: accumulate S and decompose it in float32 (about 2x
                faster). The log-likelihood is stationary at the MLE, so the rounding moves it
                only to second order (on MNIST-10k: 3e-10 nats/point on average, < 1e-3 for
                any point). ``history`` then comes from the float32 spectrum and trace (on
                MNIST-10k within 1e-4 nats/point of the exact train log-likelihood). ``None``
                uses float32 when ``N * D^2 >= 1e9`` (MNIST-sized data), where it pays.
        """
        if method == "em":
            return super().fit(x, max_iter=max_iter, tol=tol, n_restarts=n_restarts, seed=seed, init=init)
        if method != "closed_form":
            raise ValueError(f"ppca: unknown method {method!r}; use 'closed_form' or 'em'.")
        start = time.perf_counter()
        x = _as_data(x, "ppca.fit", check_finite=False)
        self._check_fit_data(x)
        n, d = x.shape
        if float32 is None:
            float32 = n * d**2 >= 1e9
        if float32:
            # numpy on the CPU keeps the whole fit off torch's thread pool (see kernels.top_eigen_float32)
            col_sums = kernels.column_sums(x)
            _check_finite(x, float(col_sums.sum()), "ppca.fit")
            mean = col_sums / n
            evals, evecs, trace = kernels.top_eigen_float32(x, mean, self.n_components)
        else:
            _check_finite(x, float(x.sum()), "ppca.fit")
            data = self._prepare(x)
            mean, (evals, evecs, trace) = data["mean"], self._top_eigen(data["s"])
        # Small tensors only from here; one thread avoids 10-15 ms of OpenMP barrier waits
        # against OpenBLAS workers still spinning after the eigensolver.
        with kernels.torch_threads(1 if x.device.type == "cpu" else None):
            p = self._from_eigen(mean, evals, evecs, trace)
            self.restart_log_likelihoods = [self._profile_log_likelihood(evals, trace, p["noise_variance"], d)]
        self._finish(x, p, list(self.restart_log_likelihoods), True, start)
        return self

    @staticmethod
    def _profile_log_likelihood(evals: Tensor, trace: float, sigma2: Tensor, d: int) -> float:
        """Mean train log-likelihood of the closed-form parameters, from the spectrum of S alone.

        With U the top eigenvectors, C = U diag(c) U^T + sigma^2 (I - U U^T) where
        c = max(lambda, sigma^2), so log|C| and tr(C^-1 S) need only the eigenvalues and tr S.
        """
        c = evals.clamp_min(sigma2)
        rest = d - evals.shape[0]
        log_det = c.log().sum() + rest * sigma2.log()
        trace_term = (evals / c).sum() + (trace - evals.sum()) / sigma2
        return float(-0.5 * (d * _LOG_2PI + log_det + trace_term))

    def _init(self, data: dict, g: torch.Generator, restart: int) -> dict[str, Tensor]:
        return self._random_init(data, g)  # a random start makes EM a genuine check of the closed form


class FactorAnalysis(_LowRankGaussian):
    """Factor analysis, ``x ~ N(mean, W W^T + diag(psi))``, fitted by EM (Rubin & Thayer, 1982).

    Args:
        init: ``"pca"`` starts the first restart from the PPCA solution (far fewer EM
            iterations; later restarts start randomly), ``"random"`` starts every restart
            from random loadings. Other arguments as for :class:`EMBaseline`.

    Fitted attributes: ``mean`` (D,), ``loadings`` W (D, k), ``noise_variance`` psi (D,).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> fa = FactorAnalysis(2).fit(torch.randn(300, 6, generator=g) * torch.arange(1.0, 7.0))
        >>> fa.noise_variance.shape, fa.converged
        (torch.Size([6]), True)
    """

    name = "fa"
    _isotropic = False

    def __init__(self, n_components: int, *, init: str = "pca", **kwargs: Any) -> None:
        super().__init__(n_components, **kwargs)
        if init not in ("pca", "random"):
            raise ValueError(f"fa: unknown init {init!r}; use 'pca' or 'random'.")
        self.init = init

    def _init(self, data: dict, g: torch.Generator, restart: int) -> dict[str, Tensor]:
        if self.init == "random" or restart > 0:
            return self._random_init(data, g)
        p = self._closed_form(data)
        # Give each dimension the variance PPCA leaves unexplained, so diag(C) starts at diag(S).
        resid = data["s"].diagonal() - p["loadings"].pow(2).sum(1)
        return {**p, "noise_variance": resid.clamp_min(self.min_variance)}


class _Mixture(EMBaseline):
    """Shared E-step of mixtures: log-space responsibilities from ``_weighted_log_prob``."""

    def _e_step(self, data: dict, p: dict) -> tuple[float, Any]:
        wlp = self._weighted_log_prob(data["x"], p)
        norm = torch.logsumexp(wlp, 1)
        return float(norm.mean()), (wlp - norm[:, None]).exp()

    def _log_prob(self, x: Tensor, p: dict) -> Tensor:
        return torch.logsumexp(self._weighted_log_prob(x, p), 1)

    def _counts(self, resp: Tensor) -> Tensor:
        return self._floor_counts(resp.sum(0))

    @staticmethod
    def _floor_counts(counts: Tensor) -> Tensor:
        # A tiny count keeps an emptied component finite instead of NaN (as scikit-learn does).
        return counts + 10 * torch.finfo(counts.dtype).eps

    def _kmeans_resp(self, x: Tensor, g: torch.Generator) -> Tensor:
        labels = kernels.kmeans_labels(x, self.n_components, g)
        return torch.nn.functional.one_hot(labels, self.n_components).to(x.dtype)


class GaussianMixture(_Mixture):
    """Mixture of Gaussians with diagonal or full covariances, fitted by EM.

    Args:
        covariance: ``"diag"`` or ``"full"``. Full covariances have their eigenvalues
            clamped at ``min_variance`` in every M-step (the exact constrained maximizer).
        init: ``"kmeans++"`` (k-means++ seeding, refined by up to 10 Lloyd steps, as hard
            responsibilities) or ``"random"`` (random responsibilities).
        regularization: ``"floor"`` (variances, or covariance eigenvalues, floored at
            ``min_variance``: the exact constrained M-step, so EM is monotone) or ``"add"``
            (``min_variance`` added to every variance after the M-step, as scikit-learn's
            ``reg_covar``: the same model as ``sklearn.mixture.GaussianMixture``, cheaper for
            full covariances, better test likelihoods on MNIST, but EM is no longer
            guaranteed monotone). Other arguments as for :class:`EMBaseline`.

    Fitted attributes: ``weights`` (K,), ``means`` (K, D), ``covariances`` (K, D) or (K, D, D).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(100, 2, generator=g) - 5, torch.randn(100, 2, generator=g) + 5])
        >>> gmm = GaussianMixture(2, covariance="full").fit(x)
        >>> sorted(round(w, 2) for w in gmm.weights.tolist())
        [0.5, 0.5]
    """

    _param_names = ("weights", "means", "covariances")

    def __init__(self, n_components: int, *, covariance: str = "diag", init: str = "kmeans++",
                 regularization: str = "floor", **kwargs: Any) -> None:
        super().__init__(n_components, **kwargs)
        if covariance not in ("diag", "full"):
            raise ValueError(f"gmm: unknown covariance {covariance!r}; use 'diag' or 'full'.")
        if init not in ("kmeans++", "random"):
            raise ValueError(f"gmm: unknown init {init!r}; use 'kmeans++' or 'random'.")
        if regularization not in ("floor", "add"):
            raise ValueError(f"gmm: unknown regularization {regularization!r}; use 'floor' or 'add'.")
        self.covariance, self.init, self.regularization = covariance, init, regularization
        self.name = "gmm" if covariance == "diag" else "gmm_full"

    def _check_fit_data(self, x: Tensor) -> None:
        super()._check_fit_data(x)
        n, d = x.shape
        if self.covariance == "full" and n < self.n_components * (d + 1):
            raise ValueError(
                f"gmm_full: {n} datapoints are too few for {self.n_components} full {d}x{d} covariances "
                f"(need at least n_components * (D + 1) = {self.n_components * (d + 1)}); "
                "use covariance='diag', fewer components, or reduce D."
            )

    # Full covariances spend their time in BLAS calls through scipy (kernels.gram, kernels.whitened_sq_norms),
    # which run their own threads; diagonal EM spreads blocks over Python threads (kernels.DiagFeatures).
    # Either way torch's OpenMP workers would only contend with them: after each parallel op they
    # spin on the cores those threads need (a diagonal iteration took 17 ms with them, 13 without).
    _em_threads = 1

    def _prepare(self, x: Tensor) -> dict[str, Any]:
        return {"x": x, "workers": torch.get_num_threads()}  # read before fit caps torch's threads

    def _init(self, data: dict, g: torch.Generator, restart: int) -> dict[str, Tensor]:
        x = data["x"]
        if self.init == "kmeans++":
            return self._m_step(data, {}, self._kmeans_resp(x, g))
        resp = torch.rand(x.shape[0], self.n_components, generator=g, dtype=x.dtype).to(x.device)
        return self._m_step(data, {}, resp / resp.sum(1, keepdim=True))

    def _step(self, data: dict, p: dict) -> tuple[float, Callable[[], dict]]:
        if self.covariance == "full":
            return super()._step(data, p)
        # One pass over the data per iteration: each block's E-step and M-step sums are computed
        # while its features are in cache. Component-major (K, block) products: MKL runs these
        # skinny shapes ~1.4x faster than (block, K).
        const, coef = self._diag_log_prob_terms(p)

        def block_sums(rows: slice, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            wlp = torch.addmm(const[:, None], coef, feats.T)
            peak = wlp.amax(0)
            resp = wlp.sub_(peak).exp_()  # log-sum-exp by hand: its exponentials are the responsibilities
            mass = resp.sum(0)
            resp.div_(mass)
            return (mass.log_() + peak).sum(), resp.sum(1), resp @ feats

        totals, counts, moments = zip(*kernels.DiagFeatures(data["x"], workers=data["workers"]).map(block_sums))
        ll = float(torch.stack(totals).sum()) / data["x"].shape[0]
        return ll, lambda: self._diag_params(torch.stack(moments).sum(0), torch.stack(counts).sum(0))

    def _m_step(self, data: dict, p: dict, resp: Tensor) -> dict[str, Tensor]:
        x, floor = data["x"], self.min_variance
        d = x.shape[1]
        if self.covariance == "diag":
            moments = kernels.DiagFeatures(x, workers=data["workers"]).map(lambda rows, feats: resp[rows].T @ feats)
            return self._diag_params(torch.stack(moments).sum(0), resp.sum(0))
        nk = self._counts(resp)
        means = (resp.T @ x) / nk[:, None]
        cov = torch.empty(self.n_components, d, d, dtype=x.dtype, device=x.device)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        for k in range(self.n_components):  # the (D, N) x (N, D) product per component dominates
            # Points whose responsibility underflowed to exactly 0 add exactly nothing: on MNIST
            # that is ~85% of (point, component) pairs, so gathering the rest is exact and ~6x cheaper.
            rows = resp[:, k].nonzero().squeeze(1)
            weights = (resp[rows, k] / nk[k]).sqrt_()
            cov[k] = kernels.gram((x[rows] - means[k]).mul_(weights[:, None]))
            if self.regularization == "add":
                cov[k].diagonal().add_(floor)
                continue
            # Cholesky of cov - floor*I succeeds iff every eigenvalue exceeds the floor: the clamp
            # is then a no-op and the (much slower) eigendecomposition can be skipped.
            if torch.linalg.cholesky_ex(cov[k] - floor * eye).info != 0:
                evals, evecs = kernels.eigh(cov[k])
                clamped = (evecs * evals.clamp_min(floor)) @ evecs.T
                cov[k] = 0.5 * (clamped + clamped.T)
        return {"weights": nk / nk.sum(), "means": means, "covariances": cov}

    def _diag_params(self, moments: Tensor, counts: Tensor) -> dict[str, Tensor]:
        """M-step from the responsibility-weighted sums ``[x^2, x]`` (K, 2D) and the counts (K,)."""
        nk = self._floor_counts(counts)
        moments = moments / nk[:, None]
        d = moments.shape[1] // 2
        means = moments[:, d:]
        cov = moments[:, :d] - means**2
        cov = cov.clamp_min(0).add_(self.min_variance) if self.regularization == "add" else cov.clamp_min(self.min_variance)
        return {"weights": nk / nk.sum(), "means": means, "covariances": cov}

    def _diag_log_prob_terms(self, p: dict) -> tuple[Tensor, Tensor]:
        """``const`` (K,) and ``coef`` (K, 2D) with ``log w_k N(x | mu_k, diag) = const + [x^2, x] @ coef.T``."""
        means, cov = p["means"], p["covariances"]
        prec = 1.0 / cov
        const = p["weights"].log() - 0.5 * (means.shape[1] * _LOG_2PI + cov.log().sum(1) + (means**2 * prec).sum(1))
        return const, torch.cat([-0.5 * prec, means * prec], 1)

    def _weighted_log_prob(self, x: Tensor, p: dict) -> Tensor:
        if self.covariance == "diag":
            const, coef = self._diag_log_prob_terms(p)
            return torch.cat(kernels.DiagFeatures(x).map(lambda rows, feats: torch.addmm(const, feats, coef.T)))
        means, cov = p["means"], p["covariances"]
        chol = kernels.cholesky(cov)
        maha = torch.empty(x.shape[0], self.n_components, dtype=x.dtype, device=x.device)
        centered = torch.empty_like(x)  # one buffer for all components: fresh pages cost more than the subtraction
        for k in range(self.n_components):
            maha[:, k] = kernels.whitened_sq_norms(chol[k], torch.sub(x, means[k], out=centered))
        logdet = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(1)
        return p["weights"].log() - 0.5 * (x.shape[1] * _LOG_2PI + logdet + maha)


class MixtureOfBernoullis(_Mixture):
    """Mixture of products of Bernoullis for binary data, fitted by EM.

    Args:
        min_prob: Pixel probabilities are clamped to ``[min_prob, 1 - min_prob]`` in every
            M-step (the exact constrained maximizer, so EM stays monotone); otherwise a pixel
            never on in training gives any test image with it on probability 0. Other
            arguments as for :class:`EMBaseline` (``min_variance`` is unused); initialization is
            k-means (Hamming distance).

    Fitted attributes: ``weights`` (K,), ``probs`` (K, D). ``log_prob`` is a probability
    mass: evaluate with ``levels=None``.

    Example:
        >>> x = (torch.rand(200, 8, generator=torch.Generator().manual_seed(0)) > 0.5).double()
        >>> ll = MixtureOfBernoullis(2).fit(x).evaluate(x)
        >>> ll.bits_per_dim <= 1.0
        True
    """

    name = "mob"
    _param_names = ("weights", "probs")

    def __init__(self, n_components: int, *, min_prob: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(n_components, **kwargs)
        if not 0 < min_prob < 0.5:
            raise ValueError(f"mob: min_prob must be in (0, 0.5), got {min_prob}.")
        self.min_prob = min_prob

    @staticmethod
    def _check_binary(x: Tensor, who: str) -> None:
        bad = (x != 0) & (x != 1)
        if bad.any():
            found = torch.unique(x[bad])
            shown = ", ".join(f"{v:g}" for v in found[:5].tolist()) + (", ..." if found.numel() > 5 else "")
            raise ValueError(
                f"{who}: data must be binary (0/1), but {int(bad.sum())} values are not, e.g. {shown}; "
                "binarize first, e.g. (x > 0.5).double() for data scaled to [0, 1]."
            )

    def _prepare(self, x: Tensor) -> dict[str, Any]:
        self._check_binary(x, "mob.fit")
        return {"x": x}

    def _init(self, data: dict, g: torch.Generator, restart: int) -> dict[str, Tensor]:
        return self._m_step(data, {}, self._kmeans_resp(data["x"], g))

    def _m_step(self, data: dict, p: dict, resp: Tensor) -> dict[str, Tensor]:
        nk = self._counts(resp)
        probs = ((resp.T @ data["x"]) / nk[:, None]).clamp(self.min_prob, 1 - self.min_prob)
        return {"weights": nk / nk.sum(), "probs": probs}

    def _weighted_log_prob(self, x: Tensor, p: dict) -> Tensor:
        log_p, log_q = p["probs"].log(), torch.log1p(-p["probs"])
        return p["weights"].log() + x @ (log_p - log_q).T + log_q.sum(1)

    def _log_prob(self, x: Tensor, p: dict) -> Tensor:
        self._check_binary(x, "mob.log_prob")
        return super()._log_prob(x, p)

    def evaluate(self, x: Any, levels: int | None = None) -> LogLikelihood:
        if levels is not None:
            raise ValueError("mob: Bernoulli log-likelihoods are already a probability mass; pass levels=None.")
        return super().evaluate(x)


#: Registry of baseline constructors, ``name -> callable(n_components, **kwargs)``.
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
