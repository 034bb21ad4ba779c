"""Quickstart: train a VAE on the bundled 8x8 digits, evaluate it honestly, save its pictures.

The default model of ``pyro-vae train``: 4 latent dimensions, a 256-unit MLP encoder and decoder, and a
categorical likelihood over the 17 grey levels of the digits (the exact discrete
likelihood: no binarization, no dequantization). The test split is scored by
importance sampling, giving ``log p(x)`` per datapoint with its standard error, the
IWAE bounds ``L_k`` and the PSIS k̂ diagnostic that says whether to trust them.

Run::

    python examples/01_quickstart.py            # ~1 min on 2 CPU cores
    python examples/01_quickstart.py --smoke    # a few seconds, tiny net
"""

from __future__ import annotations

import json
import sys

import matplotlib.pyplot as plt
import torch

from pyro_vae.plots import figures as plots
from pyro_vae.estimators.importance import evaluate
from pyro_vae.jobs.train import fit
from _common import example_parser  # shared flags and data


def main() -> None:
    parser = example_parser(__doc__, "01_quickstart", "tiny net, 1 epoch, 20 samples: checks the script runs", data=False)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=1000, help="K, importance samples per test point")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.samples = 1, 20

    config = {
        "data": {"name": "digits"},
        "model": {"latent_dim": 4, "likelihood": "categorical", "net": {"hidden": [16] if args.smoke else [256]}},
        "train": {"epochs": args.epochs, "batch_size": 64, "lr": 3e-3, "seed": args.seed},
    }
    # run_dir=None: keep everything in memory; this script writes its own files below.
    result = fit(config, run_dir=None, progress=not args.smoke and sys.stderr.isatty())
    vae, transform, dataset = result.vae, result.transform, result.dataset
    last = result.history[-1]
    print(f"trained {len(result.history)} epochs on {dataset!r}")
    print(f"final validation ELBO {last['val_elbo']:.3f} nats (reconstruction {last['val_reconstruction']:.3f}, "
          f"KL {last['val_kl']:.3f})")

    # Score the test split. `train=False` gives the data as the model sees it at evaluation
    # (for the categorical likelihood: the integer levels). levels=None because a categorical
    # is already a probability mass; a dequantized density would pass transform.density_levels.
    x_test = transform(dataset.test, train=False)
    k_list = [k for k in (1, 10, 100, 1000) if k <= args.samples]
    ev = evaluate(vae, x_test, num_samples=args.samples, k_list=k_list, levels=transform.density_levels, seed=args.seed)
    print(ev.summary())
    ll = ev.log_likelihood
    reliability = (f"{100 * ev.frac_unreliable:.1f}% of points have k̂ > 0.7" if torch.isfinite(ev.khat).any()
                   else "k̂ not estimable at this K")
    print(f"\ntest log p(x) = {ll.mean:.2f} ± {ll.se:.2f} nats per digit ({ll.bits_per_dim:.4f} bits/dim), "
          f"N={ll.num_points}, K={ev.num_samples}; {reliability}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(ev.to_dict(), indent=2))
    for fig in (
        plots.sample_grid(vae, n=64, path=args.out / "samples.png", run="01_quickstart"),
        plots.reconstruction_grid(vae, x_test[:32], path=args.out / "reconstructions.png", run="01_quickstart"),
        plots.training_curves(result.history, path=args.out / "curves.png", run="01_quickstart"),
        plots.bound_vs_k(ev, path=args.out / "bound_vs_k.png", run="01_quickstart"),
        plots.khat_histogram(ev, path=args.out / "khat.png", run="01_quickstart"),
    ):
        plt.close(fig)
    print(f"wrote report.json and 5 PNGs to {args.out}")


if __name__ == "__main__":
    main()
