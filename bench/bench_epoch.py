"""Epoch time on MNIST-10k: pyro_vae's `fit` against the design of Pyro's own VAE example.

The reference is written here from the example's design (not copied). Its choices:
- a 784-400-50 softplus MLP;
- a sigmoid-probs Bernoulli decoder and an exp-scale encoder;
- `pyro.module` registration;
- `pyro.optim.Adam` through `SVI` with `Trace_ELBO`;
- a shuffled torch DataLoader, batch 256.

pyro_vae trains the same net through `fit`, whose epoch also re-scores up to 2000 training
points and the validation split for its metrics. Both timings are reported, with and
without that bookkeeping. Both models run alternately in one process; the ratio is the
median over repeats.

    python bench/bench_epoch.py [--data ../shared/data/mnist] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae.data import load_dataset
from pyro_vae.train import fit


class ExampleEncoder(nn.Module):
    def __init__(self, z_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        h = self.softplus(self.fc1(x.reshape(-1, 784)))
        return self.fc21(h), torch.exp(self.fc22(h))


class ExampleDecoder(nn.Module):
    def __init__(self, z_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden), nn.Linear(hidden, 784)
        self.softplus, self.sigmoid = nn.Softplus(), nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class ExampleVAE(nn.Module):
    def __init__(self, z_dim: int = 50) -> None:
        super().__init__()
        self.encoder, self.decoder, self.z_dim = ExampleEncoder(z_dim), ExampleDecoder(z_dim), z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def example_epoch(x_train: torch.Tensor, seed: int) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = ExampleVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train), batch_size=256, shuffle=True)
    tic = time.perf_counter()
    for (x,) in loader:
        svi.step(torch.bernoulli(x))  # dynamic binarization, as pyro_vae's run below
    return time.perf_counter() - tic


def pyro_vae_epoch(dataset, seed: int) -> tuple[float, float]:
    cfg = {"data": {"name": "mnist10k", "binarize": "dynamic"},
           "model": {"latent_dim": 50, "likelihood": "bernoulli", "net": {"hidden": [400], "activation": "softplus"}},
           "train": {"epochs": 1, "batch_size": 256, "seed": seed}}
    tic = time.perf_counter()
    result = fit(cfg, run_dir=None, progress=False, dataset=dataset)
    total = time.perf_counter() - tic
    return total, total - _metrics_seconds(result)


def _metrics_seconds(result) -> float:
    """Time `fit` spends re-scoring train/val points for its metrics (measured by redoing it)."""
    from pyro_vae.train import epoch_metrics

    tic = time.perf_counter()
    epoch_metrics(result.vae, result.dataset.train[: result.config.train.metrics_max_points], result.transform)
    epoch_metrics(result.vae, result.dataset.val, result.transform)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder with the MNIST t10k files (default: ../shared/data/mnist)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/epoch.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    dataset = load_dataset("mnist10k", root=args.data)
    x_unit = dataset.train / 255.0
    rows = []
    for r in range(args.repeats):
        ours_total, ours_train = pyro_vae_epoch(dataset, seed=r)
        theirs = example_epoch(x_unit, seed=r)
        rows.append({"pyro_vae_epoch_s": ours_total, "pyro_vae_train_s": ours_train, "example_epoch_s": theirs})
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    ratio_total = statistics.median(row["pyro_vae_epoch_s"] / row["example_epoch_s"] for row in rows)
    ratio_train = statistics.median(row["pyro_vae_train_s"] / row["example_epoch_s"] for row in rows)
    print(f"MNIST-10k, 8000 training images, batch 256, 784-400-50 softplus, {args.repeats} alternating repeats")
    print("| | seconds / epoch (median) | ratio to Pyro example (median) |")
    print("|---|---|---|")
    print(f"| Pyro VAE example design | {med['example_epoch_s']:.2f} | 1.00 |")
    print(f"| pyro_vae fit (whole epoch incl. metrics) | {med['pyro_vae_epoch_s']:.2f} | {ratio_total:.3f} |")
    print(f"| pyro_vae fit (training steps only) | {med['pyro_vae_train_s']:.2f} | {ratio_train:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": {"machine": platform.platform(), "torch": torch.__version__,
                                                   "pyro": pyro.__version__, "threads": args.threads},
                                          "rows": rows, "ratio_total": ratio_total, "ratio_train": ratio_train}, indent=2))


if __name__ == "__main__":
    main()
