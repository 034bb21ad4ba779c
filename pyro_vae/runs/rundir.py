"""Run directories: what a run writes, which checkpoint to read, and loading a trained model back.

A run directory written by ``pyro-vae train`` holds::

    config.yaml          the validated config the run was trained with
    checkpoint.pt        the latest epoch (for --resume); carries its own config
    best.pt              the epoch with the best validation ELBO (when there is validation)
    metrics.csv/.json    one row per epoch
    samples.png, reconstructions.png, curves.png

Every checkpoint carries its config and the shape of its data (:class:`~pyro_vae.runs.build.DataShape`),
so :func:`load_model` rebuilds the trained VAE and its data transform without the data;
:func:`load_run` also loads the dataset, for scoring. Training (:mod:`pyro_vae.jobs.train`),
evaluation, comparison and the CLI all read and write runs through this module.

Example:
    >>> import tempfile
    >>> from pyro_vae.jobs.train import fit
    >>> run = fit({"model": {"latent_dim": 2, "net": {"hidden": [8]}}, "train": {"epochs": 1}},
    ...           run_dir=tempfile.mkdtemp(), progress=False).run_dir
    >>> vae, transform = load_model(run)
    >>> vae.latent_dim, checkpoint_path(run, "best").name
    (2, 'best.pt')
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import matplotlib.pyplot as plt
import pyro
import torch

from pyro_vae.core.errors import RunDirError
from pyro_vae.runs import config as config_lib
from pyro_vae.plots import figures as plots
from pyro_vae.runs.build import DataShape, build_model, build_transform, load_data
from pyro_vae.core.errors import CheckpointError
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.trust import import_paths, is_signed, require_trust, sign
from pyro_vae.runs.config import Config
from pyro_vae.data.datasets import Dataset
from pyro_vae.data.transforms import DataTransform

__all__ = ["CHECKPOINT", "BEST", "run_home", "require_custom_parts", "locked_run_dir", "prepare_run_dir", "save_epoch", "write_metrics", "save_training_pictures", "checkpoint_path", "read_checkpoint", "trust_run", "load_weights", "load_model", "load_run", "read_history"]

CHECKPOINT, BEST = "checkpoint.pt", "best.pt"
WHICH = ("best", "last")


@contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``run_dir`` (created if needed) while a run writes to it.

    A second writer fails at once instead of silently overwriting the first one's
    checkpoints. The lock is an ``fcntl.flock`` on ``run_dir/.lock``, released by the
    operating system even if the process is killed, so a crash never leaves a stale lock.
    Temporary files that an interrupted checkpoint write left behind are removed.

    Raises:
        RunDirError: The directory is not writable or another process holds the lock.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
    except OSError as exc:
        raise RunDirError(f"Run directory {str(run_dir)!r} is not writable ({exc.strerror}); "
                          "choose another --out / config `out`.") from exc
    try:
        try:
            import fcntl  # POSIX; where it is missing (Windows) runs are not locked
        except ImportError:
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise RunDirError(f"Run directory {str(run_dir)!r} is in use by another training process "
                                  f"(pid {owner}); wait for it to finish or choose another --out.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        for leftover in run_dir.glob(".*.tmp"):  # from a write interrupted by a crash; never a live file
            leftover.unlink(missing_ok=True)
        yield run_dir
    finally:
        handle.close()


def prepare_run_dir(run_dir: Path, cfg: Config) -> None:
    """Create ``run_dir`` and write the run's ``config.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.dump(cfg, run_dir / "config.yaml")


def save_epoch(run_dir: Path, state: dict[str, Any], improved: bool) -> None:
    """Write the epoch's checkpoint (atomically), and ``best.pt`` too when validation improved."""
    save_checkpoint(run_dir / CHECKPOINT, state)
    if improved:
        save_checkpoint(run_dir / BEST, state)


def write_metrics(run_dir: Path, history: Sequence[dict]) -> None:
    """``metrics.json`` and ``metrics.csv``: one row per epoch."""
    (run_dir / "metrics.json").write_text(json.dumps(list(history), indent=2))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch metrics of a run (empty when it has none yet)."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else []


def save_training_pictures(run_dir: Path, vae: Any, x: torch.Tensor, history: Sequence[dict],
                           data: torch.Tensor | None = None) -> None:
    """The pictures every training run leaves: samples, reconstructions of ``x`` (model space) and curves.

    ``data`` (model space) is drawn under the samples of tabular data, per feature.
    """
    run = run_dir.name
    for fig in (
        plots.sample_grid(vae, path=run_dir / "samples.png", run=run, data=data, event_shape=tuple(x.shape[1:])),
        plots.reconstruction_grid(vae, x, path=run_dir / "reconstructions.png", run=run),
        plots.training_curves(history, path=run_dir / "curves.png", run=run),
    ):
        plt.close(fig)


def save_run_pictures(result: Any) -> None:
    """:func:`save_training_pictures` for a :class:`~pyro_vae.jobs.train.FitResult`: its first 32 test points, and
    up to 2000 training points as the data of tabular sample pictures."""
    param = next(result.vae.parameters())

    def model_space(x: torch.Tensor) -> torch.Tensor:
        return result.transform(x.to(param.device), train=False).to(param.dtype)

    data = model_space(result.dataset.train[:2000]) if len(result.dataset.event_shape) == 1 else None
    save_training_pictures(result.run_dir, result.vae, model_space(result.dataset.test[:32]), result.history, data)


def run_home(path: str | Path) -> Path:
    """The run directory of ``path``, a run directory or a checkpoint file inside one."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def checkpoint_path(path: str | Path, which: str = "best") -> Path:
    """The checkpoint file of a run directory: ``"best"`` (falling back to the latest) or ``"last"``.

    A path to a ``.pt`` file is returned as it is.
    """
    if which not in WHICH:
        raise ValueError(f"which must be 'best' or 'last', got {which!r}.")
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / BEST
    return best if which == "best" and best.exists() else path / CHECKPOINT


def read_checkpoint(path: str | Path, which: str = "best", trust_code: bool = False,
                    require: Sequence[str] = ("config", "model")) -> tuple[Path, dict[str, Any]]:
    """The checkpoint file :func:`checkpoint_path` picks, and its contents, if this user trusts them.

    An unreadable ``best.pt`` in a run directory does not block the run: the latest
    ``checkpoint.pt`` is read instead, with a warning. Every reader of a run comes through
    here, so a checkpoint that names code this user has not trusted is refused before
    anything is imported (:func:`pyro_vae.runs.trust.require_trust`).

    Raises:
        CheckpointError: The checkpoint (and, for ``"best"``, its fallback) cannot be read.
        UntrustedRunError: It names import paths and is neither signed here nor trusted.
    """
    file = checkpoint_path(path, which)
    try:
        state = load_checkpoint(file, require=require)
    except CheckpointError as exc:
        fallback = file.with_name(CHECKPOINT)
        if not (Path(path).is_dir() and file.name == BEST and fallback.exists()):
            raise
        warnings.warn(f"{exc} Using {str(fallback)!r} (the latest epoch) instead.", stacklevel=3)
        file, state = fallback, load_checkpoint(fallback, require=require)
    require_trust(state, file, trust_code)
    for key, kind, what in (("epoch", int, "whole number"), ("global_step", int, "whole number"),
                            ("history", list, "list"), ("bad_epochs", int, "whole number")):
        if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise CheckpointError(f"Checkpoint {str(file)!r}: its {key} is {state[key]!r}, not a {what}; it was "
                                  "edited or damaged: resume from the run's other checkpoint or start a new run.")
    return file, state


def trust_run(path: str | Path) -> list[str]:
    """Sign every checkpoint of a run with this user's key (``pyro-vae trust RUN``); the import paths it names.

    From then on the run's recorded import paths are imported without ``--trust-code``.
    Checkpoints are rewritten atomically; their weights are not changed.
    """
    run = run_home(path)
    files = [run / name for name in (CHECKPOINT, BEST) if (run / name).exists()] if Path(path).is_dir() else [Path(path)]
    if not files:
        raise CheckpointError(f"No checkpoint in {str(run)!r}; pass a run directory written by `pyro-vae train`.")
    paths: list[str] = []
    for file in files:
        state = load_checkpoint(file)
        state["signature"] = sign(state["config"])
        save_checkpoint(file, state)
        paths += [p for p in import_paths(state["config"]) if p not in paths]
    return paths


def load_weights(target: Any, weights: Any, file: Path, what: str = "model") -> None:
    """``target.load_state_dict(weights)`` (a module, optimizer or schedule); a mismatch is a one-line CheckpointError.

    A model's weights must also be finite: training never saves non-finite ones, so such a
    checkpoint was damaged or edited (blaming the learning rate would send the user astray).
    """
    if what == "model" and isinstance(weights, dict):
        bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"Checkpoint {str(file)!r} holds non-finite weights ({', '.join(bad[:3])}); training "
                                  "never saves such weights, so the file was damaged or edited: use the run's other "
                                  "checkpoint (best.pt / checkpoint.pt) or retrain.")
    try:
        target.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # torch lists every mismatching key over many lines; the first of them says what kind.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]
        raise CheckpointError(f"Checkpoint {str(file)!r}: its {what} state does not fit the model its "
                              f"config describes ({detail}); it was edited or written by another version.") from None


def require_custom_parts(custom: dict[str, str], objects: dict[str, Any], file: Path | None) -> None:
    """Refuse to rebuild a run trained with parts its checkpoint could not record, unless they are passed."""
    missing = sorted(kind for kind in custom if objects.get(kind) is None)
    if missing:
        raise CheckpointError(
            f"{str(file)!r} was trained with a {', '.join(missing)} that could not be recorded ({custom[missing[0]]}); "
            f"pass the same object again: {', '.join(f'{k}=...' for k in missing)}."
        )


def _rebuild(state: dict[str, Any], shape: DataShape, file: Path,
             objects: dict[str, Any]) -> tuple[Any, Config, DataTransform]:
    cfg = config_lib.from_dict(state["config"])
    require_custom_parts(dict(state.get("custom_parts") or {}), objects, file)
    with pyro.settings.context(module_local_params=True):
        vae = build_model(cfg, shape, **objects)
    load_weights(vae, state["model"], file)
    if hasattr(vae, "num_data"):
        vae.num_data = None
    vae.eval()
    return vae, cfg, build_transform(cfg, shape, vae)


def load_model(path: str | Path, which: str = "best", trust_code: bool = False, **objects: Any) -> tuple[Any, DataTransform]:
    """The trained model and its data transform, from a run directory or checkpoint, without the data.

    The model is the stock VAE or whatever model the run trained (its ``model.name``).

    Args:
        path: A run directory or a ``.pt`` checkpoint.
        which: ``"best"`` (best validation ELBO, falling back to the latest) or ``"last"``.
        trust_code: Import the run's recorded import paths even though this user did not
            write or trust the run (see :mod:`pyro_vae.runs.trust`).
        **objects: The parts (``prior=``, ``likelihood=``, ``encoder=``, ``decoder=``) of a
            run trained with parts its checkpoint could not record (see
            :func:`pyro_vae.runs.build.record_parts`).

    Raises:
        CheckpointError: The checkpoint predates data shapes in checkpoints (use :func:`load_run`),
            or a part it could not record was not passed.
    """
    file, state = read_checkpoint(path, which, trust_code)
    if "data_shape" not in state:
        raise CheckpointError(f"Checkpoint {str(file)!r} does not record its data shape (written by an older "
                              "pyro_vae); load it with pyro_vae.runs.rundir.load_run, which reads the data.")
    vae, _, transform = _rebuild(state, DataShape.from_dict(state["data_shape"]), file, objects)
    return vae, transform


def load_run(path: str | Path, which: str = "best", data_root: str | None = None, trust_code: bool = False,
             **objects: Any) -> tuple[Any, Config, Dataset, DataTransform]:
    """Rebuild a trained model and its data pipeline from a run directory or checkpoint file.

    A run this user did not write (unsigned) names a data folder and a download flag of its
    sender's choosing: neither is followed. Its data is read from ``data_root`` or the
    default folder, and nothing is downloaded.

    Args:
        path: A run directory or a ``.pt`` checkpoint.
        which: ``"best"`` (best validation ELBO, falling back to the latest) or ``"last"``.
        data_root: Where the data lives now, if it moved since training.
        trust_code: As for :func:`load_model`.
        **objects: Parts the checkpoint could not record, as for :func:`load_model`.
    """
    file, state = read_checkpoint(path, which, trust_code)
    cfg = config_lib.from_dict(state["config"])
    if is_signed(state):
        dataset = load_data(cfg, root=data_root)
    else:
        dataset = load_data(cfg, root=data_root, download=False, recorded_root=False)
    vae, cfg, transform = _rebuild(state, DataShape.of(dataset), file, objects)
    return vae, cfg, dataset, transform
