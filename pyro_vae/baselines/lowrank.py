"""Low-rank Gaussian baselines: probabilistic PCA (closed form and EM) and factor analysis.

Both model ``x = W z + mu + noise`` with ``z ~ N(0, I_k)``: isotropic noise for PPCA
(Tipping & Bishop, 1999), diagonal noise for factor analysis. The marginal is the
Gaussian ``N(mu, W W^T + Psi)``, so ``log_prob`` is exact. See :mod:`pyro_vae.baselines.registry`
for the conventions shared by every baseline (float64, variance floors, dequantization).

Example:
    >>> x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    >>> PPCA(2).fit(x).log_prob(x).shape
    torch.Size([100])
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from pyro_vae.baselines import kernels as kernels
from pyro_vae.baselines.em import LOG_2PI, EMBaseline, as_data, assert_finite

__all__ = ["PPCA", "FactorAnalysis"]


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
        return float(-0.5 * (s.shape[0] * LOG_2PI + logdet + trace)), (sv, vsv, chol)

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
        return -0.5 * (x.shape[1] * LOG_2PI + logdet + maha)


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
        init: EMBaseline | dict[str, Any] | None = None, progress: bool | None = False,
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
            progress: A bar over EM iterations (``method="em"``; the closed form is one step).
        """
        if method == "em":
            return super().fit(x, max_iter=max_iter, tol=tol, n_restarts=n_restarts, seed=seed, init=init,
                               progress=progress)
        if method != "closed_form":
            raise ValueError(f"ppca: unknown method {method!r}; use 'closed_form' or 'em'.")
        start = time.perf_counter()
        x = as_data(x, "ppca.fit", check_finite=False)
        self._check_fit_data(x)
        n, d = x.shape
        if float32 is None:
            float32 = n * d**2 >= 1e9
        if float32:
            # numpy on the CPU keeps the whole fit off torch's thread pool (see kernels.top_eigen_float32)
            col_sums = kernels.column_sums(x)
            assert_finite(x, float(col_sums.sum()), "ppca.fit")
            mean = col_sums / n
            evals, evecs, trace = kernels.top_eigen_float32(x, mean, self.n_components)
        else:
            assert_finite(x, float(x.sum()), "ppca.fit")
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
        return float(-0.5 * (d * LOG_2PI + log_det + trace_term))

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
