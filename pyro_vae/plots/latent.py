"""Pictures of a latent space: interpolations, traversals and scatter plots of posterior means.

Each function takes a trained VAE and model-space datapoints, returns the
:class:`matplotlib.figure.Figure` and saves a PNG when given ``path``; ``run`` names the
run in the title. The image helpers come from :mod:`pyro_vae.plots.figures`.

    >>> import torch
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((8, 8), latent_dim=2, likelihood="gaussian", hidden=[16])
    >>> interpolate_latents(torch.zeros(2), torch.ones(2), steps=3).tolist()
    [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
    >>> fig = traversal(vae, steps=3)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from pyro_vae.plots.figures import _save, _suptitle, image_grid, plt, to_images

if TYPE_CHECKING:
    from pyro_vae.models.vae import VAE

__all__ = ["interpolate_latents", "interpolation", "traversal", "latent_scatter"]


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
def interpolation(vae: "VAE", x_a: Tensor, x_b: Tensor, steps: int = 10, path: str | Path | None = None,
                  run: str | None = None):
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
        run: The run's name, for the title.
    """
    device = next(vae.parameters()).device
    z_a = vae.encode(_as_batch(x_a, vae)[:1].to(device)).mean[0]
    z_b = vae.encode(_as_batch(x_b, vae)[:1].to(device)).mean[0]
    fig, axes = plt.subplots(2, 1, figsize=(0.7 * steps + 0.5, 2.4))
    for ax, method, title in zip(axes, ("linear", "slerp"), ("linear", "spherical (slerp)")):
        z = interpolate_latents(z_a, z_b, steps, method)
        images = to_images(vae.likelihood.mean(vae.decode(z)), vae)
        image_grid(images, steps, ax, title)
    _suptitle(fig, "decoded means, mean of p(x|z), from E_q[z|x_a] to E_q[z|x_b]", run)
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
              steps: int = 9, path: str | Path | None = None, run: str | None = None):
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
        run: The run's name, for the title.
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
    image_grid(images, steps, ax)
    _suptitle(fig, f"traversal around {'E_q[z|x]' if x is not None else 'z = 0'}: mean of p(x|z); "
              "columns in prior standard deviations", run)
    # Label rows by dimension and columns by offset: switch the axis back on, keep only ticks.
    h, w = images.shape[-2:]
    ax.set_axis_on()
    ax.set_yticks([1 + (h + 1) * r + h / 2 for r in range(len(dims))], [f"z{d}" for d in dims], fontsize=7)
    ax.set_xticks([1 + (w + 1) * c + w / 2 for c in range(steps)], [f"{o:+.1f}" for o in offsets.tolist()], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save(fig, path)


@torch.no_grad()
def latent_scatter(vae: "VAE", x: Tensor, labels: Tensor | Sequence[int], path: str | Path | None = None,
                   batch_size: int = 1000, run: str | None = None):
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
        run: The run's name, for the title.
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
    _suptitle(fig, f"posterior means E_q[z|x] (latent units), N={len(means)}, latent_dim={means.shape[1]}", run)
    ax.grid(alpha=0.3)
    return _save(fig, path)
