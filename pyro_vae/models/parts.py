"""Your own parts: registered names, import paths, and how a part is recorded for rebuilding.

A part (prior, likelihood, encoder, decoder, or a whole ``VAE`` subclass) can be named
in a config in two ways::

    model:
      prior: mog                                        # a registered name
      prior: {name: "mypkg.priors:HeavyTail", scale: 2} # an import path, with settings

Code that wants a short name registers it::

    @register("prior")
    class heavy_tail(Prior): ...

Every part built by name or import path, and every :class:`~pyro_vae.models.priors.Prior` or
:class:`~pyro_vae.models.likelihoods.Likelihood` instance (their base classes remember their
constructor arguments), can be written down as ``(name or import path, settings)``: a
checkpoint stores that, so ``--resume``, ``evaluate``, ``compare`` and ``sample`` rebuild
the same model in a new process. A lambda or a class defined in ``__main__`` cannot be
imported by another process; :func:`spec_of` says so instead of recording something
that would not load.

Example:
    >>> from pyro_vae.models.priors import mog
    >>> spec_of("prior", mog(k=3))
    ('mog', {'k': 3})
    >>> lookup("prior", "pyro_vae.models.priors:laplace").__name__
    'laplace'
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any, Callable

from torch import nn
from torch.distributions import Distribution

from pyro_vae.core.errors import PartError
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.nets import ENCODERS, DECODERS
from pyro_vae.models.priors import PRIORS

__all__ = ["KINDS", "register", "part", "is_part", "PART_MARK", "is_import_path", "import_object", "lookup", "settings_of", "check_settings", "spec_of", "registered_name", "MODELS", "VAE_CLASSES"]

VAE_CLASSES: dict[str, Callable[..., Any]] = {}  # registered VAE subclasses (the stock VAE needs no name)
MODELS: dict[str, Callable[..., Any]] = {}  # registered models: any class with Pyro model(x) and guide(x)
KINDS: dict[str, dict[str, Callable[..., Any]]] = {
    "prior": PRIORS, "likelihood": LIKELIHOODS, "encoder": ENCODERS, "decoder": DECODERS, "vae": VAE_CLASSES,
    "model": MODELS,
}


def register(kind: str, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a part under a short name, so configs and the CLI can use it.

    Args:
        kind: ``"prior"``, ``"likelihood"``, ``"encoder"``, ``"decoder"`` or ``"vae"``.
        name: The short name; default the object's ``__name__``.

    Example:
        >>> from pyro_vae.models.priors import Prior, PRIORS
        >>> @register("prior", "doc_example_prior")
        ... class DocExamplePrior(Prior): ...
        >>> "doc_example_prior" in PRIORS
        True
        >>> del PRIORS["doc_example_prior"]
    """
    if kind not in KINDS:
        raise PartError(f"unknown part kind {kind!r}; choose one of {', '.join(KINDS)}.")

    def decorate(obj: Callable) -> Callable:
        key = name or obj.__name__
        existing = KINDS[kind].get(key)
        if existing is not None and existing is not obj:
            raise PartError(f"{kind} name {key!r} is already registered to {_path_of(existing)}; choose another name.")
        KINDS[kind][key] = obj
        if not inspect.isclass(obj):
            setattr(obj, PART_MARK, True)
        return obj

    return decorate


def is_import_path(name: str) -> bool:
    """``"module:attr"`` (or a dotted path with a module part) rather than a registered name."""
    return ":" in name


def import_object(path: str) -> Any:
    """The object an import path ``"package.module:attr.sub"`` names.

    Raises:
        PartError: The module or attribute cannot be imported; the message names the path.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise PartError(f"import path {path!r} must look like 'package.module:name'.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise PartError(f"cannot import {path!r}: {exc}; install the package or put its folder on PYTHONPATH.") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PartError(f"cannot import {path!r}: module {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    return obj


PART_MARK = "__pyro_vae_part__"


def part(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function as a part, so a config may name it by import path.

    A class that is an ``nn.Module`` or a torch ``Distribution`` is a part by its type; a
    plain function is only a part when it says so, since an import path to any function
    (``os:system``, ``subprocess:run``) would otherwise be called with settings from a file.
    Registering a function (:func:`register`) marks it too.

    Example:
        >>> @part
        ... def laplace_fixed(scale: float = 0.1): ...
        >>> is_part(laplace_fixed)
        True
    """
    setattr(fn, PART_MARK, True)
    return fn


def is_part(obj: Any) -> bool:
    """Whether ``obj`` may be built from a config: a module or distribution class, or a marked or registered function."""
    if inspect.isclass(obj):
        return issubclass(obj, (nn.Module, Distribution))
    if getattr(obj, PART_MARK, False) or any(obj is s for registry in KINDS.values() for s in registry.values()):
        return True
    return False


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """The strategy (class or function) a registered name or an import path names.

    Raises:
        PartError: Unknown name, an import that fails, or an import path to something that
            is not a part (see :func:`is_part`): it is never called.
    """
    if is_import_path(name):
        obj = import_object(name)
        if not is_part(obj):
            what = "a class that is not an nn.Module or a Distribution" if inspect.isclass(obj) else \
                f"a {type(obj).__name__} not marked as a part"
            raise PartError(f"{kind} {name!r} is {what}; pyro_vae builds only parts from import paths: an nn.Module "
                            "or Distribution class, or a function decorated with @pyro_vae.models.parts.part.")
        return obj
    registry = KINDS[kind]
    if name not in registry:
        raise PartError(f"unknown {kind} {name!r}; registered: {', '.join(registry) or 'none'}, "
                        "or give an import path 'package.module:Name'.")
    return registry[name]


def settings_of(strategy: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The named settings a strategy accepts (not ``*args``/``**kwargs``)."""
    if inspect.isclass(strategy) and strategy.__init__ in (nn.Module.__init__, object.__init__):
        return {}
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    try:
        params = inspect.signature(strategy).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p for p in params if p.kind not in kinds}


def _takes_any(strategy: Callable[..., Any]) -> bool:
    if inspect.isclass(strategy) and strategy.__init__ in (nn.Module.__init__, object.__init__):
        return False  # a part class without its own __init__ takes no settings
    try:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(strategy).parameters.values())
    except (TypeError, ValueError):
        return True


def check_settings(key: str, name: str, strategy: Callable[..., Any], settings: dict[str, Any],
                   reserved: tuple[str, ...] = ()) -> None:
    """Refuse unknown settings and values whose type contradicts the setting's default.

    Args:
        key: The config key, for messages (e.g. ``"model.prior_kwargs"``).
        name: The part's name or import path.
        strategy: What will be called with the settings.
        settings: The user's settings.
        reserved: Arguments the library passes itself (e.g. ``latent_dim`` for a net).
    """
    params = settings_of(strategy)
    clash = sorted(set(settings) & set(reserved))
    if clash:
        raise PartError(f"{key}: {clash} are set by pyro_vae for {name!r}; remove them.")
    unknown = sorted(set(settings) - set(params))
    if unknown and not _takes_any(strategy):
        valid = ", ".join(p for p in params if p not in reserved) or "none"
        raise PartError(f"{key}: {name!r} has no settings {unknown}; valid settings: {valid}.")
    for setting, value in settings.items():
        param = params.get(setting)
        default = None if param is None else param.default
        if default is None or default is inspect.Parameter.empty:
            continue
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) == isinstance(default, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not (isinstance(default, int) and isinstance(value, float)
                                                          and not value.is_integer())
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise PartError(f"{key}.{setting}: {name!r} expects {type(default).__name__} "
                            f"(default {default!r}), got {value!r} ({type(value).__name__}).")


def _path_of(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def registered_name(kind: str, strategy: Any) -> str | None:
    """The short name ``strategy`` is registered under, or ``None``."""
    return next((name for name, s in KINDS[kind].items() if s is strategy), None)


def spec_of(kind: str, part: Any) -> tuple[str, dict[str, Any]]:
    """``(registered name or import path, settings)`` that rebuild ``part`` in another process.

    Works for parts whose constructor arguments were recorded (every ``Prior`` and
    ``Likelihood`` instance, and the likelihood strategies of :mod:`pyro_vae.models.likelihoods`)
    and for classes and functions defined in an importable module.

    Raises:
        PartError: The part cannot be rebuilt elsewhere (a lambda, a closure, a class from
            ``__main__``, or settings that are not plain data); the message says what to do.
    """
    recorded = getattr(part, "_part_spec", None)
    strategy, settings = recorded if recorded is not None else (part, {})
    if isinstance(strategy, str):  # recorded by name already
        return strategy, dict(settings)
    name = registered_name(kind, strategy)
    if name is None:
        module, qualname = getattr(strategy, "__module__", None), getattr(strategy, "__qualname__", "")
        if module in (None, "__main__") or "<" in qualname:
            raise PartError(f"{kind} {part!r} cannot be rebuilt in another process (defined in "
                            f"{module or 'no module'}{', or a lambda/closure' if '<' in qualname else ''}): move it "
                            "into an importable module, or pass the same object again when loading.")
        name = _path_of(strategy)
    try:
        json.dumps(settings)
    except TypeError as exc:
        raise PartError(f"{kind} {name!r}: its settings {settings!r} are not plain data ({exc}); they cannot be "
                        "written into the checkpoint. Use numbers, strings, lists and mappings.") from None
    return name, dict(settings)
