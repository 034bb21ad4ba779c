"""``evaluate_run``: score a trained run on one split and write its report and pictures.

The estimators live in their own modules (:mod:`pyro_vae.importance` for importance
sampling); this module loads the run (:mod:`pyro_vae.runs`), transforms the split,
calls them, and writes ``report.json`` (:mod:`pyro_vae.report`) and the plots
(:mod:`pyro_vae.plots`). ``evaluate``, ``Evaluation`` and the thresholds are re-exported
here, where they were first defined.

Example:
    >>> ev = evaluate_run("runs/default", num_samples=100, k_list=(1, 10, 100))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt

from . import plots
from .importance import DEFAULT_K_LIST, evaluate
from .report import KHAT_THRESHOLD, Evaluation, PosteriorCollapseWarning, write_report
from .runs import load_run

__all__ = ["Evaluation", "evaluate", "evaluate_run", "PosteriorCollapseWarning", "DEFAULT_K_LIST", "KHAT_THRESHOLD"]


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    num_samples: int = 1000,
    k_list: Sequence[int] = DEFAULT_K_LIST,
    out: str | Path | None = None,
    *,
    seed: int | None = 0,
    batch_size: int | None = None,
    which: str = "best",
    fabric: Any = None,
    verbose: bool = True,
) -> Evaluation:
    """Evaluate a trained run on one split; write ``report.json`` and three plots.

    Loads the model with :func:`pyro_vae.runs.load_run`, transforms the split with
    ``train=False`` (the fixed binarization/dequantization draws) and writes, into
    ``out`` (default: the run directory), ``report.json``, ``bound_vs_k.png``,
    ``khat_hist.png`` and ``kl_per_dim.png``; prints the summary.

    Args:
        run_dir: A run directory (or checkpoint file) written by :func:`pyro_vae.train.fit`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_samples: ``K``.
        k_list: Bounds ``L_k`` to report.
        out: Output directory.
        seed: Seed of the draws (reproducible reports by default).
        batch_size: Points per batch.
        which: ``"best"`` or ``"last"`` checkpoint.
        fabric: Optional launched Fabric to shard the work (rank 0 writes).
        verbose: Print the summary.

    Example:
        >>> ev = evaluate_run("runs/default", num_samples=100, k_list=(1, 10, 100))  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    vae, cfg, dataset, transform = load_run(run_dir, which=which)
    x = transform(dataset.split(split)[0], train=False)
    ev = evaluate(vae, x, num_samples, k_list, batch_size=batch_size, levels=transform.density_levels,
                  fabric=fabric, seed=seed)
    ev.extra.update({"run_dir": str(run_dir), "split": split, "dataset": dataset.name, "data": transform.describe(),
                     "checkpoint": which, "likelihood": vae.likelihood.name, "prior": cfg.model.prior})
    if fabric is None or fabric.is_global_zero:
        out_dir = Path(out) if out is not None else (run_dir if run_dir.is_dir() else run_dir.parent)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_report(out_dir / "report.json", ev)
        for fig in (plots.bound_vs_k(ev, out_dir / "bound_vs_k.png"), plots.khat_histogram(ev, out_dir / "khat_hist.png"),
                    plots.kl_per_dim(ev, out_dir / "kl_per_dim.png")):
            plt.close(fig)
        if verbose:
            print(ev.summary())
    return ev
