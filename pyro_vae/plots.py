"""Pictures of models and results (matplotlib; image grids by ``torchvision.utils.make_grid``).

A leaf of the package: it takes a VAE, tensors, histories and result objects and
draws; which pictures a run gets is decided by :mod:`pyro_vae.runs` (training) and
:mod:`pyro_vae.evaluate` (evaluation). Every function returns the
:class:`matplotlib.figure.Figure` and saves a PNG when given ``path``. Images are shown
on the data's grey scale (levels mapped to [0, 1]).
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

if TYPE_CHECKING:  # types only: plots is a leaf and imports nothing of pyro_vae at run time
    from .report import Evaluation
    from .vae import VAE

__all__ = ["to_images", "image_grid", "sample_grid", "reconstruction_grid", "training_curves"]


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


def _finish(fig, ax, path: str | Path | None):
    """The common ending of a single-axes chart: light grid, small legend, tight layout, save."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


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


# --------------------------------------------------------------------------- evaluation

__all__ += ["bound_vs_k", "khat_histogram", "kl_per_dim", "bdmc_sandwich"]


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
    return _finish(fig, ax, path)


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
    return _finish(fig, ax, path)


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
    return _finish(fig, ax, path)


def bdmc_sandwich(steps: Sequence[int], lower: Sequence[float], upper: Sequence[float],
                  lower_mc_se: Sequence[float] | None = None, upper_mc_se: Sequence[float] | None = None,
                  is_value: float | None = None, title: str = "BDMC sandwich", path: str | Path | None = None):
    """BDMC's stochastic lower (forward AIS) and upper (reverse AIS) bounds against ``T``, mean nats per point.

    The true mean ``log p(x)`` of the simulated points lies between the two curves; the
    band closes as ``T`` grows. Error bars are Monte Carlo SEs of the means.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(steps, upper, yerr=upper_mc_se, marker="v", capsize=3, color="C3", label="upper bound (reverse AIS)")
    ax.errorbar(steps, lower, yerr=lower_mc_se, marker="^", capsize=3, color="C0", label="lower bound (forward AIS)")
    ax.fill_between(steps, lower, upper, color="C7", alpha=0.15, label="true log p(x) lies here")
    if is_value is not None:
        ax.axhline(is_value, color="C1", linestyle="--", label="importance sampling, same cost")
    gap = upper[-1] - lower[-1]
    ax.set_xscale("log")
    ax.set_xlabel("T (intermediate distributions)")
    ax.set_ylabel("mean log p(x) (nats / point)")
    ax.set_title(f"{title}\ngap at T={steps[-1]}: {gap:.3f} nats", fontsize=9)
    return _finish(fig, ax, path)


# --------------------------------------------------------------------------- latent space

__all__ += ["interpolate_latents", "interpolation", "traversal", "latent_scatter"]


def _as_batch(x: Tensor, vae: "VAE") -> Tensor:
    """One datapoint (``event_shape``) or a batch of them -> a batch."""
    return x.unsqueeze(0) if tuple(x.shape) == vae.event_shape else x


def interpolate_latents(z_a: Tensor, z_b: Tensor, steps: int = 10, method: str = "linear") -> Tensor:
    """``steps`` points on a path from ``z_a`` to ``z_b`` (both ``(d,)``), endpoints included.

    ``"linear"`` is the straight line. ``"slerp"`` moves the *direction* along the great
    circle and interpolates the *norm* linearly, so every point's norm lies between the
    endpoints' norms. Why: a high-dimensional standard normal puts almost all its mass
    near the sphere of radius ``sqrt(d)``; the straight line between two typical codes
    cuts through the low-norm interior, which the decoder rarely saw in training.

    Args:
        z_a: Start, shape ``(d,)``.
        z_b: End, shape ``(d,)``.
        steps: Number of points (>= 2).
        method: ``"linear"`` or ``"slerp"``.

    Returns:
        A tensor of shape ``(steps, d)``.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}.")
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    if method == "linear":
        return (1 - t) * z_a + t * z_b
    if method != "slerp":
        raise ValueError(f"method must be 'linear' or 'slerp', got {method!r}.")
    norm_a, norm_b = z_a.norm(), z_b.norm()
    u_a, u_b = z_a / norm_a.clamp_min(1e-12), z_b / norm_b.clamp_min(1e-12)
    omega = torch.arccos((u_a * u_b).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:  # (anti)parallel codes: the great circle is undefined, the line is fine
        direction = (1 - t) * u_a + t * u_b
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    else:
        direction = (torch.sin((1 - t) * omega) * u_a + torch.sin(t * omega) * u_b) / torch.sin(omega)
    return ((1 - t) * norm_a + t * norm_b) * direction


@torch.no_grad()
def interpolation(vae: "VAE", x_a: Tensor, x_b: Tensor, steps: int = 10, path: str | Path | None = None):
    """Decoded means along latent paths between the posterior means of ``x_a`` and ``x_b``.

    Top row: the straight line; bottom row: the spherical path of
    :func:`interpolate_latents`. The first and last tiles of each row are the
    reconstructions of ``x_a`` and ``x_b`` (the mean of p(x | E_q[z])).

    Args:
        vae: A trained VAE.
        x_a: One datapoint in model space (``event_shape``, or a batch of one).
        x_b: Another datapoint.
        steps: Points per path, endpoints included.
        path: Where to save the PNG.
    """
    device = next(vae.parameters()).device
    z_a = vae.encode(_as_batch(x_a, vae)[:1].to(device)).mean[0]
    z_b = vae.encode(_as_batch(x_b, vae)[:1].to(device)).mean[0]
    fig, axes = plt.subplots(2, 1, figsize=(0.7 * steps + 0.5, 2.4))
    for ax, method, title in zip(axes, ("linear", "slerp"), ("linear", "spherical (slerp)")):
        z = interpolate_latents(z_a, z_b, steps, method)
        images = to_images(vae.likelihood.mean(vae.decode(z)), vae)
        image_grid(images, steps, ax, title)
    fig.tight_layout()
    return _save(fig, path)


def _prior_std(vae: "VAE", num_samples: int = 4096) -> Tensor:
    """Per-dimension prior standard deviation: exact where torch knows it, else from draws."""
    prior = vae.prior()
    try:
        return prior.variance.sqrt()
    except NotImplementedError:  # flows: no closed-form moments
        with torch.random.fork_rng():  # a fixed estimate that leaves the caller's RNG alone
            torch.manual_seed(0)
            return prior.sample((num_samples,)).std(0)


@torch.no_grad()
def traversal(vae: "VAE", x: Tensor | None = None, dims: Sequence[int] | None = None, span: float = 3.0,
              steps: int = 9, path: str | Path | None = None):
    """Vary one latent dimension at a time, the others fixed; one row per dimension.

    Dimension ``u`` runs over ``base_u + s * std_u`` for ``s`` in ``[-span, span]``, where
    ``base`` is the posterior mean of ``x`` (or the zero vector) and ``std_u`` the prior's
    standard deviation in that dimension, so ``span`` means the same for every prior.
    With an odd ``steps`` the middle column decodes ``base`` itself in every row.

    Args:
        vae: A trained VAE.
        x: One datapoint in model space, or ``None`` to traverse around ``z = 0``.
        dims: Latent dimensions to show (rows); default the first ``min(latent_dim, 16)``.
        span: Half-width of the sweep, in prior standard deviations.
        steps: Values per dimension (columns).
        path: Where to save the PNG.
    """
    device = next(vae.parameters()).device
    base = vae.encode(_as_batch(x, vae)[:1].to(device)).mean[0] if x is not None else torch.zeros(vae.latent_dim, device=device)
    dims = list(range(min(vae.latent_dim, 16))) if dims is None else [int(d) for d in dims]
    if not dims or any(not 0 <= d < vae.latent_dim for d in dims):
        raise ValueError(f"dims must be a non-empty list of indices in [0, {vae.latent_dim}), got {dims}.")
    offsets = torch.linspace(-span, span, steps, device=device)
    std = _prior_std(vae).to(device)
    z = base.repeat(len(dims), steps, 1)  # (rows, steps, d)
    for row, d in enumerate(dims):
        z[row, :, d] = base[d] + offsets * std[d]
    images = to_images(vae.likelihood.mean(vae.decode(z.reshape(-1, vae.latent_dim))), vae)
    fig, ax = plt.subplots(figsize=(0.5 * steps + 1.0, 0.5 * len(dims) + 0.6))
    image_grid(images, steps, ax, f"traversal around {'E_q[z|x]' if x is not None else 'z = 0'} (prior std units)")
    # Label rows by dimension and columns by offset: switch the axis back on, keep only ticks.
    h, w = images.shape[-2:]
    ax.set_axis_on()
    ax.set_yticks([1 + (h + 1) * r + h / 2 for r in range(len(dims))], [f"z{d}" for d in dims], fontsize=7)
    ax.set_xticks([1 + (w + 1) * c + w / 2 for c in range(steps)], [f"{o:+.1f}" for o in offsets.tolist()], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def latent_scatter(vae: "VAE", x: Tensor, labels: Tensor | Sequence[int], path: str | Path | None = None,
                   batch_size: int = 1000):
    """Posterior means ``E_q[z|x]`` in 2-D, coloured by label.

    ``latent_dim == 2`` is drawn as is; larger latents are projected on their first two
    principal components (``sklearn.decomposition.PCA``, explained variance in the axis
    labels); a 1-D latent is drawn against the label.

    Args:
        vae: A trained VAE.
        x: Datapoints in model space, ``(N, *event_shape)``.
        labels: ``N`` integer labels.
        path: Where to save the PNG.
        batch_size: Points encoded per pass (bounds memory on large ``x``).
    """
    device = next(vae.parameters()).device
    means = torch.cat([vae.encode(x[i : i + batch_size].to(device)).mean.cpu() for i in range(0, len(x), batch_size)])
    labels = torch.as_tensor(labels).cpu()
    if len(labels) != len(means):
        raise ValueError(f"labels has {len(labels)} entries but x has {len(means)} points.")
    points, axis_names = means.double().numpy(), ("$z_0$", "$z_1$")
    if means.shape[1] == 1:
        points = torch.stack([means[:, 0].double(), labels.double()], 1).numpy()
        axis_names = ("$z_0$", "label")
    elif means.shape[1] > 2:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(points)
        points = pca.transform(points)
        axis_names = tuple(f"PC{i + 1} ({100 * v:.0f}% of variance)" for i, v in enumerate(pca.explained_variance_ratio_))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    classes = labels.unique().tolist()
    if len(classes) <= 20:  # a legend for a handful of classes, a colour bar beyond
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            keep = (labels == c).numpy()
            ax.scatter(points[keep, 0], points[keep, 1], s=6, alpha=0.7, color=cmap(i), label=str(c))
        ax.legend(fontsize=7, markerscale=2, loc="best", ncols=2 if len(classes) > 10 else 1)
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7, c=labels.numpy(), cmap="viridis")
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"posterior means E_q[z|x], N={len(means)}, latent_dim={means.shape[1]}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
