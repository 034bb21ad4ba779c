"""Elementwise kernels composed for speed: the Bernoulli log-density of decoder logits, and softplus.

:class:`Softplus` is the ``softplus`` activation of pyro_vae's nets, from ``sigmoid`` and
``log`` kernels, which torch vectorizes better than its own ``log1p``-of-``exp`` softplus.

``sum_j x_j l_j - softplus(l_j)`` is what ``Bernoulli(logits=l).log_prob(x).sum(-1)``
computes, but autograd through that expression saves a tensor per elementary op and
expands ``x`` to the logits' shape. Here the backward pass is the closed form
``x - sigmoid(l)``: two saved tensors, ``x`` broadcast, not copied, over a leading
particle dim.

The forward pass uses ``softplus(l) = (l + |l|)/2 - log(sigmoid(|l|))``, so the sum is
``(x - 1/2)·l - sum|l|/2 + sum log(sigmoid(|l|))``: ``abs``, ``sigmoid`` and ``log``, the
same recipe as evaluation's :func:`~pyro_vae.models.fused.bernoulli_log_prob_pieces`. At AIS's
1600 x 784 logits ``F.softplus`` (``log1p`` of ``exp`` behind a threshold) made AIS 10-12%
slower end to end on torch 2.14.1 and 2.15.0. At a training batch (100 x 784) one host
measured ``F.softplus`` 2-5% faster per step and a later one 2.6-3.2x slower per call (420
against 133 us on 2.14.1, 280 against 108 on 2.15.0); one form for all sizes also keeps a
run's arithmetic the same at every batch size (``docs/benchmarks.md``, "Both torch builds
side by side"). An earlier version also rebuilt ``log1p`` and ``tanh`` from ``exp`` and
``log``; on one CPU torch vectorizes those two, and the rebuilt versions were 2-4x *slower*.
Which composition of kernels wins depends on the CPU and the build, so each choice here
was measured end to end on both builds.

Example:
    >>> logits, x = torch.randn(4, 3, 5), torch.randint(0, 2, (3, 5)).float()
    >>> ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    >>> bool(torch.allclose(bernoulli_log_prob(logits, x), ref, atol=1e-5))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401  (the examples compare with it)
from torch import Tensor, nn

__all__ = ["bernoulli_log_prob", "subtract_softplus_tail", "Softplus"]


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, x)
        return subtract_softplus_tail((logits * (x - 0.5)).sum(-1), logits)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        logits, x = ctx.saved_tensors
        # (x - sigmoid(l)) * grad, written in place on sigmoid's output: no second temporary.
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(grad.neg().unsqueeze(-1))
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = (logits * grad.unsqueeze(-1)).sum_to_size(x.shape)
        return grad_logits, grad_x


def subtract_softplus_tail(value: Tensor, logits: Tensor, overwrite: bool = False) -> Tensor:
    """``value - sum_j (softplus(l_j) - l_j / 2)`` over the last dim of ``logits``, in place on ``value``.

    ``softplus(l) - l/2 = |l|/2 - log(sigmoid(|l|))``: ``abs``, ``sigmoid`` and ``log``, each
    exact for any logit (``sigmoid(|l|)`` is in ``[0.5, 1)``). With ``value = (x - 1/2)·l`` the
    result is the Bernoulli log-density. ``overwrite=True`` works in ``logits`` itself (they
    are destroyed), with no temporary.

    Example:
        >>> l = torch.tensor([[-3.0, 0.5, 4.0]])
        >>> tail = subtract_softplus_tail(torch.zeros(1), l)
        >>> bool(torch.allclose(tail, -(F.softplus(l) - l / 2).sum(-1)))
        True
    """
    magnitude = logits.abs_() if overwrite else logits.abs()
    value -= 0.5 * magnitude.sum(-1)
    value += magnitude.sigmoid_().log_().sum(-1)  # -log(1 + exp(-|l|))
    return value


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


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        # softplus(x) = max(x, 0) - log(sigmoid(|x|)); sigmoid(|x|) is in [0.5, 1), so the log is exact
        # and only rounds to 0 (an error below 4e-8) once |x| > 17, as torch's own threshold does at 20.
        return torch.clamp_min(x, 0).sub_(x.abs().sigmoid_().log_())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable product (sigmoid's backward needs its output)
            return torch.sigmoid(x) * grad
        return torch.sigmoid(x).mul_(grad)


class Softplus(nn.Softplus):
    """``nn.Softplus`` that computes ``log(1 + e^x)`` from ``sigmoid`` and ``log`` kernels.

    torch's softplus kernel (``log1p`` of ``exp``) runs at 5 ns per element on torch 2.14.1
    and 3.5 on 2.15.0 (2 threads, AVX512), where ``abs``, ``sigmoid`` and ``log`` together
    take under 2: forward and backward of a 256 x 400 hidden layer 2.4x and 1.6x faster. It
    was 17% and 11% of a training epoch of the 784-400-50 softplus VAE (``docs/benchmarks.md``).
    The values agree with ``F.softplus`` to float32 rounding; the gradient is ``sigmoid(x)``
    as there, and differentiable again under ``create_graph=True``. Any ``beta`` or
    ``threshold`` other than the defaults, and float16/bfloat16 inputs (autocast), take
    ``nn.Softplus``'s own path.

    Example:
        >>> x = torch.linspace(-30, 30, 7, requires_grad=True)
        >>> y = Softplus()(x)
        >>> bool(torch.allclose(y, F.softplus(x), atol=1e-6))
        True
        >>> y.sum().backward()
        >>> bool(torch.allclose(x.grad, torch.sigmoid(x)))
        True
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.beta != 1.0 or self.threshold < 17.0 or x.dtype not in (torch.float32, torch.float64):
            return super().forward(x)
        return _Softplus.apply(x)
