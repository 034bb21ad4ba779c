"""Datasets: loading (scikit-learn digits, the MNIST family, user files) and fixed splits.

Every dataset is held in memory as **raw values** (:class:`Dataset`): for quantized
data these are the integer levels stored as float32 (digits ``0..16``, MNIST
``0..255``), so the choice of what the model sees (grey values, binarized,
dequantized or categorical levels) is made per minibatch by
:class:`~pyro_vae.data.transforms.DataTransform` and can differ between runs on the same data.

Splits are fixed functions of ``split_seed`` only (never of the training seed), so
figures from different runs and models are computed on the same datapoints:

* ``digits`` (scikit-learn, 1797 8x8 images, works offline): a fixed permutation
  split 80/10/10 (train/val/test) by default.
* ``mnist``, ``fashion_mnist``, ``kmnist``: official test set; validation is the
  last ``val_fraction`` of the official training set (no shuffle). ``val_fraction: 0``
  trains on all 60 000 images, the literature's protocol (Burda et al., 2016); then
  there is no validation split, so no early stopping and no ``best.pt``.
* ``mnist10k`` (the "MNIST-10k" benchmark protocol): only the official MNIST test
  set; train = first 8000 images, test = last 2000. The protocol has no separate
  validation split, so ``val`` *is* ``test``: validation figures are for
  monitoring only and must not be used for model selection.
* A path to a ``.npy``, ``.npz`` or ``.pt`` file (see :func:`load_dataset`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_vae.data.files import MAX_LEVELS, check_values, read_array_file, to_labels, to_tensor

__all__ = ["Dataset", "DATASETS", "FILE_EXTENSIONS", "load_dataset", "load_available", "default_data_root"]

DATASETS = ("digits", "mnist", "fashion_mnist", "kmnist", "mnist10k")
FILE_EXTENSIONS = (".npy", ".npz", ".pt")
SPLITS = ("train", "val", "test")

_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
_MNIST10K_TRAIN = 8000
_MNIST10K_SIZE = 10000


@dataclass
class Dataset:
    """An in-memory dataset with fixed train/val/test splits of raw values.

    Attributes:
        name: Registered name or the file path the data came from.
        train: Raw values, float32, shape ``(N, *event_shape)``. Quantized data hold
            the integer levels as floats.
        val: Validation split (for ``mnist10k`` the same tensor as ``test``).
        test: Test split.
        train_labels: int64 labels of shape ``(N,)`` or ``None``.
        val_labels: See ``train_labels``.
        test_labels: See ``train_labels``.
        levels: Number of discrete levels for integer-level data (digits: 17,
            MNIST: 256), ``None`` for continuous data.
        event_shape: Shape of one datapoint, e.g. ``(8, 8)`` or ``(1, 28, 28)``.
        val_is_test: True when the protocol has no separate validation split.
        no_validation: True when training uses every training point (``val`` is empty).
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    train_labels: Tensor | None
    val_labels: Tensor | None
    test_labels: Tensor | None
    levels: int | None
    event_shape: tuple[int, ...]
    val_is_test: bool = False
    no_validation: bool = False

    def __post_init__(self) -> None:
        self.event_shape = tuple(int(s) for s in self.event_shape)
        # Validating at construction means no code path can hand a model bad data.
        if self.no_validation and len(self.val):
            raise ValueError(f"{self.name}: no_validation=True but the val split holds {len(self.val)} points.")
        if self.levels is not None and not 2 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"{self.name}: levels must be an integer in [2, {MAX_LEVELS}] or None, got {self.levels}; "
                             "store continuous data as float (levels=None) or rescale it to fewer levels.")
        for split in SPLITS:
            x, y = self.split(split)
            if x.dtype != torch.float32:
                raise ValueError(f"{self.name} {split}: raw values must be float32, got {x.dtype}.")
            if not (split == "val" and self.no_validation):
                check_values(x, f"{self.name} {split}")
            if tuple(x.shape[1:]) != self.event_shape:
                raise ValueError(
                    f"{self.name} {split}: datapoint shape {tuple(x.shape[1:])} != event_shape {self.event_shape}."
                )
            if self.levels is not None and x.numel() and ((x != x.round()).any() or x.min() < 0 or x.max() > self.levels - 1):
                raise ValueError(
                    f"{self.name} {split}: levels={self.levels} but values are not integers in "
                    f"[0, {self.levels - 1}] (range {x.min().item()}..{x.max().item()})."
                )
            if y is not None and (y.dtype != torch.int64 or y.shape != (x.shape[0],)):
                raise ValueError(
                    f"{self.name} {split}_labels: need int64 of shape ({x.shape[0]},), "
                    f"got {y.dtype} of shape {tuple(y.shape)}."
                )

    @property
    def num_dims(self) -> int:
        """Number of dimensions of one datapoint (product of ``event_shape``)."""
        return math.prod(self.event_shape)

    def split(self, name: str) -> tuple[Tensor, Tensor | None]:
        """Return ``(x, labels)`` of split ``"train"``, ``"val"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; choose one of {SPLITS}.")
        return getattr(self, name), getattr(self, f"{name}_labels")

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy with all tensors on ``device`` (keeps ``val is test`` sharing)."""
        moved = {k: None if (t := getattr(self, k)) is None else t.to(device) for k in _TENSOR_FIELDS}
        if self.val_is_test:
            moved["val"], moved["val_labels"] = moved["test"], moved["test_labels"]
        return Dataset(self.name, **moved, levels=self.levels, event_shape=self.event_shape,
                       val_is_test=self.val_is_test, no_validation=self.no_validation)

    def head(self, train: int, val: int, test: int) -> Dataset:
        """The first points of each split (e.g. for quick smoke runs of the same code path)."""
        sizes = {"train": train, "val": val, "test": test}
        return dataclasses.replace(self, **{f"{s}{k}": None if (t := getattr(self, f"{s}{k}")) is None else t[:n]
                                            for s, n in sizes.items() for k in ("", "_labels")})

    def __repr__(self) -> str:
        # The dataclass default would print every tensor.
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS)
        return f"Dataset(name={self.name!r}, levels={self.levels}, event_shape={self.event_shape}, {sizes})"


_TENSOR_FIELDS = ("train", "val", "test", "train_labels", "val_labels", "test_labels")


def default_data_root() -> Path:
    """``$PYRO_VAE_DATA`` if set, else ``~/.cache/pyro_vae/data``."""
    env = os.environ.get("PYRO_VAE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyro_vae" / "data"


def _fixed_split(n: int, val_fraction: float, test_fraction: float, split_seed: int) -> tuple[Tensor, Tensor, Tensor]:
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(f"Need fractions >= 0 summing to < 1, got val={val_fraction}, test={test_fraction}.")
    # A private generator: the split must not depend on (or disturb) the global training RNG.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    n_train = n - n_val - n_test
    parts = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return tuple(p.sort().values for p in parts)  # type: ignore[return-value]


def _from_single(name: str, x: Tensor, y: Tensor | None, levels: int | None, split_seed: int,
                 val_fraction: float, test_fraction: float) -> Dataset:
    idx = _fixed_split(len(x), val_fraction, test_fraction, split_seed)
    xs = [x[i] for i in idx]
    ys = [None if y is None else y[i] for i in idx]
    return Dataset(name, *xs, *ys, levels=levels, event_shape=tuple(x.shape[1:]))


# --------------------------------------------------------------------------- MNIST family


def _idx_names(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _search_dirs(root: Path, name: str) -> list[Path]:
    cls = _TORCHVISION_CLASSES["mnist" if name == "mnist10k" else name]
    dirs = [root, root / cls / "raw", root / name, root / cls.lower()]
    return list(dict.fromkeys(dirs))


def _read_idx(path: Path, reader: Any) -> Tensor:
    from torchvision.datasets.utils import extract_archive

    if path.suffix != ".gz":
        return reader(str(path))
    # torchvision's reader only takes uncompressed files; a throwaway directory avoids
    # writing into (possibly read-only, shared) data folders and any stale-cache risk.
    with tempfile.TemporaryDirectory(prefix="pyro_vae_idx_") as tmp:
        return reader(extract_archive(str(path), tmp))


def _load_local(root: Path, name: str, train: bool) -> tuple[Tensor, Tensor] | None:
    import torchvision.datasets as tvd
    from torchvision.datasets.mnist import read_image_file, read_label_file

    cls = getattr(tvd, _TORCHVISION_CLASSES["mnist" if name == "mnist10k" else name])
    try:
        ds = cls(str(root), train=train, download=False)
        return ds.data, ds.targets
    except (RuntimeError, OSError):
        pass  # e.g. only the test files exist: torchvision insists on all four.
    images, labels = _idx_names(train)
    for d in _search_dirs(root, name):
        found = [next((p for p in (d / f, d / f"{f}.gz") if p.is_file()), None) for f in (images, labels)]
        if found[0] is not None and found[1] is not None:
            return _read_idx(found[0], read_image_file), _read_idx(found[1], read_label_file)
    return None


def _load_mnist_split(name: str, roots: list[Path], download_root: Path, train: bool,
                      download: bool) -> tuple[Tensor, Tensor]:
    # Local files first, so an offline machine never waits on a doomed download.
    for root in roots:
        found = _load_local(root, name, train)
        if found is not None:
            return found
    status = "Download not attempted (download=False)."
    if download:
        import torchvision.datasets as tvd

        cls_name = _TORCHVISION_CLASSES["mnist" if name == "mnist10k" else name]
        # torchvision creates <root>/<Class>/raw before downloading; a failed attempt
        # should not leave empty folders behind (e.g. in a shared data directory).
        made = [d for d in (download_root / cls_name / "raw", download_root / cls_name, download_root)
                if not d.exists()]
        try:
            ds = getattr(tvd, cls_name)(str(download_root), train=train, download=True)
            return ds.data, ds.targets
        except Exception as e:  # noqa: BLE001 - any failure becomes the actionable error below
            for d in made:
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            detail = " ".join(str(e).split()) or type(e).__name__
            status = f"Download into {download_root} failed: {detail[:300]}"
    files = " and ".join(f"{f}[.gz]" for f in _idx_names(train))
    searched = "\n".join(f"  {d}" for r in roots for d in _search_dirs(r, name))
    raise FileNotFoundError(
        f"Dataset {name!r}: could not find the {'train' if train else 'test'} split files {files}. "
        f"Searched:\n{searched}\n{status}\nFixes: run once with internet access and download=True to fetch "
        f"them into {download_root}, or pass root=... (CLI: --data-root) pointing at a folder holding these "
        f"files (gzip or uncompressed, flat or in <ClassName>/raw/), or set PYRO_VAE_DATA."
    )


def _mnist10k_roots() -> list[Path]:
    roots = [Path(os.environ["PYRO_VAE_DATA"]).expanduser()] if os.environ.get("PYRO_VAE_DATA") else []
    repo = Path(__file__).resolve().parent.parent
    roots += [Path.cwd() / ".." / "shared" / "data" / "mnist", repo / ".." / "shared" / "data" / "mnist"]
    roots.append(Path.home() / ".cache" / "pyro_vae" / "data")
    return list(dict.fromkeys(r.resolve() for r in roots))


def _load_mnist_family(name: str, root: str | None, download: bool, val_fraction: float) -> Dataset:
    explicit = Path(root).expanduser() if root is not None else None
    download_root = explicit or default_data_root()
    as_float = lambda t: t.to(torch.float32).unsqueeze(1)  # noqa: E731 - (N,28,28) uint8 -> (N,1,28,28)
    if name == "mnist10k":
        x, y = _load_mnist_split(name, [explicit] if explicit else _mnist10k_roots(), download_root, False, download)
        if len(x) != _MNIST10K_SIZE:
            raise ValueError(f"mnist10k expects the {_MNIST10K_SIZE}-image MNIST test set, got {len(x)} images.")
        x, cut = as_float(x), _MNIST10K_TRAIN
        x_test, y_test = x[cut:], y[cut:]
        return Dataset(name, x[:cut], x_test, x_test, y[:cut], y_test, y_test,
                       levels=256, event_shape=(1, 28, 28), val_is_test=True)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    roots = [download_root]
    x, y = _load_mnist_split(name, roots, download_root, True, download)
    x_test, y_test = _load_mnist_split(name, roots, download_root, False, download)
    cut = len(x) - round(len(x) * val_fraction)
    x = as_float(x)
    return Dataset(name, x[:cut], x[cut:], as_float(x_test), y[:cut], y[cut:], y_test,
                   levels=256, event_shape=tuple(x.shape[1:]), no_validation=cut == len(x))


def _load_file(path: Path, split_seed: int, val_fraction: float, test_fraction: float) -> Dataset:
    name = str(path)
    content = read_array_file(path)
    if not isinstance(content, dict):
        x, levels = to_tensor(content, name)
        return _from_single(name, x, None, levels, split_seed, val_fraction, test_fraction)

    split_keys = {*SPLITS, *(f"{s}_labels" for s in SPLITS)}
    single_keys = {"x", "arr_0", "y"}
    keys = set(content)
    layout = "splits" if "train" in keys else "single" if keys & {"x", "arr_0"} else None
    allowed = split_keys if layout == "splits" else single_keys
    if layout is None or keys - allowed or (layout == "single" and {"x", "arr_0"} <= keys) or (
        layout == "splits" and not {"val", "test"} <= keys
    ):
        raise ValueError(
            f"{name}: keys {sorted(keys)} match no layout. Use either 'train', 'val', 'test' "
            f"(+ optional 'train_labels', 'val_labels', 'test_labels'), or one array 'x' (or 'arr_0') "
            f"with optional labels 'y'."
        )
    if layout == "single":
        x, levels = to_tensor(content.get("x", content.get("arr_0")), f"{name}[x]")
        y = to_labels(content["y"], len(x), f"{name}[y]") if "y" in content else None
        return _from_single(name, x, y, levels, split_seed, val_fraction, test_fraction)
    parts = {s: to_tensor(content[s], f"{name}[{s}]") for s in SPLITS}
    lvls = [lv for _, lv in parts.values()]
    if len({lv is None for lv in lvls}) > 1:
        raise ValueError(f"{name}: splits mix float and integer dtypes; store all splits with one dtype.")
    levels = None if lvls[0] is None else max(lvls)  # type: ignore[type-var]
    xs = [parts[s][0] for s in SPLITS]
    ys = [to_labels(content[f"{s}_labels"], len(parts[s][0]), f"{name}[{s}_labels]")
          if f"{s}_labels" in content else None for s in SPLITS]
    return Dataset(name, *xs, *ys, levels=levels, event_shape=tuple(xs[0].shape[1:]))


def load_dataset(name: str, root: str | None = None, download: bool = True, split_seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1) -> Dataset:
    """Load a registered dataset or a user file into fixed train/val/test splits.

    Args:
        name: One of :data:`DATASETS`, or a path ending in ``.npy``, ``.npz`` or ``.pt``.
            ``.npy``/``.pt``: one array ``(N, ...)``. ``.npz`` (or a ``.pt`` dict): keys
            ``train``/``val``/``test`` (+ optional ``train_labels``...), or one array
            ``x`` (or ``arr_0``) with optional labels ``y``. Integer dtypes are read
            as levels (uint8: 256 levels, else max + 1); floats as continuous data.
        root: Data folder for the MNIST family (default ``$PYRO_VAE_DATA`` or
            ``~/.cache/pyro_vae/data``; ``mnist10k`` also tries ``../shared/data/mnist``
            relative to the working directory and to the repository).
        download: Let torchvision download missing MNIST-family files.
        split_seed: Seed of the fixed permutation split (digits and single-array
            files; the MNIST family uses the official/protocol splits).
        val_fraction: Validation fraction (permutation splits; for mnist,
            fashion_mnist and kmnist, the tail of the official training set).
        test_fraction: Test fraction of permutation splits (80/10/10 by default).

    Raises:
        ValueError: Unknown name, bad file contents or fractions.
        FileNotFoundError: MNIST-family files neither found locally nor downloadable.
    """
    if name.endswith(FILE_EXTENSIONS):
        path = Path(name).expanduser()
        if not path.is_file() and root is not None and (Path(root).expanduser() / name).is_file():
            path = Path(root).expanduser() / name
        if not path.is_file():
            raise FileNotFoundError(f"Dataset file {name!r} not found.")
        return _load_file(path, split_seed, val_fraction, test_fraction)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.as_tensor(d.images, dtype=torch.float32)
        y = torch.as_tensor(d.target, dtype=torch.int64)
        return _from_single(name, x, y, 17, split_seed, val_fraction, test_fraction)
    if name in DATASETS:
        return _load_mnist_family(name, root, download, val_fraction)
    raise ValueError(f"Unknown dataset {name!r}. Choose one of {DATASETS}, "
                     f"or a file path ending in {', '.join(FILE_EXTENSIONS)}.")


def load_available(name: str = "auto") -> Dataset:
    """``"auto"``: MNIST-10k when its files are on this machine (never downloads), else digits.

    Any other name is passed to :func:`load_dataset`. Examples and benchmarks use this
    so they run on real MNIST where it exists and offline everywhere else.
    """
    if name != "auto":
        return load_dataset(name)
    try:
        return load_dataset("mnist10k", download=False)
    except FileNotFoundError:
        return load_dataset("digits")
