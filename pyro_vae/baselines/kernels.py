"""CPU-fast numerical kernels for the EM baselines (:mod:`pyro_vae.baselines.registry`).

Each gives the same numbers as the plain torch expression it replaces (tests compare them)
and falls back to that expression off the CPU. They exist because, on MNIST-sized data,
the plain expressions spend their time in the wrong place: torch has no symmetric rank-k
update or in-place triangular solve (scipy's BLAS has both, at half the time), and small
ops on torch's OpenMP threads stall at barriers whenever another process holds a core.

The rules these functions follow:

* BLAS/LAPACK calls go through scipy, which runs on its own threads; torch is capped at one
  thread around them (``torch_threads``), so the two thread pools never fight.
* Passes over the rows of the data go block by block (``map_row_blocks``): blocks stay in
  cache, are shared among Python threads, and their results are combined in block order,
  so the answer never depends on which thread ran which block.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["gram", "whitened_sq_norms", "cholesky", "top_eigen_float32", "column_sums", "torch_threads", "eigh",
           "kmeans_labels", "map_row_blocks", "DiagFeatures"]

_T = TypeVar("_T")


def gram(a: Tensor, blocks: int = 2) -> Tensor:
    """``a.T @ a``, symmetric, with half the flops of a matmul.

    On the CPU (float64) this is BLAS ``dsyrk`` through scipy: 50 ms for an 8000 x 784
    ``a``, against 85 ms for torch's matmul. Elsewhere torch has no syrk, and the upper
    block triangle alone saves ~25% of the flops.
    """
    if a.device.type == "cpu" and a.dtype == torch.float64:
        from scipy.linalg.blas import dsyrk  # scipy ships with scikit-learn

        upper = dsyrk(1.0, a.contiguous().T.numpy(), trans=0, lower=0)  # (D, N) Fortran view: no copy
        upper += np.triu(upper, 1).T  # dsyrk leaves the strict lower triangle zero
        return torch.from_numpy(upper)
    cuts = [a.shape[1] * i // blocks for i in range(blocks + 1)]
    out = torch.empty(a.shape[1], a.shape[1], dtype=a.dtype, device=a.device)
    for i in range(blocks):
        rows = slice(cuts[i], cuts[i + 1])
        for j in range(i, blocks):
            cols = slice(cuts[j], cuts[j + 1])
            out[rows, cols] = a[:, rows].T @ a[:, cols]
            if j > i:
                out[cols, rows] = out[rows, cols].T
    return out


def whitened_sq_norms(chol: Tensor, centered: Tensor) -> Tensor:
    """``||L^-1 c||^2`` for each row ``c`` of ``centered`` (N, D), which is overwritten.

    On the CPU (float64) a BLAS ``dtrsm`` in place: twice as fast as torch's
    ``solve_triangular`` on MNIST-sized data, and no (D, N) copy.
    """
    if centered.device.type == "cpu" and centered.dtype == torch.float64 and centered.is_contiguous():
        from scipy.linalg.blas import dtrsm

        solved = dtrsm(1.0, np.asfortranarray(chol.numpy()), centered.T.numpy(), lower=1, overwrite_b=1)
        return torch.from_numpy(np.einsum("ij,ij->j", solved, solved))
    return torch.linalg.solve_triangular(chol, centered.T, upper=False).square_().sum(0)


def cholesky(a: Tensor) -> Tensor:
    """Lower Cholesky factors of a batch of SPD matrices (..., D, D).

    On the CPU (float64) LAPACK ``dpotrf`` through scipy, which runs on BLAS's own
    threads: the full-covariance EM loop caps torch at one thread (see ``baselines.GaussianMixture``).
    """
    if a.device.type != "cpu" or a.dtype != torch.float64:
        return torch.linalg.cholesky(a)
    from scipy.linalg.lapack import dpotrf

    out = torch.empty_like(a)
    for index, (matrix, factor) in enumerate(zip(a.reshape(-1, *a.shape[-2:]), out.view(-1, *a.shape[-2:]))):
        lower, info = dpotrf(matrix.numpy(), lower=1, clean=1)
        if info != 0:
            raise torch.linalg.LinAlgError(
                f"cholesky: the matrix at batch index {index} is not positive-definite (leading minor of order {info})."
            )
        factor.copy_(torch.from_numpy(lower))
    return out


def top_eigen_float32(x: Tensor, mean: Tensor, k: int, block: int = 1024) -> tuple[Tensor, Tensor, float]:
    """The ``k`` largest eigenpairs (ascending, float64) and the trace of the ML covariance
    ``S = (x - mean)^T (x - mean) / N``, with S accumulated and decomposed in float32.

    float32 doubles the BLAS rate; on the CPU a symmetric rank-k update (``ssyrk``) does
    half the flops of a matmul, and LAPACK's ``ssyevr`` computes only the wanted subset (3x
    faster than a full decomposition of a 784 x 784 matrix). Centering is done in float64
    block by block, so a large offset in the data costs no precision and no float64 copy
    of ``x`` is made.

    The CPU path is numpy/scipy only, on purpose: torch's OpenMP workers and OpenBLAS's
    (which spin ~0.1 s after each call) fought over the two cores whenever the two
    alternated, and that made the fit 2-4x slower than its 45 ms of work on MNIST-10k.
    """
    n, d = x.shape
    if x.device.type != "cpu":
        centered = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for i in range(0, n, block):
            centered[i : i + block] = x[i : i + block] - mean
        s = centered.T @ centered / n
        evals, evecs = torch.linalg.eigh(s)
        return evals[-k:].double(), evecs[:, -k:].double(), float(s.diagonal().double().sum())
    from scipy.linalg import eigh
    from scipy.linalg.blas import ssyrk  # scipy ships with scikit-learn

    xs, mu = x.numpy(), mean.numpy()
    centered = np.empty((d, n), dtype=np.float32, order="F")  # centered.T is C-ordered (N, D)
    out = centered.T
    # memory-bound, and one core's share of the bandwidth is not all of it: 2 threads, 4.8 -> 2.6 ms
    map_row_blocks(lambda rows: np.subtract(xs[rows], mu, out=out[rows], casting="same_kind"), n, block,
                    torch.get_num_threads())
    upper = ssyrk(1.0 / n, centered, trans=0, lower=0)  # only the upper triangle is written
    evals, evecs = eigh(upper, lower=False, subset_by_index=[d - k, d - 1], driver="evr", check_finite=False)
    trace = float(upper.diagonal().sum(dtype=np.float64))
    return torch.from_numpy(evals.astype(np.float64)), torch.from_numpy(evecs.astype(np.float64)), trace


def column_sums(x: Tensor, block: int = 1024) -> Tensor:
    """``x.sum(0)``; on the CPU by numpy over row blocks on threads, off torch's thread pool
    (see ``top_eigen_float32``), in a fixed order so the result does not depend on timing."""
    if x.device.type != "cpu":
        return x.sum(0)
    xs = x.numpy()
    parts = map_row_blocks(lambda rows: xs[rows].sum(0), x.shape[0], block, torch.get_num_threads())
    return torch.from_numpy(np.sum(parts, axis=0))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily cap torch's (process-wide) intra-op thread count; ``None`` leaves it alone.

    Loops of small LAPACK calls (k x k solves, one 784 x 784 eigendecomposition) gain nothing
    from a second thread, and on a busy machine every thread barrier can stall for a
    scheduler tick: we measured a 50 x 50 solve at 16 ms and a 784 x 784 ``eigh`` at up to
    11 s with 2 threads, against a steady 0.1-0.15 s for the eigh with one.
    """
    old = torch.get_num_threads()
    if n is None or n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def eigh(a: Tensor) -> tuple[Tensor, Tensor]:
    with torch_threads(1 if a.device.type == "cpu" else None):
        return torch.linalg.eigh(a)


def kmeans_labels(x: Tensor, k: int, g: torch.Generator, lloyd_iters: int = 10) -> Tensor:
    """Hard labels from k-means++ seeding (Arthur & Vassilvitskii, 2007) and a few Lloyd steps.

    The Lloyd steps cost about 5 ms each on MNIST-10k (an EM iteration 13 ms), save more EM
    iterations than they cost and reach better optima than seeding alone. Only the labels
    leave this function, so it works on centered float32 data: half the memory traffic and
    twice the BLAS rate of float64 (on MNIST-10k: 0.11 s -> 0.07 s, with labels identical
    to the float64 version's for seeds 0-4).
    """
    x = x.to(torch.float32, copy=True)
    x -= x.mean(0)  # float32 expansions of ||x - c||^2 lose the distances under a large offset
    x_sq = torch.linalg.vector_norm(x, dim=1).square_()
    n = x.shape[0]

    def sq_dists_to(i: int) -> Tensor:  # ||x||^2 - 2 x.x_i + ||x_i||^2, without an (N, D) temporary
        return (x @ x[i]).mul_(-2).add_(x_sq + x_sq[i]).clamp_min_(0)

    centers = [int(torch.randint(n, (1,), generator=g))]
    d2 = sq_dists_to(centers[0])
    for _ in range(1, k):
        # Uniform fallback once every point coincides with a center (duplicated data).
        w = d2.cpu() if d2.sum() > 0 else torch.ones(n)
        centers.append(int(torch.multinomial(w, 1, generator=g)))
        d2 = torch.minimum(d2, sq_dists_to(centers[-1]))

    def assign(c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each row's nearest center, and the sums and counts of the rows nearest each center."""
        labels = torch.addmm((c * c).sum(1)[:, None], c, x.T, alpha=-2).argmin(0)  # ||x||^2 is the same for every center
        counts = torch.bincount(labels, minlength=k).to(x.dtype)[:, None]
        return labels, torch.zeros_like(c).index_add_(0, labels, x), counts

    c = x[centers]
    labels, sums, counts = assign(c)
    for _ in range(lloyd_iters):
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)  # empty clusters keep their center
        new, sums, counts = assign(c)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def map_row_blocks(fn: Callable[[slice], _T], n: int, block: int, workers: int) -> list[_T]:
    """``[fn(rows) for rows in blocks of block rows]``, run on ``workers`` threads in block order.

    Each worker takes the next free block (so a thread slowed by a busy core does less of
    the work) and runs torch on one intra-op thread. Per-block results keep later sums in a
    fixed order, so EM stays bit-for-bit deterministic whichever thread ran which block.
    Why not torch's own threads: on MNIST's (K, block) x (block, 2D) products, two
    OpenMP threads wait at a barrier after every small op, and with one core taken by
    another process we measured such a diagonal EM iteration 3x slower (15 -> 47 ms),
    against 13 -> 24 ms with a block per Python thread.
    """
    starts = range(0, n, block)
    if workers <= 1 or len(starts) == 1:
        return [fn(slice(i, i + block)) for i in starts]
    results: list[Any] = [None] * len(starts)
    queue, lock, errors = iter(enumerate(starts)), threading.Lock(), []

    def work() -> None:
        while not errors:
            with lock:
                j, i = next(queue, (None, None))
            if j is None:
                return
            try:
                results[j] = fn(slice(i, i + block))
            except BaseException as error:  # re-raised in the calling thread
                errors.append(error)

    with torch_threads(1):
        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, len(starts)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results


class DiagFeatures:
    """Row blocks ``[x^2, x]`` of ``x`` for the diagonal Gaussian, built where they are used.

    ``[x^2, x] @ coef.T`` gives every diagonal log-density at once; building the (block, 2D)
    features per block (one reused buffer per thread) keeps them in cache instead of a
    2 x N x D matrix in memory. On the CPU, blocks are spread over ``workers`` Python threads
    (default ``torch.get_num_threads()``; see ``map_row_blocks``); elsewhere the data is one block.
    """

    def __init__(self, x: Tensor, block: int = 256, workers: int | None = None) -> None:
        cpu = x.device.type == "cpu"
        self.x, self.block = x, block if cpu else max(x.shape[0], 1)
        self.workers = (workers or torch.get_num_threads()) if cpu else 1
        self._buffers = threading.local()

    def __call__(self, rows: slice) -> Tensor:
        """The features of ``x[rows]``: valid until this thread asks for its next block."""
        xb = self.x[rows]
        d = xb.shape[1]
        buffer = getattr(self._buffers, "feats", None)
        if buffer is None:
            buffer = self._buffers.feats = xb.new_empty(min(self.block, self.x.shape[0]), 2 * d)
        feats = buffer[: xb.shape[0]]
        torch.mul(xb, xb, out=feats[:, :d])
        feats[:, d:] = xb
        return feats

    def map(self, fn: Callable[[slice, Tensor], _T]) -> list[_T]:
        """``fn(rows, features of x[rows])`` for every block, in block order."""
        return map_row_blocks(lambda rows: fn(rows, self(rows)), self.x.shape[0], self.block, self.workers)
