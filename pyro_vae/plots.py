"""Pictures of models and runs (matplotlib; image grids by ``torchvision.utils.make_grid``).

Every function returns the :class:`matplotlib.figure.Figure` and saves a PNG when
given ``path``. Images are shown on the data's grey scale (levels mapped to [0, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: runs write files, never open windows
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

if TYPE_CHECKING:
    from .train import FitResult
    from .vae import VAE

__all__ = ["to_images", "image_grid", "sample_grid", "reconstruction_grid", "training_curves", "save_run_pictures"]


def to_images(x: Tensor, vae: "VAE") -> Tensor:
    """Model-space values -> ``(N, C, H, W)`` grey images in [0, 1]."""
    x = x.detach().float().cpu()
    if vae.likelihood.wants_levels and vae.levels:
        x = x / (vae.levels - 1)
    shape = vae.event_shape
    if len(shape) == 2:
        x = x.reshape(-1, 1, *shape)
    elif len(shape) == 3:
        x = x.reshape(-1, *shape)
    else:  # flat vectors: show as square-ish strips
        side = int(round(shape[0] ** 0.5))
        x = x.reshape(-1, 1, 1, shape[0]) if side * side != shape[0] else x.reshape(-1, 1, side, side)
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


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


@torch.no_grad()
def sample_grid(vae: "VAE", n: int = 64, path: str | Path | None = None, seed: int = 0):
    """Samples from the model: the mean of p(x|z) beside a draw x ~ p(x|z), same z.

    The familiar smooth VAE samples are the *means*; the model's actual samples are
    the noisy draws on the right.
    """
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    z = vae.prior().sample((n,))
    d = vae.decode(z)
    mean, draw = vae.likelihood.mean(d), d.sample()
    torch.set_rng_state(gen_state)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    nrow = int(n**0.5)
    image_grid(to_images(mean, vae), nrow, axes[0], "mean of p(x|z)")
    image_grid(to_images(draw, vae), nrow, axes[1], "draw x ~ p(x|z)")
    return _save(fig, path)


@torch.no_grad()
def reconstruction_grid(vae: "VAE", x: Tensor, path: str | Path | None = None):
    """Originals (odd rows) above their reconstructions (even rows): mean of p(x | E_q[z])."""
    recon = vae.reconstruct(x)
    originals, recons = to_images(x, vae), to_images(recon, vae)
    per_row = 8
    rows = []
    for start in range(0, len(originals), per_row):
        rows += [originals[start : start + per_row], recons[start : start + per_row]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5 * len(rows) / per_row + 0.3))
    image_grid(torch.cat(rows), per_row, ax, "originals / reconstructions")
    return _save(fig, path)


def training_curves(history: Sequence[dict], path: str | Path | None = None):
    """Train and validation ELBO, reconstruction and KL per epoch (nats per datapoint)."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, key in zip(axes, ("elbo", "reconstruction", "kl")):
        for split in ("train", "val"):
            ax.plot(epochs, [row[f"{split}_{key}"] for row in history], marker=".", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(f"{key} (nats / point)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return _save(fig, path)


def save_run_pictures(result: "FitResult") -> None:
    """The pictures every training run leaves in its run directory."""
    vae, run_dir = result.vae, result.run_dir
    x = result.transform(result.dataset.test[:32].to(next(vae.parameters()).device), train=False)
    for fig in (
        sample_grid(vae, path=run_dir / "samples.png"),
        reconstruction_grid(vae, x, path=run_dir / "reconstructions.png"),
        training_curves(result.history, path=run_dir / "curves.png"),
    ):
        plt.close(fig)


# --------------------------------------------------------------------------- evaluation

if TYPE_CHECKING:
    from .evaluate import Evaluation

__all__ += ["bound_vs_k", "khat_histogram", "kl_per_dim"]


def bound_vs_k(evaluation: "Evaluation", path: str | Path | None = None):
    """The IWAE bounds ``L_k`` (mean ± SE over points) against ``k``, with the IS estimate.

    ``k = 1`` is the ELBO; the bounds should rise with ``k`` towards ``log p(x)``.
    """
    ks = sorted(evaluation.iwae)
    rows = evaluation.to_dict()["iwae"]
    means = [row["mean"] for row in rows]
    ses = [row["se"] for row in rows]
    ll = evaluation.to_dict()["log_likelihood"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, means, yerr=ses, marker="o", capsize=3, label="$L_k$ (mean ± SE)")
    ax.axhline(ll["mean"], color="C1", linestyle="--", label=f"IS log p(x), K={evaluation.num_samples}")
    ax.axhspan(ll["mean"] - ll["se"], ll["mean"] + ll["se"], color="C1", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("k (importance samples per bound)")
    ax.set_ylabel("nats / point")
    ax.set_title(f"IWAE bound vs k (N={evaluation.num_points})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def khat_histogram(evaluation: "Evaluation", path: str | Path | None = None, threshold: float = 0.7):
    """Histogram of per-point PSIS k̂; points right of ``threshold`` have unreliable estimates."""
    khat = evaluation.khat.double()
    finite = khat[torch.isfinite(khat)].numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if finite.size:
        ax.hist(finite, bins=40, color="C0", alpha=0.8)
    ax.axvline(0.5, color="C2", linestyle=":", label="0.5")
    ax.axvline(threshold, color="C3", linestyle="--", label=f"{threshold} (unreliable above)")
    ax.set_xlabel("Pareto $\\hat k$")
    ax.set_ylabel("points")
    frac = (khat > threshold).double().mean().item()
    ax.set_title(f"PSIS $\\hat k$: {100 * frac:.1f}% of points > {threshold} (K={evaluation.num_samples})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def kl_per_dim(evaluation: "Evaluation", path: str | Path | None = None, collapse: float = 0.01):
    """Mean KL per latent dimension (bars) and ``Var_x E_q[z_u]`` (dots, active-unit test)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * (evaluation.unit_variance.numel() if evaluation.unit_variance is not None else 8) + 2), 3.5))
    if evaluation.kl_per_dim is not None:
        kl = evaluation.kl_per_dim.double().numpy()
        colors = ["C0" if v >= collapse else "C7" for v in kl]
        ax.bar(range(len(kl)), kl, color=colors, label="KL (nats)")
        ax.axhline(collapse, color="C3", linestyle="--", linewidth=1, label=f"collapse < {collapse}")
    if evaluation.unit_variance is not None:
        var = evaluation.unit_variance.double().numpy()
        ax.plot(range(len(var)), var, "o", color="C1", markersize=4, label="Var$_x$ E$_q$[$z_u$]")
        ax.set_title(f"latent units: {evaluation.active_units}/{len(var)} active", fontsize=10)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("latent dimension")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
