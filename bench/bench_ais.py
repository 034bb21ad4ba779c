"""Benchmark: AIS and BDMC against importance sampling on the trained MNIST VAE (784-200-200-50 tanh, Bernoulli).

Stages (``--stages``, run in this order, each resumable):

* ``is``: importance sampling (the encoder as proposal) on the first ``--points`` MNIST test
  images at each ``--is-samples`` K: mean ± SE, MC SE, fraction of points with PSIS k̂ > 0.7;
* ``ais``: AIS with HMC (``pyro_vae.estimators.ais.ais``, pilot-chain step sizes) on the same points at
  each ``--steps`` T with ``--chains`` chains and ``--leapfrog`` steps; paired difference
  AIS - IS per point;
* ``tune``: AIS at about equal cost per point with other (chains, T, leapfrog), ``--tune``
  as ``CxTxL`` items, on the first ``--tune-points`` points, paired against the reference
  setting ``--tune-ref`` (which must also be run, here or by ``ais``);
* ``bdmc``: ``--bdmc-points`` points simulated from the model (``pyro_vae.models.target.simulate``),
  forward (lower) and reverse (upper) AIS at each ``--bdmc-steps`` T, and plain IS at
  each ``--bdmc-is`` K on the same points.

Throughput. One "gradient evaluation" is one decoder forward and backward pass for one
chain of one point (``AISResult.grad_evals`` counts them, pilots included). Its nominal cost
is ``3 * 2 * sum(in * out)`` FLOPs over the decoder's linear layers (forward 2·in·out per
layer, backward counted as twice the forward), 6 * 206 800 = 1.24 MFLOP for 50-200-200-784.
The chains only need the gradient in ``z``, not in the weights, so the work actually done is
nearer ``2 * 2 * sum(in * out)``; ``fraction_executed`` reports that variant too. The
fraction divides the achieved rate by the best float32 2048x2048 ``torch.mm`` rate measured
in the same process with the same threads just before and after each chunk (best of all;
``bench_evaluate.between_peaks``). The ``side_by_side`` fractions, on which the goal is
judged, divide each chunk's rate by the median rate measured beside that chunk, and take
the median over chunks. Importance sampling is forward only: ``2 * sum(in * out)``.
Encoder work, Bernoulli log-densities and elementwise work are not counted.

The machine may be shared: every stage records ``os.getloadavg()`` before and after.
Work is done in chunks of ``--chunk`` points, each saved to ``--partial`` as soon as it
ends; re-running the same command skips what is there. ``--report-only`` rebuilds
``--out`` and the Markdown table from ``--partial``.

    nohup .venv/bin/python bench/bench_ais.py --stages is,ais,tune,bdmc > /tmp/bench_ais.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch
import statistics

from bench_evaluate import between_peaks
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)

RUN_DIR = Path("~/.cache/pyro_vae/bench_mnist/elbo").expanduser()
DECODER_LAYERS = ((50, 200), (200, 200), (200, 784))
MACS = sum(i * o for i, o in DECODER_LAYERS)  # 206 800
FLOPS_GRAD = 3 * 2 * MACS  # nominal forward + backward of one latent sample
FLOPS_GRAD_EXECUTED = 2 * 2 * MACS  # forward + input-gradient backward (no weight gradients)
FLOPS_FORWARD = 2 * MACS  # importance sampling: forward only
STAGES = ("is", "ais", "tune", "bdmc")


# --------------------------------------------------------------------------- helpers


def default_model() -> str:
    for name in ("epoch0300.pt", "epoch0100.pt"):
        if (RUN_DIR / name).exists():
            return str(RUN_DIR / name)
    sys.exit(f"bench_ais: no epoch0300.pt or epoch0100.pt in {RUN_DIR}; pass --model.")


def pilots_of(chains: int) -> int:
    return max(1, chains // 4)  # pyro_vae.estimators.settings.Settings' default for adapt="pilot"


def evals_per_point(chains: int, steps: int, leapfrog: int) -> int:
    """Forward AIS gradient evaluations per point, pilots included."""
    return (chains + pilots_of(chains)) * (1 + (steps - 1) * leapfrog)


def parse_setting(text: str) -> tuple[int, int, int]:
    c, t, l = (int(v) for v in text.lower().split("x"))
    return c, t, l


def load() -> tuple[float, float, float]:
    return tuple(round(v, 2) for v in os.getloadavg())


def mean_se(values) -> dict:
    from pyro_vae.core.stats import mean_se as _mean_se

    return _mean_se(torch.as_tensor(values, dtype=torch.float64))


def pooled_mc_se(per_point_se) -> float:
    se = torch.as_tensor(per_point_se, dtype=torch.float64)
    return (se.pow(2).sum().sqrt() / se.numel()).item()


class Store:
    """The partial results: one JSON object of finished chunks, rewritten atomically after each."""

    def __init__(self, path: Path, model: str):
        self.path, self.model = path, model
        self.data = json.loads(path.read_text()) if path.exists() else {}
        if self.data.get("model") not in (None, model):
            sys.exit(f"bench_ais: {path} holds results of {self.data['model']}, not {model}; "
                     "pass another --partial or --model.")
        self.data.setdefault("model", model)
        self.data.setdefault("chunks", {})

    def get(self, key: str):
        return self.data["chunks"].get(key)

    def put(self, key: str, value: dict) -> None:
        self.data["chunks"][key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


def timed(fn, threads: int) -> tuple[object, dict]:
    """Run ``fn`` between two matmul-peak measurements; the context of the timing."""
    load0 = load()
    out, context = between_peaks(fn, threads)
    return out, {**context, "load_before": load0, "load_after": load()}


def chunks(n: int, size: int):
    """``(tag, slice)`` per chunk; the tag names the points, so runs on N and on a prefix of N share chunks."""
    for start in range(0, n, size):
        stop = min(n, start + size)
        yield f"p{start}-{stop}", slice(start, stop)


def merge(parts: list[dict]) -> dict:
    """Concatenate chunks' per-point lists, add their times and grad evals; keep every context."""
    out = {"seconds": sum(p["ctx"]["seconds"] for p in parts), "grad_evals": sum(p.get("grad_evals", 0) for p in parts),
           "contexts": [p["ctx"] for p in parts]}
    for key in parts[0]:
        if isinstance(parts[0][key], list) and key != "contexts":
            out[key] = [v for p in parts for v in p[key]]
    out["peak_gflops"] = max(c["peak_gflops"] for c in out["contexts"])
    # Per chunk, for the side-by-side figure: its points, gradient evaluations, seconds and median peak.
    out["chunk_work"] = [{"points": len(p["log_px"]) if "log_px" in p else len(p.get("lower", [])),
                          "grad_evals": p.get("grad_evals", 0), "seconds": p["ctx"]["seconds"],
                          "peak_median": p["ctx"].get("peak_gflops_median")} for p in parts]
    out["load_1min"] = [min(c["load_before"][0] for c in out["contexts"]), max(c["load_after"][0] for c in out["contexts"])]
    return out


# --------------------------------------------------------------------------- stages


def run_is(store: Store, vae, x, key: str, samples: int, chunk: int, seed: int, threads: int) -> dict:
    from pyro_vae.estimators.importance import evaluate

    parts = []
    for i, sl in chunks(len(x), chunk):
        k = f"{key}|K{samples}|{i}"
        if store.get(k) is None:
            ev, ctx = timed(lambda sl=sl: evaluate(vae, x[sl], num_samples=samples, k_list=(1,), seed=seed + sl.start),
                            threads)
            store.put(k, {"log_px": ev.log_px.tolist(), "mc_se": ev.mc_se.tolist(),
                          "khat": [v if math.isfinite(v) else None for v in ev.khat.tolist()],
                          "elbo": ev.elbo.tolist(), "ctx": ctx})
            print(f"  {k}: {ctx['seconds']:.1f} s, load {ctx['load_after'][0]}", flush=True)
        parts.append(store.get(k))
    return merge(parts)


def run_ais(store: Store, vae, x, key: str, chains: int, steps: int, leapfrog: int, chunk: int, seed: int,
            threads: int) -> dict:
    from pyro_vae.estimators.ais import ais

    parts = []
    for i, sl in chunks(len(x), chunk):
        k = f"{key}|C{chains}|T{steps}|L{leapfrog}|{i}"
        if store.get(k) is None:
            res, ctx = timed(lambda sl=sl: ais(vae, x[sl], steps=steps, chains=chains, leapfrog=leapfrog,
                                         batch_size=chunk, seed=seed + sl.start), threads)
            store.put(k, {"log_px": res.log_px.tolist(), "mc_se": res.mc_se.tolist(),
                          "accept_rate": res.accept_rate.tolist(), "step_size": res.step_size.tolist(),
                          "grad_evals": res.grad_evals, "pilots": res.settings.pilots, "ctx": ctx})
            print(f"  {k}: {ctx['seconds']:.1f} s, {res.grad_evals / ctx['seconds']:.0f} grad evals/s, "
                  f"log p {res.log_px.mean():.3f}, accept {res.accept_rate.mean():.3f}, load {ctx['load_after'][0]}",
                  flush=True)
        parts.append(store.get(k))
    return merge(parts)


def run_bdmc(store: Store, vae, data, key: str, chains: int, steps: int, leapfrog: int, chunk: int, seed: int,
             threads: int) -> dict:
    from pyro_vae.estimators.bdmc import bdmc

    x, z = data
    parts = []
    for i, sl in chunks(len(x), chunk):
        k = f"{key}|C{chains}|T{steps}|L{leapfrog}|{i}"
        if store.get(k) is None:
            res, ctx = timed(lambda sl=sl: bdmc(vae, data=(x[sl], {"z": z[sl]}), steps=steps, chains=chains,
                                          leapfrog=leapfrog, is_samples=0, batch_size=chunk, seed=seed + sl.start),
                             threads)
            store.put(k, {"lower": res.lower.tolist(), "upper": res.upper.tolist(),
                          "lower_mc_se": res.lower_mc_se.tolist(), "upper_mc_se": res.upper_mc_se.tolist(),
                          "forward_accept": res.forward_accept.tolist(), "reverse_accept": res.reverse_accept.tolist(),
                          "grad_evals": res.grad_evals, "ctx": ctx})
            print(f"  {k}: {ctx['seconds']:.1f} s, gap {(res.upper - res.lower).mean():.3f}, "
                  f"load {ctx['load_after'][0]}", flush=True)
        parts.append(store.get(k))
    return merge(parts)


# --------------------------------------------------------------------------- summaries


def is_row(r: dict, samples: int) -> dict:
    khat = [v for v in r["khat"] if v is not None]
    n = len(r["log_px"])
    rate = samples * n / r["seconds"]
    return {"estimator": "IS", "K": samples, "points": n, "log_px": mean_se(r["log_px"]), "mc_se": pooled_mc_se(r["mc_se"]),
            "khat_gt_0.7": sum(v > 0.7 for v in khat) / n, "khat_nan": n - len(khat), "seconds": r["seconds"],
            "decoder_passes": samples * n, "passes_per_second": rate,
            "fraction": rate * FLOPS_FORWARD / 1e9 / r["peak_gflops"], "peak_gflops": r["peak_gflops"],
            "fraction_side_by_side": side_by_side(r, lambda c: samples * c["points"] * FLOPS_FORWARD),
            "load_1min": r["load_1min"]}


def side_by_side(r: dict, flops_of) -> float | None:
    """The median over chunks of each chunk's rate divided by the median matmul peak measured beside it.

    The whole-stage ``fraction`` divides a rate averaged over minutes by the *best* matmul
    burst; on this shared machine (steal time up to 40%) that mixes two conditions. The
    goal is judged on this figure, as ``bench_evaluate.paired_ratios`` does for IS.
    """
    work = [c for c in r.get("chunk_work", []) if c["peak_median"]]
    if not work:
        return None
    return statistics.median(flops_of(c) / c["seconds"] / 1e9 / c["peak_median"] for c in work)


def ais_row(r: dict, chains: int, steps: int, leapfrog: int) -> dict:
    n = len(r["log_px"])
    rate = r["grad_evals"] / r["seconds"]
    return {"estimator": "AIS", "T": steps, "chains": chains, "pilots": pilots_of(chains), "leapfrog": leapfrog,
            "points": n, "log_px": mean_se(r["log_px"]), "mc_se": pooled_mc_se(r["mc_se"]),
            "accept_rate": sum(r["accept_rate"]) / n, "step_size_median": sorted(r["step_size"])[n // 2],
            "grad_evals": r["grad_evals"], "grad_evals_per_point": r["grad_evals"] / n, "seconds": r["seconds"],
            "grad_evals_per_second": rate, "fraction": rate * FLOPS_GRAD / 1e9 / r["peak_gflops"],
            "fraction_executed": rate * FLOPS_GRAD_EXECUTED / 1e9 / r["peak_gflops"], "peak_gflops": r["peak_gflops"],
            "fraction_side_by_side": side_by_side(r, lambda c: c["grad_evals"] * FLOPS_GRAD),
            "fraction_executed_side_by_side": side_by_side(r, lambda c: c["grad_evals"] * FLOPS_GRAD_EXECUTED),
            "load_1min": r["load_1min"]}


def fmt_side(row: dict) -> str:
    """The side-by-side figures of a row, for its throughput cell (empty for records without them)."""
    if row.get("fraction_side_by_side") is None:
        return ""
    executed = row.get("fraction_executed_side_by_side")
    return (f"; side by side {row['fraction_side_by_side']:.2f}"
            + (f" nominal, {executed:.2f} executed" if executed is not None else ""))


def paired(a: list, b: list) -> dict:
    return mean_se([u - v for u, v in zip(a, b)])


def pm(d: dict, digits: int = 2) -> str:
    return f"{d['mean']:.{digits}f} ± {d['se']:.{digits}f}"


def loads(r: dict) -> str:
    return "{:.1f}–{:.1f}".format(*r["load_1min"])


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: epoch0300.pt, else epoch0100.pt of the "
                                                 "bench_mnist ELBO run)")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--points", type=int, default=200, help="MNIST test points (the first N)")
    p.add_argument("--is-samples", default="1000,5000")
    p.add_argument("--steps", default="50,200,1000")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--tune", default="16x400x5,16x1000x2,8x400x10,4x800x10", help="CxTxL settings at equal cost")
    p.add_argument("--tune-ref", default="16x200x10")
    p.add_argument("--tune-points", type=int, default=100)
    p.add_argument("--bdmc-points", type=int, default=100, help="simulated points per seed")
    p.add_argument("--bdmc-seeds", default="0,1000", help="one block of --bdmc-points simulated points per seed")
    p.add_argument("--bdmc-steps", default="10,50,200,1000")
    p.add_argument("--bdmc-chains", type=int, default=16)
    p.add_argument("--bdmc-leapfrog", type=int, default=10)
    p.add_argument("--bdmc-is", default="1000,5000")
    p.add_argument("--chunk", type=int, default=100, help="points per saved chunk (and per batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-seconds", type=float, default=300.0)
    p.add_argument("--budget-points", type=int, default=1000)
    p.add_argument("--budget-cores", type=int, default=2)
    p.add_argument("--partial", default=str(REPO / "bench" / "results" / "ais_partial.json"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "ais.json"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    store = Store(Path(args.partial), model)
    stages = [s for s in args.stages.split(",") if s]
    if args.report_only:
        stages = []
    ints = lambda s: [int(v) for v in s.split(",") if v]
    is_ks, steps_list, bdmc_steps, bdmc_is = ints(args.is_samples), ints(args.steps), ints(args.bdmc_steps), ints(args.bdmc_is)
    tune = [parse_setting(s) for s in args.tune.split(",") if s]
    ref = parse_setting(args.tune_ref)

    import pyro

    from pyro_vae.models.target import simulate
    from pyro_vae.runs.rundir import load_run

    pyro.enable_validation(False)
    vae, _cfg, dataset, transform = load_run(model, which="last")
    x_all = transform(dataset.test, train=False)
    x = x_all[: args.points]
    xt = x_all[: args.tune_points]
    bdmc_seeds = ints(args.bdmc_seeds) if args.bdmc_seeds else [args.seed]
    sims = {}  # one block of --bdmc-points simulated points per seed (a longer simulation is not a prefix-extension)
    for s in bdmc_seeds:
        sx, sz = simulate(vae, args.bdmc_points, seed=s)
        sims[s] = (sx, sz["z"])
    print(f"model {model}; {len(x)} test points; {len(sims) * args.bdmc_points} simulated points; {args.threads} threads; "
          f"load {load()}", flush=True)

    test_key = tune_key = "test"  # chunks are tagged by their points: the tuning runs share the first chunks
    sim_keys = [f"sim{args.bdmc_points}s{s}" for s in bdmc_seeds]
    from pyro_vae.estimators.importance import evaluate

    evaluate(vae, x[:2], num_samples=50, k_list=(1,), seed=0)  # warm-up: imports arviz outside the timings
    for stage in stages:
        print(f"stage {stage}", flush=True)
        if stage == "is":
            for k in is_ks:
                run_is(store, vae, x, f"is|{test_key}", k, args.chunk, args.seed, args.threads)
        elif stage == "ais":
            for t in steps_list:
                run_ais(store, vae, x, f"ais|{test_key}", args.chains, t, args.leapfrog, args.chunk, args.seed,
                        args.threads)
        elif stage == "tune":
            for c, t, l in [ref, *tune]:
                run_ais(store, vae, xt, f"ais|{tune_key}", c, t, l, args.chunk, args.seed, args.threads)
        elif stage == "bdmc":
            for s, sim_key in zip(bdmc_seeds, sim_keys):
                for k in bdmc_is:
                    run_is(store, vae, sims[s][0], f"is|{sim_key}", k, args.chunk, s + 7, args.threads)
            for t in bdmc_steps:
                for s, sim_key in zip(bdmc_seeds, sim_keys):
                    run_bdmc(store, vae, sims[s], f"bdmc|{sim_key}", args.bdmc_chains, t, args.bdmc_leapfrog,
                             args.chunk, s, args.threads)
        else:
            sys.exit(f"unknown stage {stage!r}; choose from {STAGES}")

    report(store, args, model, test_key, tune_key, sim_keys, is_ks, steps_list, tune, ref, bdmc_steps, bdmc_is)


def collect_parts(store: Store, prefix: str, n: int, chunk: int) -> list[dict]:
    """The finished chunks of a run, as far as they form a prefix of the points (a run may be cut short)."""
    parts = []
    for tag, _ in chunks(n, chunk):
        part = store.get(f"{prefix}|{tag}")
        if part is None:
            break
        parts.append(part)
    return parts


def collect(store: Store, prefix: str, n: int, chunk: int) -> dict | None:
    parts = collect_parts(store, prefix, n, chunk)
    return merge(parts) if parts else None


def collect_sims(store: Store, prefixes: list[str], n: int, chunk: int) -> dict | None:
    """The simulated blocks (one per seed) that are complete, in seed order, stopping at the first incomplete one."""
    parts = []
    for prefix in prefixes:
        block = collect_parts(store, prefix, n, chunk)
        parts += block
        if sum(len(p.get("log_px", p.get("lower", []))) for p in block) < n:
            break
    return merge(parts) if parts else None


def report(store, args, model, test_key, tune_key, sim_keys, is_ks, steps_list, tune, ref, bdmc_steps, bdmc_is) -> None:
    n, ch = args.points, args.chunk
    out: dict = {
        "model": model, "checkpoint": Path(model).name,
        "environment": environment(args.threads),
        "flops": {"decoder_macs": MACS, "grad_eval_nominal": FLOPS_GRAD, "grad_eval_executed": FLOPS_GRAD_EXECUTED,
                  "is_sample": FLOPS_FORWARD,
                  "formula": "nominal 3*2*sum(in*out) per gradient evaluation; executed 2*2*sum(in*out); IS 2*sum(in*out)"},
        "args": vars(args), "test": {"points": n, "is": [], "ais": [], "paired_ais_minus_is": []},
        "tune": {"points": args.tune_points, "rows": []},
        "bdmc": {"points_per_seed": args.bdmc_points, "seeds": args.bdmc_seeds, "is": [], "rows": []},
    }
    lines = [(f"Model `{Path(model).name}` (784-200-200-50 tanh, Bernoulli); torch {torch.__version__}, "
             f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), {os.cpu_count()} CPUs"), ""]

    # ---- test points: IS and AIS
    is_res = {k: collect(store, f"is|{test_key}|K{k}", n, ch) for k in is_ks}
    ais_res = {t: collect(store, f"ais|{test_key}|C{args.chains}|T{t}|L{args.leapfrog}", n, ch) for t in steps_list}
    lines += [f"**MNIST test, first {n} images**", "",
              ("| estimator | T | chains (+pilots) | leapfrog | log p̂ ± SE (nats) | MC SE | AIS − IS(K=max) ± paired SE "
              "| k̂ > 0.7 | accept | grad evals / point | seconds | throughput (fraction of mm peak) | load 1 min |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    k_ref = max((k for k in is_ks if is_res[k] is not None), default=None)
    for k in is_ks:
        r = is_res[k]
        if r is None:
            continue
        row = is_row(r, k)
        out["test"]["is"].append(row)
        lines.append(f"| IS | K={k} | – | – | {pm(row['log_px'])} | {row['mc_se']:.3f} | – | {row['khat_gt_0.7']:.1%} | – "
                     f"| {k} forward | {row['seconds']:.1f} | {row['fraction']:.2f} (fwd only){fmt_side(row)} | {loads(r)} |")
    for t in steps_list:
        r = ais_res[t]
        if r is None:
            continue
        row = ais_row(r, args.chains, t, args.leapfrog)
        diffs = {}
        for k in is_ks:
            if is_res[k] is not None:
                diffs[k] = paired(r["log_px"], is_res[k]["log_px"])
                out["test"]["paired_ais_minus_is"].append({"T": t, "K": k, **diffs[k]})
        row["minus_is"] = {str(k): v for k, v in diffs.items()}
        out["test"]["ais"].append(row)
        d = pm(diffs[k_ref], 3) if k_ref in diffs else "–"
        label = str(t) if row["points"] == n else f"{t} (first {row['points']} points)"
        lines.append(f"| AIS | {label} | {args.chains} (+{row['pilots']}) | {args.leapfrog} | {pm(row['log_px'])} "
                     f"| {row['mc_se']:.3f} | {d} | – | {row['accept_rate']:.2f} | {row['grad_evals_per_point']:.0f} "
                     f"| {row['seconds']:.0f} | {row['fraction']:.2f} nominal, {row['fraction_executed']:.2f} executed"
                     f"{fmt_side(row)} | {loads(r)} |")
    if out["test"]["paired_ais_minus_is"]:
        lines += ["", "Paired AIS − IS on the same points (nats): " + "; ".join(
            f"T={d['T']} − K={d['K']}: {d['mean']:+.3f} ± {d['se']:.3f}" for d in out["test"]["paired_ais_minus_is"])]
    done = [t for t in steps_list if ais_res[t] is not None]
    if len(done) > 1:  # has AIS on real data stopped rising with T?
        t_max = max(done)
        out["test"]["paired_ais_minus_ais_tmax"] = [
            {"T": t, "T_max": t_max, **paired(ais_res[t]["log_px"], ais_res[t_max]["log_px"]),
             "points": min(len(ais_res[t]["log_px"]), len(ais_res[t_max]["log_px"]))} for t in done if t != t_max]
        lines += ["", f"Paired AIS(T) − AIS(T={t_max}) (nats): " + "; ".join(
            f"T={d['T']}: {d['mean']:+.3f} ± {d['se']:.3f}" for d in out["test"]["paired_ais_minus_ais_tmax"])]
    if k_ref is not None and done:
        # If log w were normal with sd σ, log p - ELBO = σ²/2 and PSIS k̂ ≈ σ/3 at K = 5000 (docs/theory/ais.md).
        t_best = max(done)
        a, iv = ais_res[t_best], is_res[k_ref]
        m = len(a["log_px"])
        gaps = sorted(u - e for u, e in zip(a["log_px"], iv["elbo"][:m]))
        sig = sorted(math.sqrt(2 * max(g, 0.0)) for g in gaps)
        kh = sorted(v for v in iv["khat"][:m] if v is not None)
        kv = {"T": t_best, "K": k_ref, "points": m, "median_ais_minus_elbo": gaps[m // 2],
              "median_implied_sigma": sig[m // 2], "median_predicted_khat": sig[m // 2] / 3,
              "median_measured_khat": kh[len(kh) // 2] if kh else None,
              "elbo": mean_se(iv["elbo"][:m])}
        out["test"]["khat_vs_sigma"] = kv
        lines.append(f"\nELBO {pm(kv['elbo'])}; median AIS(T={t_best}) − ELBO {kv['median_ais_minus_elbo']:.2f} nats → "
                     f"log-normal σ ≈ {kv['median_implied_sigma']:.2f}, predicted k̂ ≈ σ/3 = "
                     f"{kv['median_predicted_khat']:.2f}; measured median k̂ (K={k_ref}) {kv['median_measured_khat']:.2f}")

    # ---- tuning at equal cost
    tune_res = {s: collect(store, f"ais|{tune_key}|C{s[0]}|T{s[1]}|L{s[2]}", args.tune_points, ch) for s in [ref, *tune]}
    if tune_res[ref] is not None and any(tune_res[s] is not None for s in tune):
        lines += ["", (f"**Equal cost per point, first {args.tune_points} test images** (paired against "
                      f"{ref[0]} chains, T={ref[1]}, {ref[2]} leapfrog)"), "",
                  ("| chains (+pilots) | T | leapfrog | grad evals / point | log p̂ ± SE | MC SE | − reference ± paired SE "
                  "| accept | seconds | fraction | load 1 min |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in [ref, *tune]:
            r = tune_res[s]
            if r is None:
                continue
            row = ais_row(r, *s)
            row["minus_reference"] = paired(r["log_px"], tune_res[ref]["log_px"])
            out["tune"]["rows"].append(row)
            lines.append(f"| {s[0]} (+{row['pilots']}) | {s[1]} | {s[2]} | {row['grad_evals_per_point']:.0f} "
                         f"| {pm(row['log_px'])} | {row['mc_se']:.3f} | {pm(row['minus_reference'], 3)} "
                         f"| {row['accept_rate']:.2f} | {row['seconds']:.0f} | {row['fraction']:.2f} | {loads(r)} |")

    # ---- BDMC
    sim_is = {k: collect_sims(store, [f"is|{key}|K{k}" for key in sim_keys], args.bdmc_points, ch) for k in bdmc_is}
    bd = {t: collect_sims(store, [f"bdmc|{key}|C{args.bdmc_chains}|T{t}|L{args.bdmc_leapfrog}" for key in sim_keys],
                          args.bdmc_points, ch) for t in bdmc_steps}
    n_sim = max((len(r["lower"]) for r in bd.values() if r is not None), default=0)
    closed_at = closed_2se = None
    if any(v is not None for v in bd.values()):
        k_sim = max((k for k in bdmc_is if sim_is[k] is not None), default=None)
        lines += ["", (f"**BDMC on {n_sim} points simulated from the model**, {args.bdmc_chains} chains "
                      f"(+{pilots_of(args.bdmc_chains)} pilots forward), {args.bdmc_leapfrog} leapfrog"), "",
                  (f"| T | lower (forward AIS) ± SE | upper (reverse AIS) ± SE | gap ± SE | accept fwd / rev "
                  f"| upper − IS(K={k_sim}) ± SE | lower − IS(K={k_sim}) ± SE | grad evals / point | seconds | fraction "
                  f"| load 1 min |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k in bdmc_is:
            r = sim_is[k]
            if r is not None:
                out["bdmc"]["is"].append(is_row(r, k))
        for t in bdmc_steps:
            r = bd[t]
            if r is None:
                continue
            m = len(r["lower"])
            gap = paired(r["upper"], r["lower"])
            rate = r["grad_evals"] / r["seconds"]
            row = {"T": t, "chains": args.bdmc_chains, "leapfrog": args.bdmc_leapfrog, "points": m,
                   "lower": {**mean_se(r["lower"]), "mc_se": pooled_mc_se(r["lower_mc_se"])},
                   "upper": {**mean_se(r["upper"]), "mc_se": pooled_mc_se(r["upper_mc_se"])}, "gap": gap,
                   "gap_median": sorted(u - l for u, l in zip(r["upper"], r["lower"]))[m // 2],
                   "accept": {"forward": sum(r["forward_accept"]) / m, "reverse": sum(r["reverse_accept"]) / m},
                   "grad_evals": r["grad_evals"], "grad_evals_per_point": r["grad_evals"] / m, "seconds": r["seconds"],
                   "grad_evals_per_second": rate, "fraction": rate * FLOPS_GRAD / 1e9 / r["peak_gflops"],
                   "fraction_executed": rate * FLOPS_GRAD_EXECUTED / 1e9 / r["peak_gflops"],
                   "load_1min": r["load_1min"], "is": {}}
            for k in bdmc_is:
                if sim_is[k] is not None:
                    row["is"][str(k)] = {"upper_minus_is": paired(r["upper"], sim_is[k]["log_px"]),
                                         "lower_minus_is": paired(r["lower"], sim_is[k]["log_px"])}
            out["bdmc"]["rows"].append(row)
            if closed_at is None and gap["mean"] < 1.0:
                closed_at = t
            if closed_2se is None and gap["mean"] + 2 * gap["se"] < 1.0:
                closed_2se = t
            ie = row["is"].get(str(k_sim))
            lines.append(f"| {t} | {pm(row['lower'])} | {pm(row['upper'])} | {pm(gap, 3)} "
                         f"| {row['accept']['forward']:.2f} / {row['accept']['reverse']:.2f} "
                         f"| {pm(ie['upper_minus_is'], 3) if ie else '–'} | {pm(ie['lower_minus_is'], 3) if ie else '–'} "
                         f"| {row['grad_evals_per_point']:.0f} | {row['seconds']:.0f} | {row['fraction']:.2f} "
                         f"| {loads(r)} |")
        for row in out["bdmc"]["is"]:
            lines.append(f"\nIS on the simulated points, K={row['K']}: {pm(row['log_px'])} nats, MC SE "
                         f"{row['mc_se']:.3f}, k̂ > 0.7 for {row['khat_gt_0.7']:.1%}")
        lines.append(f"\nBDMC sandwich under 1 nat: mean gap from T = {closed_at or 'none measured'}; "
                     f"mean + 2 SE from T = {closed_2se or 'none measured'}")
    out["bdmc"]["gap_under_1_nat_at_T"] = closed_at
    out["bdmc"]["gap_plus_2se_under_1_nat_at_T"] = closed_2se

    # ---- recommendation from the measured throughput
    rows = out["test"]["ais"] + out["tune"]["rows"] + out["bdmc"]["rows"]
    if rows:
        fractions = sorted(r["fraction"] for r in rows)
        frac = fractions[len(fractions) // 2]
        peak1 = max(r.get("peak_gflops", 0) for r in out["test"]["ais"] + out["tune"]["rows"]) if (
            out["test"]["ais"] or out["tune"]["rows"]) else None
        peak_multi = None if peak1 is None else peak1 * args.budget_cores / args.threads
        rate = None if peak_multi is None else frac * peak_multi * 1e9 / FLOPS_GRAD  # grad evals / s on budget cores
        budget = None if rate is None else rate * args.budget_seconds / args.budget_points
        measured_rate = sorted(r["grad_evals_per_second"] for r in rows)[len(rows) // 2]
        out["recommendation"] = {
            "median_fraction": frac, "best_peak_gflops_measured": peak1,
            "assumed_peak_gflops_on_budget_cores": peak_multi,
            "projected_grad_evals_per_second": rate, "measured_grad_evals_per_second_median": measured_rate,
            "grad_evals_per_point_in_budget": budget, "budget_seconds": args.budget_seconds,
            "budget_points": args.budget_points, "budget_cores": args.budget_cores, "extrapolated": True,
            "note": ("projected rate = median measured fraction x (best measured matmul peak per thread x budget cores); "
                     "assumes the fraction holds at 2 threads and a quiet machine"),
            "candidates": [],
        }
        if budget:
            for c, l in ((16, 10), (8, 10), (4, 10), (16, 5)):
                t = int((budget / (c + pilots_of(c)) - 1) / l) + 1
                sec = (c + pilots_of(c)) * (1 + (t - 1) * l) * args.budget_points / rate
                out["recommendation"]["candidates"].append({"chains": c, "leapfrog": l, "max_T": t, "seconds": sec})
            lines += ["", (f"Projected (extrapolated) rate on {args.budget_cores} quiet cores: {rate:,.0f} gradient "
                          f"evaluations/s (median fraction {frac:.2f} × {peak_multi:.0f} GFLOP/s); a {args.budget_seconds:.0f} s "
                          f"budget for {args.budget_points} points allows {budget:,.0f} per point:")]
            for cand in out["recommendation"]["candidates"]:
                lines.append(f"- {cand['chains']} chains (+{pilots_of(cand['chains'])}), leapfrog {cand['leapfrog']}: "
                             f"T ≤ {cand['max_T']} ({cand['seconds']:.0f} s)")

    out["markdown"] = "\n".join(lines)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("\n" + out["markdown"])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
