"""The target: per-datapoint ``log p(x_i, z)``, ``log p(x_i | z)`` and ``log q(z | x_i)`` of any Pyro model.

Every estimator of ``log p(x)`` in pyro_vae (importance sampling, AIS, BDMC, the
inference gaps) is built from these terms. A model is anything with Pyro ``model(x)``
and ``guide(x)`` that meets the protocol :func:`check_protocol` enforces: every latent
site inside the plate over the datapoints (any number of sites, any shapes), the same
latent sites in both, at least one observed site (several are summed). Log-probabilities
stay per datapoint and unscaled (no minibatch factor, no ``poutine.scale`` beta),
unlike ``pyro.infer.Importance``:

* :func:`weight_terms` traces the guide with ``K`` draws vectorized in an extra plate and
  replays the model; :func:`trace_log_joint` and :func:`trace_log_terms` condition a
  model (or guide) on given latent values;
* :class:`TracedTarget` packages them for the estimators (importance log-weights, AIS's
  annealing target, simulation through the model's own observed site); a model may
  offer faster kernels with the same methods through a ``fused()`` method (the stock
  VAE's :class:`~pyro_vae.models.fused.FusedVAE`), which :func:`fast_path` and
  :func:`target_of` pick up: no estimator tests for a model class;
* :func:`simulate` draws ``(x, latents)`` from the model's joint; :func:`check_data`
  checks data against the observed site's support; :func:`evaluation_mode` and
  :func:`seeded` set up a model and the RNG for evaluation.

Example:
    >>> import pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("obs", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))  # the exact posterior
    >>> x = torch.tensor([0.0, 1.0, 2.0])
    >>> terms = weight_terms(model, guide, x, num_samples=4)
    >>> exact = dist.Normal(0.0, 2.0 ** 0.5).log_prob(x)  # log p(x): every weight equals it
    >>> bool(torch.allclose(terms.log_weight, exact.expand(4, 3), atol=1e-5))
    True
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints

__all__ = ["WeightTerms", "weight_terms", "trace_log_joint", "trace_log_terms", "subsample_factor", "PARTICLE_PLATE",
           "METHODS", "Annealing", "TracedTarget", "fast_path", "target_of", "check_protocol", "check_data",
           "simulate", "model_space", "evaluation_mode", "seeded", "model_device"]

PARTICLE_PLATE = "_importance_particles"
METHODS = ("auto", "fused", "trace")  # how an estimator computes the target: see fast_path
PROBE_POINTS = 5  # points traced once to check the model protocol, unless an estimator asks for its batch
CHECK_POINTS = 1000  # points per pass of the data support check


@dataclass
class WeightTerms:
    """Unscaled per-datapoint log-probability sums, each of shape ``(K, N)``.

    Attributes:
        log_lik: Observed model sites, log p(x|z).
        log_prior: Latent model sites, log p(z).
        log_q: Guide sites, log q(z|x).
        weighted: ``log p(x,z) - log q(z|x)`` with each site's beta (``poutine.scale``)
            kept but the subsample factor removed: the IWAE training weight.
        data_scale: The subsample factor ``num_data / batch`` of the data plate.
    """

    log_lik: Tensor
    log_prior: Tensor
    log_q: Tensor
    weighted: Tensor
    data_scale: float

    @property
    def log_weight(self) -> Tensor:
        return self.log_lik + self.log_prior - self.log_q


def subsample_factor(site: dict) -> float:
    """The product of ``full_size / size`` over the subsampled plates of ``site``."""
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            factor *= frame.full_size / frame.size
    return factor


def _per_datapoint(name: str, site: dict, log_p: Tensor, k: int, n: int) -> Tensor:
    # The shape alone cannot tell a global latent from a per-point one when K == N (the
    # particle dim would pass for the data dim), so also require a data-sized plate.
    in_data_plate = any(f.name != PARTICLE_PLATE and f.size == n for f in site["cond_indep_stack"])
    if not in_data_plate or log_p.dim() == 0 or log_p.shape[-1] != n:
        raise ValueError(
            f"Site {name!r} has log-prob shape {tuple(log_p.shape)}, which has no datapoint dimension of size {n}; "
            "per-datapoint weights need every sample site inside the data plate (global latents cannot be split per point)."
        )
    return log_p.expand(k, n) if log_p.dim() == 1 else log_p.reshape(k, n)


def weight_terms(
    model: Callable, guide: Callable, *args: Any, num_samples: int = 1, num_points: int | None = None,
    max_plate_nesting: int = 1, **kwargs: Any,
) -> WeightTerms:
    """Trace ``guide`` then ``model`` with ``num_samples`` vectorized draws per datapoint.

    Args:
        model: A Pyro callable; every sample site must lie in the data plate.
        guide: A Pyro callable; every sample site must lie in the data plate.
        *args: Passed to both (e.g. the data batch ``x``).
        num_samples: Draws per datapoint ``K``.
        num_points: Batch size ``N``; inferred from the first argument when omitted.
        max_plate_nesting: Plates in the model; the particle plate goes one further out.
        **kwargs: Passed to both.
    """
    n = num_points if num_points is not None else args[0].shape[0]
    particles = pyro.plate(PARTICLE_PLATE, num_samples, dim=-(max_plate_nesting + 1))
    with particles:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    with particles:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    zero = torch.zeros(())
    log_lik = log_prior = log_q = weighted = zero
    data_scale = 1.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            # A plate records its subsample indices as a "sample" site; it has no density.
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_p = _per_datapoint(name, site, site["fn"].log_prob(site["value"]), num_samples, n)
            if site.get("mask") is not None and site["mask"] is not True:
                log_p = log_p * site["mask"]
            factor = subsample_factor(site)
            beta = site["scale"] / factor
            weighted = weighted + sign * beta * log_p
            if sign < 0:
                log_q = log_q + log_p
            elif site["is_observed"]:
                log_lik, data_scale = log_lik + log_p, factor
            else:
                log_prior = log_prior + log_p
    return WeightTerms(*(t.expand(num_samples, n) for t in (log_lik, log_prior, log_q, weighted)), data_scale=data_scale)




def trace_log_joint(model: Callable, x: Tensor, latents: dict[str, Tensor], max_plate_nesting: int = 1,
                    **kwargs: Any) -> Tensor:
    """``log p(x_i, z_i)`` per datapoint for given latent values, read off a Pyro trace.

    Args:
        model: A Pyro model ``model(x, **kwargs)`` whose sample sites lie in the data plate.
        x: Data ``(N, ...)``.
        latents: ``{site: value}``, each value with a leading draw dim ``S`` then ``N``
            (e.g. ``(S, N, d)``); gradients flow back to them.
        max_plate_nesting: Plates in the model; the draw plate goes one further out.

    Returns:
        The unscaled sum over sites of ``log p``, shape ``(S, N)``.
    """
    given, observed = trace_log_terms(model, x, latents, max_plate_nesting, **kwargs)
    return given + observed


def trace_log_terms(fn: Callable, x: Tensor, values: dict[str, Tensor], max_plate_nesting: int = 1,
                    **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Per-datapoint log-densities of ``fn`` (a model or a guide) conditioned on ``values``, in two sums.

    Args:
        fn: A Pyro callable ``fn(x, **kwargs)`` whose sample sites lie in the data plate.
        x: Data ``(N, ...)``.
        values: ``{site: value}``, each value with a leading draw dim ``S`` then ``N``;
            gradients flow back to them.
        max_plate_nesting: Plates in ``fn``; the draw plate goes one further out.

    Returns:
        ``(given, observed)``, each ``(S, N)`` and unscaled: the summed ``log p`` of the
        sites named in ``values`` (``log p(z)`` of a model, ``log q(z|x)`` of a guide)
        and of the other observed sites (``log p(x|z)`` of a model, zeros for a guide).

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
        >>> x, z = torch.rand(3, 4), torch.randn(5, 3, 2)
        >>> log_z, log_x = trace_log_terms(vae.model, x, {"z": z})
        >>> bool(torch.allclose(log_z + log_x, trace_log_joint(vae.model, x, {"z": z})))
        True
    """
    n = x.shape[0]
    s = next(iter(values.values())).shape[0]
    with pyro.plate(PARTICLE_PLATE, s, dim=-(max_plate_nesting + 1)):
        trace = poutine.trace(poutine.condition(fn, data=values)).get_trace(x, **kwargs)
    given = observed = torch.zeros((), device=x.device)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["is_observed"]:
            raise ValueError(f"Site {name!r} was sampled, not conditioned: pass its value in `values`.")
        log_p = _per_datapoint(name, site, site["fn"].log_prob(site["value"]), s, n)
        if site.get("mask") is not None and site["mask"] is not True:
            log_p = log_p * site["mask"]
        if name in values:
            given = given + log_p
        else:
            observed = observed + log_p
    return given.expand(s, n), observed.expand(s, n)


# --------------------------------------------------------------------------- the model protocol


def _sample_sites(trace: Any) -> dict[str, dict]:
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _plates(site: dict) -> set[str]:
    return {f.name for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE}


def _names(names: Any) -> str:
    return ", ".join(repr(n) for n in sorted(names)) or "none"


def _was_observed(site: dict) -> bool:
    return bool(site["is_observed"] or (site.get("infer") or {}).get("was_observed"))


def check_protocol(model: Callable, guide: Callable | None, x: Tensor, *, gradients: bool = False) -> dict[str, Any]:
    """Trace ``model`` (and ``guide``) once on ``x`` and refuse, in one line naming the site, what the estimators cannot score.

    The protocol: at least one observed site (several are summed into ``log p(x|z)``), each
    inside a plate over the ``N = x.shape[0]`` datapoints; every latent site inside that
    plate; the guide's latent sites the model's, with the same shapes; and, when
    ``gradients`` (AIS, BDMC: HMC moves the latents along gradients), continuous latents
    with a bijection to unconstrained space. The RNG state is left as it was.

    Args:
        model: A Pyro callable ``model(x)``.
        guide: A Pyro callable ``guide(x)``, or ``None`` to check the model alone.
        x: A few datapoints ``(N, ...)``.
        gradients: Also require continuous latents.

    Returns:
        ``{"observed": [...], "latents": [...], "data_plates": [...]}``: the site names found.

    Raises:
        ValueError: The first broken rule, in one line.

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("obs", dist.Normal(w, 1.0), obs=x)
        >>> check_protocol(model, None, torch.zeros(3))
        Traceback (most recent call last):
        ...
        ValueError: latent site 'w' of the model lies outside the data plate 'data': expected every latent inside the plate over the datapoints (one value per point; a global latent cannot be split per point).
    """
    n = x.shape[0]
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x) if guide is not None else None
        run = poutine.replay(model, trace=guide_trace) if guide_trace is not None else model
        model_trace = poutine.trace(run).get_trace(x)
    model_sites = _sample_sites(model_trace)
    observed = [name for name, site in model_sites.items() if site["is_observed"]]
    latents = [name for name, site in model_sites.items() if not site["is_observed"]]
    if not observed:
        raise ValueError(f"the model observes no site (latent sites: {_names(latents)}): expected "
                         "pyro.sample(name, distribution, obs=x) inside the plate over the datapoints.")
    data_plates: set[str] = set()
    for name in observed:
        sized = {f.name for f in model_sites[name]["cond_indep_stack"] if f.name != PARTICLE_PLATE and f.size == n}
        if not sized:
            raise ValueError(f"observed site {name!r} lies in no plate of size {n} (its plates: "
                             f"{_names(_plates(model_sites[name]))}): expected it inside pyro.plate(name, x.shape[0]), "
                             "the plate over the datapoints.")
        data_plates |= sized
    plate_text = _names(data_plates)
    sites = [("model", name, model_sites[name]) for name in latents]
    if guide_trace is not None:
        guide_sites = {name: site for name, site in _sample_sites(guide_trace).items() if not site["is_observed"]}
        for name, site in guide_sites.items():
            if name in observed:
                raise ValueError(f"the guide samples {name!r}, which the model observes: expected the guide to sample "
                                 f"only the model's latent sites ({_names(latents)}).")
            if name not in model_sites:
                raise ValueError(f"the guide samples {name!r}, which the model does not have: expected the guide's "
                                 f"latent sites to be the model's ({_names(latents)}).")
        missing = [name for name in latents if name not in guide_sites]
        if missing:
            raise ValueError(f"the model's latent site {missing[0]!r} has no site in the guide: expected the guide to "
                             f"sample every latent of the model (the guide samples {_names(guide_sites)}).")
        for name, site in guide_sites.items():
            expected = tuple(model_sites[name]["fn"].shape())
            if tuple(site["value"].shape) != expected:
                raise ValueError(f"latent site {name!r} has shape {tuple(site['value'].shape)} in the guide but "
                                 f"{expected} in the model: expected the same shape (points first, then the site's event).")
        sites += [("guide", name, site) for name, site in guide_sites.items()]
    for role, name, site in sites:
        if not _plates(site) & data_plates:
            raise ValueError(f"latent site {name!r} of the {role} lies outside the data plate {plate_text}: expected "
                             "every latent inside the plate over the datapoints (one value per point; a global latent "
                             "cannot be split per point).")
        if gradients:
            support = site["fn"].support
            try:
                continuous = not support.is_discrete and biject_to(support) is not None
            except NotImplementedError:
                continuous = False
            if not continuous:
                raise ValueError(f"latent site {name!r} of the {role} has support {support}: AIS and BDMC move the "
                                 "latents along gradients and expected continuous latents with a bijection to real "
                                 "space (importance sampling takes any guide).")
    return {"observed": observed, "latents": latents, "data_plates": sorted(data_plates)}


def _elementwise(support: Any) -> Any:
    while hasattr(support, "base_constraint"):  # independent(boolean, 2) -> boolean: one elementwise check
        support = support.base_constraint
    return support


def check_data(model: Any, x: Tensor, points: int = PROBE_POINTS) -> None:
    """Refuse data outside the support of the model's observed site, in one line (only while Pyro validates).

    A model with its own ``check_data(x)`` method (the stock VAE) is asked; otherwise the
    model is traced once on the first ``points`` points and ``x`` is checked elementwise
    against the support of each observed site that observes ``x`` itself (``obs=x`` or a
    reshape of it). A support that depends on the model's outputs cannot be checked ahead of them.

    Example:
        >>> import pyro.distributions as dist
        >>> class Coin:
        ...     def model(self, x):
        ...         with pyro.plate("data", x.shape[0]):
        ...             pyro.sample("flip", dist.Bernoulli(0.5), obs=x)
        >>> check_data(Coin(), torch.tensor([0.0, 1.0, 0.5]))
        Traceback (most recent call last):
        ...
        ValueError: x lies outside the support Boolean() of the model's observed site 'flip' (value 0.5 at point 2); transform the data to match it (see data.binarize, data.dequantize).
    """
    if not is_validation_enabled() or x.shape[0] == 0:
        return
    own = getattr(model, "check_data", None)
    if callable(own):
        for start in range(0, x.shape[0], CHECK_POINTS):
            own(x[start : start + CHECK_POINTS])
        return
    probe = x[:points].to(model_device(model, x.device))
    devices = [probe.device] if probe.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        trace = poutine.trace(model.model).get_trace(probe)
    for name, site in _sample_sites(trace).items():
        value = site["value"]
        if not site["is_observed"] or not torch.is_tensor(value) or value.numel() != probe.numel() \
                or value.data_ptr() != probe.data_ptr():
            continue
        support = _elementwise(site["fn"].support)
        if constraints.is_dependent(support):
            continue
        for start in range(0, x.shape[0], CHECK_POINTS):
            chunk = x[start : start + CHECK_POINTS]
            inside = support.check(chunk)
            if not bool(inside.all()):
                bad = (~inside).reshape(chunk.shape[0], -1).any(-1).nonzero()[0, 0].item()
                value = chunk[bad].reshape(-1)[(~inside[bad]).reshape(-1).nonzero()[0, 0]].item()
                raise ValueError(f"x lies outside the support {support} of the model's observed site {name!r} (value "
                                 f"{value:g} at point {start + bad}); transform the data to match it (see data.binarize, "
                                 "data.dequantize).")


# --------------------------------------------------------------------------- running a model for evaluation


def model_device(model: Any, default: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter, else ``default`` (else the CPU)."""
    params = model.parameters() if hasattr(model, "parameters") else ()
    for p in params:
        return p.device
    return default if default is not None else torch.device("cpu")


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw from ``seed`` and restore the global RNG afterwards; ``None``: the global RNG as is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextmanager
def evaluation_mode(model: Any) -> Iterator[None]:
    """Eval mode, no minibatch scale, beta = 1; restored afterwards.

    The target's terms are unscaled either way, but a ``num_data`` smaller than an
    evaluation batch would make the data plate refuse it.
    """
    saved = {k: getattr(model, k) for k in ("num_data", "beta") if hasattr(model, k)}
    training = getattr(model, "training", False)
    try:
        for k, v in (("num_data", None), ("beta", 1.0)):
            if k in saved:
                setattr(model, k, v)
        if hasattr(model, "eval"):
            model.eval()
        yield
    finally:
        for k, v in saved.items():
            setattr(model, k, v)
        if hasattr(model, "train"):
            model.train(training)


def model_space(x: Tensor) -> Tensor:
    """Simulated data as the estimators take it: floating point.

    Discrete likelihoods (categorical, Poisson) draw integer levels; the model sees levels
    as floats, as :class:`~pyro_vae.data.transforms.DataTransform` hands them over.
    """
    return x if x.is_floating_point() else x.float()


# --------------------------------------------------------------------------- the target of the estimators


@dataclass
class Annealing:
    """A batch's AIS target in unconstrained coordinates ``z`` ``(R, B, D)`` (``R`` chains of ``B`` points).

    Attributes:
        log_densities: ``z -> (log p(x, z), log q0(z))``, each ``(R, B)``, with the
            log-Jacobian of the map to the latents' supports added to both;
            differentiable in ``z``.
        flatten: Exact latents ``{site: (B, ...)}`` -> their coordinates ``(B, D)``.
        z0: ``(R, B, D)`` draws from ``q0``.
        with_gradients: Optional ``z -> (log p, log q0, ∇ log p, ∇ log q0)``: the same
            numbers with their gradients ``(R, B, D)`` computed by the model's own kernels
            (the stock VAE's :func:`~pyro_vae.models.fused.decoder_log_lik_and_grad`), in
            place of autograd through ``log_densities``. ``None``: autograd.
    """

    log_densities: Callable[[Tensor], tuple[Tensor, Tensor]]
    flatten: Callable[[dict[str, Tensor]], Tensor]
    z0: Tensor
    with_gradients: Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]] | None = None


@dataclass
class _Site:
    name: str
    transform: Any
    shape: tuple[int, ...]  # unconstrained event shape
    start: int
    stop: int


def _point_shape(model: Any, event_shape: Sequence[int] | None, like: Tensor | None) -> tuple[int, ...]:
    if event_shape is not None:
        return tuple(int(s) for s in event_shape)
    if like is not None:
        return tuple(like.shape[1:])
    shape = getattr(model, "event_shape", None)
    if shape is None:
        raise ValueError(f"cannot tell the shape of one datapoint of {type(model).__name__}: pass event_shape=(...) "
                         "(or like=x, a batch of data), or give the model an event_shape attribute.")
    return tuple(int(s) for s in shape)


class TracedTarget:
    """The target of any model meeting the protocol, read off Pyro traces of its ``model`` and ``guide``.

    The methods the estimators call (a model's ``fused()`` kernels offer the same):
    :meth:`check`, :meth:`log_weights`, :meth:`annealing` and :meth:`simulate`.

    Args:
        model: An object with Pyro ``model(x)`` and ``guide(x)``.
    """

    method = "trace"

    def __init__(self, model: Any) -> None:
        self.model = model

    def check(self, x: Tensor, *, gradients: bool = False, points: int = PROBE_POINTS) -> None:
        """:func:`check_protocol` on the first ``points`` points of ``x``, then :func:`check_data` on all of them.

        The estimators pass their batch size as ``points``: the probe is then a batch they
        would run anyway (a model that only runs on whole batches is probed as it runs).
        """
        if x.shape[0] == 0:  # the estimators refuse empty data themselves
            return
        probe = x[:points].to(model_device(self.model, x.device))
        with evaluation_mode(self.model):
            check_protocol(self.model.model, self.model.guide, probe, gradients=gradients)
            check_data(self.model, x, points)

    def log_weights(self, x: Tensor, k: int, q: Any = None, prior: Any = None) -> tuple[Tensor, Tensor]:
        """``(log p(x|z), log w)``, each ``(k, B)``, for ``k`` draws ``z ~ q(z|x)`` per point (``q``, ``prior`` unused)."""
        terms = weight_terms(self.model.model, self.model.guide, x, num_samples=k)
        return terms.log_lik, terms.log_weight

    def annealing(self, x: Tensor, init: str, rows: int) -> Annealing:
        """AIS's target for a batch: ``q0`` the guide (``init="guide"``) or the model's prior over the latents.

        The chains run in unconstrained space: each latent site is mapped by
        ``biject_to(support)``, and the log-Jacobian enters both ``log p`` and ``log q0``.
        """
        b = x.shape[0]
        model, guide = self.model.model, self.model.guide
        fn = guide if init == "guide" else model
        with pyro.plate(PARTICLE_PLATE, rows, dim=-2):
            trace = poutine.trace(fn).get_trace(x)
        sites, pieces, start = [], [], 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if tuple(site["value"].shape[:2]) != (rows, b):
                raise ValueError(f"latent site {name!r} has shape {tuple(site['value'].shape)}: AIS expected every "
                                 "latent inside the data plate (per-datapoint chains cannot share a global latent).")
            try:
                t = biject_to(site["fn"].support)
            except NotImplementedError:
                raise ValueError(f"latent site {name!r} has support {site['fn'].support}: HMC expected continuous "
                                 "latents.") from None
            u = t.inv(site["value"]).detach()
            size = math.prod(u.shape[2:])
            sites.append(_Site(name, t, tuple(u.shape[2:]), start, start + size))
            pieces.append(u.reshape(rows, b, size))
            start += size

        def unflatten(z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
            values, log_det = {}, torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
            for s in sites:
                u = z[..., s.start : s.stop].reshape(*z.shape[:2], *s.shape)
                values[s.name] = v = s.transform(u)
                log_det = log_det + s.transform.log_abs_det_jacobian(u, v).reshape(*z.shape[:2], -1).sum(-1)
            return values, log_det

        def log_densities(z: Tensor) -> tuple[Tensor, Tensor]:
            values, log_det = unflatten(z)
            log_prior, log_lik = trace_log_terms(model, x, values)
            # With q0 = prior, log q0 is the model's own latent term: no second pass through the decoder.
            log_q = trace_log_terms(guide, x, values)[0] if init == "guide" else log_prior
            return log_prior + log_lik + log_det, log_q + log_det

        def flatten(latents: dict[str, Tensor]) -> Tensor:
            return torch.cat([s.transform.inv(latents[s.name]).reshape(b, -1) for s in sites], dim=-1)

        return Annealing(log_densities, flatten, torch.cat(pieces, dim=-1))

    def simulate(self, num_points: int, *, event_shape: Sequence[int] | None = None,
                 like: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(x, latents)`` from the model's joint, through its own observed site, under the caller's RNG and mode.

        The model runs on a placeholder batch of zeros of the data's shape with
        ``poutine.uncondition``, so its observed site draws ``x`` whatever it is called.
        """
        shape = _point_shape(self.model, event_shape, like)
        dtype = like.dtype if like is not None and like.is_floating_point() else None
        if dtype is None:
            params = self.model.parameters() if hasattr(self.model, "parameters") else ()
            dtype = next((p.dtype for p in params if p.is_floating_point()), torch.get_default_dtype())
        placeholder = torch.zeros(num_points, *shape, dtype=dtype, device=model_device(self.model))
        trace = poutine.trace(poutine.uncondition(self.model.model)).get_trace(placeholder)
        sites = _sample_sites(trace)
        observed = [name for name, site in sites.items() if _was_observed(site)]
        if not observed:
            raise ValueError(f"the model observes no site (latent sites: {_names(sites)}): expected "
                             "pyro.sample(name, distribution, obs=x), through which simulating draws x.")
        if len(observed) > 1:
            raise ValueError(f"simulating draws x through the model's observed site, found {_names(observed)}: expected "
                             "exactly one pyro.sample(name, distribution, obs=x) that observes the whole datapoint.")
        value = sites[observed[0]]["value"]
        if value.numel() != placeholder.numel():
            raise ValueError(f"observed site {observed[0]!r} drew shape {tuple(value.shape)} for {num_points} points of "
                             f"shape {shape}: expected it to observe the whole datapoint (obs=x, or a reshape of x).")
        latents = {name: site["value"] for name, site in sites.items() if name not in observed}
        return model_space(value.reshape(placeholder.shape)), latents


def fast_path(model: Any, method: str = "auto") -> Any | None:
    """The fast kernels ``model.fused()`` offers, or ``None`` for the traced path.

    Args:
        model: Any model; one that offers kernels has a ``fused()`` method returning an
            object with :class:`TracedTarget`'s methods, or ``None`` where they would not
            give the traced numbers (e.g. a subclass replacing ``model`` or ``guide``).
        method: ``"auto"`` (the kernels when offered), ``"fused"`` (required) or ``"trace"``.

    Raises:
        ValueError: An unknown ``method``, or ``"fused"`` for a model that offers no kernels.

    Example:
        >>> fast_path(object(), "auto") is None
        True
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if method == "trace":
        return None
    offer = getattr(model, "fused", None)
    kernels = offer() if callable(offer) else None
    if kernels is None and method == "fused":
        raise ValueError(f"method='fused' needs a model that offers fused kernels, and {type(model).__name__} offers none "
                         "(no fused() method, or it returned None because model, guide or encode were replaced); "
                         "use method='trace' or 'auto'.")
    return kernels


def target_of(model: Any, method: str = "auto") -> Any:
    """What the estimators compute with: the model's fused kernels (see :func:`fast_path`), else a :class:`TracedTarget`.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> vae = VAE((4,), latent_dim=2, likelihood="gaussian")
        >>> target_of(vae).method, target_of(vae, "trace").method
        ('fused', 'trace')
    """
    kernels = fast_path(model, method)
    return kernels if kernels is not None else TracedTarget(model)


def simulate(model: Any, num_points: int, *, event_shape: Sequence[int] | None = None, like: Tensor | None = None,
             seed: int | None = None, method: str = "auto") -> tuple[Tensor, dict[str, Tensor]]:
    """Draw ``(x_i, z_i) ~ p(z) p(x|z)`` from the model: data with exact posterior draws (BDMC's input).

    The model's own observed site draws ``x``, whatever it is called (found from the
    trace, with ``poutine.uncondition`` on a placeholder batch of the data's shape), in
    evaluation mode (:func:`evaluation_mode`). A model with fused kernels draws through
    them (the stock VAE: ``prior().sample``, then ``decode(z).sample()``).

    Args:
        model: An object with Pyro ``model(x)`` (and ``guide(x)``).
        num_points: ``n``.
        event_shape: The shape of one datapoint; default ``like.shape[1:]``, else the
            model's ``event_shape`` attribute.
        like: A batch of data whose point shape and dtype the placeholder copies.
        seed: Seed of the draws (the global RNG is restored); ``None``: the global RNG.
        method: ``"auto"``, ``"fused"`` or ``"trace"`` (see :func:`fast_path`).

    Returns:
        ``(x, latents)``: floating-point data ``(n, *event_shape)`` and ``{site: value (n, ...)}``.

    Raises:
        ValueError: The point shape is unknown, or the model has no single observed site.

    Example:
        >>> from pyro_vae.models.vae import VAE
        >>> x, latents = simulate(VAE((5,), latent_dim=2, hidden=[4]), 3, seed=0)
        >>> x.shape, latents["z"].shape
        (torch.Size([3, 5]), torch.Size([3, 2]))
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be an int >= 1, got {num_points!r}.")
    target = target_of(model, method)
    with seeded(seed, model_device(model)), torch.no_grad(), evaluation_mode(model):
        return target.simulate(num_points, event_shape=event_shape, like=like)
