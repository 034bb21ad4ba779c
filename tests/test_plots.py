"""Plots return a Figure, write a real PNG, and draw what they claim to draw.

The models are untrained (random nets): every property checked here (endpoints,
norms, grid layout, projected points) holds for any weights.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from pyro_vae import plots  # noqa: E402
from pyro_vae.evaluate import evaluate  # noqa: E402
from pyro_vae.vae import VAE  # noqa: E402

H = W = 8


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VAE((H, W), latent_dim=3, likelihood="gaussian", hidden=[16]).eval()


@pytest.fixture
def images():
    return torch.rand(40, H, W, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _png_ok(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 2000  # a real picture, not an empty canvas
    img = plt.imread(path)
    assert img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.01  # something drawn


def _shown(ax) -> torch.Tensor:
    """The grid image drawn on ``ax`` as ``(H, W, C)``."""
    return torch.as_tensor(ax.images[0].get_array().data)


def _tile(grid: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """Tile ``(row, col)`` of a make_grid picture with padding 1 (first channel)."""
    top, left = 1 + row * (H + 1), 1 + col * (W + 1)
    return grid[top : top + H, left : left + W, 0]


# --------------------------------------------------------------------------- interpolation


def test_interpolate_latents_endpoints_and_slerp_norms():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        z_a, z_b = torch.randn(5, generator=g) * 2, torch.randn(5, generator=g) * 0.5
        for method in ("linear", "slerp"):
            path = plots.interpolate_latents(z_a, z_b, steps=7, method=method)
            assert path.shape == (7, 5)
            torch.testing.assert_close(path[0], z_a)
            torch.testing.assert_close(path[-1], z_b)
        norms = plots.interpolate_latents(z_a, z_b, steps=11, method="slerp").norm(dim=1)
        lo, hi = sorted([z_a.norm().item(), z_b.norm().item()])
        assert (norms >= lo - 1e-5).all() and (norms <= hi + 1e-5).all()
        # Equal norms: slerp stays on the sphere, while the line dips inside it.
        z_b_same = z_b / z_b.norm() * z_a.norm()
        sphere = plots.interpolate_latents(z_a, z_b_same, steps=11, method="slerp").norm(dim=1)
        torch.testing.assert_close(sphere, torch.full_like(sphere, z_a.norm().item()))
        line = plots.interpolate_latents(z_a, z_b_same, steps=11, method="linear").norm(dim=1)
        assert line[5] < z_a.norm()


def test_interpolate_latents_rejects_bad_arguments():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="steps"):
        plots.interpolate_latents(z, z, steps=1)
    with pytest.raises(ValueError, match="method"):
        plots.interpolate_latents(z, z, method="cubic")
    same = plots.interpolate_latents(torch.ones(3), 2 * torch.ones(3), steps=4, method="slerp")
    assert torch.isfinite(same).all()  # parallel codes: no division by sin(0)


def test_interpolation_endpoints_are_reconstructions(vae, images, tmp_path):
    steps = 6
    fig = plots.interpolation(vae, images[0], images[1], steps=steps, path=tmp_path / "interp.png")
    assert isinstance(fig, Figure)
    _png_ok(tmp_path / "interp.png")
    recon = plots.to_images(vae.reconstruct(images[:2]), vae)[:, 0].clamp(0, 1)
    assert len(fig.axes) == 2  # linear row, slerp row
    for ax in fig.axes:
        grid = _shown(ax)
        assert grid.shape[:2] == (H + 2, steps * (W + 1) + 1)
        torch.testing.assert_close(_tile(grid, 0, 0), recon[0])
        torch.testing.assert_close(_tile(grid, 0, steps - 1), recon[1])
    # The two rows share endpoints but differ in between (unless the codes are parallel).
    assert not torch.allclose(_tile(_shown(fig.axes[0]), 0, 2), _tile(_shown(fig.axes[1]), 0, 2))


# --------------------------------------------------------------------------- traversal


def test_traversal_grid_has_dims_by_steps_tiles(vae, images, tmp_path):
    dims, steps = [0, 2], 5
    fig = plots.traversal(vae, images[0], dims=dims, steps=steps, span=2.0, path=tmp_path / "trav.png")
    assert isinstance(fig, Figure)
    _png_ok(tmp_path / "trav.png")
    grid = _shown(fig.axes[0])
    assert grid.shape[:2] == (len(dims) * (H + 1) + 1, steps * (W + 1) + 1)
    # The middle column of every row is the decoded posterior mean: the reconstruction.
    recon = plots.to_images(vae.reconstruct(images[:1]), vae)[0, 0]
    for row in range(len(dims)):
        torch.testing.assert_close(_tile(grid, row, steps // 2), recon)
    # Moving a dimension changes the picture.
    assert not torch.allclose(_tile(grid, 0, 0), _tile(grid, 0, steps - 1))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z0", "z2"]


def test_traversal_around_zero_and_default_dims(vae, tmp_path):
    fig = plots.traversal(vae, steps=3, path=tmp_path / "t0.png")
    grid = _shown(fig.axes[0])
    assert grid.shape[0] == vae.latent_dim * (H + 1) + 1
    centre = plots.to_images(vae.likelihood.mean(vae.decode(torch.zeros(1, vae.latent_dim))), vae)[0, 0]
    torch.testing.assert_close(_tile(grid, 1, 1), centre)
    with pytest.raises(ValueError, match="dims"):
        plots.traversal(vae, dims=[3])


def test_traversal_uses_prior_std_units(tmp_path):
    # A Laplace(0, b) prior has std b * sqrt(2): offsets are scaled by it.
    torch.manual_seed(0)
    vae = VAE((H, W), latent_dim=2, prior="laplace", prior_kwargs={"scale": 2.0}, likelihood="gaussian", hidden=[16])
    fig = plots.traversal(vae, dims=[1], steps=3, span=1.0)
    z = torch.tensor([[0.0, -2.0 * 2**0.5], [0.0, 0.0], [0.0, 2.0 * 2**0.5]])
    expected = plots.to_images(vae.likelihood.mean(vae.decode(z)), vae)
    expected_grid = make_grid(expected, nrow=3, padding=1, pad_value=1.0).permute(1, 2, 0)
    torch.testing.assert_close(_shown(fig.axes[0]).float(), expected_grid.float())


# --------------------------------------------------------------------------- latent scatter


def test_latent_scatter_two_dims_draws_posterior_means(images, tmp_path):
    torch.manual_seed(0)
    vae = VAE((H, W), latent_dim=2, likelihood="gaussian", hidden=[16])
    labels = torch.arange(len(images)) % 4
    fig = plots.latent_scatter(vae, images, labels, path=tmp_path / "scatter.png", batch_size=7)
    assert isinstance(fig, Figure)
    _png_ok(tmp_path / "scatter.png")
    ax = fig.axes[0]
    assert len(ax.collections) == 4  # one per class
    drawn = torch.cat([torch.as_tensor(c.get_offsets().data) for c in ax.collections])
    with torch.no_grad():
        means = vae.encode(images).mean
    expected = torch.cat([means[labels == c] for c in range(4)]).double()
    torch.testing.assert_close(drawn.double(), expected, rtol=1e-5, atol=1e-6)


def test_latent_scatter_projects_with_pca(vae, images, tmp_path):
    labels = torch.arange(len(images)) % 3
    fig = plots.latent_scatter(vae, images, labels, path=tmp_path / "pca.png")
    _png_ok(tmp_path / "pca.png")
    ax = fig.axes[0]
    drawn = torch.cat([torch.as_tensor(c.get_offsets().data) for c in ax.collections]).double()
    assert drawn.shape == (len(images), 2)
    # PCA coordinates: centred, uncorrelated, first component the widest.
    torch.testing.assert_close(drawn.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
    var = drawn.var(0)
    assert var[0] >= var[1]
    assert abs(torch.corrcoef(drawn.T)[0, 1].item()) < 1e-6
    assert "PC1" in ax.get_xlabel()
    with pytest.raises(ValueError, match="labels"):
        plots.latent_scatter(vae, images, labels[:-1])


def test_latent_scatter_many_labels_uses_colour_bar(vae, images):
    fig = plots.latent_scatter(vae, images, torch.arange(len(images)))
    assert len(fig.axes) == 2  # the scatter and its colour bar


# --------------------------------------------------------------------------- existing plots


def test_sample_reconstruction_and_evaluation_plots(vae, images, tmp_path):
    history = [{"epoch": e, **{f"{s}_{k}": -float(e) for s in ("train", "val") for k in ("elbo", "reconstruction", "kl")}}
               for e in (1, 2, 3)]
    ev = evaluate(vae, images[:10], num_samples=20, k_list=(1, 5, 20), seed=0)
    for name, fig in {
        "samples": plots.sample_grid(vae, n=16, path=tmp_path / "samples.png"),
        "recon": plots.reconstruction_grid(vae, images[:16], path=tmp_path / "recon.png"),
        "curves": plots.training_curves(history, path=tmp_path / "curves.png"),
        "bound": plots.bound_vs_k(ev, path=tmp_path / "bound.png"),
        "khat": plots.khat_histogram(ev, path=tmp_path / "khat.png"),
        "kl": plots.kl_per_dim(ev, path=tmp_path / "kl.png"),
    }.items():
        assert isinstance(fig, Figure), name
    for png in tmp_path.glob("*.png"):
        _png_ok(png)
    assert len(list(tmp_path.glob("*.png"))) == 6
