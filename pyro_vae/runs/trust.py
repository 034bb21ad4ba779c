"""Trust: a run directory runs no code of its sender unless this user produced or approved it.

A checkpoint records how to rebuild its model, and a part named by import path
(``model.prior: "mypkg.priors:HeavyTail"``, ``model.name: "my_models:TwoLayerVAE"``) is
imported and called to rebuild it. From a run directory someone sent you, that would run
their code. So, like Jupyter's notebook trust, every checkpoint this library writes carries a
signature: an HMAC-SHA256 of its recorded config under a secret key that lives only on this
machine, in this user's configuration folder. Rebuilding a run whose config names an import
path outside pyro_vae needs one of:

* a valid signature: the run was written here by this user (their own runs with their own
  parts keep working with no flag);
* the user's consent for this run: ``pyro-vae trust RUN`` (signs it with the local key),
  or ``--trust-code`` / ``trust_code=True`` for one command (as Hugging Face's
  ``trust_remote_code``).

Otherwise the run is refused before anything is imported, by a one-line
:class:`~pyro_vae.core.errors.UntrustedRunError` that lists each import path and how to
consent. Registered names and pyro_vae's own import paths need no consent.

The key is ``$PYRO_VAE_TRUST_KEY`` (a file path) if set, else
``$XDG_CONFIG_HOME/pyro_vae/trust.key`` (``~/.config/pyro_vae/trust.key``): 32 random
bytes, created on first use, readable by this user only.

Example:
    >>> config = {"model": {"name": "vae", "prior": "mypkg.priors:HeavyTail", "likelihood": "bernoulli"}}
    >>> import_paths(config)
    ['mypkg.priors:HeavyTail']
    >>> state = {"config": config, "signature": sign(config)}
    >>> require_trust(state, "run/checkpoint.pt")  # signed here: no error
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from pyro_vae.core.errors import UntrustedRunError

__all__ = ["KEY_ENV", "key_file", "import_paths", "sign", "is_signed", "require_trust"]

KEY_ENV = "PYRO_VAE_TRUST_KEY"
# The config keys whose values a rebuild imports when they are import paths.
IMPORTED_KEYS = ("name", "prior", "likelihood", "encoder", "decoder", "vae")
OWN_PACKAGE = "pyro_vae."


def key_file() -> Path:
    """Where this user's signing key lives (see the module docstring)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "pyro_vae" / "trust.key"


def _key() -> bytes:
    path = key_file()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: two processes starting at once agree on one key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def import_paths(config: Any) -> list[str]:
    """The import paths outside pyro_vae that rebuilding ``config`` (a recorded config mapping) would import."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return []
    found = []
    for key in IMPORTED_KEYS:
        value = model.get(key)
        if isinstance(value, str) and ":" in value and not value.startswith(OWN_PACKAGE):
            found.append(value)
    return found


def sign(config: Any) -> str:
    """The signature of a recorded config under this user's key (hex)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hmac.new(_key(), canonical, hashlib.sha256).hexdigest()


def is_signed(state: dict) -> bool:
    """Whether the checkpoint ``state`` carries this user's signature of its config."""
    signature = state.get("signature")
    return isinstance(signature, str) and hmac.compare_digest(signature, sign(state.get("config")))


def require_trust(state: dict, file: str | Path, trust_code: bool = False) -> None:
    """Refuse, before anything is imported, a checkpoint whose config names code this user has not trusted.

    Raises:
        UntrustedRunError: The config names import paths outside pyro_vae, the checkpoint
            is not signed by this user, and ``trust_code`` is off.
    """
    paths = import_paths(state.get("config"))
    if not paths or trust_code or is_signed(state):
        return
    run = Path(file).parent if Path(file).suffix == ".pt" else Path(file)
    raise UntrustedRunError(
        f"{str(file)!r} was not written or trusted by you on this machine, and rebuilding it would import and run "
        f"{', '.join(paths)}; nothing was imported. If you trust its sender, run `pyro-vae trust {run}` (or pass "
        "--trust-code, or trust_code=True in Python)."
    )
