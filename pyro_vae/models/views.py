"""What pictures need of any model: draws and means of p(x|z), and reconstructions through the guide.

The stock :class:`~pyro_vae.models.vae.VAE` answers with its own ``decode``, ``prior``
and likelihood; any other model with Pyro ``model(x)`` and ``guide(x)`` is asked
through its observed site, whatever it is called: :func:`generate` runs the model with
the observation released (``poutine.uncondition``) on a placeholder batch, and
:func:`reconstruct` replays it on the guide's posterior means.

Example:
    >>> from pyro_vae.models.vae import VAE
    >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian", hidden=[8])
    >>> mean, draw = generate(vae, 3, (4,))
    >>> mean.shape, draw.shape, reconstruct(vae, torch.rand(5, 4)).shape
    (torch.Size([3, 4]), torch.Size([3, 4]), torch.Size([5, 4]))
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["generate", "reconstruct", "observed_site_names", "latent_dims", "is_stock", "dtype_and_device"]


def is_stock(model: Any) -> bool:
    """Whether ``model`` answers for itself: a VAE-like object with ``decode``, ``prior`` and a likelihood with means."""
    return all(hasattr(model, a) for a in ("decode", "prior", "encode")) and hasattr(getattr(model, "likelihood", None), "mean")


def dtype_and_device(model: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's parameters (the defaults when it has none)."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    return (params[0].dtype, params[0].device) if params else (torch.get_default_dtype(), torch.device("cpu"))


def observed_site_names(model: Any, x: Tensor) -> list[str]:
    """The names of the model's observed sample sites, from one trace on ``x``.

    Raises:
        ValueError: The model observes nothing.
    """
    with torch.random.fork_rng(devices=[]):
        trace = poutine.trace(model.model).get_trace(x)
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)]
    if not names:
        raise ValueError(f"{type(model).__name__}.model(x) has no observed sample site: score the data with "
                         "pyro.sample(name, distribution, obs=x).")
    return names


def _observed(trace: Any, names: Sequence[str]) -> tuple[Tensor, Tensor]:
    if len(names) != 1:
        raise ValueError(f"pictures need one observed site, the model has {list(names)}.")
    site = trace.nodes[names[0]]
    return site["fn"].mean, site["value"]


@torch.no_grad()
def generate(model: Any, n: int, event_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(mean of p(x|z), draw x ~ p(x|z))`` for ``n`` draws ``z ~ p(z)``, each ``(n, *event_shape)``."""
    if is_stock(model):
        d = model.decode(model.prior().sample((n,)))
        draw = d.sample()
        return model.likelihood.mean(d), draw
    dtype, device = dtype_and_device(model)
    placeholder = torch.zeros(n, *event_shape, dtype=dtype, device=device)
    names = observed_site_names(model, placeholder)
    trace = poutine.trace(poutine.uncondition(model.model)).get_trace(placeholder)
    return _observed(trace, names)


class _PosteriorMeans(Messenger):
    # Every latent of the guide takes its distribution's mean (given the means above it) instead of a draw.
    def _pyro_sample(self, msg: dict) -> None:
        if not msg["is_observed"] and not site_is_subsample(msg) and msg["value"] is None:
            try:
                msg["value"] = msg["fn"].mean
            except NotImplementedError:  # no closed-form mean: a draw stands in
                pass


@torch.no_grad()
def reconstruct(model: Any, x: Tensor) -> Tensor:
    """The mean of ``p(x | z)`` at the guide's posterior means of ``z`` (shape of ``x``)."""
    if is_stock(model) and hasattr(model, "reconstruct"):
        return model.reconstruct(x)
    names = observed_site_names(model, x)
    guide_trace = poutine.trace(_PosteriorMeans()(model.guide)).get_trace(x)
    trace = poutine.trace(poutine.replay(poutine.uncondition(model.model), trace=guide_trace)).get_trace(x)
    return _observed(trace, names)[0]


@torch.no_grad()
def latent_dims(model: Any, x: Tensor) -> int:
    """Latent dimensions per datapoint: the sizes of the guide's sample sites on a batch ``x``, per point."""
    with torch.random.fork_rng(devices=[]):
        trace = poutine.trace(model.guide).get_trace(x)
    total = sum(site["value"].numel() for site in trace.nodes.values()
                if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site))
    return max(1, total // x.shape[0])
