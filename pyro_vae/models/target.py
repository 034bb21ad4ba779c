"""Per-datapoint log-joint terms: ``log p(x_i, z)``, ``log p(x_i | z)`` and ``log q(z | x_i)``.

Every estimator of ``log p(x)`` in pyro_vae (importance sampling, AIS, BDMC, the
inference gaps) is built from these terms, computed one of two ways:

* **the Pyro-trace path**, for any ``model``/``guide`` whose sample sites lie in the data
  plate: :func:`weight_terms` traces the guide with ``K`` draws vectorized in an extra
  plate and replays the model; :func:`trace_log_joint` conditions the model on given
  latent values. Log-probabilities stay per datapoint and unscaled (no minibatch
  factor, no ``poutine.scale`` beta), unlike ``pyro.infer.Importance``;
* **the fused path**, for the stock :class:`~pyro_vae.models.vae.VAE`: the same numbers from
  the encoder, decoder and prior directly (tested equal to the trace path), decoding in
  memory-bounded blocks and scoring a Bernoulli from its logits in cache-sized pieces.

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
    >>> x, z = torch.rand(3, 4), torch.randn(5, 3, 2)
    >>> fused = log_joint(vae, x, z)
    >>> traced = trace_log_joint(vae.model, x, {"z": z})
    >>> fused.shape, bool(torch.allclose(fused, traced, atol=1e-4))
    (torch.Size([5, 3]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from pyro_vae.models.likelihoods import Generic
from pyro_vae.models.nets import MLPDecoder
from pyro_vae.core.ops import subtract_softplus_tail
from pyro_vae.models.priors import prior_log_density

__all__ = ["WeightTerms", "weight_terms", "trace_log_joint", "trace_log_terms", "subsample_factor", "is_stock_vae", "use_fused", "fused_bernoulli",
           "log_joint", "buffered_decoder", "log_lik_blocks", "bernoulli_log_prob_pieces", "draw_log_weights",
           "BLOCK_ELEMENTS", "PIECE_ELEMENTS", "PARTICLE_PLATE"]

BLOCK_ELEMENTS = 2**22  # decoder outputs per fused block (16 MB): big enough for efficient matmuls, small in memory
PIECE_ELEMENTS = 2**20  # logits per elementwise pass (4 MB): cache-resident


PARTICLE_PLATE = "_importance_particles"


@dataclass
class WeightTerms:
    """Unscaled per-datapoint log-probability sums, each of shape ``(K, N)``.

    Attributes:
        log_lik: Observed model sites, log p(x|z).
        log_prior: Latent model sites, log p(z).
        log_q: Guide sites, log q(z|x).
        weighted: ``log p(x,z) - log q(z|x)`` with each site's beta (``poutine.scale``)
            kept but the subsample factor removed: the IWAE training weight.
        data_scale: The subsample factor ``num_data / batch`` of the data plate.
    """

    log_lik: Tensor
    log_prior: Tensor
    log_q: Tensor
    weighted: Tensor
    data_scale: float

    @property
    def log_weight(self) -> Tensor:
        return self.log_lik + self.log_prior - self.log_q


def subsample_factor(site: dict) -> float:
    """The product of ``full_size / size`` over the subsampled plates of ``site``."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            factor *= frame.full_size / frame.size
    return factor


def _per_datapoint(name: str, site: dict, log_p: Tensor, k: int, n: int) -> Tensor:
    # The shape alone cannot tell a global latent from a per-point one when K == N (the
    # particle dim would pass for the data dim), so also require a data-sized plate.
    in_data_plate = any(f.name != PARTICLE_PLATE and f.size == n for f in site["cond_indep_stack"])
    if not in_data_plate or log_p.dim() == 0 or log_p.shape[-1] != n:
        raise ValueError(
            f"Site {name!r} has log-prob shape {tuple(log_p.shape)}, which has no datapoint dimension of size {n}; "
            "per-datapoint weights need every sample site inside the data plate (global latents cannot be split per point)."
        )
    return log_p.expand(k, n) if log_p.dim() == 1 else log_p.reshape(k, n)


def weight_terms(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1, num_points: int | None = None,
    max_plate_nesting: int = 1, **kwargs: Any,
) -> WeightTerms:
    """Trace ``guide`` then ``model`` with ``num_samples`` vectorized draws per datapoint.

    Args:
        model: A Pyro callable; every sample site must lie in the data plate.
        guide: A Pyro callable; every sample site must lie in the data plate.
        *args: Passed to both (e.g. the data batch ``x``).
        num_samples: Draws per datapoint ``K``.
        num_points: Batch size ``N``; inferred from the first argument when omitted.
        max_plate_nesting: Plates in the model; the particle plate goes one further out.
        **kwargs: Passed to both.
    """
    n = num_points if num_points is not None else args[0].shape[0]
    particles = pyro.plate(PARTICLE_PLATE, num_samples, dim=-(max_plate_nesting + 1))
    with particles:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    with particles:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    zero = torch.zeros(())
    log_lik = log_prior = log_q = weighted = zero
    data_scale = 1.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            # A plate records its subsample indices as a "sample" site; it has no density.
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_p = _per_datapoint(name, site, site["fn"].log_prob(site["value"]), num_samples, n)
            if site.get("mask") is not None and site["mask"] is not True:
                log_p = log_p * site["mask"]
            factor = subsample_factor(site)
            beta = site["scale"] / factor
            weighted = weighted + sign * beta * log_p
            if sign < 0:
                log_q = log_q + log_p
            elif site["is_observed"]:
                log_lik, data_scale = log_lik + log_p, factor
            else:
                log_prior = log_prior + log_p
    return WeightTerms(*(t.expand(num_samples, n) for t in (log_lik, log_prior, log_q, weighted)), data_scale=data_scale)




def trace_log_joint(model: Callable, x: Tensor, latents: dict[str, Tensor], max_plate_nesting: int = 1,
                    **kwargs: Any) -> Tensor:
    """``log p(x_i, z_i)`` per datapoint for given latent values, read off a Pyro trace.

    Args:
        model: A Pyro model ``model(x, **kwargs)`` whose sample sites lie in the data plate.
        x: Data ``(N, ...)``.
        latents: ``{site: value}``, each value with a leading draw dim ``S`` then ``N``
            (e.g. ``(S, N, d)``); gradients flow back to them.
        max_plate_nesting: Plates in the model; the draw plate goes one further out.

    Returns:
        The unscaled sum over sites of ``log p``, shape ``(S, N)``.
    """
    given, observed = trace_log_terms(model, x, latents, max_plate_nesting, **kwargs)
    return given + observed


def log_joint(vae: Any, x: Tensor, z: Tensor) -> Tensor:
    """``log p(x_i, z_si) = log p(z) + log p(x_i | z)`` of a stock VAE, differentiable in ``z``.

    Args:
        vae: A :class:`~pyro_vae.models.vae.VAE` (any subclass keeps working through
            ``vae.decode``; use :func:`trace_log_joint` for a custom ``model``).
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


def is_stock_vae(vae: Any) -> bool:
    """True when ``vae``'s model and guide are :class:`~pyro_vae.models.vae.VAE`'s own.

    Only then is the direct computation provably the same as tracing the model and
    guide; a subclass that overrides either must go through Pyro traces. Duck-typed on
    :attr:`~pyro_vae.models.vae.VAE.overridden`, so this module needs no import of the VAE.
    """
    overridden = getattr(vae, "overridden", None)
    return isinstance(overridden, frozenset) and not overridden & {"model", "guide", "encode"}


def use_fused(vae: Any, method: str) -> bool:
    """Whether an estimator takes the fused path: ``method`` is ``"auto"``, ``"fused"`` or ``"trace"``."""
    if method not in ("auto", "fused", "trace"):
        raise ValueError(f"method must be 'auto', 'fused' or 'trace', got {method!r}.")
    stock = is_stock_vae(vae)
    if method == "fused" and not stock:
        raise ValueError("method='fused' needs a pyro_vae VAE with its own model, guide and encode; use 'trace'.")
    return stock and method != "trace"


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
        weight_t = linear.weight.detach().t().contiguous()
        out = like.new_empty(rows, weight_t.shape[1])
        plan.append((weight_t, linear.bias.detach(), IN_PLACE_ACTIVATIONS.get(type(act)), out))

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


def log_lik_blocks(vae: Any, z: Tensor, x: Tensor) -> Tensor:
    """``log p(x_i | z_ki)`` of shape ``(k, B)`` for ``z`` of shape ``(k, B, d)``, in blocks.

    Decoding per block of about :data:`BLOCK_ELEMENTS` outputs keeps memory small (the
    chunk's decoder output never exists at once) while the matmuls stay large. A
    Bernoulli is scored from its logits ``l`` as ``x·l - softplus(l)`` in place on the
    decoder's own buffer (:func:`buffered_decoder`), where torch's
    ``binary_cross_entropy_with_logits`` makes four full-size temporaries. Must run
    under ``torch.no_grad()``.
    """
    k, b = z.shape[:2]
    fused = fused_bernoulli(vae)
    width = getattr(vae.likelihood, "num_params", 1) * vae.num_dims
    rows = max(1, BLOCK_ELEMENTS // width)
    points, samples = max(1, rows // k), min(k, rows)
    decoder = buffered_decoder(vae.decoder, points * samples, z) if fused else None
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
            if decoder is not None:
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


def draw_log_weights(vae: Any, x: Tensor, k: int, q: Any, prior: Any, fused: bool) -> tuple[Tensor, Tensor]:
    """``(log p(x|z), log w)``, each ``(k, B)``, for ``k`` fresh draws ``z ~ q(z|x)`` per point.

    ``fused`` computes the stock VAE's densities directly (``q`` and ``prior`` are its
    ``encode(x)`` and ``prior()``); otherwise the model and guide are traced.
    """
    if not fused:
        terms = weight_terms(vae.model, vae.guide, x, num_samples=k)
        return terms.log_lik, terms.log_weight
    # Normal.rsample's own recipe, so these are the draws the traced guide would make; with
    # the noise at hand, log q(z|x) needs no (z - loc)² pass over the draws.
    loc, scale = q.base_dist.loc, q.base_dist.scale
    eps = torch.empty((k, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
    # A batched dot product: no (k, B, d) temporary of squares.
    squares = torch.linalg.vecdot(eps, eps)
    log_q = -0.5 * squares - scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
    z = eps.mul_(scale).add_(loc)  # in place, the same two roundings as ``loc + eps * scale``
    log_lik = log_lik_blocks(vae, z, x)
    return log_lik, log_lik + prior_log_density(vae._modules["prior"], z, prior) - log_q


def trace_log_terms(fn: Callable, x: Tensor, values: dict[str, Tensor], max_plate_nesting: int = 1,
                    **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Per-datapoint log-densities of ``fn`` (a model or a guide) conditioned on ``values``, in two sums.

    Args:
        fn: A Pyro callable ``fn(x, **kwargs)`` whose sample sites lie in the data plate.
        x: Data ``(N, ...)``.
        values: ``{site: value}``, each value with a leading draw dim ``S`` then ``N``;
            gradients flow back to them.
        max_plate_nesting: Plates in ``fn``; the draw plate goes one further out.

    Returns:
        ``(given, observed)``, each ``(S, N)`` and unscaled: the summed ``log p`` of the
        sites named in ``values`` (``log p(z)`` of a model, ``log q(z|x)`` of a guide)
        and of the other observed sites (``log p(x|z)`` of a model, zeros for a guide).

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
        >>> x, z = torch.rand(3, 4), torch.randn(5, 3, 2)
        >>> log_z, log_x = trace_log_terms(vae.model, x, {"z": z})
        >>> bool(torch.allclose(log_z + log_x, trace_log_joint(vae.model, x, {"z": z})))
        True
    """
    n = x.shape[0]
    s = next(iter(values.values())).shape[0]
    with pyro.plate(PARTICLE_PLATE, s, dim=-(max_plate_nesting + 1)):
        trace = poutine.trace(poutine.condition(fn, data=values)).get_trace(x, **kwargs)
    given = observed = torch.zeros((), device=x.device)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["is_observed"]:
            raise ValueError(f"Site {name!r} was sampled, not conditioned: pass its value in `values`.")
        log_p = _per_datapoint(name, site, site["fn"].log_prob(site["value"]), s, n)
        if site.get("mask") is not None and site["mask"] is not True:
            log_p = log_p * site["mask"]
        if name in values:
            given = given + log_p
        else:
            observed = observed + log_p
    return given.expand(s, n), observed.expand(s, n)
