"""A plain autoencoder beside a VAE with the same nets: what the KL term and the noisy encoder buy.

The autoencoder is written here in plain torch: the VAE's encoder (its ``loc`` output
only) and decoder, trained on mean squared error, no KL, no sampling. The VAE uses the
same nets with a Gaussian likelihood of fixed σ = 0.1, whose log-density is
``-MSE / (2σ²)`` + const: the only differences are the KL term and the sampled z.

Three comparisons on test digits:

1. Reconstruction error, the autoencoder's whole objective.
2. Interpolation: decode points evenly spaced on the line between two codes and
   measure the pixel-space steps. ``max step / mean step`` is 1 for a path of uniform
   speed and large when the picture jumps; ``length / distance`` is 1 for a straight path.
3. Sampling: decode ``z ~ N(0, I)`` with both decoders. Nothing ties the autoencoder's
   codes to N(0, I): their location and spread are whatever training left (printed), so
   prior draws reach codes its decoder never saw, and how far off they land depends on
   the run. The KL term is what pulls the VAE's codes onto the prior. Scored by the
   distance of each decoded sample to its nearest training image, relative to the same
   distance for real test images (1 = as close to the data as real digits).

Run::

    python examples/07_ae_vs_vae.py
    python examples/07_ae_vs_vae.py --smoke
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from pyro_vae.plots import latent as latent_plots
from pyro_vae.plots import figures as plots
from pyro_vae.data.transforms import iterate_minibatches
from pyro_vae.models.nets import make_decoder, make_encoder
from pyro_vae.jobs.train import fit
from _common import example_parser, load  # shared flags and data


def path_stats(decode, z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 16) -> tuple[float, float]:
    """(max step / mean step, path length / endpoint distance) of decoded straight-line paths, averaged."""
    t = torch.linspace(0, 1, steps)[None, :, None]
    images = decode(((1 - t) * z_a[:, None] + t * z_b[:, None]).reshape(-1, z_a.shape[1])).reshape(len(z_a), steps, -1)
    step = (images[:, 1:] - images[:, :-1]).norm(dim=-1)
    chord = (images[:, -1] - images[:, 0]).norm(dim=-1).clamp_min(1e-8)
    return (step.max(1).values / step.mean(1)).mean().item(), (step.sum(1) / chord).mean().item()


def nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each row of ``a`` to its nearest row of ``b``."""
    return torch.cdist(a.flatten(1), b.flatten(1)).min(1).values


def main() -> None:
    parser = example_parser(__doc__, "07_ae_vs_vae", "tiny nets, 1 epoch")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    hidden = [32] if args.smoke else [256]
    epochs = 1 if args.smoke else args.epochs
    dataset = load(args.data, args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)

    # The VAE: grey values in [0, 1] (no dequantization: the autoencoder sees the same numbers).
    config = {"data": {"name": dataset.name, "dequantize": "false"},
              "model": {"latent_dim": args.latent_dim, "likelihood": "gaussian", "likelihood_kwargs": {"scale": 0.1},
                        "net": {"hidden": hidden}},
              "train": {"epochs": epochs, "batch_size": 128, "lr": 1e-3, "seed": 0, "metrics_max_points": 500}}
    result = fit(config, run_dir=None, progress=False, dataset=dataset)
    vae, transform = result.vae.eval(), result.transform

    # The autoencoder: the same nets and optimizer, the same minibatches, mean squared error.
    torch.manual_seed(0)
    encoder = make_encoder("mlp", dataset.event_shape, args.latent_dim, hidden)
    decoder = make_decoder("mlp", args.latent_dim, dataset.event_shape, 1, hidden[::-1])
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    for epoch in range(epochs):
        for x_raw in iterate_minibatches(dataset.train, 128, seed=0, epoch=epoch):
            x = transform(x_raw, train=True)
            loss = F.mse_loss(decoder(encoder(x)[0]).reshape(x.shape), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    with torch.no_grad():
        ae_decode = lambda z: decoder(z).reshape(-1, *dataset.event_shape)  # noqa: E731
        vae_decode = lambda z: vae.likelihood.mean(vae.decode(z))  # noqa: E731
        x_train, x_test = transform(dataset.train, train=False), transform(dataset.test, train=False)
        codes = {"AE": encoder(x_train)[0], "VAE": vae.encode(x_train).mean}
        test_codes = {"AE": encoder(x_test)[0], "VAE": vae.encode(x_test).mean}
        decoders = {"AE": ae_decode, "VAE": vae_decode}
        g = torch.Generator().manual_seed(0)
        pairs = torch.randint(len(x_test), (2, 100), generator=g)
        z_prior = torch.randn(500, args.latent_dim, generator=g)
        real = nearest_distance(x_test[:500], x_train).median()
        print(f"{dataset.name}: latent_dim={args.latent_dim}, {epochs} epochs, same nets {hidden}")
        print(f"{'':>4} {'test MSE':>9} {'max/mean step':>14} {'length/dist':>12} {'code mean |.|':>14} "
              f"{'code std (min..max)':>20} {'prior-sample NN dist / real':>28}")
        samples = {}
        for name, decode in decoders.items():
            mse = F.mse_loss(decode(test_codes[name]), x_test).item()
            jump, length = path_stats(decode, test_codes[name][pairs[0]], test_codes[name][pairs[1]])
            spread = codes[name].std(0)
            samples[name] = decode(z_prior)
            ratio = (nearest_distance(samples[name], x_train).median() / real).item()
            print(f"{name:>4} {mse:9.5f} {jump:14.3f} {length:12.3f} {codes[name].mean(0).abs().mean().item():14.3f} "
                  f"{spread.min().item():9.3f}..{spread.max().item():<9.3f} {ratio:28.3f}")
        print("(prior N(0, I): code mean 0, std 1; a ratio near 1 means prior samples are as close to the data as test digits)")

        fig, axes = plt.subplots(2, 1, figsize=(9, 2.4))  # one test pair, both models, straight line
        t = torch.linspace(0, 1, 12)[:, None]
        for ax, name in zip(axes, decoders):
            z_a, z_b = test_codes[name][pairs[0, 0]], test_codes[name][pairs[1, 0]]
            plots.image_grid(plots.to_images(decoders[name]((1 - t) * z_a + t * z_b), vae), 12, ax, f"{name}: linear path")
        fig.savefig(args.out / "interpolation_ae_vs_vae.png", dpi=120, bbox_inches="tight")
        plt.close(latent_plots.interpolation(vae, x_test[pairs[0, 0]], x_test[pairs[1, 0]], 12, path=args.out / "interpolation_vae.png"))

        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))  # the same z ~ N(0, I) through both decoders
        for ax, name in zip(axes, decoders):
            plots.image_grid(plots.to_images(samples[name][:64], vae), 8, ax, f"{name}: decoded z ~ N(0, I)")
        fig.savefig(args.out / "prior_samples.png", dpi=120, bbox_inches="tight")

        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)  # codes vs prior, first two dims
        for ax, name in zip(axes, decoders):
            ax.scatter(*z_prior[:, :2].T, s=4, color="0.6", label="z ~ N(0, I)")
            ax.scatter(*codes[name][:2000, :2].T, s=4, alpha=0.5, c=dataset.train_labels[:2000], cmap="tab10", label="codes")
            ax.set_title(f"{name}: {'encoder outputs' if name == 'AE' else 'posterior means'} vs prior", fontsize=9)
            ax.set(xlabel="$z_0$", ylabel="$z_1$")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.out / "codes_vs_prior.png", dpi=120)
    print(f"wrote interpolation_ae_vs_vae.png, interpolation_vae.png, prior_samples.png, codes_vs_prior.png to {args.out}")


if __name__ == "__main__":
    main()
