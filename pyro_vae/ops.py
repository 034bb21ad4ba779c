"""The Bernoulli log-density of decoder logits, with a backward pass of its own.

``sum_j x_j l_j - softplus(l_j)`` is what ``Bernoulli(logits=l).log_prob(x).sum(-1)``
computes, but autograd through that expression saves a tensor per elementary op and
expands ``x`` to the logits' shape. Here the forward pass is torch's own ``softplus``
kernel and the backward pass is the closed form ``x - sigmoid(l)``: two saved tensors,
``x`` broadcast, not copied, over a leading particle dim.

Why only torch's kernels: an earlier version also rebuilt ``softplus``, ``log1p`` and
``tanh`` from ``exp``, ``log`` and ``sigmoid``, which was faster on the CPU it was
measured on. On the CPU the project now benchmarks on, with both torch 2.14.1 and
2.15.0, torch's ``log1p`` and ``tanh`` are vectorized and the rebuilt versions were 2-4x
*slower*, forward and backward (``docs/benchmarks.md``, "Both torch builds side by side").
Which composition of kernels wins depends on the CPU and the build; torch's own kernels
are the choice that is never far off.

Example:
    >>> logits, x = torch.randn(4, 3, 5), torch.randint(0, 2, (3, 5)).float()
    >>> ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    >>> bool(torch.allclose(bernoulli_log_prob(logits, x), ref, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bernoulli_log_prob"]


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, x)
        # Two reductions rather than the reduction of a difference: one full-size pass fewer.
        return (logits * x).sum(-1).sub_(F.softplus(logits).sum(-1))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        logits, x = ctx.saved_tensors
        # (x - sigmoid(l)) * grad, written in place on sigmoid's output: no second temporary.
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(grad.neg().unsqueeze(-1))
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = (logits * grad.unsqueeze(-1)).sum_to_size(x.shape)
        return grad_logits, grad_x


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """``sum_j log Bernoulli(x_j | logits_j)`` over the last dim; ``x`` broadcasts against ``logits``.

    Equals ``-binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)``.

    Args:
        logits: Decoder outputs ``(..., D)``.
        x: Binary data ``(..., D)``, broadcastable against ``logits``.

    Returns:
        The log-density summed over ``D``, of the broadcast batch shape.
    """
    return _BernoulliLogProb.apply(logits, x)
