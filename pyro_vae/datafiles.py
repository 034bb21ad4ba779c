"""Reading user data files (``.npy``, ``.npz``, ``.pt``) safely, and checking raw values.

Files are read without pickle (``allow_pickle=False``, ``weights_only=True``), so a
data file can never run code. Integer dtypes are read as quantization levels
(uint8: 256 levels, bool: 2, else max + 1); floats as continuous values.

Example:
    >>> x, levels = to_tensor(np.zeros((3, 2), dtype=np.uint8), "x")
    >>> x.dtype, levels
    (torch.float32, 256)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_values", "to_tensor", "to_labels", "read_array_file"]


def check_values(x: Tensor, what: str) -> None:
    """Raise if ``x`` is not a non-empty ``(N, ...)`` batch of finite values; the message lists the bad rows."""
    if x.dim() < 2:
        raise ValueError(f"{what}: need at least 2 dims (N, features...), got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: split is empty (shape {tuple(x.shape)}).")
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            n_nan, n_bad = int(torch.isnan(x).sum()), int(bad.sum())
            rows = bad.reshape(x.shape[0], -1).any(1).nonzero().flatten()
            first = [tuple(i.tolist()) for i in bad.nonzero()[:5]]
            raise ValueError(
                f"{what}: {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf) in "
                f"{len(rows)} of {x.shape[0]} datapoints (rows {rows[:10].tolist()}"
                f"{'...' if len(rows) > 10 else ''}); first positions {first}. Clean or drop these rows."
            )


def to_tensor(a: Any, what: str) -> tuple[Tensor, int | None]:
    """Float32 values and the levels implied by the stored dtype."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{what}: unsupported dtype {a.dtype} (need bool, integer or float numbers).")
        t = torch.from_numpy(np.ascontiguousarray(a))
    elif isinstance(a, Tensor):
        if a.is_complex():
            raise ValueError(f"{what}: unsupported dtype {a.dtype}.")
        t = a.detach().cpu()
    else:
        raise ValueError(f"{what}: expected an array/tensor, got {type(a).__name__}.")
    if t.dim() < 2:
        raise ValueError(f"{what}: need at least 2 dims (N, features...), got shape {tuple(t.shape)}.")
    levels: int | None = None
    if t.dtype == torch.bool:
        levels = 2
    elif t.dtype == torch.uint8:
        levels = 256
    elif not t.is_floating_point():
        if t.numel() and t.min() < 0:
            raise ValueError(f"{what}: integer data are read as levels and must be >= 0 (min {t.min().item()}); "
                             "store continuous data as float.")
        levels = max(2, int(t.max()) + 1) if t.numel() else 2
    x = t.to(torch.float32)
    check_values(x, what)
    return x, levels


def to_labels(a: Any, n: int, what: str) -> Tensor:
    t = torch.from_numpy(np.asarray(a)) if not isinstance(a, Tensor) else a.detach().cpu()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.shape != (n,):
        raise ValueError(f"{what}: need integer labels of shape ({n},), got {t.dtype} of shape {tuple(t.shape)}.")
    return t.to(torch.int64)


def read_array_file(path: Path) -> Any:
    """The array, or mapping of arrays, stored in a ``.npy``, ``.npz`` or ``.pt`` file (no pickle)."""
    name = str(path)
    if path.suffix == ".npy":
        try:
            content: Any = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{name}: cannot load without pickle (object arrays are not supported): {e}") from e
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                content = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{name}: cannot load without pickle (object arrays are not supported): {e}") from e
    else:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{name}: a .pt file must hold a tensor or a dict of tensors "
                             f"(loaded with weights_only=True): {str(e).splitlines()[0]}") from e
    return content
