"""One log-likelihood table for the model family: VAE, AAE and GAN beside an exact EM baseline.

Each trained model (a :class:`~pyro_vae.jobs.train.FitResult` of any objective) is scored on the
same test points by AIS, and its AIS is checked by BDMC on points simulated from that
model; the EM baseline is fitted on the same training split in the same representation and
scored exactly. All figures are nats per test point with the SE over points, plus the
paired difference to the baseline on identical points (``docs/theory/family.md`` says
why one estimator for all of them).

AIS starts where :func:`pyro_vae.objectives.adversarial.ais_init` says, as :func:`pyro_vae.jobs.evaluate.evaluate_run`
does: from the guide for the ELBO objectives, from the prior for ``aae``/``gan``/``ali``: an adversarial encoder is not fitted to
the posterior, and annealing from it can fail (a BDMC gap of hundreds of nats).

Example:
    >>> from pyro_vae.jobs.train import fit
    >>> cfg = {"train": {"epochs": 1}, "data": {"binarize": "threshold"}, "model": {"likelihood": "bernoulli"}}
    >>> models = {"VAE": fit(cfg, run_dir=None, progress=False)}  # doctest: +SKIP
    >>> rows = family_table(models, points=20, steps=10, bdmc_points=5)  # doctest: +SKIP
    >>> print(markdown_table(rows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
import torch

from pyro_vae.baselines.registry import make_baseline
from pyro_vae.core.stats import LogLikelihood
from pyro_vae.core.units import Representation
from pyro_vae.data.files import UnreadableFileError, safe_torch_load
from pyro_vae.estimators.ais import ais
from pyro_vae.estimators.bdmc import bdmc
from pyro_vae.estimators.importance import evaluate
from pyro_vae.estimators.settings import BDMC_POINTS, IS_SAMPLES, Settings
from pyro_vae.objectives.adversarial import ais_init
from pyro_vae.plots.figures import image_grid, to_images

__all__ = ["family_table", "markdown_table", "sample_grids"]

BASELINE_FOR = {"binary": "mob"}  # the exact baseline on each representation the table can pair


def _test_points(models: Mapping[str, Any], points: int | None) -> torch.Tensor:
    """The test split in model space, required identical for every model (same data, same representation)."""
    xs = {name: r.transform(r.dataset.test[:points], train=False) for name, r in models.items()}
    first_name, first = next(iter(xs.items()))
    for name, x in xs.items():
        if x.shape != first.shape or not torch.equal(x, first):
            raise ValueError(f"models {first_name!r} and {name!r} were trained on different data or representations; "
                             "a log-likelihood table needs the same test points for every row.")
    return first


def family_table(models: Mapping[str, Any], *, points: int | None = None, steps: int = Settings.steps,
                 chains: int = Settings.chains, leapfrog: int = Settings.leapfrog, bdmc_points: int = BDMC_POINTS,
                 is_samples: int = IS_SAMPLES, baseline: str | None = "auto", components: int = 10, seed: int = 0,
                 progress: bool | None = False, cache: str | Path | None = None) -> list[dict[str, Any]]:
    """Score every model on the same test points: AIS, IS, BDMC gap, and an exact EM baseline row.

    Args:
        models: Row name -> :class:`~pyro_vae.jobs.train.FitResult` (all on the same data config).
        points: Score the first ``points`` test points (default: all).
        steps: AIS ``T`` (sigmoid schedule); BDMC uses the same.
        chains: AIS chains per point.
        leapfrog: Leapfrog steps per HMC transition.
        bdmc_points: Points simulated from each model for its BDMC gap (0: none).
        is_samples: ``K`` of the importance-sampling column (its proposal is the guide).
        baseline: ``"auto"`` (mixture of Bernoullis on binary data), a baseline name, or ``None``.
        components: The baseline's components.
        seed: Seed of every sampler and of the baseline's initialization.
        progress: Progress bars.
        cache: A folder keeping each model's scores (``<name>.pt``, written atomically) once
            computed, so a long table killed half-way resumes at the next model. A cached
            score is reused only if it was made with the same settings and test points.

    Returns:
        One dict per row: ``model``, ``objective``, ``init``, ``log_px`` and ``se`` (AIS or exact),
        ``is``/``is_se``, ``bdmc_gap``/``bdmc_gap_se``, ``vs_baseline`` (paired, when there
        is a baseline), ``train_seconds``, ``eval_seconds``.
    """
    x = _test_points(models, points)
    settings = {"points": len(x), "steps": steps, "chains": chains, "leapfrog": leapfrog, "bdmc_points": bdmc_points,
                "is_samples": is_samples, "seed": seed, "data": float(x.double().sum())}
    rows, scored = [], {}
    for name, result in models.items():
        file = Path(cache) / f"{name}.pt" if cache is not None else None
        if file is not None and file.exists():
            try:  # the safe loader: a cache is plain tensors and containers, never pickled objects
                kept = safe_torch_load(file)
            except UnreadableFileError:
                kept = {}  # a damaged cache entry is scored anew
            if kept.get("settings") == settings:
                rows.append(kept["row"])
                scored[name] = _log_likelihood_from(kept["log_likelihood"])
                continue
        vae, objective = result.vae.eval(), result.config.train.objective
        init, tic = ais_init(objective), time.perf_counter()
        run = ais(vae, x, steps=steps, chains=chains, leapfrog=leapfrog, init=init, seed=seed, progress=progress)
        importance = evaluate(vae, x, num_samples=is_samples, k_list=(1, is_samples), seed=seed, progress=progress)
        gap = bdmc(vae, bdmc_points, steps=steps, chains=chains, leapfrog=leapfrog, init=init, seed=seed,
                   event_shape=x.shape[1:], progress=progress).to_dict()["gap"] if bdmc_points else None
        scored[name] = run.log_likelihood
        rows.append({
            "model": name, "objective": objective, "init": init,
            "log_px": run.log_likelihood.mean, "se": run.log_likelihood.se,
            "is": importance.log_likelihood.mean, "is_se": importance.log_likelihood.se, "is_samples": is_samples,
            "frac_khat_above_0_7": importance.frac_unreliable,
            "bdmc_gap": gap["mean"] if gap else None, "bdmc_gap_se": gap["se"] if gap else None,
            "train_seconds": sum(h.get("seconds", 0.0) for h in result.history),
            "eval_seconds": time.perf_counter() - tic,
        })
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"settings": settings, "row": rows[-1], "log_likelihood": _log_likelihood_to(scored[name])},
                       file.with_suffix(".tmp"))
            file.with_suffix(".tmp").replace(file)
    first = next(iter(models.values()))
    representation = str(scored[next(iter(scored))].representation)
    name = BASELINE_FOR.get(representation) if baseline == "auto" else baseline
    if name:
        tic = time.perf_counter()
        em = make_baseline(name, components).fit(first.transform(first.dataset.train, train=False), seed=seed)
        exact = em.evaluate(x)
        rows.append({"model": f"{name} (EM, {components} components)", "objective": "em", "init": "exact",
                     "log_px": exact.mean, "se": exact.se, "is": None, "is_se": None, "is_samples": 0,
                     "frac_khat_above_0_7": None, "bdmc_gap": None, "bdmc_gap_se": None,
                     "train_seconds": time.perf_counter() - tic, "eval_seconds": 0.0})
        for row, ll in zip(rows, scored.values()):
            row["vs_baseline"] = ll.paired_difference(exact)
    return rows


def _pm(mean: float | None, se: float | None, digits: int = 2) -> str:
    return "–" if mean is None or not math.isfinite(mean) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def _log_likelihood_to(ll: LogLikelihood) -> dict[str, Any]:
    return {"name": ll.name, "per_point": ll.per_point, "num_dims": ll.num_dims, "levels": ll.levels,
            "mc_se": ll.mc_se, "extra": ll.extra, "kind": ll.representation.kind,
            "representation_levels": ll.representation.levels}


def _log_likelihood_from(raw: dict[str, Any]) -> LogLikelihood:
    return LogLikelihood(raw["name"], raw["per_point"], raw["num_dims"], raw["levels"], raw["mc_se"], raw["extra"],
                         Representation(raw["kind"], raw["representation_levels"]))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`family_table` as a Markdown table (nats per test point)."""
    head = ("| model | objective, estimator | log p(x) | IS, guide proposal | BDMC gap | "
            "− baseline, paired | train s | eval s |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        paired = r.get("vs_baseline")
        how = "exact log-likelihood" if r["init"] == "exact" else f"{r['objective']}, AIS from the {r['init']}"
        lines.append(
            f"| {r['model']} | {how} | {_pm(r['log_px'], r['se'])} | "
            f"{_pm(r['is'], r['is_se'])} | {_pm(r['bdmc_gap'], r['bdmc_gap_se'], 3)} | "
            f"{_pm(paired['mean'], paired['se']) if paired else '–'} | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def sample_grids(models: Mapping[str, Any], path: str | Path | None = None, n: int = 64, seed: int = 0):
    """Test images beside draws x ~ p(x|z), z ~ p(z) from each model, one panel per row of the table."""
    first = next(iter(models.values()))
    panels = [("test data", to_images(first.transform(first.dataset.test[:n], train=False), first.vae))]
    for name, result in models.items():
        torch.manual_seed(seed)
        panels.append((name, to_images(result.vae.sample(n), result.vae)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (title, images) in zip(axes, panels):
        image_grid(images, nrow=int(math.sqrt(n)), ax=ax, title=title)
    fig.suptitle("draws x ~ p(x|z), z ~ p(z)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
