"""The errors pyro_vae raises for things a user can fix; each message names the problem and the fix.

They live in this light module (no torch, no Pyro) so the command line can catch them
without importing the library first; this is their only home.

Example:
    >>> issubclass(ConfigError, PyroVAEError) and issubclass(ConfigError, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["PyroVAEError", "ConfigError", "PartError", "CheckpointError", "RunDirError", "TrainingDivergedError", "UntrustedRunError"]


class PyroVAEError(Exception):
    """Base class: an input, file or run the user can fix; the CLI prints it as one line and exits 2."""


class ConfigError(PyroVAEError, ValueError):
    """A configuration value is invalid; the message names it and the valid choices."""


class PartError(PyroVAEError, ValueError):
    """A part cannot be found, imported, configured or recorded; the message says which and how to fix it."""


class CheckpointError(PyroVAEError, RuntimeError):
    """A checkpoint is missing, unreadable, or not a pyro_vae checkpoint."""


class RunDirError(PyroVAEError, RuntimeError):
    """A run directory cannot be used: not writable, or in use by another process."""


class TrainingDivergedError(PyroVAEError, RuntimeError):
    """Training diverged: a non-finite or exploding loss, or non-finite gradients, parameters or ELBOs."""


class UntrustedRunError(PyroVAEError, RuntimeError):
    """A received run names code to import that this user has not trusted (see :mod:`pyro_vae.runs.trust`)."""
