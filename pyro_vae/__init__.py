"""pyro_vae: variational autoencoders as Pyro models, with log-likelihoods you can trust.

Example:
    >>> from pyro_vae import VAE
    >>> vae = VAE(event_shape=(8, 8), latent_dim=2, prior="mog", likelihood="gaussian")
"""

from .vae import VAE

__all__ = ["VAE", "__version__"]
__version__ = "0.1.0"
