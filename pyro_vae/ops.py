"""Elementwise functions built only from torch's vectorized CPU kernels.

In current torch CPU builds ``log1p`` is not vectorized, and neither is ``tanh`` as
well as it could be. On 200 000 floats with AVX-512 we measured ``log1p`` at 1.05 ms
against 0.06 ms for ``exp``, 0.10 ms for ``log`` and 0.02 ms for ``sigmoid``; ``tanh``
took 0.21 ms. ``F.softplus``, ``F.logsigmoid`` and ``binary_cross_entropy_with_logits``
all go through ``log1p``; in a profiled epoch of a 784-400-50 softplus VAE they took as
much time as the forward matmuls.

The functions here compute the same values from fast kernels and have hand-written
backward passes, so autograd saves one tensor per call instead of one per elementary op:

* ``log1p(u)`` for ``u >= 0`` uses Goldberg's correction ``log(w) * u / (w - 1)`` with
  ``w = 1 + u``, which is accurate to a few ulps, not just to ``1e-7`` absolute;
* ``softplus(x) = max(x, 0) + log1p(exp(-|x|))``, gradient ``sigmoid(x)``;
* ``tanh(x) = 2 sigmoid(2x) - 1``, gradient ``1 - tanh(x)^2`` (absolute error < 2e-7 in float32, so
  the relative error is large only where ``|x| < 1e-6``, irrelevant for an activation);
* ``bernoulli_log_prob(logits, x) = sum(x * l - softplus(l))``, gradient ``x - sigmoid(l)``.

Example:
    >>> x = torch.linspace(-30, 30, 7, dtype=torch.float64)
    >>> bool(torch.allclose(softplus(x), torch.nn.functional.softplus(x), rtol=1e-12, atol=0))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["log1p_nonnegative", "softplus", "tanh", "bernoulli_log_prob", "Softplus", "Tanh"]


def log1p_nonnegative(u: Tensor) -> Tensor:
    """``log(1 + u)`` for ``u >= 0``, accurate for tiny ``u`` (no autograd of its own)."""
    w = 1.0 + u
    d = w - 1.0
    # Where 1 + u rounds to 1, log1p(u) = u to working precision.
    return torch.where(d == 0, u, torch.log(w).mul_(u).div_(torch.where(d == 0, 1.0, d)))


def _softplus_value(x: Tensor) -> Tensor:
    return x.clamp(min=0).add_(log1p_nonnegative(x.abs().neg_().exp_()))


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _softplus_value(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x).mul_(grad)


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = torch.sigmoid(2.0 * x).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return (1.0 - y * y).mul_(grad)


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, x)
        return (logits * x).sub_(_softplus_value(logits)).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        logits, x = ctx.saved_tensors
        grad_logits = (x - torch.sigmoid(logits)).mul_(grad.unsqueeze(-1))
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = (logits * grad.unsqueeze(-1)).sum_to_size(x.shape)
        return grad_logits, grad_x


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))``, the same function as ``torch.nn.functional.softplus`` (beta 1)."""
    return _Softplus.apply(x)


def tanh(x: Tensor) -> Tensor:
    """The hyperbolic tangent, from the vectorized ``sigmoid`` kernel."""
    return _Tanh.apply(x)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """``sum_j log Bernoulli(x_j | logits_j)`` over the last dim; ``x`` broadcasts against ``logits``.

    Equals ``-binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)``.

    Example:
        >>> logits, x = torch.randn(4, 3, 5), torch.randint(0, 2, (3, 5)).float()
        >>> ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
        >>> bool(torch.allclose(bernoulli_log_prob(logits, x), ref, atol=1e-5))
        True
    """
    return _BernoulliLogProb.apply(logits, x)


class Softplus(nn.Module):
    """:func:`softplus` as a layer (a drop-in for ``nn.Softplus()``)."""

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x)


class Tanh(nn.Module):
    """:func:`tanh` as a layer (a drop-in for ``nn.Tanh()``)."""

    def forward(self, x: Tensor) -> Tensor:
        return tanh(x)
