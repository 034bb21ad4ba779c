"""``evaluate_run``: score a trained run on one split and write its report and pictures.

The estimators live in their own modules (:mod:`pyro_vae.estimators.importance` for importance
sampling); this module loads the run (:mod:`pyro_vae.runs.rundir`), transforms the split,
calls them, and writes ``report.json`` (:mod:`pyro_vae.results.report`) and the plots
(:mod:`pyro_vae.plots.figures`).

Example:
    >>> ev = evaluate_run("runs/default", num_samples=100, k_list=(1, 10, 100))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt

from pyro_vae.estimators.ais import AISResult, ais
from pyro_vae.estimators.bdmc import BDMCResult, bdmc
from pyro_vae.estimators.importance import evaluate
from pyro_vae.estimators.settings import IS_SAMPLES, K_LIST, Settings
from pyro_vae.models.target import simulate
from pyro_vae.objectives.adversarial import ais_init
from pyro_vae.plots import figures as plots
from pyro_vae.results.report import KHAT_THRESHOLD, Evaluation, json_safe, write_report
from pyro_vae.runs.rundir import load_run, run_home

__all__ = ["evaluate_run", "which_to_quote", "evaluation_tags", "keep_evaluations", "report_text"]


def evaluation_tags(split: str, points: int, seed: int | None, samples: int, method: str, steps: int, chains: int,
                    leapfrog: int, bdmc_points: int) -> dict[str, str]:
    """A name per estimator run, from its method and settings: the key it is kept under, and its pictures' suffix.

    Example:
        >>> evaluation_tags("test", 180, 0, 1000, "ais", 100, 16, 10, 20)["ais"]
        'test_ais_T100_C16_L10_n180_seed0'
    """
    tags = {"is": f"{split}_is_K{samples}_n{points}_seed{seed}"}
    if method == "ais":
        tags["ais"] = f"{split}_ais_T{steps}_C{chains}_L{leapfrog}_n{points}_seed{seed}"
    if bdmc_points:
        tags["bdmc"] = f"simulated_bdmc_T{steps}_C{chains}_L{leapfrog}_n{bdmc_points}_seed{seed}"
    return tags


def keep_evaluations(report: Path, ev: Evaluation, tags: dict[str, str], pictures: dict[str, list[str]]) -> dict:
    """Every evaluation of this output folder, the earlier ones read back from ``report``, this one's added.

    An evaluation with other settings never replaces another: each is kept under its tag
    (:func:`evaluation_tags`); the same settings again replace their own earlier entry.
    """
    kept: dict[str, Any] = {}
    if report.exists():
        try:
            kept = dict(json.loads(report.read_text()).get("evaluations") or {})
        except (OSError, ValueError, AttributeError):
            kept = {}  # a damaged report.json holds nothing to keep; this evaluation starts it anew
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sections = {"is": ev, **ev.sections}
    for kind, tag in tags.items():
        figures = json_safe(sections[kind].to_dict())
        kept[tag] = {"estimator": kind, "written": stamp, "pictures": pictures.get(kind, []), **figures}
    return kept


def report_text(evaluations: dict[str, dict], run: str) -> str:
    """``report.txt``: one line per kept evaluation, newest last, read from ``report.json``'s ``evaluations``."""
    lines = [f"{run}: every evaluation kept in report.json (nats per point, mean ± SE over points)"]
    for tag, e in sorted(evaluations.items(), key=lambda item: item[1].get("written", "")):
        if e["estimator"] == "bdmc":
            value = (f"lower {e['lower']['mean']:.3f} ± {e['lower']['se']:.3f}, upper {e['upper']['mean']:.3f} ± "
                     f"{e['upper']['se']:.3f}, gap {e['gap']['mean']:.4f} ± {e['gap']['se']:.4f}")
        else:
            ll = e["log_likelihood"]
            value = f"log p(x) {ll['mean']:.3f} ± {ll['se']:.3f} (MC SE {ll['mc_se']:.4f})"
        lines.append(f"{e['written']}  {e['estimator'].upper():5s} {tag}: {value}")
    return "\n".join(lines) + "\n"


def which_to_quote(importance: Evaluation) -> str:
    """A sentence or two saying which log-likelihood to quote and why (reads ``importance.sections``)."""
    ais_result: AISResult | None = importance.sections.get("ais")
    bdmc_result: BDMCResult | None = importance.sections.get("bdmc")
    ll = importance.to_dict()["log_likelihood"]
    frac = importance.frac_unreliable
    is_text = f"IS (K={importance.num_samples}) gives {ll['mean']:.2f} ± {ll['se']:.2f} nats"
    if ais_result is None:
        if frac <= 0.1:
            return (f"Quote: {is_text}; PSIS k̂ > {KHAT_THRESHOLD} on only {100 * frac:.1f}% of points, so the "
                    "importance weights are well behaved.")
        return (f"Caution: {is_text}, but PSIS k̂ > {KHAT_THRESHOLD} on {100 * frac:.1f}% of points, so these "
                "estimates may be far below log p(x); certify them with `--method ais --bdmc 50`.")
    a = ais_result.to_dict()["log_likelihood"]
    text = (f"Quote: AIS (T={ais_result.settings.steps}) gives {a['mean']:.2f} ± {a['se']:.2f} nats (MC SE "
            f"{a['mc_se']:.3f}); it is {a['mean'] - ll['mean']:+.2f} nats from {is_text} "
            f"(k̂ > {KHAT_THRESHOLD} on {100 * frac:.1f}% of points).")
    if bdmc_result is None:
        return text + " Add --bdmc N to bound AIS's error on simulated data."
    gap = bdmc_result.to_dict()["gap"]
    verdict = "small enough to quote AIS as the log-likelihood" if gap["mean"] < 1.0 else \
        "too wide to certify AIS to 1 nat: raise --steps"
    return text + (f" On {bdmc_result.num_points} points simulated from the model the BDMC sandwich is "
                   f"{gap['mean']:.3f} ± {gap['se']:.3f} nats wide at the same T, {verdict}.")


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    num_samples: int = IS_SAMPLES,
    k_list: Sequence[int] = K_LIST,
    out: str | Path | None = None,
    *,
    seed: int | None = 0,
    batch_size: int | None = None,
    which: str = "best",
    fabric: Any = None,
    verbose: bool = True,
    method: str = "is",
    steps: int = Settings.steps,
    chains: int = Settings.chains,
    leapfrog: int = Settings.leapfrog,
    bdmc_points: int = 0,
    data_root: str | None = None,
    num_points: int | None = None,
    progress: bool | None = None,
    keep_log_weights: bool = False,
    trust_code: bool = False,
) -> Evaluation:
    """Evaluate a trained run on one split; write ``report.json`` and the plots.

    Loads the model with :func:`pyro_vae.runs.rundir.load_run`, transforms the split with
    ``train=False`` (the fixed binarization/dequantization draws), scores it by
    importance sampling and, with ``method="ais"``, by annealed importance sampling; with
    ``bdmc_points > 0`` also runs BDMC on that many points simulated from the model at
    ``T/100``, ``T/10`` and ``T`` (simulated through the model's own observed site, so any
    model that meets the protocol of :mod:`pyro_vae.models.target` works). Writes into ``out`` (default: the run directory)
    ``report.json`` (this evaluation's IS figures at the top level, ``ais``/``bdmc`` sections
    beside them, and ``evaluations``: every evaluation of the folder kept under a tag of its
    method and settings, see :func:`evaluation_tags`), ``report.txt`` (one line per kept
    evaluation), and pictures named after the evaluation that drew them:
    ``bound_vs_k_<tag>.png``, ``khat_hist_<tag>.png``, ``kl_per_dim_<tag>.png`` and, with
    BDMC, ``bdmc_sandwich_<tag>.png``; prints the summary and which number to quote.

    Returns:
        The importance-sampling :class:`~pyro_vae.results.report.Evaluation`; the AIS and BDMC
        results are in its ``sections`` (``"ais"``, ``"bdmc"``), the sentence saying which
        number to quote in ``extra["quote"]``.

    Args:
        run_dir: A run directory (or checkpoint file) written by :func:`pyro_vae.jobs.train.fit`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_samples: ``K`` of importance sampling.
        k_list: Bounds ``L_k`` to report.
        out: Output directory.
        seed: Seed of the draws (reproducible reports by default).
        batch_size: Points per batch.
        which: ``"best"`` or ``"last"`` checkpoint.
        fabric: Optional launched Fabric to shard the work (rank 0 writes).
        verbose: Print the summary.
        method: ``"is"`` or ``"ais"``.
        steps: AIS ``T``.
        chains: AIS chains per point.
        leapfrog: Leapfrog steps per HMC transition.
        bdmc_points: Points to simulate for BDMC (0: no BDMC).
        data_root: Where the data lives now, if it moved since training.
        num_points: Score only the first ``num_points`` points of the split (default: all).
        progress: Progress bars with ETA: ``True``, ``False`` or ``None`` (only on a terminal).
        keep_log_weights: Keep the ``(N, K)`` importance log-weights for ``to_inference_data()``.
        trust_code: Import a received run's recorded import paths (see :mod:`pyro_vae.runs.trust`).

    Example:
        >>> result = evaluate_run("runs/default", method="ais", bdmc_points=50)  # doctest: +SKIP
    """
    if method not in ("is", "ais"):
        raise ValueError(f"method must be 'is' or 'ais', got {method!r}.")
    if bdmc_points < 0:
        raise ValueError(f"bdmc_points must be >= 0, got {bdmc_points}.")
    if num_points is not None and num_points < 1:
        raise ValueError(f"num_points must be >= 1 or None (all), got {num_points}.")
    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_home(run_dir)
    if fabric is None or fabric.is_global_zero:  # an unwritable folder is found before the computation, not after
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe = out_dir / ".write_test.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"output folder {str(out_dir)!r} is not writable ({exc.strerror}); pass another --out.") from None
    vae, cfg, dataset, transform = load_run(run_dir, which=which, data_root=data_root, trust_code=trust_code)
    x = transform(dataset.split(split)[0][:num_points], train=False)
    levels = transform.density_levels
    ev = evaluate(vae, x, num_samples, k_list, batch_size=batch_size, levels=levels, fabric=fabric, seed=seed,
                  progress=progress, keep_log_weights=keep_log_weights)
    provenance = {"run_dir": str(run_dir), "objective": cfg.train.objective, "split": split, "dataset": dataset.name,
                  "data": transform.describe(), "checkpoint": which, "model": getattr(cfg.model, "name", None),
                  "likelihood": getattr(getattr(vae, "likelihood", None), "name", None),
                  "prior": getattr(cfg.model, "prior", None)}
    ev.extra.update(provenance)
    init = ais_init(cfg.train.objective)  # the prior for aae/gan/ali, whose encoders are not posteriors
    sampler = {"chains": chains, "leapfrog": leapfrog, "init": init, "fabric": fabric, "seed": seed, "progress": progress}
    if method == "ais":
        ev.sections["ais"] = ais(vae, x, steps=steps, levels=levels, batch_size=batch_size, **sampler)
    curve: list[dict[str, Any]] = []
    if bdmc_points:
        data = simulate(vae, bdmc_points, like=x, seed=seed)  # through the model's own observed site
        for t in sorted({max(2, steps // 100), max(2, steps // 10), steps}):
            run = bdmc(vae, steps=t, data=data, **sampler)
            d = run.to_dict()
            curve.append({"steps": t, "lower": d["lower"], "upper": d["upper"], "gap": d["gap"],
                          "is": d["importance_sampling"], "seconds": d["seconds"]})
        ev.sections["bdmc"] = run
        ev.extra["bdmc_curve"] = curve
    ev.extra["quote"] = which_to_quote(ev)
    tags = evaluation_tags(split, len(x), seed, num_samples, method, steps, chains, leapfrog, bdmc_points)
    if fabric is None or fabric.is_global_zero:
        run = run_home(run_dir).name
        pictures = {"is": [f"bound_vs_k_{tags['is']}.png", f"khat_hist_{tags['is']}.png", f"kl_per_dim_{tags['is']}.png"]}
        if curve:
            pictures["bdmc"] = [f"bdmc_sandwich_{tags['bdmc']}.png"]
        ev.extra["evaluations"] = keep_evaluations(out_dir / "report.json", ev, tags, pictures)
        write_report(out_dir / "report.json", ev, ev.sections)
        (out_dir / "report.txt").write_text(report_text(ev.extra["evaluations"], run))
        figures = [plots.bound_vs_k(ev, out_dir / pictures["is"][0], run=run),
                   plots.khat_histogram(ev, out_dir / pictures["is"][1], run=run),
                   plots.kl_per_dim(ev, out_dir / pictures["is"][2], run=run)]
        if curve:
            figures.append(plots.bdmc_sandwich(
                [r["steps"] for r in curve], [r["lower"]["mean"] for r in curve], [r["upper"]["mean"] for r in curve],
                [r["lower"]["mc_se"] for r in curve], [r["upper"]["mc_se"] for r in curve],
                is_value=curve[-1]["is"]["mean"] if curve[-1]["is"] else None,
                title=f"BDMC on {bdmc_points} simulated points", path=out_dir / pictures["bdmc"][0], run=run))
        for fig in figures:
            plt.close(fig)
        if verbose:
            print("\n".join([ev.summary(), *(section.summary() for section in ev.sections.values()), "",
                             ev.extra["quote"]]))
    return ev
