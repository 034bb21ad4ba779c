"""Reading user data files (``.npy``, ``.npz``, ``.pt``) safely, and checking raw values.

Files are read without pickle (``allow_pickle=False``, ``weights_only=True``), so a
data file can never run code. Integer dtypes are read as quantization levels
(uint8: 256 levels, bool: 2, else max + 1, at most :data:`MAX_LEVELS`); floats as
continuous values, which must fit float32.

Example:
    >>> x, levels = to_tensor(np.zeros((3, 2), dtype=np.uint8), "x")
    >>> x.dtype, levels
    (torch.float32, 256)
"""

from __future__ import annotations

import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


__all__ = ["MAX_LEVELS", "UnreadableFileError", "safe_torch_load", "check_values", "to_tensor", "to_labels", "read_array_file"]

# More levels than 16-bit data has would be continuous data stored as integers, and a
# categorical likelihood allocates (levels x pixels) outputs per datapoint.
MAX_LEVELS = 65536


# torch.save writes a zip archive (since torch 1.6) or, in the legacy format, a pickle stream.
_TORCH_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x80")


class UnreadableFileError(ValueError):
    """``torch.load(weights_only=True)`` failed; ``reason`` says why in a few words, on one line.

    Attributes:
        reason: e.g. ``"the file is empty, 0 bytes"``; never torch's advice to load unsafely.
        corrupt: ``True`` for a damaged or foreign file, ``False`` for a well-formed file
            holding objects the safe unpickler refuses.
    """

    def __init__(self, reason: str, corrupt: bool) -> None:
        super().__init__(reason)
        self.reason, self.corrupt = reason, corrupt


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    return re.split(r"(?<=[a-z0-9)])\. ", flat, maxsplit=1)[0].rstrip(".")[:200]


def _unpickling_reason(exc: BaseException) -> UnreadableFileError:
    # torch's message suggests weights_only=False or allow-listing globals: both run code from an
    # untrusted file, so only the name of what was refused is kept.
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return UnreadableFileError(f"it holds a {refused.group(1)} object, which the safe loader (weights_only=True) "
                                   "refuses", corrupt=False)
    after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    lines = [line for line in after.splitlines() if line.strip()]
    detail = _first_sentence(lines[0]) if lines else type(exc).__name__
    return UnreadableFileError(f"unreadable pickle data: {detail}", corrupt=True)


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line failures.

    Raises:
        UnreadableFileError: The file is empty, truncated, corrupt, not written by
            ``torch.save``, or holds objects other than tensors and plain containers.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise UnreadableFileError("the file is empty, 0 bytes", corrupt=True)
    if not head.startswith(_TORCH_MAGIC):
        raise UnreadableFileError(f"not written by torch.save: it starts with {head!r}, not a zip archive",
                                  corrupt=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_reason(exc) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError,
            TypeError, AttributeError, UnicodeDecodeError) as exc:
        detail = _first_sentence(str(exc)) or "the file ends early"
        raise UnreadableFileError(f"{type(exc).__name__}: {detail}", corrupt=True) from exc


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


def _as_numpy(a: Any, what: str) -> np.ndarray:
    """``a`` as a numeric numpy array (bool, integer or float), or a one-line ValueError."""
    if isinstance(a, Tensor):
        a = a.detach().cpu()
        if a.is_floating_point() and a.dtype not in (torch.float16, torch.float32, torch.float64):
            a = a.float()  # numpy has no bfloat16/float8; the widening is exact
        try:
            a = a.numpy()
        except (TypeError, RuntimeError):  # complex, quantized, ...
            raise ValueError(f"{what}: unsupported dtype {a.dtype} (need bool, integer or float numbers).") from None
    elif not isinstance(a, np.ndarray):
        raise ValueError(f"{what}: expected an array/tensor, got {type(a).__name__}.")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: unsupported dtype {a.dtype} (need bool, integer or float numbers).")
    if a.ndim < 2:
        raise ValueError(f"{what}: need at least 2 dims (N, features...), got shape {tuple(a.shape)}.")
    return a


def to_tensor(a: Any, what: str) -> tuple[Tensor, int | None]:
    """Float32 values and the levels implied by the stored dtype.

    Raises:
        ValueError: Not numeric, fewer than 2 dims, negative integers, more than
            :data:`MAX_LEVELS` levels, values beyond float32's range, or non-finite values.
    """
    a = _as_numpy(a, what)
    levels: int | None = None
    if a.dtype == np.bool_:
        levels = 2
    elif a.dtype == np.uint8:
        levels = 256
    elif a.dtype.kind in "iu":
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 1)
        if lo < 0:
            raise ValueError(f"{what}: integer data are read as levels and must be >= 0 (min {lo}); "
                             "store continuous data as float.")
        if hi + 1 > MAX_LEVELS:
            raise ValueError(f"{what}: integer data are read as levels 0..max, and max {hi} would make {hi + 1} levels "
                             f"(at most {MAX_LEVELS}); store continuous data as float or rescale it to fewer levels.")
        levels = max(2, hi + 1)
    elif a.size:
        finite = np.isfinite(a)
        # Checked before the cast: float64 values beyond float32's range would turn into inf
        # and be misreported as non-finite data.
        big = finite & (np.abs(np.where(finite, a, 0)) > np.finfo(np.float32).max)
        if big.any():
            rows = np.flatnonzero(big.reshape(len(a), -1).any(1))
            raise ValueError(
                f"{what}: {int(big.sum())} values exceed the float32 range (|x| up to {float(np.abs(a[big]).max()):.3g} "
                f"> {float(np.finfo(np.float32).max):.3g}) in rows {rows[:10].tolist()}{'...' if len(rows) > 10 else ''}; "
                "rescale the data (e.g. standardize or take logs) before saving."
            )
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    check_values(x, what)
    return x, levels


def to_labels(a: Any, n: int, what: str) -> Tensor:
    t = torch.from_numpy(np.asarray(a)) if not isinstance(a, Tensor) else a.detach().cpu()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.shape != (n,):
        raise ValueError(f"{what}: need integer labels of shape ({n},), got {t.dtype} of shape {tuple(t.shape)}.")
    return t.to(torch.int64)


def read_array_file(path: Path) -> Any:
    """The array, or mapping of arrays, stored in a ``.npy``, ``.npz`` or ``.pt`` file (no pickle).

    Raises:
        ValueError: The file is empty, truncated or corrupt, is not of the format its
            suffix names, or holds objects (pickled data); the message names the file.
    """
    name, kind = str(path), path.suffix
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise ValueError(f"{name}: the file is empty (0 bytes), truncated or never written; re-save or re-copy it.")
    if kind == ".pt":
        try:
            return safe_torch_load(path)
        except UnreadableFileError as e:
            if not e.corrupt:
                raise ValueError(f"{name}: a .pt file must hold a tensor or a dict of tensors, but {e.reason}; "
                                 "save tensors, not numpy arrays or other objects.") from None
            raise ValueError(f"{name}: the .pt file is truncated or corrupt ({e.reason}); re-save or re-copy it.") from None
    magic = b"\x93NUMPY" if kind == ".npy" else b"PK"
    if not head.startswith(magic):
        raise ValueError(f"{name}: not a {kind} file (it starts with {head!r}, not {magic!r}): corrupt, or another "
                         f"format renamed; save it with numpy.{'save' if kind == '.npy' else 'savez'}.")
    try:
        if kind == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(f"{name}: holds object arrays, which cannot be loaded without pickle (object arrays are not "
                             "supported); store numeric arrays.") from None
        raise _corrupt(name, kind, e) from None
    except (EOFError, OSError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise _corrupt(name, kind, e) from None


def _corrupt(name: str, kind: str, exc: BaseException) -> ValueError:
    detail = " ".join(str(exc).split())[:200] or "the file ends early"
    return ValueError(f"{name}: the {kind} file is truncated or corrupt ({type(exc).__name__}: {detail}); "
                      "re-save or re-copy it.")
