"""MNIST, literature protocol: pyro_vae against Pyro's VAE-example design and a hand-written PyTorch VAE.

All three have the same architecture and training protocol as ``bench_mnist.py`` (the
60 000 training images, dynamic binarization, 784-200-200-50 tanh, Bernoulli, N(0, I)
prior, batch 20, Adam eps 1e-4 with Burda et al.'s stepped learning rate), and the
same number of epochs; they differ only in how the model and the training loop are
written:

- **pyro_vae**: the ``bench_mnist.py --model elbo`` run, its checkpoint at the epoch asked for;
- **Pyro example design**: a ``model``/``guide`` pair written as Pyro's ``examples/vae``
  writes it (``pyro.module``, exp-scale encoder, sigmoid-probs Bernoulli decoder,
  ``SVI`` + ``Trace_ELBO`` + ``pyro.optim`` with a torch scheduler, a shuffled DataLoader);
- **hand-written PyTorch**: ``bench/handwritten_vae.py`` in a plain loop (analytic KL).

Each is scored by pyro_vae's importance-sampling evaluator on the same fixed binarization
of the 10 000 test images with the same draws' seed (the Pyro example through the
Pyro-trace path, any model/guide; the others through the fused path), and the models
are compared by **paired** differences of per-image log p̂(x) with their paired SEs.

Training is resumable (a checkpoint per epoch under ``--runs``): kill and re-run.

    nohup python bench/bench_mnist_peers.py --epochs 100 > peers.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from bench_mnist import config as pyro_vae_config  # noqa: E402
from _environment import environment  # noqa: E402
from bench_mnist import find_data  # noqa: E402
from handwritten_vae import HandwrittenVAE  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from torch import nn  # noqa: E402

from pyro_vae.runs.build import build_transform, build_vae, load_data  # noqa: E402
from pyro_vae.runs.config import from_dict  # noqa: E402
from pyro_vae.estimators.importance import evaluate  # noqa: E402
from pyro_vae.runs.rundir import load_run  # noqa: E402
from pyro_vae.core.stats import mean_se  # noqa: E402

HIDDEN, LATENT, BATCH, LR, EPS = [200, 200], 50, 20, 1e-3, 1e-4
MILESTONES = [sum(3**j for j in range(i + 1)) for i in range(7)]  # Burda et al.: epochs 1, 4, 13, ...


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ExampleStyleVAE(nn.Module):
    """Pyro's examples/vae design with the literature architecture (its own design choices kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = mlp([784, *HIDDEN, 2 * LATENT]), mlp([LATENT, *reversed(HIDDEN), 784])

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros((x.shape[0], LATENT))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            probs = torch.sigmoid(self.decoder(z))
            pyro.sample("obs", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x.reshape(-1, 784)).chunk(2, dim=-1)
            pyro.sample("latent", dist.Normal(loc, torch.exp(log_scale)).to_event(1))


def lr_at(epoch: int) -> float:
    return LR * 10 ** (-sum(epoch >= m for m in MILESTONES) / 7)


def train(name: str, x_unit: torch.Tensor, epochs: int, seed: int, run_dir: Path) -> nn.Module:
    """Train ``name`` (``example`` or ``handwritten``) to ``epochs``, resuming from ``run_dir``."""
    ckpt = run_dir / f"{name}.pt"
    torch.manual_seed(seed)
    model = ExampleStyleVAE() if name == "example" else HandwrittenVAE(784, HIDDEN, LATENT, "tanh")
    flat = x_unit.flatten(1)
    if name == "example":
        pyro.clear_param_store()
        optim = pyro.optim.Adam({"lr": LR, "eps": EPS})
        svi = SVI(model.model, model.guide, optim, Trace_ELBO())
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)
    start, seconds = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)  # tensors and plain containers only: no pickle
        model.load_state_dict(state["model"])
        start, seconds = state["epoch"], state["seconds"]
        torch.set_rng_state(state["rng"])
        if name == "example":
            optim.set_state(state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
    for epoch in range(start, epochs):
        tic = time.perf_counter()
        lr = lr_at(epoch)
        if name != "example":
            for group in optimizer.param_groups:
                group["lr"] = lr
        for idx in torch.randperm(len(flat)).split(BATCH):
            x = torch.bernoulli(flat[idx])
            if name == "example":
                svi.step(x)
                # pyro.optim keeps one torch optimizer per parameter, made at its first step (or
                # from the saved state on resume): set this epoch's rate on each after the step.
                for opt in optim.optim_objs.values():
                    for group in opt.param_groups:
                        group["lr"] = lr
            else:
                loss = model.loss(x) / len(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        seconds.append(time.perf_counter() - tic)
        state = {"model": model.state_dict(), "epoch": epoch + 1, "seconds": seconds, "rng": torch.get_rng_state(),
                 "optimizer": optim.get_state() if name == "example" else optimizer.state_dict()}
        tmp = ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: epoch {epoch + 1}/{epochs} ({seconds[-1]:.1f} s)", flush=True)
    # The median: an epoch paused (SIGSTOP) or slowed by another job would dominate a mean.
    model.seconds_per_epoch = statistics.median(seconds) if seconds else float("nan")
    return model.eval()


def handwritten_as_pyro_vae(model: HandwrittenVAE, cfg, dataset):
    """The hand-written weights in a pyro_vae VAE of the same architecture (same functions, checked)."""
    with pyro.settings.context(module_local_params=True):
        vae = build_vae(cfg, dataset)
    state = {f"{part}.net.{k}": v for part in ("encoder", "decoder") for k, v in getattr(model, part).state_dict().items()}
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(("encoder", "decoder")) for k in missing):
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    z = torch.randn(7, LATENT)
    assert torch.allclose(model.decoder(z), vae.decoder(z), rtol=1e-5, atol=1e-5)
    return vae.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--data", default=None)
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "pyro_vae" / "bench_mnist"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "mnist_peers.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    data_root = find_data(args.data)
    runs = Path(args.runs)
    peer_dir = runs / "peers"
    peer_dir.mkdir(parents=True, exist_ok=True)
    ours = runs / "elbo" / f"epoch{args.epochs:04d}.pt"

    cfg = from_dict(pyro_vae_config("elbo", data_root, args.epochs, args.seed, peer_dir))
    dataset = load_data(cfg)
    x_unit = dataset.train / 255.0
    example = train("example", x_unit, args.epochs, args.seed, peer_dir)
    hand = train("handwritten", x_unit, args.epochs, args.seed, peer_dir)
    while not ours.exists():  # the pyro_vae run of bench_mnist.py trains alongside
        print(f"[{time.strftime('%H:%M:%S')}] waiting for {ours} (bench_mnist.py --model elbo)", flush=True)
        time.sleep(300)
    vae, _, _, _ = load_run(ours, which="last")
    transform = build_transform(cfg, dataset, vae)
    x = transform(dataset.test, train=False)
    seconds_ours = statistics.median(h["seconds"] for h in json.loads((runs / "elbo" / "metrics.json").read_text())[: args.epochs])

    models = {"pyro_vae": (vae, "fused", seconds_ours),
              "Pyro example design": (example, "trace", example.seconds_per_epoch),
              "hand-written PyTorch": (handwritten_as_pyro_vae(hand, cfg, dataset), "fused", hand.seconds_per_epoch)}
    evals, rows = {}, []
    for name, (model, method, per_epoch) in models.items():
        print(f"[{time.strftime('%H:%M:%S')}] scoring {name} (K={args.samples}, {method} path)", flush=True)
        ev = evaluate(model, x, num_samples=args.samples, k_list=(1, args.samples), seed=args.seed, method=method)
        evals[name] = ev
        d = ev.to_dict()["log_likelihood"]
        rows.append({"model": name, "test_nll": -d["mean"], "se": d["se"], "mc_se": d["mc_se"],
                     "test_elbo": ev.elbo.mean().item(), "seconds_per_epoch": per_epoch, "score_seconds": ev.seconds})
        print(f"  test NLL {-d['mean']:.2f} ± {d['se']:.2f}", flush=True)
    paired = {f"pyro_vae - {other}": mean_se(evals["pyro_vae"].log_px - evals[other].log_px)
              for other in ("Pyro example design", "hand-written PyTorch")}
    for k, v in paired.items():
        v["z"] = v["mean"] / v["se"] if v["se"] > 0 else math.inf
        print(f"  paired log p(x) {k}: {v['mean']:+.3f} ± {v['se']:.3f} nats ({v['z']:+.1f} paired SE)")
    out = Path(args.out)
    out.write_text(json.dumps({"protocol": {"epochs": args.epochs, "samples": args.samples, "seed": args.seed,
                                            "batch_size": BATCH, "adam_eps": EPS, "schedule": "burda",
                                            "architecture": "784-200-200-50 tanh, Bernoulli, N(0, I)",
                                            "train_images": len(dataset.train), "test_images": len(dataset.test),
                                            "binarization": "dynamic in training; one fixed draw of the test images"},
                               "environment": environment(args.threads), "rows": rows, "paired": paired}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
