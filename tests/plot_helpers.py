"""Shared by the picture tests: a small untrained VAE on 8x8 images, and checks of what a PNG or an axis holds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pyro_vae.models.vae import VAE  # noqa: E402

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


def png_ok(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 2000  # a real picture, not an empty canvas
    img = plt.imread(path)
    assert img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.01  # something drawn


def shown(ax) -> torch.Tensor:
    """The grid image drawn on ``ax`` as ``(H, W, C)``."""
    return torch.as_tensor(ax.images[0].get_array().data)


def tile(grid: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """Tile ``(row, col)`` of a make_grid picture with padding 1 (first channel)."""
    top, left = 1 + row * (H + 1), 1 + col * (W + 1)
    return grid[top : top + H, left : left + W, 0]
