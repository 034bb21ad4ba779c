"""The literature's MNIST protocol (Burda et al. 2016, Table 1), resumable, with a learning curve.

Protocol (written into every result record):
- data: the 60 000 MNIST training images train (``val_fraction: 0``: no hold-out, as the
  paper), the 10 000 test images are scored; dynamic binarization in training (a fresh
  Bernoulli(grey) draw per minibatch), one fixed Bernoulli draw of the test images;
- net: 1 stochastic layer, 784-200-200-50 tanh encoder and the mirrored decoder,
  Bernoulli likelihood, N(0, I) prior;
- optimiser: Adam (beta 0.9/0.999, eps 1e-4), batch 20, ``lr_schedule: burda``
  (lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7: 3280 epochs in all);
- objectives: ``elbo`` (k=1, ``Trace_ELBO``), ``meanfield`` (k=1, analytic KL), ``iwae5``, ``iwae50`` (IWAE
  bound with k particles);
- scoring: importance sampling with the encoder as proposal, K samples per test image
  (K=5000 at the final epoch as the paper; ``--curve-samples`` at earlier checkpoints).

Each model trains in its own run directory (default ``~/.cache/pyro_vae/bench_mnist/<model>``,
outside the work tree so a later session on the same machine resumes it); the script can
be killed at any time and re-run with the same arguments: it resumes training from the
last checkpoint and skips the scores it already has. Scores are appended to
``bench/results/mnist_<model>.json``.

    nohup python bench/bench_mnist.py --model elbo --epochs 300 --score-at 10,30,100,300 > mnist_elbo.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pyro_vae.estimators.importance import evaluate  # noqa: E402
from pyro_vae.jobs.train import fit
from pyro_vae.runs.rundir import load_run  # noqa: E402
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)

MODELS = {"elbo": ("elbo", 1), "meanfield": ("meanfield", 1), "iwae5": ("iwae", 5), "iwae50": ("iwae", 50)}
PAPER_NLL = {  # Burda et al. (2016), Table 1, 1 stochastic layer, test NLL in nats (k=5000)
    "elbo": {"VAE": 86.76}, "meanfield": {"VAE": 86.76}, "iwae5": {"VAE": 86.47, "IWAE": 85.54}, "iwae50": {"VAE": 86.35, "IWAE": 84.78},
}
BURDA_EPOCHS = 3280


def find_data(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [os.environ.get("PYRO_VAE_DATA"), REPO / ".." / "shared" / "data" / "mnist"]
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").exists():
            return str(Path(c).resolve())
    sys.exit("bench_mnist: no MNIST files found; pass --data DIR holding the four torchvision gzip files.")


def config(model: str, data_root: str, epochs: int, seed: int, run_dir: Path) -> dict:
    objective, particles = MODELS[model]
    return {
        "data": {"name": "mnist", "root": data_root, "download": False, "binarize": "dynamic", "val_fraction": 0.0},
        "model": {"latent_dim": 50, "likelihood": "bernoulli", "prior": "normal",
                  "net": {"kind": "mlp", "hidden": [200, 200], "activation": "tanh"}},
        "train": {"epochs": epochs, "batch_size": 20, "lr": 1e-3, "adam_eps": 1e-4, "lr_schedule": "burda",
                  "objective": objective, "num_particles": particles, "seed": seed},
        "out": str(run_dir),
    }


def trained_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.json"
    return len(json.loads(metrics.read_text())) if metrics.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--epochs", type=int, default=300, help=f"train up to this many epochs (paper: {BURDA_EPOCHS})")
    parser.add_argument("--score-at", default="10,30,100,300", help="epochs at which to score the test set")
    parser.add_argument("--samples", type=int, default=5000, help="K at the final epoch (the paper's 5000)")
    parser.add_argument("--curve-samples", type=int, default=1000, help="K at the earlier epochs of the curve")
    parser.add_argument("--data", default=None, help="folder with the MNIST gzip files (default ../shared/data/mnist)")
    parser.add_argument("--runs", default=str(Path.home() / ".cache" / "pyro_vae" / "bench_mnist"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="result JSON (default bench/results/mnist_<model>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data_root = find_data(args.data)
    run_dir = Path(args.runs) / args.model
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"mnist_{args.model}.json"
    record = json.loads(out.read_text()) if out.exists() else {}
    record.setdefault("protocol", {
        "paper": "Burda, Grosse & Salakhutdinov (2016), Table 1, 1 stochastic layer",
        "train_images": 60000, "validation_images": 0, "test_images": 10000,
        "binarization": "dynamic in training; one fixed Bernoulli(grey) draw of the test images (seed 0)",
        "architecture": "784-200-200-50 tanh encoder, 50-200-200-784 tanh decoder, Bernoulli, N(0, I) prior",
        "objective": MODELS[args.model][0], "particles": MODELS[args.model][1],
        "optimizer": "Adam(beta1=0.9, beta2=0.999, eps=1e-4)", "batch_size": 20,
        "schedule": "burda: lr 1e-3 * 10^(-i/7) for 3^i epochs, i=0..7 (3280 epochs in all)",
        "paper_epochs": BURDA_EPOCHS, "seed": args.seed, "paper_test_nll": PAPER_NLL[args.model],
    })
    record.setdefault("curve", [])
    targets = sorted({int(e) for e in args.score_at.split(",") if e} | {args.epochs})
    targets = [t for t in targets if t <= args.epochs]

    for target in targets:
        done = trained_epochs(run_dir)
        if done < target:
            tic = time.perf_counter()
            cfg = config(args.model, data_root, target, args.seed, run_dir)
            resume = run_dir if (run_dir / "checkpoint.pt").exists() else None
            print(f"[{time.strftime('%H:%M:%S')}] {args.model}: training epochs {done + 1}..{target}", flush=True)
            fit(cfg, resume=resume, progress=False)
            print(f"[{time.strftime('%H:%M:%S')}] {args.model}: reached epoch {target} "
                  f"({time.perf_counter() - tic:.0f} s)", flush=True)
        snapshot = run_dir / f"epoch{target:04d}.pt"
        if not snapshot.exists() and trained_epochs(run_dir) == target:
            shutil.copyfile(run_dir / "checkpoint.pt", snapshot)
        if any(row["epoch"] == target for row in record["curve"]) or not snapshot.exists():
            continue
        samples = args.samples if target == args.epochs else args.curve_samples
        vae, _, dataset, transform = load_run(snapshot, which="last")
        history = json.loads((run_dir / "metrics.json").read_text())[:target]
        x = transform(dataset.test, train=False)
        print(f"[{time.strftime('%H:%M:%S')}] {args.model}: scoring epoch {target}, K={samples}", flush=True)
        ev = evaluate(vae, x, num_samples=samples, k_list=(1, 5, 50, samples), seed=0)
        ll = ev.to_dict()
        row = {"epoch": target, "samples": samples, "test_nll": -ll["log_likelihood"]["mean"],
               "se": ll["log_likelihood"]["se"], "mc_se": ll["log_likelihood"]["mc_se"],
               "test_elbo": ll["elbo"]["mean"], "iwae": {r["k"]: r["mean"] for r in ll["iwae"]},
               "active_units": ll["diagnostics"]["active_units"], "frac_khat_above_0_7": ll["diagnostics"]["frac_khat_above_0_7"],
               "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
               "train_seconds": sum(h["seconds"] for h in history), "score_seconds": ev.seconds,
               "environment": environment(args.threads)}
        record["curve"] = sorted([*record["curve"], row], key=lambda r: r["epoch"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, out)
        print(f"[{time.strftime('%H:%M:%S')}] {args.model}: epoch {target}: test NLL {row['test_nll']:.2f} ± {row['se']:.2f} "
              f"(K={samples}, MC SE {row['mc_se']:.3f}, {ev.seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
