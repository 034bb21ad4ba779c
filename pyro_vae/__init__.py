"""pyro_vae: variational autoencoders as Pyro models, with log-likelihoods you can trust.

``VAE`` is loaded on first use, so ``import pyro_vae.cli`` (and ``pyro-vae --help``)
does not pay for importing torch and Pyro before a command needs them.

Example:
    >>> from pyro_vae import VAE
    >>> vae = VAE(event_shape=(8, 8), latent_dim=2, prior="mog", likelihood="gaussian")
"""

from __future__ import annotations

from typing import Any

__all__ = ["VAE", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "VAE":
        from pyro_vae.models.vae import VAE  # deferred: torch and Pyro take seconds to import

        return VAE
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
