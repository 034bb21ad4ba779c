"""pyro_vae: variational autoencoders as Pyro models, with log-likelihoods you can trust.

The public API is :data:`__all__`: each name is loaded from its one home on first use,
so ``import pyro_vae.cli`` (and ``pyro-vae --help``) does not pay for importing torch and
Pyro before a command needs them. Every name also imports from its home module, e.g.
``from pyro_vae.models.vae import VAE``.

Example:
    >>> from pyro_vae import VAE
    >>> vae = VAE(event_shape=(8, 8), latent_dim=2, prior="mog", likelihood="gaussian")
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> its home module: the one place each public name is defined.
_HOMES = {
    "VAE": "pyro_vae.models.vae",
    "register": "pyro_vae.models.parts",
    "RecordsSettings": "pyro_vae.core.records",
    "ELBO": "pyro_vae.objectives.elbo",
    "IWAE": "pyro_vae.objectives.iwae",
    "evaluate": "pyro_vae.estimators.importance",
    "ais": "pyro_vae.estimators.ais",
    "bdmc": "pyro_vae.estimators.bdmc",
    "inference_gaps": "pyro_vae.estimators.gaps",
    "fit": "pyro_vae.jobs.train",
    "load_model": "pyro_vae.runs.rundir",
    "load_run": "pyro_vae.runs.rundir",
    "evaluate_run": "pyro_vae.jobs.evaluate",
    "compare_run": "pyro_vae.jobs.compare",
    "family_table": "pyro_vae.jobs.family",
}

__all__ = [*_HOMES, "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)  # deferred: torch and Pyro take seconds to import


def __dir__() -> list[str]:
    return sorted(__all__)
