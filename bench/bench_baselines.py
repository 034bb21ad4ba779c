"""Benchmark pyro_vae's EM baselines against scikit-learn on MNIST-10k (not a test).

Data: the real MNIST test set (``t10k-images-idx3-ubyte.gz``); train on the first 8000
images, evaluate on the last 2000. PPCA/FA/GMM see dequantized pixels ``(v + u) / 256``
(bits/dim with ``levels=256``); the mixture of Bernoullis sees ``v / 255 > 0.5``.

Each baseline and its scikit-learn equivalent are fitted in the same process on the
same data with the same number of components and equivalent tolerances, alternating
ours/sklearn ``--repeats`` times; ``ratio`` is the median of the per-repeat time ratios.
The ``@sk LL`` columns time our EM stopped at the first iteration whose train
log-likelihood reaches sklearn's final one (time to the same LL; EM is deterministic for
a seed, so the refit reproduces that iteration exactly). scikit-learn has no PPCA class, but ``PCA(k).score_samples`` *is* the
PPCA log-likelihood (at the (N-1)-normalized fit), and it has no Bernoulli mixture.

``gmm_add``/``gmm_full_add`` are scikit-learn's model (``reg_covar`` added), so they are
also run from the *same start*: our k-means++ initialization is handed to scikit-learn
as a warm start (``warm_start=True`` with its fitted attributes set, so it does no
initialization work of its own). Both EMs then follow the same path to the same train
log-likelihood, and the ``same start`` columns compare their times: ours from the same
start (``fit(init=...)``) and ours including our own initialization.

Which local optimum a mixture's EM reaches depends on its start, so the diagonal mixtures
are also fitted by both libraries with seeds ``0..--seeds-1`` (each its own
initialization, alternating): the medians over seeds compare the quality of the optima
each reaches and the time it takes.

``--busy-core`` keeps one core busy with a spinning process for the whole run, to see how
each library copes with a noisy neighbour on a shared machine.

Usage:
    python bench/bench_baselines.py [--data DIR] [--out bench/results/baselines.json] [--busy-core]
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import sklearn
from sklearn import decomposition, mixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyro_vae.baselines.registry import make_baseline  # noqa: E402
from pyro_vae.core.stats import LogLikelihood  # noqa: E402
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)

N_TRAIN, N_TEST = 8000, 2000


def load_mnist_images(data_dir: Path) -> np.ndarray:
    path = data_dir / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        raise SystemExit(f"MNIST images not found at {path}; pass --data DIR containing t10k-images-idx3-ubyte.gz")
    raw = gzip.decompress(path.read_bytes())
    count = int.from_bytes(raw[4:8], "big")
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(count, 784)
    if count < N_TRAIN + N_TEST:
        raise SystemExit(f"{path} holds {count} images; need {N_TRAIN + N_TEST}.")
    return images[: N_TRAIN + N_TEST]


def timed(fn):
    time.sleep(0.5)  # let the other library's BLAS/OpenMP worker threads stop spinning
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sklearn_from(start, covariance_type: str, max_iter: int) -> mixture.GaussianMixture:
    """A scikit-learn mixture warm-started at our fitted parameters (it then skips its own init)."""
    sk = mixture.GaussianMixture(start.n_components, covariance_type=covariance_type, tol=1e-3, max_iter=max_iter,
                                 warm_start=True)
    cov = start.covariances.numpy().copy()
    sk.weights_, sk.means_, sk.covariances_ = start.weights.numpy().copy(), start.means.numpy().copy(), cov
    sk.precisions_cholesky_ = _compute_precision_cholesky(cov, covariance_type)
    sk.converged_, sk.lower_bound_ = False, -np.inf  # so its first change in bound is not mistaken for convergence
    return sk


def seed_runs(ours_factory, sk_factory, train: np.ndarray, test: np.ndarray, seeds: int) -> dict:
    """Both libraries fitted with seeds 0..seeds-1, alternating: times, train and test LLs per seed."""
    out = {key: [] for key in ("ours_seconds", "sklearn_seconds", "ours_train_log_likelihood",
                               "sklearn_train_log_likelihood", "ours_test_log_likelihood", "sklearn_test_log_likelihood",
                               "ours_iterations", "sklearn_iterations")}
    for seed in range(seeds):
        ours, t = timed(lambda: ours_factory().fit(train, seed=seed))
        out["ours_seconds"].append(t)
        sk, t = timed(lambda: sk_factory().set_params(random_state=seed).fit(train))
        out["sklearn_seconds"].append(t)
        out["ours_train_log_likelihood"].append(ours.history[-1])
        out["sklearn_train_log_likelihood"].append(float(sk.score_samples(train).mean()))
        out["ours_test_log_likelihood"].append(float(ours.log_prob(test).mean()))
        out["sklearn_test_log_likelihood"].append(float(sk.score_samples(test).mean()))
        out["ours_iterations"].append(ours.iterations)
        out["sklearn_iterations"].append(int(sk.n_iter_))
    out["time_ratios"] = [a / b for a, b in zip(out["ours_seconds"], out["sklearn_seconds"])]
    out["median_time_ratio"] = statistics.median(out["time_ratios"])
    return out


def section(rows: list[dict], key: str, title: str, header: str, line) -> list[str]:
    """A titled sub-table of the rows that have ``key``; ``line(name, row[key])`` formats one."""
    chosen = [r for r in rows if key in r]
    return ["", title, header] + [line(r["name"], r[key]) for r in chosen] if chosen else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "baselines.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="subset of: ppca fa gmm gmm_full gmm_add gmm_full_add mob")
    parser.add_argument("--max-iter-full", type=int, default=20, help="EM iterations cap for full-covariance GMMs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ppca-repeats", type=int, default=11, help="PPCA fits take ~0.1 s: more repeats, same cost")
    parser.add_argument("--seeds", type=int, default=10,
                        help="diagonal mixtures: also fit both with seeds 0..N-1 (which local optimum EM finds depends on its start)")
    parser.add_argument("--busy-core", action="store_true",
                        help="keep one core busy with a spinning process during the run (a noisy neighbour)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.busy_core:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        atexit.register(spinner.kill)

    load_before = os.getloadavg()[0]  # timings on a shared machine are only comparable at similar load
    images = load_mnist_images(args.data)
    rng = np.random.default_rng(0)
    deq = (images + rng.random(images.shape)) / 256.0
    binary = (images / 255.0 > 0.5).astype(np.float64)
    tol_fa = 1e-2  # sklearn FactorAnalysis's default

    # name, K, data, levels, our factory, sklearn factory (None: no equivalent). Both GMMs use
    # tol=1e-3 on the mean log-likelihood; sklearn's FA tol is on the *sum*, so ours is tol / N.
    configs = [
        ("ppca", 50, deq, 256, lambda: make_baseline("ppca", 50), lambda: decomposition.PCA(50)),
        ("fa", 50, deq, 256, lambda: make_baseline("fa", 50, tol=tol_fa / N_TRAIN, max_iter=1000),
         lambda: decomposition.FactorAnalysis(50, tol=tol_fa, max_iter=1000, random_state=0)),
        ("gmm", 10, deq, 256, lambda: make_baseline("gmm", 10, tol=1e-3, max_iter=100),
         lambda: mixture.GaussianMixture(10, covariance_type="diag", tol=1e-3, max_iter=100, random_state=0)),
        ("gmm_full", 10, deq, 256, lambda: make_baseline("gmm_full", 10, tol=1e-3, max_iter=args.max_iter_full),
         lambda: mixture.GaussianMixture(10, covariance_type="full", tol=1e-3, max_iter=args.max_iter_full, random_state=0)),
        # The same two mixtures with sklearn's own regularization rule (reg_covar added to every variance):
        # the same model as sklearn's, so train and test log-likelihoods are comparable too.
        ("gmm_add", 10, deq, 256, lambda: make_baseline("gmm", 10, tol=1e-3, max_iter=100, regularization="add"),
         lambda: mixture.GaussianMixture(10, covariance_type="diag", tol=1e-3, max_iter=100, random_state=0)),
        ("gmm_full_add", 10, deq, 256,
         lambda: make_baseline("gmm_full", 10, tol=1e-3, max_iter=args.max_iter_full, regularization="add"),
         lambda: mixture.GaussianMixture(10, covariance_type="full", tol=1e-3, max_iter=args.max_iter_full, random_state=0)),
        ("mob", 10, binary, None, lambda: make_baseline("mob", 10, tol=1e-3, max_iter=100), None),
    ]
    rows = []
    width = max(len(c[0]) for c in configs)
    with threadpool_limits(args.threads):
        for name, k, data, levels, ours_factory, sk_factory in configs:
            if args.only and name not in args.only:
                continue
            train, test = data[:N_TRAIN], data[N_TRAIN:]
            ours_times, sk_times = [], []
            for _ in range(args.ppca_repeats if name == "ppca" else args.repeats):
                ours, t = timed(lambda: ours_factory().fit(train))
                ours_times.append(t)
                if sk_factory is not None:
                    sk, t = timed(lambda: sk_factory().fit(train))
                    sk_times.append(t)
            ours_ll = ours.evaluate(test, levels=levels)
            row = {
                "name": name,
                "n_components": k,
                "ours": {**ours_ll.to_dict(), "fit_seconds": ours_times},
                "ours_train_log_likelihood": ours.history[-1],
            }
            if sk_factory is not None:
                sk_ll = LogLikelihood(f"sklearn_{name}", torch.as_tensor(sk.score_samples(test)), 784, levels=levels)
                row["sklearn"] = {**sk_ll.to_dict(), "fit_seconds": sk_times, "iterations": getattr(sk, "n_iter_", 0),
                                  "converged": bool(getattr(sk, "converged_", True))}
                sk_train = float(sk.score_samples(train).mean())
                row["sklearn_train_log_likelihood"] = sk_train
                row["time_ratios"] = [a / b for a, b in zip(ours_times, sk_times)]
                row["median_time_ratio"] = statistics.median(row["time_ratios"])
                # Time to target: EM is deterministic for a seed, so refitting with max_iter = the first
                # iteration whose train LL reaches sklearn's final train LL times exactly that run.
                reached = [i for i, ll in enumerate(ours.history) if ll >= sk_train]
                if name != "ppca" and reached:
                    to_target = [timed(lambda: ours_factory().fit(train, max_iter=reached[0]))[1]
                                 for _ in range(args.repeats)]
                    row["iterations_to_sklearn_ll"] = reached[0]
                    row["seconds_to_sklearn_ll"] = to_target
                    row["median_time_ratio_at_sklearn_ll"] = statistics.median(to_target) / statistics.median(sk_times)
                if name.endswith("_add"):
                    covariance_type = "full" if "full" in name else "diag"
                    start = ours_factory().fit(train, max_iter=0)  # our initialization, untimed
                    same_ours, same_sk = [], []
                    for _ in range(args.repeats):
                        refit, t = timed(lambda: ours_factory().fit(train, init=start))
                        same_ours.append(t)
                        warm = sklearn_from(start, covariance_type, ours.max_iter)
                        _, t = timed(lambda: warm.fit(train))
                        same_sk.append(t)
                    row["same_start"] = {
                        "ours_seconds": same_ours, "sklearn_seconds": same_sk,
                        "ours_iterations": refit.iterations, "sklearn_iterations": int(warm.n_iter_),
                        "ours_train_log_likelihood": refit.history[-1],
                        "sklearn_train_log_likelihood": float(warm.score_samples(train).mean()),
                        "ours_test_log_likelihood": float(refit.log_prob(test).mean()),
                        "sklearn_test_log_likelihood": float(warm.score_samples(test).mean()),
                        "time_ratios": [a / b for a, b in zip(same_ours, same_sk)],
                        # our full fit (k-means++ init + EM) follows the same path: the same-start run plus init
                        "time_ratios_with_our_init": [a / b for a, b in zip(ours_times, same_sk)],
                    }
                    row["same_start"]["median_time_ratio"] = statistics.median(row["same_start"]["time_ratios"])
                    row["same_start"]["median_time_ratio_with_our_init"] = statistics.median(
                        row["same_start"]["time_ratios_with_our_init"])
                if name in ("gmm", "gmm_add") and args.seeds > 0:
                    row["seeds"] = seed_runs(ours_factory, sk_factory, train, test, args.seeds)
            rows.append(row)
            print(f"done {name}: ours {statistics.median(ours_times):.2f}s", flush=True)

    header = (f"{'baseline':<{width}}{'K':>3} | {'test LL ours (nats)':>21} {'sklearn':>21} | {'bits/dim':>15} | "
              f"{'train LL ours':>13} {'sklearn':>9} | {'iters':>7} | {'fit s ours':>10} {'sklearn':>8} | {'ratio':>5} | "
              f"{'@sk LL: it':>10} {'s':>6} {'ratio':>5}")
    lines = [header, "-" * len(header)]
    for r in rows:
        o, s = r["ours"], r.get("sklearn")
        fmt = lambda d: f"{d['log_likelihood']['mean']:.2f} ± {d['log_likelihood']['se']:.2f}"  # noqa: E731
        lines.append(
            f"{r['name']:<{width}}{r['n_components']:>3} | {fmt(o):>21} {fmt(s) if s else 'n/a':>21} | "
            f"{o['log_likelihood']['bits_per_dim']:>7.4f} {s['log_likelihood']['bits_per_dim'] if s else float('nan'):>7.4f} | "
            f"{r['ours_train_log_likelihood']:>13.2f} {r.get('sklearn_train_log_likelihood', float('nan')):>9.2f} | "
            f"{o['iterations']:>3}/{s['iterations'] if s else '-':>3} | "
            f"{statistics.median(o['fit_seconds']):>10.2f} {statistics.median(s['fit_seconds']) if s else float('nan'):>8.2f} | "
            f"{r.get('median_time_ratio', float('nan')):>5.2f} | "
            f"{r.get('iterations_to_sklearn_ll', '-'):>10} "
            f"{statistics.median(r['seconds_to_sklearn_ll']) if 'seconds_to_sklearn_ll' in r else float('nan'):>6.2f} "
            f"{r.get('median_time_ratio_at_sklearn_ll', float('nan')):>5.2f}"
        )
    lines += section(rows, "same_start", "Same start (our init handed to scikit-learn as a warm start; same model, same path):",
                     f"{'baseline':<{width}} | {'train LL ours':>13} {'sklearn':>13} | {'test LL ours':>12} {'sklearn':>9} | "
                     f"{'iters':>7} | {'EM s ours':>9} {'sklearn':>8} | {'ratio':>5} | {'ratio incl. our init':>20}",
                     lambda name, q: (
                         f"{name:<{width}} | {q['ours_train_log_likelihood']:>13.4f} {q['sklearn_train_log_likelihood']:>13.4f} | "
                         f"{q['ours_test_log_likelihood']:>12.2f} {q['sklearn_test_log_likelihood']:>9.2f} | "
                         f"{q['ours_iterations']:>3}/{q['sklearn_iterations']:>3} | "
                         f"{statistics.median(q['ours_seconds']):>9.2f} {statistics.median(q['sklearn_seconds']):>8.2f} | "
                         f"{q['median_time_ratio']:>5.2f} | {q['median_time_ratio_with_our_init']:>20.2f}"))
    median = statistics.median
    lines += section(rows, "seeds",
                     "Each library with its own initialization, seeds 0..N-1 (medians over seeds; EM's optimum depends on its start):",
                     f"{'baseline':<{width}} | {'seeds':>5} | {'train LL ours':>13} {'sklearn':>9} | {'test LL ours':>12} {'sklearn':>9} | "
                     f"{'fit s ours':>10} {'sklearn':>8} | {'ratio':>5} {'range':>11}",
                     lambda name, q: (
                         f"{name:<{width}} | {len(q['ours_seconds']):>5} | "
                         f"{median(q['ours_train_log_likelihood']):>13.2f} {median(q['sklearn_train_log_likelihood']):>9.2f} | "
                         f"{median(q['ours_test_log_likelihood']):>12.2f} {median(q['sklearn_test_log_likelihood']):>9.2f} | "
                         f"{median(q['ours_seconds']):>10.2f} {median(q['sklearn_seconds']):>8.2f} | "
                         f"{q['median_time_ratio']:>5.2f} {min(q['time_ratios']):>5.2f}-{max(q['time_ratios']):<5.2f}"))
    load = f"1-min load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)"
    table = "\n".join(lines + [load])
    print(table)
    setup = {"environment": environment(args.threads, load_before), "data": str(args.data), "n_train": N_TRAIN, "n_test": N_TEST, "repeats": args.repeats,
             "threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__, "sklearn": sklearn.__version__,
             "max_iter_full": args.max_iter_full, "seeds": args.seeds, "busy_core": args.busy_core,
             "dequantization": "(v + u) / 256, u ~ U[0, 1), numpy seed 0", "binarization": "v / 255 > 0.5"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": setup, "results": rows, "table": table}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
