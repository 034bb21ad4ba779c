"""Adversarial objectives: the adversarial autoencoder and the GAN generator, on the VAE's own model.

Both keep the VAE's Pyro ``model`` (prior p(z), decoder, likelihood p(x|z)) unchanged, so
sampling, ``Predictive`` and the AIS/BDMC evaluators apply as they do to a VAE. Each
replaces one divergence of the joint-KL picture (``docs/theory/family.md``) by a
discriminator, an ordinary ``torch.nn.Module`` with its own Adam optimizer:

* :class:`AAE` (Makhzani et al., 2016): reconstruction ``-E_q log p(x|z)`` with one
  reparameterized draw, and instead of the KL a discriminator on ``z`` that tells prior
  draws from encoder draws, so the aggregated posterior q(z) is matched to p(z).
* :class:`GAN` (Goodfellow et al., 2014, non-saturating generator loss): no encoder term;
  a discriminator on ``x`` tells data from draws of the model's own p(x) = ∫p(z)p(x|z)dz.
  The draws go through the observation model (reparameterized, or straight-through for
  Bernoulli and categorical pixels), so the density AIS scores is the one that was trained.
* :class:`ALI` (Dumoulin et al., 2017; BiGAN, Donahue et al., 2017): both of the above at
  once: a discriminator on pairs ``(x, z)`` tells the data joint ``x ~ data, z ~ q(z|x)`` from
  the model joint ``z ~ p(z), x ~ p(x|z)``; encoder and decoder are trained to swap its labels.

One training step (:func:`pyro_vae.jobs.train.train_step`): the generator loss updates the VAE's
parameters through the discriminator with its weights held fixed, then the discriminator
takes one step on the same real and generated points.

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="bernoulli", hidden=[8])
    >>> aae = AAE(hidden=[16])
    >>> disc = aae.bind(vae)
    >>> loss = aae.generator_loss(vae, torch.bernoulli(torch.full((5, 4), 0.5)))
    >>> real, fake = aae.pair
    >>> real.shape, fake.shape, aae.discriminator_loss(disc, real, fake).shape
    (torch.Size([5, 2]), torch.Size([5, 2]), torch.Size([]))
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Independent

from pyro_vae.core.errors import ConfigError

__all__ = ["Discriminator", "Adversarial", "AAE", "GAN", "ALI", "ADVERSARIAL", "differentiable_draw",
           "DiscriminatorWonWarning", "WON_LOSS", "check_balance", "ais_init"]


# A discriminator loss (real + fake cross-entropy, 2 log 2 = 1.39 at balance) this low means it tells
# nearly every generated point from the data, and its gradients to the generator have vanished.
WON_LOSS = 0.05


class DiscriminatorWonWarning(UserWarning):
    """The discriminator separates data from generated points almost perfectly: the generator has likely failed."""


def check_balance(objective: str, history: Sequence[dict]) -> None:
    """Warn (:class:`DiscriminatorWonWarning`) if the last epoch's discriminator loss is below :data:`WON_LOSS`.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check_balance("gan", [{"epoch": 3, "train_discriminator_loss": 0.001}])
        >>> "has won" in str(caught[0].message)
        True
    """
    loss = history[-1]["train_discriminator_loss"] if history else None
    if loss is not None and loss < WON_LOSS:
        warnings.warn(DiscriminatorWonWarning(
            f"train.objective {objective!r}: the discriminator has won (its loss is {loss:.3g} at epoch "
            f"{history[-1]['epoch']}, 1.39 at balance), so the generator has likely collapsed to a few images; lower "
            "train.lr and train.adversary_lr (e.g. 1e-3 and 2e-4) and check the samples and the AIS log-likelihood."
        ), stacklevel=3)


class Discriminator(nn.Module):
    """An MLP giving the logit that its input is real, one per point.

    Args:
        in_features: Values per point (flattened).
        hidden: Hidden widths; leaky ReLU between layers, as in most GAN discriminators.

    Example:
        >>> Discriminator(3, hidden=[8])(torch.zeros(5, 3)).shape
        torch.Size([5])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, v: Tensor) -> Tensor:
        return self.net(v.reshape(v.shape[0], -1)).squeeze(-1)


def differentiable_draw(d: torch.distributions.Distribution) -> Tensor:
    """A draw from ``d`` whose gradient reaches ``d``'s parameters.

    Reparameterized where ``d`` has ``rsample``; for Bernoulli and categorical elements a
    straight-through draw: the value is an exact draw, the gradient that of the mean
    (Bengio et al., 2013). Categorical levels are returned as level numbers, like the data.

    Example:
        >>> d = torch.distributions.Bernoulli(logits=torch.zeros(3, requires_grad=True))
        >>> x = differentiable_draw(d)
        >>> bool(((x == 0) | (x == 1)).all()), x.requires_grad
        (True, True)
    """
    if d.has_rsample:
        return d.rsample()
    base = d.base_dist if isinstance(d, Independent) else d
    if isinstance(base, Bernoulli):
        p = base.probs
        return torch.bernoulli(p.detach()) + (p - p.detach())  # + exactly 0: the value stays 0 or 1
    if isinstance(base, Categorical):
        p = base.probs
        one_hot = F.one_hot(torch.multinomial(p.detach().reshape(-1, p.shape[-1]), 1).reshape(p.shape[:-1]),
                            p.shape[-1]).to(p)
        levels = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)
        return ((one_hot + (p - p.detach())) * levels).sum(-1)
    raise ConfigError(
        f"train.objective 'gan' (and 'ali') needs draws from p(x|z) that carry gradients; {type(base).__name__} has none. "
        "Use a reparameterized likelihood (gaussian, gaussian_learned, laplace, beta) or bernoulli/categorical."
    )


class Adversarial:
    """What :class:`AAE`, :class:`GAN` and :class:`ALI` share: a discriminator, its loss and the step protocol.

    Args:
        hidden: The discriminator's hidden widths.
        weight: Multiplier of the adversarial term in the generator loss.

    Attributes:
        discriminator: Set by :meth:`bind`.
        pair: ``(real, fake)`` of the last :meth:`generator_loss`, detached, for the
            discriminator's step.
    """

    name = ""
    num_particles = 1

    def __init__(self, hidden: Sequence[int] = (256, 256), weight: float = 1.0) -> None:
        self.hidden, self.weight = list(hidden), float(weight)
        self.discriminator: Discriminator | None = None
        self.pair: tuple[Tensor, Tensor] | None = None

    def features(self, vae: Any) -> int:
        raise NotImplementedError

    def bind(self, vae: Any) -> Discriminator:
        """Build the discriminator for ``vae`` (on its device and dtype) and return it."""
        missing = [a for a in ("encode", "decode", "prior", "likelihood", "latent_dim") if not hasattr(vae, a)]
        if missing:
            raise ConfigError(f"train.objective {self.name!r} trains the stock VAE's encoder and decoder, and "
                              f"{type(vae).__name__} has no {', '.join(missing)}; use objective elbo, meanfield or iwae.")
        p = next(vae.parameters())
        self.discriminator = Discriminator(self.features(vae), self.hidden).to(device=p.device, dtype=p.dtype)
        return self.discriminator

    def _fooled(self, fake: Tensor, as_real: bool = True) -> Tensor:
        """``-log D(fake)`` per point (``-log(1 - D)`` with ``as_real=False``), the discriminator's weights held fixed.

        ``functional_call`` on detached weights keeps the generator's backward out of the
        discriminator's gradients, which DDP would otherwise try to reduce outside its forward.
        """
        weights = {name: w.detach() for name, w in self.discriminator.named_parameters()}
        logits = torch.func.functional_call(self.discriminator, weights, (fake,))
        return F.softplus(-logits if as_real else logits)

    @staticmethod
    def discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        """Mean binary cross-entropy of real-against-fake, ``-log D(real) - log(1 - D(fake))``."""
        logits = discriminator(torch.cat([real, fake]))
        return F.softplus(-logits[: len(real)]).mean() + F.softplus(logits[len(real):]).mean()

    def generator_loss(self, vae: Any, x: Tensor) -> Tensor:
        """The generator's loss summed over the batch's points (the trainer scales it to the data set)."""
        raise NotImplementedError

    def training_loss(self, model: Any, x: Tensor, beta: float = 1.0) -> Tensor:
        """:meth:`generator_loss`; ``beta`` has no KL term to weight here (the config refuses it)."""
        return self.generator_loss(model, x)


class AAE(Adversarial):
    """Adversarial autoencoder: reconstruction plus fooling a discriminator on ``z``.

    The loss of a minibatch is ``Σ_i [-log p(x_i|z_i) + weight · (-log D(z_i))]``, ``z_i ~ q(z|x_i)``
    by reparameterization; the discriminator learns prior draws as real and encoder draws as fake.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=[8])
        >>> aae = AAE(hidden=[8]); _ = aae.bind(vae)
        >>> aae.generator_loss(vae, torch.rand(3, 4)).item() > 0
        True
    """

    name = "aae"

    def features(self, vae: Any) -> int:
        return vae.latent_dim

    def generator_loss(self, vae: Any, x: Tensor) -> Tensor:
        vae._check_shape(x)
        vae._check_support(x)
        z = vae.encode(x).rsample()
        if "decode" in vae.overridden:
            reconstruction = vae.decode(z).log_prob(x)
        else:  # the likelihood's own log-density, without building the distribution
            reconstruction = vae.likelihood.log_likelihood(vae.decoder(z), x)
        with torch.no_grad():
            real = vae.prior().sample((len(x),))
        self.pair = (real, z.detach())
        return (self.weight * self._fooled(z) - reconstruction).sum()


class GAN(Adversarial):
    """GAN generator: the decoder and its observation model fool a discriminator on ``x``.

    The loss of a minibatch is ``Σ_i weight · (-log D(x̃_i))`` (non-saturating), with
    ``x̃_i`` a :func:`differentiable_draw` from p(x|z_i), ``z_i ~ p(z)``. The encoder is not
    trained; evaluate with AIS from the prior (``init="prior"``).

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="bernoulli", hidden=[8])
        >>> gan = GAN(hidden=[8]); _ = gan.bind(vae)
        >>> gan.generator_loss(vae, torch.ones(3, 4)).item() > 0
        True
    """

    name = "gan"

    def features(self, vae: Any) -> int:
        return vae.num_dims

    def bind(self, vae: Any) -> Discriminator:
        p = next(vae.parameters())
        differentiable_draw(vae.decode(torch.zeros(1, vae.latent_dim, device=p.device, dtype=p.dtype)))  # fail early
        # Level numbers (0-16 on digits) reach the discriminator as [0, 1], as pixels usually do.
        levels = getattr(vae, "levels", None) if vae.likelihood.wants_levels else None
        self.input_scale = 1.0 / (levels - 1) if levels and levels > 1 else 1.0
        return super().bind(vae)

    def _model_draws(self, vae: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x flattened, x̃, z)`` for a minibatch ``x``: z ~ p(z), x̃ a differentiable draw of p(x|z), both scaled."""
        vae._check_shape(x)
        vae._check_support(x)
        prior = vae.prior()
        z = prior.rsample((len(x),)) if prior.has_rsample else prior.sample((len(x),))
        fake = differentiable_draw(vae.decode(z)).to(x.dtype).reshape(len(x), -1) * self.input_scale
        return x.reshape(len(x), -1) * self.input_scale, fake, z

    def generator_loss(self, vae: Any, x: Tensor) -> Tensor:
        real, fake, _ = self._model_draws(vae, x)
        self.pair = (real, fake.detach())
        return self.weight * self._fooled(fake).sum()


class ALI(GAN):
    """ALI / BiGAN: a discriminator on ``(x, z)`` pairs, the data joint against the model joint.

    The data joint's pairs are ``(x_i, z_i)``, ``z_i ~ q(z|x_i)``; the model joint's are
    ``(x̃_j, z_j)``, ``z_j ~ p(z)``, ``x̃_j`` a :func:`differentiable_draw` from p(x|z_j). The
    loss of a minibatch, ``Σ weight · [-log(1 - D(x_i, z_i)) - log D(x̃_j, z_j)]``, trains the
    encoder and the decoder to make each joint pass for the other (non-saturating in both).

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="bernoulli", hidden=[8])
        >>> ali = ALI(hidden=[8]); disc = ali.bind(vae)
        >>> loss = ali.generator_loss(vae, torch.ones(3, 4))
        >>> [v.shape for v in ali.pair]
        [torch.Size([3, 6]), torch.Size([3, 6])]
    """

    name = "ali"

    def features(self, vae: Any) -> int:
        return vae.num_dims + vae.latent_dim

    def generator_loss(self, vae: Any, x: Tensor) -> Tensor:
        real, fake, z = self._model_draws(vae, x)
        encoded = torch.cat([real, vae.encode(x).rsample()], dim=1)
        decoded = torch.cat([fake, z], dim=1)
        self.pair = (encoded.detach(), decoded.detach())
        fooled = self._fooled(decoded) + self._fooled(encoded, as_real=False)
        return self.weight * fooled.sum()


ADVERSARIAL = {"aae": AAE, "gan": GAN, "ali": ALI}


def ais_init(objective: str) -> str:
    """Where AIS and BDMC start for a model trained with ``objective``.

    ``"prior"`` for the adversarial objectives, whose encoders are not fitted to the
    posterior (annealing from an AAE's gave a BDMC gap of 232 nats, from the prior 0.21),
    else ``"guide"``.

    Example:
        >>> ais_init("gan"), ais_init("elbo")
        ('prior', 'guide')
    """
    return "prior" if objective in ADVERSARIAL else "guide"
