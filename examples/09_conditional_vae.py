"""A conditional VAE written as your own Pyro model and guide, built from pyro_vae's parts.

The stock :class:`pyro_vae.models.vae.VAE` models ``p(x)``. Here the labels enter the model:
``p(x | y) = ∫ p(z) p(x | z, y) dz``, with the one-hot label concatenated to the
encoder's input and to ``z`` for the decoder. Everything except the two short Pyro
functions comes from pyro_vae: the nets (``make_encoder``/``make_decoder``), the
likelihood (``resolve_likelihood``: decoder output -> Bernoulli), the prior
(``resolve_prior``) and the importance-sampled evaluation, which works on any model
and guide with a data plate. Training is plain Pyro ``SVI`` with ``Trace_ELBO``.

Pictures: class-conditional samples (rows: labels; columns: one z each, so a column
keeps its "style"), and style transfer (a test digit's z decoded under every label).

Run::

    python examples/09_conditional_vae.py
    python examples/09_conditional_vae.py --smoke
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn

from pyro_vae.plots import figures as plots
from pyro_vae.data.transforms import DataTransform, iterate_minibatches
from pyro_vae.estimators.importance import evaluate
from pyro_vae.models.likelihoods import resolve_likelihood
from pyro_vae.models.nets import make_decoder, make_encoder
from pyro_vae.models.priors import resolve_prior
from _common import example_parser, load  # shared flags and data


class ConditionalVAE(nn.Module):
    """``z ~ p(z)``, ``x ~ p(x | decoder([z, onehot(y)]))``; guide ``q(z | encoder([x, onehot(y)]))``."""

    def __init__(self, event_shape: tuple[int, ...], num_classes: int, latent_dim: int, hidden: list[int],
                 likelihood: str = "bernoulli", prior: str = "normal") -> None:
        super().__init__()
        self.event_shape, self.num_classes, self.latent_dim = tuple(event_shape), num_classes, latent_dim
        self.levels = None  # read by plots.to_images: the Bernoulli models {0, 1}, not levels
        self.likelihood = resolve_likelihood(likelihood)
        self.likelihood.bind(self.event_shape)
        self.prior = resolve_prior(prior)
        self.prior.bind(latent_dim)
        self.encoder = make_encoder("mlp", (math.prod(event_shape) + num_classes,), latent_dim, hidden)
        self.decoder = make_decoder("mlp", latent_dim + num_classes, self.event_shape, self.likelihood.num_params, hidden[::-1])

    def _onehot(self, y: Tensor, like: Tensor) -> Tensor:
        # Broadcast over any leading sample dims of `like` (vectorized particles add one).
        return F.one_hot(y, self.num_classes).to(like.dtype).expand(*like.shape[:-1], self.num_classes)

    def decode(self, z: Tensor, y: Tensor) -> dist.Distribution:
        return self.likelihood(self.decoder(torch.cat([z, self._onehot(y, z)], -1)))

    def model(self, x: Tensor, y: Tensor) -> None:
        pyro.module("cvae", self)
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decode(z, y), obs=x)

    def guide(self, x: Tensor, y: Tensor) -> None:
        pyro.module("cvae", self)
        flat = x.reshape(len(y), -1)
        with pyro.plate("data", len(y)):
            loc, scale = self.encoder(torch.cat([flat, self._onehot(y, flat)], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class Given(nn.Module):
    """``p(x | y)`` for fixed labels as a model/guide of ``x`` alone, which is what ``evaluate`` scores."""

    def __init__(self, cvae: ConditionalVAE, y: Tensor) -> None:
        super().__init__()
        self.cvae, self.y = cvae, y

    def model(self, x: Tensor) -> None:
        self.cvae.model(x, self.y)

    def guide(self, x: Tensor) -> None:
        self.cvae.guide(x, self.y)


def main() -> None:
    parser = example_parser(__doc__, "09_conditional_vae", "tiny net, 1 epoch, K=10 on 100 points")
    # A small z leaves the class to the label: with a large z the decoder can learn to ignore y.
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200, help="K for log p(x | y)")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.samples = 1, 10
    dataset = load(args.data, args.smoke)
    train_x, train_y = dataset.train, dataset.train_labels
    transform = DataTransform(dataset.levels, binarize="dynamic")  # fresh binarization per minibatch
    args.out.mkdir(parents=True, exist_ok=True)

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    cvae = ConditionalVAE(dataset.event_shape, 10, args.latent_dim, [32] if args.smoke else [256])
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for epoch in range(args.epochs):
        total = 0.0
        for x_raw, y in iterate_minibatches(train_x, 128, seed=0, epoch=epoch, labels=train_y):
            total += svi.step(transform(x_raw, train=True), y)
        print(f"epoch {epoch + 1:3d}: training ELBO {-total / len(train_x):9.3f} nats per digit")

    # log p(x | y) on test digits by importance sampling: one batch, so the labels line up with it.
    n_test = 100 if args.smoke else 500
    x_test, y_test = transform(dataset.test[:n_test], train=False), dataset.test_labels[:n_test]
    ev = evaluate(Given(cvae, y_test), x_test, num_samples=args.samples, k_list=(1, args.samples), batch_size=n_test,
                  seed=0, method="trace")
    print(f"test log p(x | y) = {ev.log_likelihood.mean:.2f} ± {ev.log_likelihood.se:.2f} nats "
          f"(ELBO {ev.elbo.mean().item():.2f}; N={ev.num_points}, K={ev.num_samples})")

    with torch.no_grad():
        show = lambda x: plots.to_images(x, cvae)  # noqa: E731 - same scale conventions as a VAE
        z = cvae.prior().sample((8,)).repeat(10, 1)  # 8 styles, repeated for each of 10 labels
        labels = torch.arange(10).repeat_interleave(8)
        fig, ax = plt.subplots(figsize=(4.5, 5.5))
        plots.image_grid(show(cvae.likelihood.mean(cvae.decode(z, labels))), 8, ax, "rows: label 0-9; columns: one z each")
        fig.savefig(args.out / "conditional_samples.png", dpi=120, bbox_inches="tight")

        # Style transfer: infer z from a test digit under its own label, decode under every label.
        q_loc = cvae.encoder(torch.cat([x_test[:6].reshape(6, -1), cvae._onehot(y_test[:6], x_test[:6].reshape(6, -1))], -1))[0]
        z = q_loc.repeat_interleave(10, 0)
        decoded = cvae.likelihood.mean(cvae.decode(z, torch.arange(10).repeat(6)))
        grid = torch.cat([torch.cat([show(x_test[i : i + 1]), show(decoded[10 * i : 10 * i + 10])]) for i in range(6)])
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        plots.image_grid(grid, 11, ax, "left: test digit; right: its z decoded with labels 0-9")
        fig.savefig(args.out / "style_transfer.png", dpi=120, bbox_inches="tight")
    print(f"wrote conditional_samples.png and style_transfer.png to {args.out}")


if __name__ == "__main__":
    main()
