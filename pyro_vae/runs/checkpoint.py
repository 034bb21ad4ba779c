"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives (so the safe unpickler can
read it) carrying everything needed to rebuild and continue a run::

    {"format", "config", "model", "optimizer", "scheduler", "epoch", "global_step",
     "rng", "history", "best_val_elbo", "bad_epochs"}

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(2)}})
    >>> load_checkpoint(path, require=("epoch", "model"))["epoch"]
    1
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from pyro_vae.core.errors import CheckpointError, RunDirError
from pyro_vae.data.files import UnreadableFileError, safe_torch_load

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng"]

FORMAT = "pyro_vae.checkpoint/1"
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file intact.

    The file is written to a temporary name in the same folder, flushed to disk, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "write" in str(exc).lower()):
            # torch.save reports a full disk as a RuntimeError from its zip writer.
            reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:120]
            raise RunDirError(f"could not write {str(path)!r} ({reason}); the previous file is intact. Free disk space "
                              "(or choose another --out) and resume the run.") from None
        raise


def load_checkpoint(path: str | Path, require: Iterable[str] = ("config", "model")) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check it is complete.

    Raises:
        CheckpointError: Missing file, truncated/corrupt file, or missing keys; the
            message says which and what to do.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {str(path)!r}; pass a run directory written by `pyro-vae train`.")
    try:
        state = safe_torch_load(path)
    except UnreadableFileError as exc:
        other = "checkpoint.pt" if path.name == "best.pt" else "best.pt"
        if exc.corrupt:
            raise CheckpointError(f"Checkpoint {str(path)!r} is corrupt or truncated and cannot be read ({exc.reason}). "
                                  f"Resume from another checkpoint ({other}) or retrain.") from None
        raise CheckpointError(f"{str(path)!r} is not a pyro_vae checkpoint: {exc.reason}. "
                              "Pass a run directory written by `pyro-vae train`.") from None
    except OSError as exc:  # no permission, a folder named checkpoint.pt, ...
        raise CheckpointError(f"Checkpoint {str(path)!r} cannot be opened ({exc.strerror or exc}); "
                              "check its permissions or pass another run directory.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{str(path)!r} is not a pyro_vae checkpoint (format {found!r}, expected {FORMAT!r}); "
                              "pass a run directory written by `pyro-vae train`.")
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(f"Checkpoint {str(path)!r} lacks {missing}; it was not written by a complete run.")
    return state


def capture_rng() -> dict[str, Any]:
    """All random states a run consumes, as tensors and primitives."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`.

    Raises:
        CheckpointError: The saved states are not ones torch and Python can restore (an edited checkpoint).
    """
    try:
        torch.set_rng_state(state["torch"])
        random.setstate((3, tuple(state["python"]), None))
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint's random-number state cannot be restored ({' '.join(str(exc).split())[:120]}); "
                              "it was edited or damaged, so the run cannot continue exactly: resume from best.pt or "
                              "start a new run.") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
