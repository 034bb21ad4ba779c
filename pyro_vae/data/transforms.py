"""What a likelihood sees: raw values turned into model space, and minibatch iteration.

:class:`DataTransform` maps a minibatch of raw values (integer levels as floats, or
continuous values) to grey values, Bernoulli-binarized values, dequantized values or
the raw levels, with training draws from the global RNG (so resume replays them) and
fixed evaluation draws (so every model is scored on the same binarized images).

Example:
    >>> t = DataTransform(levels=256, binarize="static", seed=0)
    >>> x = torch.full((2, 4), 255.0)
    >>> t(x, train=False)
    tensor([[1., 1., 1., 1.],
            [1., 1., 1., 1.]])
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

__all__ = ["DataTransform", "BINARIZE_MODES", "minibatch_indices", "iterate_minibatches"]

BINARIZE_MODES = ("none", "dynamic", "static", "threshold")

_PRIME = 2_147_483_647  # 2**31 - 1: products of two residues fit in int64 without overflow.


class DataTransform:
    """Turns raw values into what the model sees, one minibatch at a time.

    Quantized raw levels are scaled to grey values ``unit = level / (levels - 1)``.
    Then, depending on the options:

    * ``binarize="dynamic"``: Bernoulli(unit), redrawn on every training call from the
      global torch RNG (so a resumed run replays exactly); at evaluation
      (``train=False``) a fixed draw.
    * ``binarize="static"``: one fixed draw, identical on every call.
    * ``binarize="threshold"``: ``unit > 0.5``.
    * ``dequantize=True``: ``(level + u) / levels`` with ``u ~ U[0, 1)``, fresh in
      training and fixed at evaluation; a density on these values converts to a
      probability of the levels (Theis et al., 2016), see :attr:`density_levels`.
    * ``as_levels=True``: the integer levels as floats (categorical/Poisson models).

    Fixed draws are a pure function of (datapoint values, pixel position, ``seed``):
    each datapoint gets the same noise whether it arrives in the full split or in
    any minibatch, on any device. The noise is ``(key * a_j + b_j) mod p`` with
    ``key`` a universal hash of the datapoint and ``a_j, b_j`` drawn from ``seed``,
    so values are uniform and pairwise independent across datapoints and
    independent across pixels. Identical datapoints get identical draws.

    Args:
        levels: Number of levels of the raw data, ``None`` for continuous data.
        binarize: One of :data:`BINARIZE_MODES`.
        dequantize: Uniform dequantization (quantized data, no binarization).
        as_levels: Return the raw integer levels.
        seed: Seed of the fixed draws.
    """

    def __init__(self, levels: int | None, binarize: str = "none", dequantize: bool = False,
                 as_levels: bool = False, seed: int = 0) -> None:
        if binarize not in BINARIZE_MODES:
            raise ValueError(f"binarize={binarize!r} is not one of {BINARIZE_MODES}.")
        if levels is not None and levels < 2:
            raise ValueError(f"levels must be >= 2 or None, got {levels}.")
        if dequantize and levels is None:
            raise ValueError("dequantize=True needs quantized data (levels); continuous data need no dequantization.")
        if dequantize and binarize != "none":
            raise ValueError(f"dequantize=True and binarize={binarize!r} conflict: binary data are discrete; "
                             "choose one (binarize='none' for a density model).")
        if as_levels and (levels is None or binarize != "none" or dequantize):
            raise ValueError("as_levels=True needs quantized data (levels) and no binarize/dequantize; "
                             "drop those options or as_levels.")
        self.levels, self.binarize, self.dequantize, self.as_levels, self.seed = (
            levels, binarize, dequantize, as_levels, seed)
        self._hash_params: dict[tuple[int, int, str], Tensor] = {}

    @property
    def density_levels(self) -> int | None:
        """``levels`` for bits-per-dim conversion when the output is a dequantized density on [0, 1), else None."""
        return self.levels if self.dequantize else None

    @property
    def is_binary(self) -> bool:
        """Whether outputs are in {0, 1} (Bernoulli likelihoods)."""
        return self.binarize != "none"

    def describe(self) -> str:
        """One-line description for logs and reports."""
        src = "continuous values" if self.levels is None else f"{self.levels} levels"
        what = {
            "dynamic": f"dynamic Bernoulli binarization (fresh draw per training call, fixed draw seed={self.seed} at eval)",
            "static": f"static Bernoulli binarization (fixed draw, seed={self.seed})",
            "threshold": "binarized by threshold unit > 0.5",
        }.get(self.binarize, "")
        if not what:
            what = ("integer levels" if self.as_levels else
                    f"uniformly dequantized (level+u)/{self.levels} (fixed noise seed={self.seed} at eval)"
                    if self.dequantize else "raw values" if self.levels is None else f"level/{self.levels - 1} in [0, 1]")
        return f"{src} -> {what}"

    def _uniform(self, x: Tensor, salt: int) -> Tensor:
        """Fixed U[0,1) noise (float64) shaped like ``x``; see the class docstring."""
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float32).contiguous()
        key_ = (flat.shape[1], salt, str(x.device))
        if key_ not in self._hash_params:
            g = torch.Generator().manual_seed((self.seed * 7919 + salt) % 2**63)
            self._hash_params[key_] = torch.randint(1, _PRIME, (3, flat.shape[1]), generator=g).to(x.device)
        w, a, b = self._hash_params[key_]
        bits = flat.view(torch.int32).to(torch.int64).remainder(_PRIME)
        key = (bits * w).remainder(_PRIME).sum(1).remainder(_PRIME)
        return ((key[:, None] * a + b).remainder(_PRIME).double() / _PRIME).reshape(x.shape)

    def __call__(self, x_raw: Tensor, train: bool = True) -> Tensor:
        """Transform a minibatch of raw values ``(B, *event_shape)``.

        Args:
            x_raw: Raw values as stored in :class:`Dataset`.
            train: Training call (fresh noise) or evaluation call (fixed noise).
        """
        if self.levels is None:
            unit = x_raw.float()
            if self.binarize != "none" and ((unit < 0) | (unit > 1)).any():
                raise ValueError(f"binarize={self.binarize!r} on continuous data needs values in [0, 1], "
                                 f"got range {unit.min().item()}..{unit.max().item()}.")
        else:
            level = x_raw.float().round()
            if self.as_levels:
                return level
            unit = level / (self.levels - 1)
        if self.binarize == "threshold":
            return (unit > 0.5).float()
        if self.binarize == "dynamic" and train:
            # The same Bernoulli(unit) draw as torch.bernoulli, whose CPU kernel is 4x slower.
            return (torch.rand_like(unit) < unit).to(unit.dtype)
        if self.binarize in ("dynamic", "static"):
            # Distinct salts so the static draw is not the same as dynamic's eval draw.
            return (self._uniform(x_raw, salt=1 if self.binarize == "static" else 2) < unit.double()).float()
        if not self.dequantize:
            return unit
        levels = self.levels
        assert levels is not None
        u = torch.rand(level.shape, dtype=torch.float64, device=level.device) if train else self._uniform(x_raw, 3)
        y = ((level.double() + u) / levels).float()
        # float32 rounding can push a value across its bin edge; one ulp back restores
        # floor(y * levels) == level exactly, which the density-to-mass argument needs.
        y = torch.where(torch.floor(y.double() * levels) < level, torch.nextafter(y, torch.full_like(y, 2.0)), y)
        return torch.where(torch.floor(y.double() * levels) > level, torch.nextafter(y, torch.full_like(y, -1.0)), y)


# --------------------------------------------------------------------------- minibatches


def minibatch_indices(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                      shuffle: bool = True, drop_last: bool = False) -> list[Tensor]:
    """Index batches of this rank for one epoch; a pure function of the arguments.

    ``DistributedSampler`` supplies the order so one process and DDP share one code
    path. With ``world_size > 1`` and ``drop_last=False`` it pads by repeating a few
    indices so every rank gets the same count; ``drop_last=True`` instead drops the
    tail so shards are disjoint, and also drops an incomplete last batch.
    """
    from torch.utils.data import DistributedSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler), dtype=torch.int64)
    batches = list(order.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def iterate_minibatches(x: Tensor, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                        shuffle: bool = True, drop_last: bool = False,
                        labels: Tensor | None = None) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
    """Yield minibatches of an in-memory tensor by index slicing (no per-item collation).

    The order is a pure function of ``(seed, epoch, rank, world_size)``, so a run
    resumed at an epoch boundary sees exactly the batches it would have seen.

    Yields:
        ``x[idx]``, or ``(x[idx], labels[idx])`` when ``labels`` is given.
    """
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries but x has {len(x)}.")
    for idx in minibatch_indices(len(x), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                                 shuffle=shuffle, drop_last=drop_last):
        idx = idx.to(x.device)
        yield x[idx] if labels is None else (x[idx], labels[idx.to(labels.device)])
