"""MNIST with the IWAE paper's network, evaluated by importance sampling at K = 5000.

Burda, Grosse & Salakhutdinov (2016), one stochastic layer: 784-200-200-50 with tanh
units, a Bernoulli likelihood on *dynamically* binarized pixels (a fresh binarization
every minibatch, a fixed one for evaluation), a standard normal prior. The test split
is scored with K = 5000 importance samples per digit: the IWAE bounds ``L_k`` for
growing k, the log-likelihood with its error bars, and the fraction of digits whose
estimate PSIS k̂ flags as unreliable (k̂ > 0.7).

Data: MNIST-10k (train on the first 8000 images of the official MNIST test set, score
the last 2000) when its files are present (``../shared/data/mnist``, ``$PYRO_VAE_DATA``
or ``~/.cache/pyro_vae/data``); otherwise the bundled 8x8 digits. The paper trains on
60 000 images for 3280 epochs: figures here are not comparable with its table.

Run::

    python examples/02_mnist_iwae_net.py                    # ELBO training
    python examples/02_mnist_iwae_net.py --objective iwae   # IWAE training, k = 5
    python examples/02_mnist_iwae_net.py --smoke            # seconds: 1 epoch, K = 50, 40 points
"""

from __future__ import annotations

import json
import sys

import matplotlib.pyplot as plt

from pyro_vae.plots import figures as plots
from pyro_vae.estimators.importance import evaluate
from pyro_vae.jobs.train import fit
from _common import example_parser, load  # shared flags and data


def main() -> None:
    parser = example_parser(__doc__, "02_mnist_iwae_net", "1 epoch, tiny net, K=50 on 40 points")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
    parser.add_argument("--k-train", type=int, default=5, help="importance samples per point for --objective iwae")
    parser.add_argument("--samples", type=int, default=5000, help="K at evaluation")
    parser.add_argument("--points", type=int, default=None, help="test points to score (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.samples, args.points = 1, 50, 40

    dataset = load(args.data, args.smoke)
    hidden, latent = ([32, 32], 8) if args.smoke else ([200, 200], 50)
    config = {
        "data": {"name": dataset.name, "binarize": "dynamic"},
        "model": {"latent_dim": latent, "prior": "normal", "likelihood": "bernoulli",
                  "net": {"kind": "mlp", "hidden": hidden, "activation": "tanh"}},
        "train": {"epochs": args.epochs, "batch_size": 100, "lr": 1e-3, "seed": args.seed, "objective": args.objective,
                  "num_particles": args.k_train if args.objective == "iwae" else 1},
    }
    result = fit(config, run_dir=None, progress=not args.smoke and sys.stderr.isatty(), dataset=dataset)
    vae, transform = result.vae, result.transform
    print(f"{dataset!r}: {transform.describe()}")
    print(f"trained {len(result.history)} epochs ({args.objective}), "
          f"{sum(r['seconds'] for r in result.history):.0f} s; last train ELBO {result.history[-1]['train_elbo']:.2f} nats")

    # The fixed evaluation binarization: every model scored on this split sees the same bits.
    x_test = transform(dataset.test[: args.points], train=False)
    k_list = [k for k in (1, 5, 10, 50, 100, 1000, 5000) if k <= args.samples]
    ev = evaluate(vae, x_test, num_samples=args.samples, k_list=k_list, seed=args.seed)
    print(ev.summary())
    ll = ev.log_likelihood
    print(f"test log p(x) ≈ {ll.mean:.2f} ± {ll.se:.2f} nats (MC SE {ll.dataset_mc_se:.3f}), N={ll.num_points}, "
          f"K={ev.num_samples}; k̂ > 0.7 for {100 * ev.frac_unreliable:.1f}% of digits")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(ev.to_dict(), indent=2))
    for fig in (
        plots.bound_vs_k(ev, path=args.out / "bound_vs_k.png"),
        plots.khat_histogram(ev, path=args.out / "khat.png"),
        plots.sample_grid(vae, n=64, path=args.out / "samples.png"),
        plots.reconstruction_grid(vae, x_test[:32], path=args.out / "reconstructions.png"),
        plots.training_curves(result.history, path=args.out / "curves.png"),
    ):
        plt.close(fig)
    print(f"wrote report.json and 5 PNGs to {args.out}")


if __name__ == "__main__":
    main()
