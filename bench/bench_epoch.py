"""Epoch time on MNIST-10k: pyro_vae's `fit` against the design of Pyro's own VAE example.

The reference is written here from the example's design (not copied). Its choices:
- a 784-400-50 softplus MLP;
- a sigmoid-probs Bernoulli decoder and an exp-scale encoder;
- `pyro.module` registration;
- `pyro.optim.Adam` through `SVI` with `Trace_ELBO`;
- a shuffled torch DataLoader, batch 256.

pyro_vae trains the same net through `fit`, whose epoch also re-scores up to 2000 training
points and the validation split for its metrics; that pass is included in its epoch time.
Each repeat runs a few epochs of each, alternately in one process; an epoch's time is the
median over the repeat's epochs, and the ratio is the median over repeats. `fit`'s one-off
set-up is reported beside it.

    python bench/bench_epoch.py [--data ../shared/data/mnist] [--repeats 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vae.data.datasets import load_dataset
from pyro_vae.jobs.train import fit
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)


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


def example_epochs(x_train: torch.Tensor, seed: int, epochs: int) -> list[float]:
    """Seconds per epoch of the example's training loop."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = ExampleVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train), batch_size=256, shuffle=True)
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        for (x,) in loader:
            svi.step(torch.bernoulli(x))  # dynamic binarization, as pyro_vae's run below
        seconds.append(time.perf_counter() - tic)
    return seconds


def pyro_vae_epochs(dataset, seed: int, epochs: int) -> tuple[list[float], float]:
    """Seconds per epoch of `fit` (training steps and the per-epoch metrics pass) and its one-off set-up."""
    cfg = {"data": {"name": "mnist10k", "binarize": "dynamic"},
           "model": {"latent_dim": 50, "likelihood": "bernoulli", "net": {"hidden": [400], "activation": "softplus"}},
           "train": {"epochs": epochs, "batch_size": 256, "seed": seed}}
    tic = time.perf_counter()
    result = fit(cfg, run_dir=None, progress=False, dataset=dataset)
    total = time.perf_counter() - tic
    seconds = [row["seconds"] for row in result.history]
    return seconds, total - sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder with the MNIST t10k files (default: ../shared/data/mnist)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/epoch.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    dataset = load_dataset("mnist10k", root=args.data)
    x_unit = dataset.train / 255.0
    rows = []
    for r in range(args.repeats):
        ours, setup = pyro_vae_epochs(dataset, seed=r, epochs=args.epochs)
        theirs = example_epochs(x_unit, seed=r, epochs=args.epochs)
        rows.append({"pyro_vae_epoch_s": statistics.median(ours), "pyro_vae_setup_s": setup,
                     "example_epoch_s": statistics.median(theirs), "pyro_vae_epochs": ours, "example_epochs": theirs})
    med = {k: statistics.median(row[k] for row in rows) for k in ("pyro_vae_epoch_s", "pyro_vae_setup_s", "example_epoch_s")}
    ratio = statistics.median(row["pyro_vae_epoch_s"] / row["example_epoch_s"] for row in rows)
    print(f"MNIST-10k, 8000 training images, batch 256, 784-400-50 softplus, {args.repeats} alternating repeats "
          f"of {args.epochs} epochs each")
    print("| | seconds / epoch (median) | ratio to Pyro example (median) |")
    print("|---|---|---|")
    print(f"| Pyro VAE example design | {med['example_epoch_s']:.3f} | 1.00 |")
    print(f"| pyro_vae fit (training steps + per-epoch train/val metrics) | {med['pyro_vae_epoch_s']:.3f} | {ratio:.3f} |")
    print(f"pyro_vae fit's one-off set-up (Fabric, model, data checks, fixed evaluation draws): {med['pyro_vae_setup_s']:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": {"environment": environment(args.threads)},
                                          "epochs": args.epochs, "rows": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
