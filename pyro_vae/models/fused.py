"""Fast kernels of the stock VAE, offered to the estimators by :meth:`~pyro_vae.models.vae.VAE.fused`.

The estimators compute every density from the target (:mod:`pyro_vae.models.target`);
a model may offer faster kernels for the same numbers through a ``fused()`` method,
which returns an object with the target's methods or ``None``. The stock
:class:`~pyro_vae.models.vae.VAE` offers :class:`FusedVAE`: its encoder, decoder and prior
called directly, without Pyro traces, decoding in memory-bounded blocks and scoring a
Bernoulli from its logits in cache-sized pieces. The numbers are those of the traced
path, draw for draw (tested).

Example:
    >>> from pyro_vae.models.target import trace_log_joint
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> x, z = torch.rand(3, 4), torch.randn(5, 3, 2)
    >>> fused = vae.fused().log_joint(x, z)
    >>> traced = trace_log_joint(vae.model, x, {"z": z})
    >>> fused.shape, bool(torch.allclose(fused, traced, atol=1e-4))
    (torch.Size([5, 3]), True)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import Tensor, nn

from pyro_vae.core.ops import subtract_softplus_tail
from pyro_vae.models.likelihoods import Generic, categorical
from pyro_vae.models.nets import MLPDecoder
from pyro_vae.models.priors import prior_log_density
from pyro_vae.models.target import CHECK_POINTS, Annealing, model_space

__all__ = ["FusedVAE", "log_joint", "fused_bernoulli", "buffered_decoder", "log_lik_blocks", "bernoulli_log_prob_pieces",
           "decoder_log_lik_and_grad", "categorical_log_prob_in_place",
           "BLOCK_ELEMENTS", "PIECE_ELEMENTS", "IN_PLACE_ACTIVATIONS"]

BLOCK_ELEMENTS = 2**22  # decoder outputs per fused block (16 MB): big enough for efficient matmuls, small in memory
PIECE_ELEMENTS = 2**20  # logits per elementwise pass (4 MB): cache-resident


class FusedVAE:
    """The stock VAE's densities computed directly: the target's methods, without Pyro traces.

    Made by :meth:`~pyro_vae.models.vae.VAE.fused` only when the VAE's ``model``, ``guide``
    and ``encode`` are its own (a replaced ``decode`` is called as it is). Same method
    names and meanings as :class:`~pyro_vae.models.target.TracedTarget`.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE`.
    """

    method = "fused"

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def check(self, x: Tensor, *, gradients: bool = False, points: int = 0) -> None:
        """The stock VAE meets the model protocol by construction: only the data are checked."""
        if is_validation_enabled() and x.shape[0]:  # the fused path skips Pyro's support checks
            for start in range(0, x.shape[0], CHECK_POINTS):
                self.vae.check_data(x[start : start + CHECK_POINTS])

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x_i, z_si)`` ``(S, N)`` for ``z`` ``(S, N, latent_dim)``: see :func:`log_joint`."""
        return log_joint(self.vae, x, z)

    def log_weights(self, x: Tensor, k: int, q: Any = None, prior: Any = None) -> tuple[Tensor, Tensor]:
        """``(log p(x|z), log w)``, each ``(k, B)``, for ``k`` fresh draws ``z ~ q(z|x)`` per point.

        ``q`` and ``prior`` are the VAE's ``encode(x)`` and ``prior()``, computed here when not given.
        The draws are those the traced guide would make (Normal.rsample's own recipe).
        """
        vae = self.vae
        q = vae.encode(x) if q is None else q
        prior = vae.prior() if prior is None else prior
        # With the noise at hand, log q(z|x) needs no (z - loc)² pass over the draws.
        loc, scale = q.base_dist.loc, q.base_dist.scale
        eps = torch.empty((k, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
        # A batched dot product: no (k, B, d) temporary of squares.
        squares = torch.linalg.vecdot(eps, eps)
        log_q = -0.5 * squares - scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        z = eps.mul_(scale).add_(loc)  # in place, the same two roundings as ``loc + eps * scale``
        log_lik = log_lik_blocks(vae, z, x)
        return log_lik, log_lik + prior_log_density(vae._modules["prior"], z, prior) - log_q

    def annealing(self, x: Tensor, init: str, rows: int) -> Annealing:
        """AIS's target for a batch: ``q0`` the encoder's ``q(z|x)`` (``init="guide"``) or the prior."""
        vae = self.vae
        q0 = vae.encode(x) if init == "guide" else vae.prior()
        # rsample: the recipe the traced guide (or model) uses, so both paths start from the same draws.
        shape = (rows,) if init == "guide" else (rows, x.shape[0])
        z0 = q0.rsample(shape) if q0.has_rsample else q0.sample(shape)
        kernel = decoder_log_lik_and_grad(vae, x)
        with_gradients = None
        if kernel is not None:
            prior_module = vae._modules["prior"]

            def with_gradients(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                # The decoder's term and its gradient by hand; the prior's and q0's (a few
                # elements per chain) by autograd, as :func:`~pyro_vae.estimators.ais` would.
                log_lik, grad_lik = kernel(z)
                with torch.enable_grad(), pyro.validation_enabled(False):
                    leaf = z.detach().requires_grad_(True)
                    log_prior = prior_log_density(prior_module, leaf)
                    log_q = q0.log_prob(leaf)
                    grad_q = torch.autograd.grad(log_q.sum(), leaf, retain_graph=True)[0]
                    grad_prior = torch.autograd.grad(log_prior.sum(), leaf)[0]
                log_p = log_prior.detach() + log_lik
                return log_p, log_q.detach().expand_as(log_p), grad_prior.add_(grad_lik), grad_q

        return Annealing(lambda z: (log_joint(vae, x, z), q0.log_prob(z)), lambda latents: latents["z"], z0,
                         with_gradients)

    def simulate(self, num_points: int, **_: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """``z ~ p(z)``, then ``x ~ p(x|z)``: ``(x, {"z": z})``, under the caller's RNG and mode."""
        z = self.vae.prior().sample((num_points,))
        return model_space(self.vae.decode(z).sample()), {"z": z}


def log_joint(vae: Any, x: Tensor, z: Tensor) -> Tensor:
    """``log p(x_i, z_si) = log p(z) + log p(x_i | z)`` of a stock VAE, differentiable in ``z``.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE` (any subclass keeps working through
            ``vae.decode``; use :func:`~pyro_vae.models.target.trace_log_joint` for a custom ``model``).
        x: Model-space data ``(N, *event_shape)``.
        z: Latents ``(S, N, latent_dim)``.

    Returns:
        Shape ``(S, N)``, unscaled (no minibatch factor, no beta).
    """
    if "decode" in vae.overridden:
        log_lik = vae.decode(z).log_prob(x)
    else:
        log_lik = vae.likelihood.log_likelihood(vae.decoder(z), x)
    return prior_log_density(vae._modules["prior"], z) + log_lik


def fused_bernoulli(vae: Any) -> bool:
    """True when ``log p(x|z)`` may be computed from the decoder's logits directly."""
    lik = getattr(vae, "likelihood", None)
    return isinstance(lik, Generic) and lik.plain_bernoulli and "decode" not in vae.overridden


# Activations of a stock MLP decoder that the buffered decoder applies in place.
IN_PLACE_ACTIVATIONS: dict[type, Callable[[Tensor], Tensor]] = {
    nn.Tanh: Tensor.tanh_, nn.ReLU: Tensor.relu_, nn.Sigmoid: Tensor.sigmoid_,
}


def buffered_decoder(decoder: Any, rows: int, like: Tensor) -> Callable[..., Tensor] | None:
    """The stock MLP ``decoder`` as ``z (r, d) -> outputs (r, D)`` writing into reused buffers, or ``None``.

    Evaluation calls the decoder hundreds of times on blocks of the same size. Here each
    layer is ``torch.mm`` into a buffer allocated once, with the weight transposed once,
    then the bias added and the activation applied in place. ``nn.Linear`` instead
    allocates its output anew (16 MB for the last layer: fresh pages each block) and
    copies the broadcast bias into it before an accumulating GEMM. Buffered outputs are
    overwritten by the next call: the caller must use them first. Only an exact
    :class:`~pyro_vae.models.nets.MLPDecoder` of ``nn.Linear`` layers and
    :data:`IN_PLACE_ACTIVATIONS` qualifies; any other decoder (a subclass, hooks, another
    activation) returns ``None`` and is called as it is.

    The returned callable takes ``last_bias=False`` to leave the last layer's bias out,
    for a caller that adds it later piece by piece while the piece is in cache (a pass
    over the whole 16 MB block runs at memory speed); the bias is its ``last_bias``.

    Args:
        decoder: The VAE's decoder module.
        rows: The largest block it will be called on.
        like: A tensor of the dtype and device to allocate.
    """
    layers = _mlp_plan(decoder)
    if layers is None:
        return None
    plan = []
    for weight, bias, act in layers:
        weight_t = weight.t().contiguous()
        out = like.new_empty(rows, weight_t.shape[1])
        plan.append((weight_t, bias, IN_PLACE_ACTIVATIONS.get(act), out))

    def run(z: Tensor, last_bias: bool = True) -> Tensor:
        h = z
        for layer, (weight_t, bias, act, buffer) in enumerate(plan):
            out = buffer[: h.shape[0]]
            torch.mm(h, weight_t, out=out)
            if last_bias or layer < len(plan) - 1:
                out += bias
            if act is not None:
                act(out)
            h = out
        return h

    run.last_bias = plan[-1][1]  # type: ignore[attr-defined]
    return run


def _activation_grad(grad: Tensor, out: Tensor, act: type | None) -> Tensor:
    """``grad * act'(a)`` (in place but for ReLU), from the activation's output ``out = act(a)``."""
    if act is None:
        return grad
    if act is nn.ReLU:  # autograd's own kernel for it: one pass, no mask tensor
        return torch.ops.aten.threshold_backward(grad, out, 0.0)
    if act is nn.Tanh:
        return grad.mul_(1.0 - out * out)
    return grad.mul_(out * (1.0 - out))  # nn.Sigmoid


def decoder_log_lik_and_grad(vae: Any, x: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
    """``z (R, B, d) -> (log p(x_b | z_rb) (R, B), its gradient in z (R, B, d))`` by hand, or ``None``.

    AIS and BDMC need this term and its gradient at every leapfrog step. Autograd through
    ``vae.decode(z).log_prob(x)`` builds the categorical's stacked, normalized and gathered
    logits and walks them back, about a dozen passes over the ``(R B, levels D)`` logits per
    step. Here the forward is ``torch.addmm`` per layer into buffers reused across calls;
    the categorical's log-softmax over levels is ``max``, ``exp`` and ``sum`` in place, and
    the softmax left in the buffer minus the one-hot of ``x`` is the gradient with respect
    to the logits (a Bernoulli: ``sigmoid(l) - x``), carried back with one matmul per
    layer. The one-hot's part, the chosen logits and their gradient, go through the last
    layer's rows summed once per batch: no gather or scatter over the logits. Same numbers as autograd up to float rounding
    (tested). Offered for a stock :class:`~pyro_vae.models.nets.MLPDecoder` (as
    :func:`buffered_decoder` accepts it, no activation after the last layer) with a
    ``categorical`` or plain Bernoulli likelihood and no replaced ``decode``; else ``None``.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE`.
        x: The batch ``(B, *event_shape)`` in model space.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="bernoulli", hidden=[8])
        >>> x, z = torch.bernoulli(torch.full((3, 4), 0.5)), torch.randn(5, 3, 2)
        >>> log_lik, grad = decoder_log_lik_and_grad(vae, x)(z)
        >>> leaf = z.clone().requires_grad_(True)
        >>> auto = vae.decode(leaf).log_prob(x)
        >>> bool(torch.allclose(log_lik, auto, atol=1e-5)), bool(torch.allclose(grad, torch.autograd.grad(auto.sum(), leaf)[0], atol=1e-5))
        (True, True)
    """
    lik = getattr(vae, "likelihood", None)
    is_categorical = _plain_categorical(vae)
    if "decode" in vae.overridden or not (is_categorical or fused_bernoulli(vae)):
        return None
    plan = _mlp_plan(vae.decoder)
    if plan is None or plan[-1][2] is not None:
        return None
    b, d = x.shape[0], vae.num_dims
    levels = lik.levels if is_categorical else 1
    if plan[-1][0].shape[0] != levels * d:
        return None
    dtype = plan[0][0].dtype
    x_flat = x.reshape(b, d)
    last_weight = plan[-1][0]  # (levels * D, hidden)
    if is_categorical:  # the logit of x_j's level of pixel j sits at level * D + j (see Likelihood.unpack)
        index = x_flat.long() * d + torch.arange(d, device=x.device)
        # The one-hot of x through the last layer, once per batch: the chosen logits' sum is
        # h · sum_j W[index_j] + sum_j bias[index_j], and its gradient in h is that sum of rows.
        chosen_weight = last_weight[index].sum(1)  # (B, hidden)
        chosen_bias = plan[-1][1][index].sum(1)  # (B,)
    else:
        x_flat = x_flat.to(dtype)
    weights_t = [w.t().contiguous() for w, _, _ in plan]
    buffers: dict[int, list[Tensor]] = {}

    def kernel(z: Tensor) -> tuple[Tensor, Tensor]:
        r = z.shape[0]
        n = r * b
        cached = buffers.get(n)
        if cached is None:
            buffers.clear()  # one size at a time (forward and reverse chains differ): no growing cache
            outs = [z.new_empty(n, w.shape[0]) for w, _, _ in plan]
            cached = buffers[n] = outs
        outs = cached
        h = z.reshape(n, -1)
        for (_, bias, act), w_t, out in zip(plan, weights_t, outs):
            last_input = h
            torch.addmm(bias, h, w_t, out=out)
            if act is not None:
                IN_PLACE_ACTIVATIONS[act](out)
            h = out
        logits = h
        if is_categorical:
            # (B, R, 1): each point's R chains dotted with its chosen rows; cheaper than a gather of the logits
            chosen = torch.bmm(last_input.view(r, b, -1).transpose(0, 1), chosen_weight.unsqueeze(-1))
            log_lik = chosen.view(b, r).T + chosen_bias
            per_level = logits.view(n, levels, d)
            top = per_level.amax(1, keepdim=True)
            per_level.sub_(top).exp_()
            total = per_level.sum(1, keepdim=True)
            per_level.div_(total)  # the softmax over levels, left in the logits' buffer
            log_lik = log_lik - (top + total.log_()).view(r, b, d).sum(-1)
            # -d log p / d h = softmax @ W - onehot(x) @ W
            g = torch.mm(logits, last_weight)
            g.view(r, b, -1).sub_(chosen_weight)
        else:
            view = logits.view(r, b, d)
            log_lik = (view * x_flat).sum(-1) - torch.nn.functional.softplus(view).sum(-1)
            g = torch.mm(view.sigmoid_().sub_(x_flat).view(n, d), last_weight)  # -d log p / d h
        # g is -d log p / d (the last layer's input); carry it back through the other layers.
        for layer in range(len(plan) - 2, -1, -1):
            g = _activation_grad(g, outs[layer], plan[layer][2])
            g = torch.mm(g, plan[layer][0])
        return log_lik, g.neg_().view(r, b, -1)

    return kernel


def _mlp_plan(decoder: Any) -> list[tuple[Tensor, Tensor, type | None]] | None:
    """``[(weight, bias, activation type or None)]`` of a stock MLP decoder, or ``None`` (see :func:`buffered_decoder`)."""
    if type(decoder) is not MLPDecoder or any(m._forward_hooks or m._forward_pre_hooks for m in decoder.modules()):
        return None
    layers = list(decoder.net)
    plan = []
    for i in range(0, len(layers), 2):
        linear, act = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if type(linear) is not nn.Linear or linear.bias is None:
            return None
        if act is not None and type(act) not in IN_PLACE_ACTIVATIONS:
            return None
        plan.append((linear.weight.detach(), linear.bias.detach(), None if act is None else type(act)))
    return plan


def log_lik_blocks(vae: Any, z: Tensor, x: Tensor) -> Tensor:
    """``log p(x_i | z_ki)`` of shape ``(k, B)`` for ``z`` of shape ``(k, B, d)``, in blocks.

    Decoding per block of about :data:`BLOCK_ELEMENTS` outputs keeps memory small (the
    chunk's decoder output never exists at once) while the matmuls stay large. A
    Bernoulli is scored from its logits ``l`` as ``x·l - softplus(l)`` in place on the
    decoder's own buffer (:func:`buffered_decoder`), where torch's
    ``binary_cross_entropy_with_logits`` makes four full-size temporaries; a stock
    ``categorical`` likewise (:func:`categorical_log_prob_in_place`). Must run under
    ``torch.no_grad()``.
    """
    k, b = z.shape[:2]
    fused = fused_bernoulli(vae)
    width = getattr(vae.likelihood, "num_params", 1) * vae.num_dims
    rows = max(1, BLOCK_ELEMENTS // width)
    points, samples = max(1, rows // k), min(k, rows)
    levels = vae.likelihood.levels if _plain_categorical(vae) else 0
    decoder = buffered_decoder(vae.decoder, points * samples, z) if fused or levels else None
    if decoder is None:
        levels = 0
    else:
        d = vae.num_dims
        index = x.reshape(b, d).long() * d + torch.arange(d, device=x.device) if levels else None
    # (B, k, d), contiguous: a block is a few points times a run of their draws. A strided
    # slice would reach the decoder's matmul with a huge leading dimension, 20x slower.
    zt = z.transpose(0, 1).contiguous()
    x_flat = x.reshape(b, -1).to(z.dtype)
    out = z.new_empty(b, k)
    for i0 in range(0, b, points):
        i1 = min(b, i0 + points)
        for s0 in range(0, k, samples):
            s1 = min(k, s0 + samples)
            zb = zt[i0:i1, s0:s1].contiguous()
            if levels:
                logits = decoder(zb.reshape(-1, zb.shape[-1])).view(i1 - i0, s1 - s0, -1)
                out[i0:i1, s0:s1] = categorical_log_prob_in_place(logits, index[i0:i1], levels)
            elif decoder is not None:
                logits = decoder(zb.reshape(-1, zb.shape[-1]), last_bias=False).view(i1 - i0, s1 - s0, -1)
                out[i0:i1, s0:s1] = bernoulli_log_prob_pieces(logits, x_flat[i0:i1], overwrite=True,
                                                              bias=decoder.last_bias)
            elif fused:
                # A user's decoder may return a view of something it keeps: never overwrite it.
                logits = vae.decoder(zb).reshape(i1 - i0, s1 - s0, -1)
                out[i0:i1, s0:s1] = bernoulli_log_prob_pieces(logits, x_flat[i0:i1])
            else:
                out[i0:i1, s0:s1] = vae.decode(zb).log_prob(x[i0:i1].unsqueeze(1))
    return out.T


def _plain_categorical(vae: Any) -> bool:
    """True when ``log p(x|z)`` is the stock ``categorical`` of the decoder's logits, nothing replaced."""
    return type(getattr(vae, "likelihood", None)) is categorical and "decode" not in vae.overridden


def categorical_log_prob_in_place(logits: Tensor, index: Tensor, levels: int) -> Tensor:
    """``sum_j log softmax(l_j)[x_j]``: logits ``(p, s, levels * D)`` of ``p`` points -> ``(p, s)``; destroys ``logits``.

    ``index`` ``(p, D)`` holds ``x_j * D + j``, where pixel ``j``'s logit of level ``x_j`` sits
    (:meth:`~pyro_vae.models.likelihoods.Likelihood.unpack`). The chosen logits are gathered,
    then the log-normalizers come from ``max``, ``exp`` and ``sum`` in place: no stacked copy
    and no normalized logits, as ``Categorical(logits).log_prob`` makes.
    """
    p, s, width = logits.shape
    d = width // levels
    chosen = logits.gather(2, index.unsqueeze(1).expand(p, s, d)).sum(-1)
    per_level = logits.view(p * s, levels, d)
    top = per_level.amax(1, keepdim=True)
    total = per_level.sub_(top).exp_().sum(1, keepdim=True)
    return chosen - (top + total.log_()).view(p, s, d).sum(-1)


def bernoulli_log_prob_pieces(logits: Tensor, x: Tensor, overwrite: bool = False, bias: Tensor | None = None) -> Tensor:
    """``sum_j x_j l_j - softplus(l_j)``: logits ``(p, s, D)`` of ``p`` points ``x`` ``(p, D)`` -> ``(p, s)``.

    The sum is ``(x - 1/2)·l`` (one batched matrix-vector product) minus
    ``sum_j softplus(l_j) - l_j/2`` (:func:`~pyro_vae.core.ops.subtract_softplus_tail`: ``abs``,
    ``sigmoid`` and ``log`` in place on one temporary). That is three elementwise passes
    where ``F.softplus`` (``log1p`` of ``exp``) and a ``max(l, 0)`` pass would be five.
    Pieces of :data:`PIECE_ELEMENTS` keep the passes in cache, and cover several points at
    once when ``D`` is small, so there are few ops to launch. ``sigmoid(|l|)`` rounds to 1
    once ``exp(-|l|) < 6e-8``: at most 5e-5 nats over 784 pixels, far below any Monte Carlo error.
    ``overwrite=True`` works in ``logits`` itself (they are destroyed): no temporary at all.
    ``bias`` ``(D,)``, if given, is added to the logits first, piece by piece: the logits
    are ``logits + bias``.
    """
    p, s, d = logits.shape
    rows = max(1, PIECE_ELEMENTS // d)
    points, samples = max(1, rows // s), min(s, rows)  # a piece is contiguous: whole points or one point's run
    centred = (x - 0.5).unsqueeze(-1)
    out = logits.new_empty(p, s)
    for j0 in range(0, p, points):
        for t0 in range(0, s, samples):
            piece = logits[j0 : j0 + points, t0 : t0 + samples]
            if bias is not None:
                piece = piece.add_(bias) if overwrite else piece + bias
            value = torch.bmm(piece, centred[j0 : j0 + points]).squeeze(-1)
            # With a bias, ``piece`` is already a temporary of ours (or was written in place).
            out[j0 : j0 + points, t0 : t0 + samples] = subtract_softplus_tail(
                value, piece, overwrite=overwrite or bias is not None)
    return out
