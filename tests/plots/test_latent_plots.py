"""Latent-space pictures draw what they claim: path endpoints, norms, grid layout, projected points.

The models are untrained (random nets): every property checked here (endpoints,
norms, grid layout, projected points) holds for any weights.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from pyro_vae.plots import latent as latent_plots
from pyro_vae.plots import figures as plots  # noqa: E402
from pyro_vae.models.vae import VAE  # noqa: E402
from plot_helpers import H, W, close_figures, images, png_ok, shown, tile, vae  # noqa: F401  (fixtures)


# --------------------------------------------------------------------------- interpolation


def test_interpolate_latents_endpoints_and_slerp_norms():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        z_a, z_b = torch.randn(5, generator=g) * 2, torch.randn(5, generator=g) * 0.5
        for method in ("linear", "slerp"):
            path = latent_plots.interpolate_latents(z_a, z_b, steps=7, method=method)
            assert path.shape == (7, 5)
            torch.testing.assert_close(path[0], z_a)
            torch.testing.assert_close(path[-1], z_b)
        norms = latent_plots.interpolate_latents(z_a, z_b, steps=11, method="slerp").norm(dim=1)
        lo, hi = sorted([z_a.norm().item(), z_b.norm().item()])
        assert (norms >= lo - 1e-5).all() and (norms <= hi + 1e-5).all()
        # Equal norms: slerp stays on the sphere, while the line dips inside it.
        z_b_same = z_b / z_b.norm() * z_a.norm()
        sphere = latent_plots.interpolate_latents(z_a, z_b_same, steps=11, method="slerp").norm(dim=1)
        torch.testing.assert_close(sphere, torch.full_like(sphere, z_a.norm().item()))
        line = latent_plots.interpolate_latents(z_a, z_b_same, steps=11, method="linear").norm(dim=1)
        assert line[5] < z_a.norm()


def test_interpolate_latents_rejects_bad_arguments():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="steps"):
        latent_plots.interpolate_latents(z, z, steps=1)
    with pytest.raises(ValueError, match="method"):
        latent_plots.interpolate_latents(z, z, method="cubic")
    same = latent_plots.interpolate_latents(torch.ones(3), 2 * torch.ones(3), steps=4, method="slerp")
    assert torch.isfinite(same).all()  # parallel codes: no division by sin(0)


def test_interpolation_endpoints_are_reconstructions(vae, images, tmp_path):
    steps = 6
    fig = latent_plots.interpolation(vae, images[0], images[1], steps=steps, path=tmp_path / "interp.png")
    assert isinstance(fig, Figure)
    png_ok(tmp_path / "interp.png")
    recon = plots.to_images(vae.reconstruct(images[:2]), vae)[:, 0].clamp(0, 1)
    assert len(fig.axes) == 2  # linear row, slerp row
    for ax in fig.axes:
        grid = shown(ax)
        assert grid.shape[:2] == (H + 2, steps * (W + 1) + 1)
        torch.testing.assert_close(tile(grid, 0, 0), recon[0])
        torch.testing.assert_close(tile(grid, 0, steps - 1), recon[1])
    # The two rows share endpoints but differ in between (unless the codes are parallel).
    assert not torch.allclose(tile(shown(fig.axes[0]), 0, 2), tile(shown(fig.axes[1]), 0, 2))


# --------------------------------------------------------------------------- traversal


def test_traversal_grid_has_dims_by_steps_tiles(vae, images, tmp_path):
    dims, steps = [0, 2], 5
    fig = latent_plots.traversal(vae, images[0], dims=dims, steps=steps, span=2.0, path=tmp_path / "trav.png")
    assert isinstance(fig, Figure)
    png_ok(tmp_path / "trav.png")
    grid = shown(fig.axes[0])
    assert grid.shape[:2] == (len(dims) * (H + 1) + 1, steps * (W + 1) + 1)
    # The middle column of every row is the decoded posterior mean: the reconstruction.
    recon = plots.to_images(vae.reconstruct(images[:1]), vae)[0, 0]
    for row in range(len(dims)):
        torch.testing.assert_close(tile(grid, row, steps // 2), recon)
    # Moving a dimension changes the picture.
    assert not torch.allclose(tile(grid, 0, 0), tile(grid, 0, steps - 1))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z0", "z2"]


def test_traversal_around_zero_and_default_dims(vae, tmp_path):
    fig = latent_plots.traversal(vae, steps=3, path=tmp_path / "t0.png")
    grid = shown(fig.axes[0])
    assert grid.shape[0] == vae.latent_dim * (H + 1) + 1
    centre = plots.to_images(vae.likelihood.mean(vae.decode(torch.zeros(1, vae.latent_dim))), vae)[0, 0]
    torch.testing.assert_close(tile(grid, 1, 1), centre)
    with pytest.raises(ValueError, match="dims"):
        latent_plots.traversal(vae, dims=[3])


def test_traversal_uses_prior_std_units(tmp_path):
    # A Laplace(0, b) prior has std b * sqrt(2): offsets are scaled by it.
    torch.manual_seed(0)
    vae = VAE((H, W), latent_dim=2, prior="laplace", prior_kwargs={"scale": 2.0}, likelihood="gaussian", hidden=[16])
    fig = latent_plots.traversal(vae, dims=[1], steps=3, span=1.0)
    z = torch.tensor([[0.0, -2.0 * 2**0.5], [0.0, 0.0], [0.0, 2.0 * 2**0.5]])
    expected = plots.to_images(vae.likelihood.mean(vae.decode(z)), vae)
    expected_grid = make_grid(expected, nrow=3, padding=1, pad_value=1.0).permute(1, 2, 0)
    torch.testing.assert_close(shown(fig.axes[0]).float(), expected_grid.float())


# --------------------------------------------------------------------------- latent scatter


def test_latent_scatter_two_dims_draws_posterior_means(images, tmp_path):
    torch.manual_seed(0)
    vae = VAE((H, W), latent_dim=2, likelihood="gaussian", hidden=[16])
    labels = torch.arange(len(images)) % 4
    fig = latent_plots.latent_scatter(vae, images, labels, path=tmp_path / "scatter.png", batch_size=7)
    assert isinstance(fig, Figure)
    png_ok(tmp_path / "scatter.png")
    ax = fig.axes[0]
    assert len(ax.collections) == 4  # one per class
    drawn = torch.cat([torch.as_tensor(c.get_offsets().data) for c in ax.collections])
    with torch.no_grad():
        means = vae.encode(images).mean
    expected = torch.cat([means[labels == c] for c in range(4)]).double()
    torch.testing.assert_close(drawn.double(), expected, rtol=1e-5, atol=1e-6)


def test_latent_scatter_projects_with_pca(vae, images, tmp_path):
    labels = torch.arange(len(images)) % 3
    fig = latent_plots.latent_scatter(vae, images, labels, path=tmp_path / "pca.png")
    png_ok(tmp_path / "pca.png")
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
        latent_plots.latent_scatter(vae, images, labels[:-1])


def test_latent_scatter_many_labels_uses_colour_bar(vae, images):
    fig = latent_plots.latent_scatter(vae, images, torch.arange(len(images)))
    assert len(fig.axes) == 2  # the scatter and its colour bar


# --------------------------------------------------------------------------- existing plots
