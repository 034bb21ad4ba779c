"""The model family at a larger budget: VAE, AAE, GAN and ALI on MNIST, scored by AIS and BDMC beside exact EM.

The same Pyro model for all four (784-400-20 relu MLP decoder, N(0, I) prior, Bernoulli
pixels); only ``train.objective`` differs (``elbo``, ``aae``, ``gan``, ``ali``). Data: the 60 000 MNIST training images
(dynamic binarization in training), the first ``--points`` of the 10 000 test images in
one fixed Bernoulli(grey) draw (seed 0), the same points for every row; the EM row is a
mixture of Bernoullis fitted on one fixed draw of the training images. Falls back to the
embedded digits (thresholded) when no MNIST files are found.

Resumable: every model trains in its own run directory (``--runs``, resumed from its last
checkpoint) and every model's scores are cached (``<runs>/scores``), so the script can be
killed and re-run with the same arguments. Writes ``bench/results/family_<data>.json`` and
``.md`` and the sample grids ``family_<data>_samples.png``.

    nohup python bench/bench_family.py > family.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae.jobs.family import family_table, markdown_table, sample_grids  # noqa: E402
from pyro_vae.jobs.train import fit  # noqa: E402
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)

OBJECTIVES = {"VAE": "elbo", "AAE": "aae", "GAN": "gan", "ALI": "ali"}


def find_mnist(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [os.environ.get("PYRO_VAE_DATA"), REPO / ".." / "shared" / "data" / "mnist"]
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").exists():
            return str(Path(c).resolve())
    return None


def config(objective: str, data: dict, epochs: int, seed: int, run_dir: Path) -> dict:
    return {
        "data": data,
        "model": {"latent_dim": 20, "likelihood": "bernoulli", "net": {"kind": "mlp", "hidden": [400], "activation": "relu"}},
        "train": {"epochs": epochs, "batch_size": 100, "lr": 1e-3, "objective": objective, "seed": seed,
                  "adversary_hidden": [512, 512]},
        "out": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--points", type=int, default=500, help="test points scored")
    parser.add_argument("--steps", type=int, default=200, help="AIS steps T (BDMC uses the same)")
    parser.add_argument("--bdmc-points", type=int, default=50)
    parser.add_argument("--data", default=None, help="folder with the MNIST gzip files (default ../shared/data/mnist)")
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "pyro_vae" / "bench_family"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    root = find_mnist(args.data)
    data = ({"name": "mnist", "root": root, "download": False, "binarize": "dynamic", "val_fraction": 0.0} if root
            else {"name": "digits", "binarize": "threshold"})
    runs = Path(args.runs) / data["name"]
    models = {}
    for name, objective in OBJECTIVES.items():
        run_dir = runs / name.lower()
        resume = run_dir if (run_dir / "checkpoint.pt").exists() else None
        print(f"[{time.strftime('%H:%M:%S')}] {name}: training to epoch {args.epochs}"
              f"{' (resuming)' if resume else ''}", flush=True)
        models[name] = fit(config(objective, data, args.epochs, args.seed, run_dir), resume=resume, progress=False)
        h = models[name].history[-1]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: epoch {h['epoch']}, train loss {h['train_loss']:.3f}", flush=True)
    tic = time.perf_counter()
    rows = family_table(models, points=args.points, steps=args.steps, bdmc_points=args.bdmc_points,
                        seed=args.seed, cache=runs / "scores")
    table = markdown_table(rows)
    print(table, flush=True)
    out = REPO / "bench" / "results" / f"family_{data['name']}"
    record = {"protocol": {"data": data["name"], "binarization": data["binarize"], "train_images": len(models["VAE"].dataset.train),
                           "test_points": args.points, "epochs": args.epochs, "ais_steps": args.steps, "chains": 16,
                           "leapfrog": 10, "bdmc_points": args.bdmc_points, "net": "784-400-20 relu, Bernoulli, N(0, I)",
                           "discriminator": "MLP 512-512 leaky relu", "optimizer": "Adam lr 1e-3 batch 100", "seed": args.seed},
              "rows": rows, "score_seconds": time.perf_counter() - tic, "environment": environment(args.threads)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    plt.close(sample_grids(models, out.parent / f"{out.name}_samples.png"))
    print(f"wrote {out}.json, .md and _samples.png", flush=True)


if __name__ == "__main__":
    main()
