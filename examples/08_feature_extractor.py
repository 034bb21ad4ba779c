"""The trained encoder as a frozen feature extractor: a linear probe on E_q[z|x] vs on raw pixels.

The VAE is trained without labels. Its posterior means ``E_q[z|x]`` (16 numbers per
image) are then the features of a scikit-learn logistic regression, fitted on labelled
training images and scored on the test split; the same probe on the raw pixels is the
baseline. The sweep over the number of labels asks where unsupervised features help: a
16-dimensional code needs fewer labels to fit than 784 pixels, but it is a bottleneck,
and a linear model on pixels is a strong classifier once labels are plentiful.

Run::

    python examples/08_feature_extractor.py
    python examples/08_feature_extractor.py --smoke
"""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pyro_vae.plots import latent as latent_plots
from pyro_vae.jobs.train import fit
from _common import example_parser, load  # shared flags and data


def probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy of a standardized multinomial logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(train_x.numpy(), train_y.numpy())
    return float(model.score(test_x.numpy(), test_y.numpy()))


def main() -> None:
    parser = example_parser(__doc__, "08_feature_extractor", "tiny net, 1 epoch, two label budgets")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100, 300, 1000, 0], help="0 = all")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.labels = 1, [50, 0]
    dataset = load(args.data, args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)

    config = {"data": {"name": dataset.name, "binarize": "dynamic"},
              "model": {"latent_dim": args.latent_dim, "likelihood": "bernoulli",
                        "net": {"hidden": [32] if args.smoke else [256]}},
              "train": {"epochs": args.epochs, "batch_size": 128, "seed": 0, "metrics_max_points": 500}}
    result = fit(config, run_dir=None, progress=not args.smoke and sys.stderr.isatty(), dataset=dataset)  # no labels used here
    vae, transform = result.vae.eval(), result.transform

    with torch.no_grad():  # frozen: the encoder is only evaluated
        features = {split: vae.encode(transform(getattr(dataset, split), train=False)).mean for split in ("train", "test")}
    levels = dataset.levels or 2
    pixels = {split: getattr(dataset, split).flatten(1) / (levels - 1) for split in ("train", "test")}
    y_train, y_test = dataset.train_labels, dataset.test_labels

    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
    print(f"{dataset.name}: linear probe test accuracy (N_test={len(y_test)}), VAE latent_dim={args.latent_dim}")
    print(f"{'labels':>7} {'VAE E_q[z|x]':>13} {'raw pixels':>11}")
    table = []
    for n in args.labels:
        n = len(y_train) if n <= 0 else min(n, len(y_train))
        idx = order[:n]
        if len(y_train[idx].unique()) < 2:
            continue  # a probe needs two classes
        acc_vae = probe(features["train"][idx], y_train[idx], features["test"], y_test)
        acc_pix = probe(pixels["train"][idx], y_train[idx], pixels["test"], y_test)
        table.append((n, acc_vae, acc_pix))
        print(f"{n:>7} {acc_vae:13.3f} {acc_pix:11.3f}")

    lines = ["| labels | VAE features | raw pixels |", "|---|---|---|"] + [f"| {n} | {a:.3f} | {b:.3f} |" for n, a, b in table]
    (args.out / "linear_probe.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([n for n, _, _ in table], [a for _, a, _ in table], "o-", label=f"VAE E_q[z|x] ({args.latent_dim} dims)")
    ax.plot([n for n, _, _ in table], [b for _, _, b in table], "s--", label=f"raw pixels ({dataset.num_dims} dims)")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"linear probe on {dataset.name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "linear_probe.png", dpi=120)
    x_test = transform(dataset.test, train=False)
    plt.close(latent_plots.latent_scatter(vae, x_test, y_test, path=args.out / "latent_scatter.png"))
    print(f"wrote linear_probe.md, linear_probe.png and latent_scatter.png to {args.out}")


if __name__ == "__main__":
    main()
