"""Training step time: pyro_vae against a hand-written PyTorch VAE, same net, optimizer and batch.

Both run in this one process, alternating, so machine noise hits both alike; the
table reports the median over repeats of (pyro_vae time / hand-written time).

    python bench/bench_train.py [--repeats 7] [--steps 50] [--out bench/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handwritten_vae import HandwrittenVAE  # noqa: E402

from pyro_vae.runs.build import build_objective, build_optimizer  # noqa: E402
from pyro_vae.jobs.train import TrainingLoss, train_step  # noqa: E402
from pyro_vae.runs.config import TrainConfig  # noqa: E402
from pyro_vae.models.vae import VAE  # noqa: E402
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)

SETTINGS = {
    "pytorch-examples 784-400-20 relu, batch 128": dict(hidden=[400], latent=20, activation="relu", batch=128),
    "IWAE-paper 784-200-200-50 tanh, batch 100": dict(hidden=[200, 200], latent=50, activation="tanh", batch=100),
}


def data(batch: int, steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.bernoulli(torch.full((batch, 1, 28, 28), 0.13), generator=g) for _ in range(steps)]


def time_pyro(setting: dict, batches: list[torch.Tensor], objective_name: str = "elbo") -> float:
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    with pyro.settings.context(module_local_params=True):
        vae = VAE((1, 28, 28), setting["latent"], likelihood="bernoulli", hidden=setting["hidden"], activation=setting["activation"])
        config = TrainConfig(objective=objective_name, lr=1e-3)
        optimizer = build_optimizer(config, vae.parameters())  # as fit builds it
        module, optimizer = fabric.setup(TrainingLoss(vae), optimizer)
        objective = build_objective(config)
        train_step(fabric, module, optimizer, objective, batches[0], num_data=8000)  # warm-up
        tic = time.perf_counter()
        for x in batches:
            train_step(fabric, module, optimizer, objective, x, num_data=8000)
        return time.perf_counter() - tic


def time_handwritten(setting: dict, batches: list[torch.Tensor]) -> float:
    model = HandwrittenVAE(784, setting["hidden"], setting["latent"], setting["activation"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x):
        loss = model.loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[0])
    tic = time.perf_counter()
    for x in batches:
        step(x)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # as in `fit`, which checks the data once up front
    results = {}
    print(f"| setting | pyro_vae ms/step | hand-written ms/step | ratio (median of {args.repeats}) | ratio range |")
    print("|---|---|---|---|---|")
    for name, setting in SETTINGS.items():
        batches = data(setting["batch"], args.steps)
        ratios, ours, theirs = [], [], []
        for _ in range(args.repeats):
            a = time_pyro(setting, batches)
            b = time_handwritten(setting, batches)
            ours.append(a / args.steps * 1e3)
            theirs.append(b / args.steps * 1e3)
            ratios.append(a / b)
        results[name] = {"ratio_median": statistics.median(ratios), "ratios": ratios,
                         "pyro_ms": statistics.median(ours), "handwritten_ms": statistics.median(theirs)}
        print(f"| {name} | {statistics.median(ours):.2f} | {statistics.median(theirs):.2f} | "
              f"{statistics.median(ratios):.3f} | {min(ratios):.3f}–{max(ratios):.3f} |")
    meta = {"environment": environment(args.threads), "processor": platform.processor(), "steps": args.steps,
            "repeats": args.repeats}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
