"""Encoder and decoder networks.

The encoder maps a datapoint to the ``(loc, scale)`` of a diagonal Gaussian q(z|x);
the decoder maps ``z`` to ``num_params * prod(event_shape)`` raw values that the
likelihood unpacks. Both accept any number of leading batch dimensions (data,
importance samples, particles), which is what vectorized evaluation relies on.

Example:
    >>> enc = make_encoder("mlp", event_shape=(8, 8), latent_dim=2, hidden=(32,))
    >>> loc, scale = enc(torch.rand(10, 5, 8, 8))
    >>> loc.shape, bool((scale > 0).all())
    (torch.Size([10, 5, 2]), True)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch  # noqa: F401 - the module docstring's example uses it
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.core.ops import Softplus

__all__ = ["ENCODERS", "DECODERS", "ACTIVATIONS", "NETS", "MLP", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "make_encoder", "make_decoder"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": Softplus,  # nn.Softplus, from faster kernels (pyro_vae.core.ops.Softplus)
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}
NETS = ("mlp", "conv")
# Your own nets, by short name (see pyro_vae.models.parts.register). They are called as
# ``encoder(event_shape=..., latent_dim=..., **settings)`` -> module ``x -> (loc, scale)`` and
# ``decoder(latent_dim=..., event_shape=..., num_params=..., **settings)`` -> module ``z -> raw``.
ENCODERS: dict = {}
DECODERS: dict = {}

# Scales below this make log q(z|x) explode when a unit collapses; it is far below
# any posterior width a VAE learns on real data.
MIN_SCALE = 1e-5


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


class MLP(nn.Sequential):
    """Fully connected layers with an activation between them (none after the last)."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu") -> None:
        act = _activation(activation)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        super().__init__(*layers)


def _gaussian_params(h: Tensor) -> tuple[Tensor, Tensor]:
    loc, raw_scale = h.chunk(2, dim=-1)
    return loc, F.softplus(raw_scale) + MIN_SCALE


class MLPEncoder(nn.Module):
    """x -> (loc, scale) through an MLP; ``input_scale`` maps raw values to O(1)."""

    def __init__(self, event_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256,),
                 activation: str = "relu", input_scale: float = 1.0) -> None:
        super().__init__()
        self.event_dims = len(event_shape)
        self.input_scale = input_scale
        self.net = MLP([math.prod(event_shape), *hidden, 2 * latent_dim], activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.flatten(-self.event_dims) if self.event_dims > 1 else x
        if self.input_scale != 1.0:
            h = h * self.input_scale
        return _gaussian_params(self.net(h))


class MLPDecoder(nn.Module):
    """z -> flat raw likelihood parameters, ``out_features`` per point."""

    def __init__(self, latent_dim: int, out_features: int, hidden: Sequence[int] = (256,), activation: str = "relu") -> None:
        super().__init__()
        self.net = MLP([latent_dim, *hidden, out_features], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def _image_shape(event_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(event_shape) == 2:
        return (1, *event_shape)  # type: ignore[return-value]
    if len(event_shape) == 3:
        return tuple(event_shape)  # type: ignore[return-value]
    raise ValueError(f"Conv nets need image data of shape (H, W) or (C, H, W), got {tuple(event_shape)}; use net 'mlp'.")


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions then a linear layer to (loc, scale)."""

    def __init__(self, event_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (32, 64),
                 activation: str = "relu", input_scale: float = 1.0) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.image = _image_shape(event_shape)
        self.input_scale = input_scale
        act = _activation(activation)
        c, h, w = self.image
        channels = [c, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), act()]
            h, w = (h + 1) // 2, (w + 1) // 2
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels[-1] * h * w, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        h = self.conv(x.reshape(-1, *self.image) * self.input_scale)
        return _gaussian_params(self.head(h).reshape(*batch, -1))


class ConvDecoder(nn.Module):
    """Linear layer to a small feature map, then transposed convolutions up to the image size."""

    def __init__(self, latent_dim: int, event_shape: Sequence[int], num_params: int,
                 hidden: Sequence[int] = (64, 32), activation: str = "relu") -> None:
        super().__init__()
        c, self.height, self.width = _image_shape(event_shape)
        act = _activation(activation)
        factor = 2 ** len(hidden)
        self.start = (hidden[0], math.ceil(self.height / factor), math.ceil(self.width / factor))
        self.head = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), act())
        channels = [*hidden, num_params * c]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(channels) - 2:
                layers.append(act())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        batch = z.shape[:-1]
        h = self.deconv(self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start))
        # Crop to the data size when it is not a multiple of the upsampling factor.
        h = h[..., : self.height, : self.width]
        return h.reshape(*batch, -1)


def make_encoder(kind: str, event_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] | None = None,
                 activation: str = "relu", input_scale: float = 1.0) -> nn.Module:
    """Build the encoder named by ``kind`` (``"mlp"`` or ``"conv"``)."""
    if kind == "mlp":
        return MLPEncoder(event_shape, latent_dim, (256,) if hidden is None else hidden, activation, input_scale)
    if kind == "conv":
        return ConvEncoder(event_shape, latent_dim, hidden or (32, 64), activation, input_scale)
    raise ValueError(f"Unknown net {kind!r}; choose one of {NETS}.")


def make_decoder(kind: str, latent_dim: int, event_shape: Sequence[int], num_params: int,
                 hidden: Sequence[int] | None = None, activation: str = "relu") -> nn.Module:
    """Build the decoder named by ``kind``; it outputs ``num_params * prod(event_shape)`` per point."""
    if kind == "mlp":
        return MLPDecoder(latent_dim, num_params * math.prod(event_shape), (256,) if hidden is None else hidden, activation)
    if kind == "conv":
        return ConvDecoder(latent_dim, event_shape, num_params, hidden or (64, 32), activation)
    raise ValueError(f"Unknown net {kind!r}; choose one of {NETS}.")
