"""Pictures of runs and results (matplotlib; image grids by ``torchvision.utils.make_grid``).

A leaf of the package: it takes a VAE, tensors, histories and result objects and
draws; which pictures a run gets is decided by :mod:`pyro_vae.runs.rundir` (training),
:mod:`pyro_vae.jobs.evaluate` (evaluation) and :mod:`pyro_vae.jobs.compare`. Every function
returns the :class:`matplotlib.figure.Figure` and saves a PNG when given ``path``;
``run`` puts the run's name in the title, and every axis says its quantity and unit.
Image data (``event_shape`` of 2 or 3 dimensions) is shown on the data's grey scale
(levels mapped to [0, 1]); tabular data (1-dimensional datapoints) is shown per feature.

    >>> import torch
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((8, 8), latent_dim=2, likelihood="gaussian", hidden=[16])
    >>> fig = sample_grid(vae, n=16, run="demo")
    >>> fig._suptitle.get_text()
    'demo: samples of the model, z ~ p(z)'
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: runs write files, never open windows
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from pyro_vae.models.views import generate, reconstruct  # noqa: E402
from pyro_vae.results.report import ACTIVE_THRESHOLD, COLLAPSE_KL  # noqa: E402  (the thresholds the report counts with)

if TYPE_CHECKING:
    from pyro_vae.results.report import Evaluation

__all__ = ["to_images", "image_grid", "is_tabular", "sample_grid", "reconstruction_grid", "training_curves"]

MAX_FEATURES = 12  # tabular pictures show the first features only: a panel per feature stays readable


def is_tabular(vae: Any, event_shape: Sequence[int] | None = None) -> bool:
    """Whether datapoints are feature vectors (``event_shape`` of one dimension), not images."""
    return len(event_shape if event_shape is not None else vae.event_shape) == 1


def to_images(x: Tensor, vae: Any, event_shape: Sequence[int] | None = None) -> Tensor:
    """Model-space image values -> ``(N, C, H, W)`` grey images in [0, 1].

    Level-valued data (a likelihood over integer levels) are divided by ``levels - 1``.
    """
    x = x.detach().float().cpu()
    levels = getattr(vae, "levels", None)
    if getattr(getattr(vae, "likelihood", None), "wants_levels", False) and levels:
        x = x / (levels - 1)
    shape = tuple(event_shape) if event_shape is not None else tuple(vae.event_shape)
    if len(shape) == 1:  # feature vectors: one strip per point (run pictures draw them per feature instead)
        x = x.reshape(-1, 1, 1, shape[0])
    else:
        x = x.reshape(-1, 1, *shape) if len(shape) == 2 else x.reshape(-1, *shape)
    return x.clamp(0, 1)


def image_grid(images: Tensor, nrow: int = 8, ax=None, title: str | None = None):
    """Draw ``(N, C, H, W)`` images as one grid on ``ax`` (a new figure if ``None``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def _suptitle(fig, what: str, run: str | None) -> None:
    fig.suptitle(f"{run}: {what}" if run else what, fontsize=10)


def _finish(fig, ax, path: str | Path | None):
    """The common ending of a single-axes chart: light grid, small legend, save."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path | None):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _feature_axes(num: int):
    cols = min(num, 4)
    fig, axes = plt.subplots(math.ceil(num / cols), cols, figsize=(2.6 * cols, 2.1 * math.ceil(num / cols)), squeeze=False)
    for ax in axes.flat[num:]:
        ax.set_visible(False)
    return fig, axes.flat


@torch.no_grad()
def sample_grid(vae: Any, n: int = 64, path: str | Path | None = None, seed: int = 0, run: str | None = None,
                data: Tensor | None = None, event_shape: Sequence[int] | None = None):
    """Samples from the model: the mean of p(x|z) beside a draw x ~ p(x|z), same z.

    The familiar smooth VAE samples are the *means*; the model's actual samples are the
    noisy draws on the right. For tabular data, per-feature histograms of ``max(n, 2000)``
    draws x ~ p(x|z) instead, over the histogram of ``data`` (model space) when given.
    ``vae`` is any model with Pyro ``model``/``guide`` (see :func:`pyro_vae.models.views.generate`);
    ``event_shape`` defaults to ``vae.event_shape``.
    """
    shape = tuple(event_shape) if event_shape is not None else tuple(vae.event_shape)
    tabular = is_tabular(vae, shape)
    with torch.random.fork_rng():  # fixed draws that leave the caller's RNG alone
        torch.manual_seed(seed)
        mean, draw = generate(vae, max(n, 2000) if tabular else n, shape)
    if tabular:
        return _feature_histograms(draw.cpu(), data, path, run)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.5))
    nrow = int(n**0.5)
    image_grid(to_images(mean, vae, shape), nrow, axes[0], "mean of p(x|z)")
    image_grid(to_images(draw, vae, shape), nrow, axes[1], "draw x ~ p(x|z)")
    _suptitle(fig, "samples of the model, z ~ p(z)", run)
    return _save(fig, path)


def _feature_histograms(draws: Tensor, data: Tensor | None, path, run):
    num = min(draws.shape[-1], MAX_FEATURES)
    fig, axes = _feature_axes(num)
    for j, ax in zip(range(num), axes):
        values = [draws[:, j].double().numpy()] + ([] if data is None else [data[:, j].detach().double().cpu().numpy()])
        span = (min(v.min() for v in values), max(v.max() for v in values))  # shared bins: model and data comparable
        ax.hist(values[0], bins=30, range=span, density=True, alpha=0.6, color="C1", label="model x ~ p(x)")
        if data is not None:
            ax.hist(values[1], bins=30, range=span, density=True, histtype="step", linewidth=1.5, color="C0", label="data")
        ax.set_title(f"feature {j}", fontsize=8)
        ax.set_xlabel("value (model space)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].set_ylabel("density", fontsize=7)
    axes[0].legend(fontsize=6)
    shown = f"first {num} of {draws.shape[-1]} features" if draws.shape[-1] > num else f"{num} features"
    _suptitle(fig, f"samples of the model against the data ({shown})", run)
    return _save(fig, path)


@torch.no_grad()
def reconstruction_grid(vae: Any, x: Tensor, path: str | Path | None = None, run: str | None = None):
    """Datapoints above their reconstructions, the mean of p(x | z = E_q[z|x]); rows are labelled.

    For tabular data: each feature's reconstruction against its data value, on the
    diagonal where reconstruction is perfect.
    """
    recon = reconstruct(vae, x)
    shape = tuple(x.shape[1:])
    if is_tabular(vae, shape):
        return _feature_scatter(x, recon, path, run)
    originals, recons = to_images(x, vae, shape), to_images(recon, vae, shape)
    per_row = 8
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], recons[start : start + per_row]]
    fig, ax = plt.subplots(figsize=(5.2, 4.5 * len(rows) / per_row + 0.5))
    image_grid(torch.cat(rows), per_row, ax)
    # Label every row: switch the axis back on for its ticks only.
    h = originals.shape[-2]
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([1 + (h + 1) * r + h / 2 for r in range(len(rows))],
                  ["data" if r % 2 == 0 else "recon." for r in range(len(rows))], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("data (odd rows) and mean of p(x | z = E_q[z|x]) (even rows)", fontsize=8)
    _suptitle(fig, "reconstructions of test points", run)
    return _save(fig, path)


def _feature_scatter(x: Tensor, recon: Tensor, path, run):
    num = min(x.shape[-1], MAX_FEATURES)
    fig, axes = _feature_axes(num)
    for j, ax in zip(range(num), axes):
        a, b = x[:, j].detach().double().cpu().numpy(), recon[:, j].detach().double().cpu().numpy()
        ax.scatter(a, b, s=6, alpha=0.6)
        low, high = min(a.min(), b.min()), max(a.max(), b.max())
        ax.plot([low, high], [low, high], color="C7", linewidth=1, linestyle="--")
        ax.set_title(f"feature {j}", fontsize=8)
        ax.set_xlabel("data value", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].set_ylabel("mean of p(x | E_q[z|x])", fontsize=7)
    _suptitle(fig, f"reconstructions of {len(x)} test points (dashed: perfect)", run)
    return _save(fig, path)


CURVE_TITLES = {"elbo": "ELBO", "reconstruction": "reconstruction E_q[log p(x|z)]", "kl": "KL(q(z|x) || p(z))"}


def training_curves(history: Sequence[dict], path: str | Path | None = None, run: str | None = None):
    """Train and validation ELBO, reconstruction and KL per epoch (nats per datapoint).

    Runs of an adversarial objective get a fourth panel: the generator's and the
    discriminator's training losses.
    """
    epochs = [row["epoch"] for row in history]
    adversarial = bool(history) and "train_discriminator_loss" in history[0]
    fig, axes = plt.subplots(1, 4 if adversarial else 3, figsize=(16 if adversarial else 12, 3.5))
    if adversarial:
        ax = axes[3]
        for key, label in (("train_loss", "generator"), ("train_discriminator_loss", "discriminator")):
            ax.plot(epochs, [row[key] for row in history], marker="." if len(epochs) < 60 else None, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss / point")
        ax.set_title("adversarial training losses", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax, key in zip(axes, CURVE_TITLES):
        for split in ("train", "val"):
            ax.plot(epochs, [row[f"{split}_{key}"] for row in history], marker="." if len(epochs) < 60 else None,
                    label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats / point")
        ax.set_title(CURVE_TITLES[key], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend()
    _suptitle(fig, "training curves", run)
    return _save(fig, path)


# --------------------------------------------------------------------------- evaluation

__all__ += ["bound_vs_k", "khat_histogram", "kl_per_dim", "bdmc_sandwich", "comparison_chart"]


def bound_vs_k(evaluation: "Evaluation", path: str | Path | None = None, run: str | None = None):
    """The IWAE bounds ``L_k`` (mean ± SE over points) against ``k``, with the IS estimate.

    ``k = 1`` is the ELBO; the bounds should rise with ``k`` towards ``log p(x)``.
    """
    ks = sorted(evaluation.iwae)
    rows = evaluation.to_dict()["iwae"]
    ll = evaluation.to_dict()["log_likelihood"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(ks, [r["mean"] for r in rows], yerr=[r["se"] for r in rows], marker="o", capsize=3,
                label="$L_k$ (mean ± SE)")
    ax.axhline(ll["mean"], color="C1", linestyle="--", label=f"IS log p(x), K={evaluation.num_samples}")
    ax.axhspan(ll["mean"] - ll["se"], ll["mean"] + ll["se"], color="C1", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("k (importance samples per bound)")
    ax.set_ylabel("mean bound (nats / point)")
    _suptitle(fig, f"IWAE bound against k, N={evaluation.num_points} points", run)
    return _finish(fig, ax, path)


def khat_histogram(evaluation: "Evaluation", path: str | Path | None = None, threshold: float = 0.7,
                   run: str | None = None):
    """Histogram of per-point PSIS k̂; points right of ``threshold`` have unreliable estimates."""
    khat = evaluation.khat.double()
    finite = khat[torch.isfinite(khat)].numpy()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if finite.size:
        ax.hist(finite, bins=40, color="C0", alpha=0.8)
    ax.axvline(0.5, color="C2", linestyle=":", label="0.5")
    ax.axvline(threshold, color="C3", linestyle="--", label=f"{threshold} (unreliable above)")
    ax.set_xlabel("Pareto $\\hat k$ of a point's importance weights (no unit)")
    ax.set_ylabel("points")
    frac = (khat > threshold).double().mean().item()
    _suptitle(fig, f"PSIS $\\hat k$, K={evaluation.num_samples}: {100 * frac:.1f}% of points > {threshold}", run)
    return _finish(fig, ax, path)


def kl_per_dim(evaluation: "Evaluation", path: str | Path | None = None, run: str | None = None):
    """Two panels per latent dimension: the mean KL (nats) and ``Var_x E_q[z_u]`` (active-unit test).

    Each panel counts by its own threshold (KL > :data:`~pyro_vae.results.report.COLLAPSE_KL`
    nats; variance > :data:`~pyro_vae.results.report.ACTIVE_THRESHOLD`, Burda et al.), so the two
    counts may differ, and each title says which count it is.
    """
    panels = [(name, values.double().numpy()) for name, values in
              (("kl", evaluation.kl_per_dim), ("variance", evaluation.unit_variance)) if values is not None]
    dims = len(panels[0][1]) if panels else 0
    fig, axes = plt.subplots(max(len(panels), 1), 1, figsize=(max(5.0, 0.2 * dims + 2.5), 2.6 * max(len(panels), 1) + 0.4),
                             squeeze=False, sharex=True)
    for ax, (name, values) in zip(axes.flat, panels):
        threshold = COLLAPSE_KL if name == "kl" else ACTIVE_THRESHOLD
        above = values > threshold
        ax.bar(range(dims), values.clip(min=1e-6), color=["C0" if a else "C7" for a in above])
        ax.axhline(threshold, color="C3", linestyle="--", linewidth=1)  # the threshold its title counts by
        ax.set_yscale("log")
        if name == "kl":
            ax.set_ylabel("nats")
            ax.set_title(f"mean KL(q(z_u|x) || p(z_u)): {int(above.sum())}/{dims} dimensions above {threshold} nats",
                         fontsize=9)
        else:
            ax.set_ylabel("Var$_x$ E$_q$[$z_u$]\n(squared latent units)", fontsize=8)
            ax.set_title(f"Var$_x$ E$_q$[$z_u$]: {int(above.sum())}/{dims} active units (above {threshold})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes.flat[-1].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.flat[-1].set_xlabel("latent dimension u")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no per-dimension KL or variance for this prior", ha="center", va="center")
    _suptitle(fig, f"latent dimensions, N={evaluation.num_points} points (dashed: threshold; grey: below it)", run)
    return _save(fig, path)


def bdmc_sandwich(steps: Sequence[int], lower: Sequence[float], upper: Sequence[float],
                  lower_mc_se: Sequence[float] | None = None, upper_mc_se: Sequence[float] | None = None,
                  is_value: float | None = None, title: str = "BDMC sandwich", path: str | Path | None = None,
                  run: str | None = None):
    """BDMC's stochastic lower (forward AIS) and upper (reverse AIS) bounds against ``T``, mean nats per point.

    The true mean ``log p(x)`` of the simulated points lies between the two curves; the
    band closes as ``T`` grows. Error bars are Monte Carlo SEs of the means.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.9))
    ax.errorbar(steps, upper, yerr=upper_mc_se, marker="v", capsize=3, color="C3", label="upper bound (reverse AIS)")
    ax.errorbar(steps, lower, yerr=lower_mc_se, marker="^", capsize=3, color="C0", label="lower bound (forward AIS)")
    ax.fill_between(steps, lower, upper, color="C7", alpha=0.15, label="true log p(x) lies here")
    if is_value is not None:
        ax.axhline(is_value, color="C1", linestyle="--", label="importance sampling, same cost")
    ax.set_xscale("log")
    ax.set_xlabel("T (intermediate distributions)")
    ax.set_ylabel("mean log p(x) (nats / point)")
    _suptitle(fig, f"{title}\ngap at T={steps[-1]}: {upper[-1] - lower[-1]:.3f} nats", run)
    return _finish(fig, ax, path)


def _scale(row: dict) -> str:
    """The axis a comparison row belongs on: masses of ``L`` levels and their dequantized densities share one."""
    representation = row.get("representation") or row["data"]
    for kind in ("levels", "dequantized"):
        if representation.startswith(kind):
            return "levels or dequantized" + representation[len(kind):]
    return representation


def comparison_chart(rows: Sequence[dict], path: str | Path | None = None, run: str | None = None):
    """Bits/dim ± SE of the VAE (first row, red) and the baselines: one panel per comparable data representation.

    Rows are dicts with ``model``, ``representation`` (or ``data``), ``log_likelihood``
    (``mean``, ``se``, ``bits_per_dim``) and ``num_dims``, as
    :func:`pyro_vae.jobs.compare.compare_run` writes. Models of different data (binary
    masses, dequantized densities, continuous densities) are not comparable, so they
    never share an axis; a mass of ``L`` levels and a density dequantized from the same
    ``L`` levels are (Theis et al., 2016) and share one. Within a panel, points with
    error bars rather than bars from zero show differences of a small fraction of a bit.
    """
    groups: dict[str, list[tuple[int, dict]]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_scale(row), []).append((i, row))
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.5, sum(0.45 * len(g) + 1.2 for g in groups.values())),
                             squeeze=False, gridspec_kw={"height_ratios": [len(g) + 1 for g in groups.values()]})
    for ax, (scale, group) in zip(axes.flat, groups.items()):
        names = [f"{row['model']}\n[{row.get('representation') or row['data']}]" for _, row in group]
        # SE in nats -> bits/dim: divide by (num_dims * ln 2), as bits_per_dim itself is.
        bpd = [row["log_likelihood"]["bits_per_dim"] for _, row in group]
        ses = [row["log_likelihood"]["se"] / (row["num_dims"] * math.log(2)) for _, row in group]
        colors = ["C3" if i == 0 else "C0" for i, _ in group]
        y = list(range(len(group)))[::-1]  # first row on top
        for yi, b, e, c in zip(y, bpd, ses, colors):
            ax.errorbar(b, yi, xerr=e, fmt="none", ecolor=c, capsize=4)
            ax.annotate(f"{b:.3f} ± {e:.3f}", (b, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.scatter(bpd, y, color=colors, zorder=3)
        ax.set_yticks(y, names, fontsize=7)
        ax.set_ylim(-0.7, len(group) - 0.3)
        ax.margins(x=0.12)  # room for the value labels at both ends
        ax.set_xlabel(f"test bits / dim ({group[0][1]['num_dims']} dims); lower is better", fontsize=8)
        ax.set_title(f"data: {scale}", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    _suptitle(fig, "VAE (red) against exact EM baselines, mean ± SE over the same test points", run)
    return _save(fig, path)
