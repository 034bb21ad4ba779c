"""Quality at equal budget on MNIST-10k: pyro_vae (ELBO), pyro_vae (IWAE K=5) and a hand-written VAE.

Setup (issue 6c):
- data: the first 8000 MNIST test images train, the last 2000 are scored; dynamic
  binarization in training, one fixed binarization of the scored images shared by all;
- net: the 1-stochastic-layer IWAE net 784-200-200-50 tanh, Bernoulli likelihood, batch 100,
  Adam lr 1e-3, the same number of epochs for every model;
- models: ``pyro_vae`` with the default ``Trace_ELBO`` objective, ``pyro_vae`` with
  ``objective: iwae`` and K=5 particles, and ``bench/handwritten_vae.py`` trained by its own
  plain PyTorch loop (analytic-KL ELBO, as pytorch/examples);
- scoring: every model by pyro_vae's evaluator at K=5000 importance samples, with the same
  draws' seed. The hand-written weights are copied into a pyro_vae ``VAE`` of the identical
  architecture (the copy is checked to give the same encoder and decoder outputs, to float precision).

Differences between models are also reported *paired* per datapoint (mean of
``log p̂_a(x_i) - log p̂_b(x_i)`` ± its SE), which removes the between-image spread that
dominates the unpaired SE.

    python bench/bench_quality.py [--data ../shared/data/mnist] [--epochs 100] [--samples 5000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import pyro  # noqa: E402
import torch  # noqa: E402
from handwritten_vae import HandwrittenVAE  # noqa: E402

from pyro_vae.data.datasets import load_dataset  # noqa: E402
from pyro_vae.estimators.importance import evaluate  # noqa: E402
from pyro_vae.core.stats import mean_se  # noqa: E402
from pyro_vae.runs.build import build_transform, build_vae
from pyro_vae.jobs.train import fit  # noqa: E402
from pyro_vae.runs.config import from_dict  # noqa: E402
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)

HIDDEN, LATENT, ACTIVATION, BATCH, LR = [200, 200], 50, "tanh", 100, 1e-3
K_LIST = (1, 5, 10, 100, 1000, 5000)


def config(data_root: str, epochs: int, seed: int, objective: str = "elbo", particles: int = 1) -> dict:
    return {
        "data": {"name": "mnist10k", "root": data_root, "binarize": "dynamic", "download": False},
        "model": {"latent_dim": LATENT, "likelihood": "bernoulli", "net": {"hidden": HIDDEN, "activation": ACTIVATION}},
        "train": {"epochs": epochs, "batch_size": BATCH, "lr": LR, "seed": seed, "objective": objective,
                  "num_particles": particles},
    }


def train_handwritten(x_unit: torch.Tensor, epochs: int, seed: int) -> HandwrittenVAE:
    """Plain PyTorch: shuffled minibatches, a fresh binarization per batch, Adam."""
    torch.manual_seed(seed)
    model = HandwrittenVAE(784, HIDDEN, LATENT, ACTIVATION)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    flat = x_unit.flatten(1)
    for _ in range(epochs):
        for idx in torch.randperm(len(flat)).split(BATCH):
            loss = model.loss(torch.bernoulli(flat[idx])) / len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def as_pyro_vae(model: HandwrittenVAE, cfg, dataset):
    """The hand-written weights in a pyro_vae VAE of the same architecture, checked output for output."""
    with pyro.settings.context(module_local_params=True):
        vae = build_vae(cfg, dataset)
    state = {f"{part}.net.{key}": value for part in ("encoder", "decoder")
             for key, value in getattr(model, part).state_dict().items()}
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(("encoder", "decoder")) for k in missing):
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    x = torch.rand(7, 784)
    z = torch.randn(7, LATENT)
    loc, raw = model.encoder(x).chunk(2, dim=-1)
    q_loc, q_scale = vae.encoder(x.reshape(7, 1, 28, 28))
    # Same functions; pyro_vae computes tanh/softplus with its own kernels (pyro_vae.core.ops), equal to ~1e-7.
    close = lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    assert close(loc, q_loc) and close(torch.nn.functional.softplus(raw) + 1e-5, q_scale)
    assert close(model.decoder(z), vae.decoder(z))
    vae.eval()
    return vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "quality.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)

    dataset = load_dataset("mnist10k", root=args.data, download=False)
    trained, seconds = {}, {}
    for name, objective, k in (("pyro_vae ELBO", "elbo", 1), (f"pyro_vae IWAE K={args.particles}", "iwae", args.particles)):
        tic = time.perf_counter()
        result = fit(config(args.data, args.epochs, args.seed, objective, k), run_dir=None, progress=False, dataset=dataset)
        seconds[name] = time.perf_counter() - tic
        trained[name] = result.vae.eval()
        print(f"trained {name}: {seconds[name]:.0f} s, last val ELBO {result.history[-1]['val_elbo']:.2f}", flush=True)
    cfg = from_dict(config(args.data, args.epochs, args.seed))
    tic = time.perf_counter()
    hand = train_handwritten(dataset.train.float() / 255.0, args.epochs, args.seed)
    seconds["hand-written PyTorch VAE"] = time.perf_counter() - tic
    print(f"trained hand-written PyTorch VAE: {seconds['hand-written PyTorch VAE']:.0f} s", flush=True)
    trained["hand-written PyTorch VAE"] = as_pyro_vae(hand, cfg, dataset)

    transform = build_transform(cfg, dataset, trained["pyro_vae ELBO"])
    x = transform(dataset.test, train=False)
    evals, rows = {}, []
    for name, vae in trained.items():
        ev = evaluate(vae, x, num_samples=args.samples, k_list=K_LIST, seed=args.seed)
        evals[name] = ev
        d = ev.to_dict()
        rows.append({"model": name, "train_seconds": seconds[name], "eval_seconds": ev.seconds,
                     "log_likelihood": d["log_likelihood"], "elbo": d["elbo"], "iwae": d["iwae"],
                     "frac_khat_above_0_7": d["diagnostics"]["frac_khat_above_0_7"],
                     "khat_median": d["diagnostics"]["khat_median"], "active_units": d["diagnostics"]["active_units"]})
        print(f"scored {name}: IS log p(x) {d['log_likelihood']['mean']:.3f} ± {d['log_likelihood']['se']:.3f}", flush=True)

    names = list(trained)
    iwae_name, elbo_name, hand_name = names[1], names[0], names[2]
    comparisons = {
        f"{elbo_name} - {hand_name}": mean_se(evals[elbo_name].log_px - evals[hand_name].log_px),
        f"{iwae_name} - {elbo_name}": mean_se(evals[iwae_name].log_px - evals[elbo_name].log_px),
        f"{iwae_name} - {hand_name}": mean_se(evals[iwae_name].log_px - evals[hand_name].log_px),
    }
    elbo_r, iwae_r, hand_r = (next(r for r in rows if r["model"] == n) for n in (elbo_name, iwae_name, hand_name))
    unpaired_se = math.hypot(elbo_r["log_likelihood"]["se"], hand_r["log_likelihood"]["se"])
    goals = {
        "pyro_vae_matches_handwritten_within_se": abs(elbo_r["log_likelihood"]["mean"] - hand_r["log_likelihood"]["mean"]) <= unpaired_se,
        "iwae_beats_both_paired_2se": all(comparisons[k]["mean"] > 2 * comparisons[k]["se"] for k in list(comparisons)[1:]),
    }

    print(f"\nMNIST-10k (train 8000 / score last 2000), IWAE net 784-200-200-50 tanh, Bernoulli, dynamic binarization, "
          f"batch {BATCH}, Adam {LR}, {args.epochs} epochs each; scored at K={args.samples} (nats per image)\n")
    print(f"| model | train s | ELBO ± SE | L_{args.samples} = IS log p(x) ± SE | MC SE | k̂ > 0.7 | active units |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ll, el = r["log_likelihood"], r["elbo"]
        print(f"| {r['model']} | {r['train_seconds']:.0f} | {el['mean']:.2f} ± {el['se']:.2f} | {ll['mean']:.2f} ± {ll['se']:.2f} "
              f"| {ll['mc_se']:.4f} | {100 * r['frac_khat_above_0_7']:.1f}% | {r['active_units']} |")
    print("\n| paired difference of IS log p(x) | mean ± SE (nats) |")
    print("|---|---|")
    for k, v in comparisons.items():
        print(f"| {k} | {v['mean']:+.3f} ± {v['se']:.3f} |")
    print(f"\ngoals: pyro_vae ELBO within the SE of the hand-written VAE ({unpaired_se:.2f}): "
          f"{goals['pyro_vae_matches_handwritten_within_se']}; IWAE beats both (paired, > 2 SE): {goals['iwae_beats_both_paired_2se']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"environment": environment(args.threads), "epochs": args.epochs, "samples": args.samples,
                                        "particles": args.particles, "seed": args.seed},
                               "rows": rows, "paired": comparisons, "goals": goals}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
