"""A linear VAE trained by SVI reaches the exact PPCA log-likelihood, in the same units.

With a linear decoder, ``p(z) = N(0, I)`` and ``p(x|z) = N(Wz + b, σ² I)``, the VAE *is*
probabilistic PCA: its marginal is ``N(b, WWᵀ + σ²I)``, whose maximum likelihood has a
closed form (Tipping & Bishop, 1999). With a linear encoder the ELBO's maximum equals
that maximum likelihood (Lucas et al., 2019). So on the same data, a well-trained linear
VAE must satisfy, on the training split,

    ELBO  ≤  IS estimate of log p(x)  ≈  exact log p(x) of its own W, b, σ  ≤  PPCA maximum likelihood

with the gaps small. The data are the digits, dequantized ``(level + u) / 17`` with a
fixed noise draw, identical for the VAE and for PPCA (closed form and EM).

Run::

    python examples/06_linear_vae_vs_ppca.py       # ~2 min on 2 cores
    python examples/06_linear_vae_vs_ppca.py --smoke
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_vae.plots import figures as plots
from pyro_vae.baselines.registry import make_baseline
from pyro_vae.data.transforms import DataTransform
from pyro_vae.data.datasets import load_dataset
from pyro_vae.estimators.importance import evaluate
from pyro_vae.core.stats import LogLikelihood, mean_se
from pyro_vae.models.vae import VAE
from _common import example_parser  # shared flags and data


def main() -> None:
    parser = example_parser(__doc__, "06_linear_vae_vs_ppca", "50 SVI steps, K=20", data=False)
    parser.add_argument("--latent-dim", type=int, default=8, help="k: latent size of the VAE = PPCA components")
    parser.add_argument("--steps", type=int, default=2000, help="full-batch SVI steps")
    parser.add_argument("--lr", type=float, default=0.03, help="start; decays 100-fold over the steps")
    parser.add_argument("--samples", type=int, default=1000, help="K at evaluation")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.samples = 50, 20
    args.out.mkdir(parents=True, exist_ok=True)
    k = args.latent_dim

    dataset = load_dataset("digits")
    transform = DataTransform(dataset.levels, dequantize=True, seed=0)
    # train=False: the fixed noise draw, so the VAE and PPCA fit exactly the same numbers.
    x_train, x_test = transform(dataset.train, train=False), transform(dataset.test, train=False)

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    vae = VAE(dataset.event_shape, latent_dim=k, hidden=[], likelihood="gaussian_learned",
              likelihood_kwargs={"mode": "shared"}, levels=dataset.levels)
    # Full-batch SVI with the analytic KL (TraceMeanField_ELBO): only the reconstruction is sampled.
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.01 ** (1 / args.steps)})
    svi = SVI(vae.model, vae.guide, optim, TraceMeanField_ELBO())
    history = []
    for step in range(args.steps):
        history.append(-svi.step(x_train) / len(x_train))
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"SVI step {step + 1:5d}: ELBO {history[-1]:8.3f} nats per digit")

    ppca = make_baseline("ppca", k).fit(x_train)  # closed form: eigendecomposition
    ppca_em = make_baseline("ppca", k).fit(x_train, method="em", max_iter=5000, tol=1e-8)
    decoder = vae.decoder.net[0]  # hidden=[]: one Linear(k, 64) layer, x ≈ W z + b
    w, b = decoder.weight.detach().double(), decoder.bias.detach().double()
    sigma2 = vae.likelihood.scale().detach().double() ** 2
    marginal = dist.LowRankMultivariateNormal(b, w, sigma2.expand(len(b)))  # the VAE's own exact log p(x)

    levels = transform.density_levels  # bits/dim of the 17 discrete levels
    print(f"\ndigits, dequantized; k = {k}; nats per digit (mean ± SE over digits), K = {args.samples}")
    for split, x in (("train", x_train), ("test", x_test)):
        ev = evaluate(vae, x, num_samples=args.samples, k_list=(1, args.samples), levels=levels, seed=0)
        flat = x.reshape(len(x), -1).double()
        exact = LogLikelihood("linear VAE, exact", marginal.log_prob(flat), dataset.num_dims, levels)
        closed, em = ppca.evaluate(x, levels=levels), ppca_em.evaluate(x, levels=levels)
        elbo, ll = mean_se(ev.elbo), ev.log_likelihood
        print(f"[{split}, N={len(x)}]")
        print(f"  linear VAE ELBO             {elbo['mean']:9.3f} ± {elbo['se']:.3f}")
        print(f"  linear VAE log p(x), IS     {ll.mean:9.3f} ± {ll.se:.3f}  (MC SE {ll.dataset_mc_se:.4f}; "
              f"k̂ > 0.7: {100 * ev.frac_unreliable:.1f}%)")
        print(f"  linear VAE log p(x), exact  {exact.mean:9.3f} ± {exact.se:.3f}")
        print(f"  PPCA closed form            {closed.mean:9.3f} ± {closed.se:.3f}  ({closed.bits_per_dim:.4f} bits/dim)")
        print(f"  PPCA EM ({ppca_em.iterations} iterations)     {em.mean:9.3f} ± {em.se:.3f}  "
              f"(EM - closed form {em.mean - closed.mean:+.1e})")
        gap = mean_se(closed.per_point - ll.per_point)
        print(f"  PPCA - VAE (IS)             {gap['mean']:9.3f} ± {gap['se']:.3f} (paired SE); "
              f"IS - exact {ll.mean - exact.mean:+.4f}")
        if split == "train":
            order = elbo["mean"] <= ll.mean <= closed.mean + 1e-6
            print(f"  ELBO ≤ IS log p(x) ≤ PPCA maximum likelihood: {order}")

    # Same model? W is identified only up to a rotation (WR gives the same marginal), but its left
    # singular vectors (the principal axes) and singular values (sqrt(λ - σ²)) are not.
    svd_vae, svd_ppca = torch.linalg.svd(w, full_matrices=False), torch.linalg.svd(ppca.loadings.double(), full_matrices=False)
    axes_vae = svd_vae.U * torch.sign((svd_vae.U * svd_ppca.U).sum(0))  # singular vectors have arbitrary signs
    cosines = (axes_vae * svd_ppca.U).sum(0)
    print(f"\nσ²: VAE {sigma2.item():.5f}, PPCA {ppca.noise_variance.item():.5f}")
    print("singular values of W: VAE " + " ".join(f"{v:.3f}" for v in svd_vae.S.tolist()))
    print("                      PPCA " + " ".join(f"{v:.3f}" for v in svd_ppca.S.tolist()))
    print("|cos| between matching principal axes: " + " ".join(f"{v:.3f}" for v in cosines.tolist()))
    # Axes with near-equal eigenvalues may mix; the k-dimensional subspace as a whole may not.
    subspace = torch.linalg.svdvals(svd_vae.U.T @ svd_ppca.U)
    print(f"cosines of the principal angles between the two {k}-dim subspaces: min {subspace.min().item():.4f}, "
          f"mean {subspace.mean().item():.4f}")

    fig, ax = plt.subplots(figsize=(5, 3.3))
    ax.plot(range(1, len(history) + 1), history, lw=0.8, label="training ELBO (SVI)")
    ax.axhline(ppca.history[-1], color="C3", ls="--", label="PPCA max. likelihood (train)")
    ax.set_ylim(ppca.history[-1] - 15, ppca.history[-1] + 3)
    ax.set_xscale("log")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("nats per digit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "elbo_vs_ppca.png", dpi=120)
    fig, axes = plt.subplots(2, 1, figsize=(0.6 * k + 0.5, 2.6))  # the k principal axes of each model, as images
    for ax, name, cols in zip(axes, ("linear VAE: axes of the decoder's W", "PPCA: principal axes"), (axes_vae, svd_ppca.U)):
        tiles = (cols.T / cols.abs().max()).reshape(k, 1, *dataset.event_shape).float() / 2 + 0.5
        plots.image_grid(tiles, k, ax, name)
    fig.savefig(args.out / "principal_axes.png", dpi=120, bbox_inches="tight")
    print(f"wrote elbo_vs_ppca.png and principal_axes.png to {args.out}")


if __name__ == "__main__":
    main()
