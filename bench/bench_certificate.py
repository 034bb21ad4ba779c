"""Benchmark: the certificate, ``pyro-vae evaluate RUN --method ais --bdmc 20``, end to end.

Trains the default digits run (``pyro-vae train``, about 30 s) into a temporary folder,
or reuses ``--run``, then times the certificate command as a user runs it: a fresh
``python -m pyro_vae.cli evaluate RUN --method ais --bdmc 20 --no-progress`` process per
repeat (imports, loading, importance sampling on the test split, AIS on it, BDMC at
T/100, T/10 and T on 20 simulated points with their importance-sampling comparisons,
report and pictures), writing into a temporary ``--out`` so the run directory is left as
it was. Prints and writes the median wall time over ``--repeats`` runs, the CPU time of
each (user + system of the child: a figure that moves less with the machine's load than
the wall time), and the IS, AIS and BDMC figures read back from ``report.json``.

``--src DIR`` runs the package found in ``DIR`` (a copy of an older tree) instead of this
one, to time a before and an after in the same session.

Usage:
    python bench/bench_certificate.py [--run runs/default] [--repeats 3] [--out bench/results/certificate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from _environment import environment  # noqa: E402  (bench/ is on sys.path when a script runs)


def _env(src: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(workdir: Path, src: Path) -> Path:
    """The default digits run, trained into ``workdir/runs/default``."""
    subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", "--no-progress"], cwd=workdir, env=_env(src),
                   check=True, stdout=subprocess.DEVNULL)
    return workdir / "runs" / "default"


def certify(run: Path, src: Path, args: argparse.Namespace) -> dict:
    """One timed certificate in a fresh process; its figures from ``report.json``."""
    with tempfile.TemporaryDirectory(prefix="certificate_") as out:
        cmd = [sys.executable, "-m", "pyro_vae.cli", "evaluate", str(run), "--method", "ais", "--bdmc",
               str(args.bdmc), "--steps", str(args.steps), "--no-progress", "--out", out]
        cpu0, tic = _children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, env=_env(src), capture_output=True, text=True)
        seconds, cpu = time.perf_counter() - tic, _children_cpu() - cpu0
        if proc.returncode:
            raise SystemExit(f"certificate failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        report = json.loads((Path(out) / "report.json").read_text())
    ais, bdmc = report["ais"], report["bdmc"]
    return {
        "seconds": seconds, "cpu_seconds": cpu,
        "is": {k: report["log_likelihood"][k] for k in ("mean", "se", "mc_se")},
        "ais": {**{k: ais["log_likelihood"][k] for k in ("mean", "se", "mc_se")}, "seconds": ais["seconds"],
                "accept_rate": ais["accept_rate"]["mean"]},
        "bdmc": {"lower": bdmc["lower"]["mean"], "upper": bdmc["upper"]["mean"], "gap": bdmc["gap"]["mean"],
                 "gap_se": bdmc["gap"]["se"], "seconds": bdmc["seconds"]},
        "bdmc_curve": [{"steps": r["steps"], "gap": r["gap"]["mean"], "seconds": r["seconds"]}
                       for r in report.get("bdmc_curve", [])],
        "stdout": proc.stdout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained default run to reuse (default: train one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bdmc", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--src", type=Path, default=REPO, help="the source tree whose pyro_vae runs (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "certificate.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="certificate_run_") as workdir:
        run = args.run.resolve() if args.run else train(Path(workdir), args.src.resolve())
        runs = []
        for i in range(args.repeats):
            runs.append(certify(run, args.src.resolve(), args))
            r = runs[-1]
            print(f"repeat {i + 1}/{args.repeats}: {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU; "
                  f"IS {r['is']['mean']:.3f} ± {r['is']['se']:.3f}, AIS {r['ais']['mean']:.3f} ± {r['ais']['se']:.3f} "
                  f"(MC SE {r['ais']['mc_se']:.4f}), BDMC gap {r['bdmc']['gap']:.4f} ± {r['bdmc']['gap_se']:.4f}; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    last = runs[-1]
    result = {
        "command": f"pyro-vae evaluate RUN --method ais --bdmc {args.bdmc} --steps {args.steps} --no-progress",
        "src": str(args.src.resolve()), "run": str(args.run) if args.run else "trained afresh (default digits run)",
        "repeats": args.repeats, "seconds_median": statistics.median(r["seconds"] for r in runs),
        "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in runs),
        "seconds": [r["seconds"] for r in runs], "cpu_seconds": [r["cpu_seconds"] for r in runs],
        "is": last["is"], "ais": last["ais"], "bdmc": last["bdmc"], "bdmc_curve": last["bdmc_curve"],
        "torch": torch.__version__, "environment": environment(load_before=load_before),
    }
    print(last["stdout"])
    print(f"certificate: median {result['seconds_median']:.1f} s wall ({result['cpu_seconds_median']:.1f} s CPU) over "
          f"{args.repeats} runs; torch {torch.__version__}; AIS {last['ais']['mean']:.2f} ± {last['ais']['se']:.2f} nats, "
          f"BDMC gap {last['bdmc']['gap']:.2f} ± {last['bdmc']['gap_se']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
