"""The VAE as a Pyro ``model`` and ``guide``.

Generative model, for each datapoint ``i`` in ``pyro.plate("data")``::

    z_i ~ p(z)                 site "z"   (the prior)
    x_i ~ p(x | decoder(z_i))  site "x"   (the likelihood, observed)

Guide (amortized variational posterior)::

    z_i ~ Normal(encoder(x_i)) site "z"   (diagonal Gaussian)

``model`` and ``guide`` are ordinary Pyro callables: they work with
``pyro.infer.SVI``, ``Trace_ELBO``, ``Predictive`` and poutine handlers unchanged.

Example:
    >>> vae = VAE(event_shape=(8, 8), latent_dim=2, prior="mog", likelihood="gaussian")
    >>> x = torch.rand(16, 8, 8)
    >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    >>> vae.sample(3).shape
    torch.Size([3, 8, 8])
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from pyro_vae.data.files import MAX_LEVELS
from pyro_vae.models.fused import FusedVAE
from pyro_vae.models.likelihoods import check_support, resolve_likelihood
from pyro_vae.models.nets import make_decoder, make_encoder
from pyro_vae.models.priors import prior_log_density, resolve_prior

__all__ = ["VAE", "DEFAULTS"]

# The stock VAE's defaults, written once: the config (pyro_vae.runs.config) and the CLI read them from here.
# latent_dim 4, not more: on the embedded digits the prior's samples then read as digits; larger z leaves holes.
DEFAULTS = {"latent_dim": 4, "prior": "normal", "likelihood": "auto", "net": "mlp", "hidden": None, "activation": "relu"}


class VAE(PyroModule):
    """A variational autoencoder assembled from a prior, a likelihood and two nets.

    Args:
        event_shape: Shape of one datapoint, e.g. ``(8, 8)`` or ``(1, 28, 28)``.
        latent_dim: Size of ``z``.
        prior: Anything :func:`~pyro_vae.models.priors.resolve_prior` accepts.
        likelihood: Anything :func:`~pyro_vae.models.likelihoods.resolve_likelihood` accepts, or
            ``"auto"`` (the default, as in the config): ``categorical`` when ``levels`` is
            given, else ``bernoulli``. The defaults of every argument are the config's.
        net: ``"mlp"`` or ``"conv"``, used for both nets unless they are given.
        hidden: Hidden sizes of the encoder; the decoder mirrors them.
        activation: Activation name (see :data:`pyro_vae.models.nets.ACTIVATIONS`).
        encoder: Optional module ``x -> (loc, scale)`` replacing the built one.
        decoder: Optional module ``z -> raw parameters`` replacing the built one.
        levels: Number of discrete levels of the data, if quantized. Used to scale
            level-valued inputs for the encoder and by categorical likelihoods.
        prior_kwargs: Settings for a named prior.
        likelihood_kwargs: Settings for a named likelihood.

    Attributes:
        num_data: Size of the full dataset. When set, minibatches of the ``"data"``
            plate are scaled by ``num_data / batch_size`` so the ELBO is unbiased for
            the whole dataset. ``None`` means "the batch is the dataset".
        beta: Weight of the KL term (beta-VAE, KL warm-up), applied with
            ``poutine.scale`` to the ``"z"`` site in both model and guide.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int = DEFAULTS["latent_dim"],
        prior: Any = DEFAULTS["prior"],
        likelihood: Any = DEFAULTS["likelihood"],
        net: str = DEFAULTS["net"],
        hidden: Sequence[int] | None = DEFAULTS["hidden"],
        activation: str = DEFAULTS["activation"],
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        levels: int | None = None,
        prior_kwargs: dict | None = None,
        likelihood_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(event_shape, latent_dim, hidden, levels)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = latent_dim
        self.levels = levels
        self.num_data: int | None = None
        self.beta = 1.0
        # How the nets were asked for, so a run trained on a ready VAE can record its config.
        self.construction = {"net": net, "hidden": None if hidden is None else [int(h) for h in hidden],
                             "activation": activation, "encoder_given": encoder is not None,
                             "decoder_given": decoder is not None}

        if isinstance(likelihood, str) and likelihood == "auto":  # as the config: levels -> categorical
            likelihood = "categorical" if levels else "bernoulli"
        lik = resolve_likelihood(likelihood, **(likelihood_kwargs or {}))
        lik.bind(self.event_shape, levels)
        # Level-valued inputs (categorical/Poisson data) are rescaled to [0, 1] for the encoder.
        input_scale = 1.0 / (levels - 1) if (lik.wants_levels and levels) else 1.0
        self.encoder = encoder or make_encoder(net, self.event_shape, latent_dim, hidden, activation, input_scale)
        decoder_hidden = tuple(reversed(hidden)) if hidden is not None else None
        self.decoder = decoder or make_decoder(net, latent_dim, self.event_shape, lik.num_params, decoder_hidden, activation)
        self.likelihood = lik
        prior_module = resolve_prior(prior, **(prior_kwargs or {}))
        if hasattr(prior_module, "bind"):
            prior_module.bind(latent_dim, encoder=self.encoder, event_shape=self.event_shape)
        self.prior = prior_module
        self._check_parts()

    @torch.no_grad()
    def _check_parts(self) -> None:
        """Fail now, with the shapes expected and found, rather than at the first SVI step."""
        prior = self.prior()
        if not isinstance(prior, torch.distributions.Distribution):
            raise TypeError(f"the prior must return a distribution over z, got {type(prior).__name__}.")
        if tuple(prior.batch_shape) != () or tuple(prior.event_shape) != (self.latent_dim,):
            raise ValueError(
                f"the prior returns batch_shape {tuple(prior.batch_shape)} and event_shape {tuple(prior.event_shape)}; "
                f"a VAE with latent_dim={self.latent_dim} needs batch_shape () and event_shape ({self.latent_dim},): "
                "size it to latent_dim and declare the dimension an event (e.g. dist.Normal(...).to_event(1))."
            )
        with torch.random.fork_rng(devices=[]):  # checking must not shift the caller's random stream
            z = prior.sample((2,))
        try:
            lik = self.decode(z)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"the decoder and likelihood do not fit latent_dim={self.latent_dim} and event_shape "
                             f"{self.event_shape}: decoding 2 prior draws failed ({' '.join(str(exc).split())[:200]}).") from None
        if tuple(lik.event_shape) != self.event_shape or tuple(lik.batch_shape) != (2,):
            raise ValueError(
                f"the likelihood returns batch_shape {tuple(lik.batch_shape)} and event_shape {tuple(lik.event_shape)} "
                f"for 2 latent draws; it must return batch_shape (2,) and event_shape {self.event_shape} (one "
                "distribution per point over the whole datapoint: declare the data dimensions as an event)."
            )

    # -- distributions ---------------------------------------------------------------

    def encode(self, x: Tensor) -> dist.Distribution:
        """q(z|x) as a diagonal Normal with ``event_shape == (latent_dim,)``."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def decode(self, z: Tensor) -> dist.Distribution:
        """p(x|z) with ``event_shape == self.event_shape``."""
        return self.likelihood(self.decoder(z))

    # -- Pyro model and guide ----------------------------------------------------------

    def _plate(self, batch: int, device: torch.device) -> pyro.plate:
        if self.num_data is None or self.num_data == batch:
            return pyro.plate("data", batch, device=device)
        if self.num_data < batch:
            raise ValueError(f"num_data={self.num_data} is smaller than the batch of {batch} points.")
        return pyro.plate("data", self.num_data, subsample=torch.arange(batch, device=device))

    def _kl_scale(self):
        return poutine.scale(scale=self.beta) if self.beta != 1.0 else contextlib.nullcontext()

    @pyro_method
    def model(self, x: Tensor | None = None, num_samples: int | None = None) -> Tensor:
        """p(z) p(x|z). With ``x=None`` it generates ``num_samples`` points (default 1)."""
        if x is not None:
            self._check_shape(x)
            batch, device = x.shape[0], x.device
        else:
            batch, device = 1 if num_samples is None else _count(num_samples, "num_samples"), self._device()
        prior = self.prior()
        with self._plate(batch, device) if x is not None else pyro.plate("data", batch, device=device):
            with self._kl_scale():
                z = pyro.sample("z", prior)
            return pyro.sample("x", self.decode(z), obs=x)

    @pyro_method
    def guide(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        """q(z|x), amortized by the encoder."""
        self._check_shape(x)
        with self._plate(x.shape[0], x.device):
            with self._kl_scale():
                return pyro.sample("z", self.encode(x))

    @property
    def overridden(self) -> frozenset[str]:
        """Which of ``model``, ``guide``, ``encode``, ``decode`` a subclass replaces.

        The direct (fused) computations of the loss and of the evaluators' log-joint are
        only the same as tracing ``model``/``guide`` when these are the VAE's own.
        """
        return frozenset(m for m in ("model", "guide", "encode", "decode") if getattr(type(self), m) is not getattr(VAE, m))

    def _stock(self) -> bool:
        return not self.overridden

    # -- fused losses offered to the objectives (pyro_vae.objectives) -------------------

    def fused_elbo_loss(self, x: Tensor, num_particles: int = 1, meanfield: bool = False,
                        beta: float = 1.0) -> Tensor | None:
        """``-ELBO`` summed over ``x`` without tracing, or ``None`` where it would not equal the traced loss.

        The same draws from the same RNG calls give the same number and gradients as
        ``Trace_ELBO`` (``TraceMeanField_ELBO`` with ``meanfield``) on ``model``/``guide``
        with ``beta`` on the latent site (tested), at the speed of a hand-written VAE.
        ``None`` when a subclass replaces ``model``, ``guide``, ``encode`` or ``decode``.
        """
        if not self._stock():
            return None
        # Plain attribute lookups: PyroModule's hooks would emit param statements per access.
        modules = self._modules
        self._check_shape(x)
        self._check_support(x)
        loc, scale = modules["encoder"](x)
        k = num_particles
        # Normal.rsample's own recipe (the same RNG call, so the same draw as the traced guide);
        # with the noise at hand, log q(z|x) needs no (z - loc)^2 / scale^2 pass.
        eps = torch.empty((k, *loc.shape) if k > 1 else loc.shape, dtype=loc.dtype, device=loc.device).normal_()
        z = loc + eps * scale
        prior = modules["prior"]
        log_lik = modules["likelihood"].log_likelihood(modules["decoder"](z), x)
        # Totals over particles and points, not per-point terms: the loss needs only the sum,
        # and every small op saved is an autograd node saved, forward and backward.
        kl_total = None
        if meanfield:
            try:
                kl_total = k * torch.distributions.kl_divergence(dist.Normal(loc, scale).to_event(1), prior()).sum()
            except NotImplementedError:
                pass
        if kl_total is None:
            log_q_total = (eps.square().sum().mul(-0.5) - k * scale.log().sum()
                           - 0.5 * eps.numel() * math.log(2 * math.pi))
            kl_total = log_q_total - prior_log_density(prior, z).sum()
        return (log_lik.sum() - beta * kl_total).mul(-1.0 / k)

    def fused_iwae_loss(self, x: Tensor, num_particles: int, beta: float = 1.0) -> Tensor | None:
        """The IWAE loss without tracing (same draws, same number as the traced objective), or ``None``.

        ``log w = log p(x|z) + beta (log p(z) - log q(z|x))``, the log-sum-exp over the
        ``num_particles`` draws per point, summed over points.
        """
        if not self._stock():
            return None
        modules = self._modules
        self._check_shape(x)
        self._check_support(x)
        k = num_particles
        loc, scale = modules["encoder"](x)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.rsample((k,))
        log_lik = modules["likelihood"].log_likelihood(modules["decoder"](z), x)
        log_w = log_lik + beta * (modules["prior"]().log_prob(z) - q.log_prob(z))
        return -(torch.logsumexp(log_w, dim=0) - math.log(k)).sum()

    # -- conveniences -------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, x: Tensor, sample: bool = False) -> Tensor:
        """Decode the posterior mean of ``x``: the mean of p(x|z), or a draw if ``sample``."""
        self._check_shape(x)
        d = self.decode(self.encode(x).mean)
        return d.sample() if sample else self.likelihood.mean(d)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        """Draw ``n`` points from the model: z ~ p(z), then x ~ p(x|z) (or its mean)."""
        z = self.prior().sample((_count(n, "n"),))
        d = self.decode(z)
        return self.likelihood.mean(d) if mean else d.sample()

    def elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Per-datapoint reconstruction ``E_q[log p(x|z)]`` and ``KL(q(z|x) || p(z))``, unscaled.

        One reparameterized draw estimates the reconstruction; the KL is analytic when
        torch has a registered formula for the pair (returned flag ``True``), else a
        one-draw Monte Carlo estimate. ``ELBO = reconstruction - KL``.
        """
        self._check_shape(x)
        self._check_support(x)
        q = self.encode(x)
        z = q.rsample()
        prior = self.prior()
        if type(self).decode is VAE.decode:
            reconstruction = self.likelihood.log_likelihood(self.decoder(z), x)
        else:
            reconstruction = self.decode(z).log_prob(x)
        try:
            return reconstruction, torch.distributions.kl_divergence(q, prior), True
        except NotImplementedError:
            return reconstruction, q.log_prob(z) - prior.log_prob(z), False

    def check_data(self, x: Tensor) -> None:
        """Raise a clear error if ``x`` is outside the likelihood's support or shape."""
        self._check_shape(x)
        check_support(self.likelihood, x, name=f"likelihood {self.likelihood.name!r}")

    def _check_shape(self, x: Tensor) -> None:
        """Refuse what would fail deep inside torch: not a tensor, a wrong dtype, a wrong shape."""
        dtype = self._dtype()
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a torch.Tensor of {dtype} values, got {type(x).__module__}.{type(x).__name__}; "
                            f"convert it with torch.as_tensor(x, dtype={dtype}).")
        if x.dtype != dtype:
            raise TypeError(f"x has dtype {x.dtype} but this VAE computes in {dtype}; pass x.to({dtype}) "
                            "(integer levels too are given as floats).")
        if tuple(x.shape) == self.event_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}: one datapoint without its batch dimension; pass "
                             f"x.unsqueeze(0) (shape (1, {', '.join(map(str, self.event_shape))})).")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but this VAE models points of shape {self.event_shape}; "
                f"pass a batch of shape (N, {', '.join(map(str, self.event_shape))})."
            )

    def _check_support(self, x: Tensor) -> None:
        """What Pyro's validation checks at the observed site, for the paths that skip Pyro.

        Like Pyro, only while validation is on (the default; ``pyro.enable_validation(False)``
        turns it off): one elementwise comparison, and the full diagnosis only on failure.
        """
        if not is_validation_enabled():
            return
        support = self.__dict__.get("_support")
        if support is None:
            support = self.likelihood.support
            while hasattr(support, "base_constraint"):  # elementwise check, then one all() over everything
                support = support.base_constraint
            # A support that depends on the decoder's output cannot be checked ahead of it.
            self.__dict__["_support"] = support = False if constraints.is_dependent(support) else support
        if support is not False and not bool(support.check(x).all()):
            check_support(self.likelihood, x, name=f"likelihood {self.likelihood.name!r}")
            raise ValueError(f"x lies outside the support {support} of likelihood {self.likelihood.name!r}; "
                             "transform the data to match it (see data.binarize, data.dequantize).")

    def _dtype(self) -> torch.dtype:
        # Plain module lookups: PyroModule's attribute hooks are slow on the training path.
        for module in (self._modules["decoder"], self._modules["encoder"]):
            for p in module.parameters():
                return p.dtype
        return torch.get_default_dtype()

    def _device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    # -- fast kernels offered to the estimators --

    def fused(self) -> FusedVAE | None:
        """The estimators' densities without tracing (:class:`~pyro_vae.models.fused.FusedVAE`), or ``None``.

        ``None`` when a subclass replaces ``model``, ``guide`` or ``encode``: then only the
        traces of ``model`` and ``guide`` say what the densities are. A replaced ``decode``
        is called as it is. See :func:`pyro_vae.models.target.fast_path`.
        """
        return None if self.overridden & {"model", "guide", "encode"} else FusedVAE(self)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(n: Any, name: str) -> int:
    """``n`` as a positive number of points, or a clear error."""
    if not _is_int(n):
        raise TypeError(f"{name} must be a positive integer, got {n!r} ({type(n).__name__}).")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}.")
    return int(n)


def _check_arguments(event_shape: Any, latent_dim: Any, hidden: Any, levels: Any) -> None:
    """Refuse VAE arguments that would fail deep inside torch, or allocate without bound."""
    if not isinstance(event_shape, (tuple, list, torch.Size)):
        raise TypeError(f"event_shape must be a sequence of ints such as (8, 8) or (784,), got {event_shape!r}.")
    if not event_shape or not all(_is_int(s) and s >= 1 for s in event_shape):
        raise ValueError(f"event_shape must hold positive ints, e.g. (8, 8) or (1, 28, 28), got {tuple(event_shape)}.")
    if not (_is_int(latent_dim) and latent_dim >= 1):
        raise ValueError(f"latent_dim must be an int >= 1, got {latent_dim!r}.")
    if hidden is not None and (not isinstance(hidden, (tuple, list)) or not all(_is_int(h) and h >= 1 for h in hidden)):
        raise ValueError(f"hidden must be a sequence of positive ints such as (256,) or [], got {hidden!r}.")
    if levels is not None and not (_is_int(levels) and 2 <= levels <= MAX_LEVELS):
        raise ValueError(f"levels must be None or an int in [2, {MAX_LEVELS}], got {levels!r}; "
                         "model continuous data with levels=None.")
