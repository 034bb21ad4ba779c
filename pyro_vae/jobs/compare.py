"""``pyro-vae compare``: a trained VAE beside exact EM baselines, in the same units.

Each baseline is fitted on the run's own training split and scored on the split the
VAE is evaluated on, with the data in the representation it can model:

* ``ppca``, ``fa``, ``gmm``, ``gmm_full``: densities on dequantized values
  ``(level + u) / levels`` (fixed noise), valid and comparable with a continuous VAE;
* ``mob``: binary data, the VAE's own binarization when it has one, else ``> 0.5``.

Figures are nats per datapoint (mean ± SE) and bits per dimension. Bits/dim put
discrete masses (categorical, Bernoulli) and dequantized densities on one scale
(Theis et al., 2016); a binary model is only comparable with binary models, and the
``data`` column says which representation each row scored.

Example:
    >>> compare_run("runs/default", baselines=["ppca", "gmm"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from pyro_vae.baselines.registry import make_baseline
from pyro_vae.estimators.importance import evaluate
from pyro_vae.estimators.settings import IS_SAMPLES
from pyro_vae.models.views import latent_dims
from pyro_vae.plots.figures import comparison_chart, plt
from pyro_vae.runs.config import STOCK_MODEL
from pyro_vae.runs.rundir import load_run, read_history, run_home
from pyro_vae.core.stats import LogLikelihood
from pyro_vae.data.transforms import DataTransform

__all__ = ["BASELINE_DATA", "compare_run", "comparison_table"]

BASELINE_DATA = {"ppca": "dequantized", "fa": "dequantized", "gmm": "dequantized", "gmm_full": "dequantized", "mob": "binary"}
DEFAULT_COMPONENTS = {"gmm": 10, "gmm_full": 10, "mob": 10}


def _representation(transform: DataTransform) -> str:
    if transform.as_levels:
        return "levels"
    if transform.is_binary:
        return "binary"
    return "dequantized" if transform.dequantize else "continuous"


def _baseline_transform(kind: str, vae_transform: DataTransform, levels: int | None, seed: int) -> DataTransform:
    if kind == "binary":
        if vae_transform.is_binary:
            return vae_transform
        return DataTransform(levels, binarize="threshold", seed=seed)
    if levels is None:
        return DataTransform(None, seed=seed)
    return DataTransform(levels, dequantize=True, seed=seed)


def comparison_table(rows: Sequence[dict]) -> str:
    """A Markdown table of comparison rows, the comparable column first.

    Bits per dimension put probability masses (binary or level-valued data) and densities of
    dequantized data on one scale, so they come first. The nats columns are labelled by what
    they measure, ``log P(x)`` (a mass) or ``log p(x)`` (a density): a density in nats is not
    comparable with a mass, nor with a density of other data.
    """
    lines = [
        "| model | data | bits/dim (comparable) | nats: log P(x) mass or log p(x) density (± SE) | MC SE | ELBO | "
        "IWAE (largest K) | k̂ > 0.7 | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda v, p=2: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
        ll = r["log_likelihood"]
        kind = "density" if "dequantized" in r["data"] or "continuous" in r["data"] else "mass"
        lines.append(
            f"| {r['model']} | {r['data']} | {ll['bits_per_dim']:.4f} | {ll['mean']:.2f} ± {ll['se']:.2f} ({kind}) | "
            f"{fmt(ll['mc_se'], 3)} | {fmt(r.get('elbo'))} | {fmt(r.get('iwae_largest'))} | "
            f"{fmt(r.get('frac_khat_above_0_7'), 3)} | {fmt(r.get('fit_seconds'), 1)} |"
        )
    return "\n".join(lines)


def compare_run(run_dir: str | Path, baselines: Sequence[str] = ("ppca", "fa", "gmm", "mob"), components: int | None = None,
                split: str = "test", num_samples: int = IS_SAMPLES, seed: int = 0, quiet: bool = False,
                data_root: str | None = None, which: str = "best", *, num_points: int | None = None,
                batch_size: int | None = None, out: str | Path | None = None,
                progress: bool | None = None, trust_code: bool = False) -> list[dict]:
    """Fit baselines on the run's training split, score them and the VAE on ``split``.

    Writes ``compare.json``, ``compare.md`` and ``compare.png`` into ``out`` (default:
    the run directory). Where a baseline scores exactly the VAE's test data (same
    representation, same values: e.g. ``mob`` on the VAE's own binarization), its row
    also gets the **paired** difference VAE − baseline with its paired SE.

    Args:
        run_dir: A directory written by ``pyro-vae train``.
        baselines: Names from :data:`BASELINE_DATA`.
        components: Components for every baseline; default: the VAE's latent size for
            PPCA/FA and 10 for the mixtures.
        split: The split to score (``test`` by default, as ``pyro-vae evaluate``).
        num_samples: Importance samples for the VAE.
        seed: Seed of the VAE's importance draws and of the baselines' initialization.
        quiet: Print nothing.
        data_root: Where the run's data lives now, if it moved since training.
        which: ``"best"`` or ``"last"`` checkpoint of the VAE.
        num_points: Score only the first ``num_points`` points of ``split`` (default: all;
            the baselines still fit on the whole training split).
        batch_size: Points per batch of the VAE's importance sampling.
        out: Output folder.
        progress: Progress bars (VAE scoring, each EM fit): ``True``, ``False`` or ``None``
            (only on a terminal).
        trust_code: Import a received run's recorded import paths (see :mod:`pyro_vae.runs.trust`).
    """
    unknown = [b for b in baselines if b not in BASELINE_DATA]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; choose from {', '.join(BASELINE_DATA)}.")
    if num_points is not None and num_points < 1:
        raise ValueError(f"num_points must be >= 1 or None (all), got {num_points}.")
    run_dir = Path(run_dir)
    run_name = run_home(run_dir).name
    out_dir = Path(out) if out is not None else run_home(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae, cfg, dataset, transform = load_run(run_dir, which=which, data_root=data_root, trust_code=trust_code)
    x_raw_train, x_raw_test = dataset.train, dataset.split(split)[0][:num_points]

    x_vae = transform(x_raw_test, train=False)
    vae_eval = evaluate(vae, x_vae, num_samples=num_samples, k_list=[k for k in (1, 10, 100, 1000, 5000) if k <= num_samples],
                        levels=transform.density_levels, batch_size=batch_size, seed=seed, progress=progress)
    vae_ll = vae_eval.log_likelihood
    largest = max(vae_eval.iwae)
    history = read_history(run_dir)
    vae_row = {
        "model": cfg.model.label,
        "data": _representation(transform),
        **vae_ll.to_dict(),
        "num_dims": dataset.num_dims,
        "elbo": vae_eval.elbo.mean().item(),
        "iwae_largest": vae_eval.iwae[largest].mean().item(),
        "iwae_k": largest,
        "frac_khat_above_0_7": vae_eval.frac_unreliable,
        "fit_seconds": sum(row.get("seconds", 0.0) for row in history) or None,
    }
    rows = [vae_row]
    # The baselines' default size matches the model's latent dimensions per point.
    latent_size = cfg.model.latent_dim if cfg.model.name == STOCK_MODEL else latent_dims(vae, x_vae[:1])
    for name in baselines:
        kind = BASELINE_DATA[name]
        bt = _baseline_transform(kind, transform, dataset.levels, cfg.data.split_seed)
        k = components or DEFAULT_COMPONENTS.get(name, latent_size)
        model = make_baseline(name, k)
        tic = time.perf_counter()
        model.fit(bt(x_raw_train, train=False), seed=seed, progress=progress)
        fit_seconds = time.perf_counter() - tic
        x_b = bt(x_raw_test, train=False)
        ll: LogLikelihood = model.evaluate(x_b, levels=bt.density_levels)
        row = {"model": f"{name} (EM, {k} components)", "data": _representation(bt), **ll.to_dict(),
               "num_dims": dataset.num_dims, "fit_seconds": fit_seconds}
        same_data = x_b.shape == x_vae.shape and torch.equal(x_b.to(x_vae.dtype), x_vae)
        if same_data and vae_ll.representation.compatible(ll.representation):
            row["paired_vae_minus_this"] = vae_ll.paired_difference(ll)
        rows.append(row)

    table = comparison_table(rows)
    (out_dir / "compare.json").write_text(json.dumps(rows, indent=2, default=float))
    note = ("Bits/dim compare discrete masses and dequantized densities on one scale; "
            "binary rows are only comparable with binary rows.")
    paired = [f"- VAE − {r['model']}: {r['paired_vae_minus_this']['mean']:+.3f} ± {r['paired_vae_minus_this']['se']:.3f} "
              "nats (paired, same test points)" for r in rows[1:] if "paired_vae_minus_this" in r]
    paired_text = ("\n\nPaired differences on identical test data:\n" + "\n".join(paired)) if paired else ""
    (out_dir / "compare.md").write_text(
        f"# {run_name}: VAE vs exact EM baselines ({split} split, N={vae_eval.num_points})\n\n{table}\n\n{note}{paired_text}\n")
    plt.close(comparison_chart(rows, out_dir / "compare.png", run=run_name))
    if not quiet:
        print(table)
        print(note + paired_text)
    return rows
