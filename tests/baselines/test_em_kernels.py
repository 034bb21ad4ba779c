"""Tests for pyro_vae.baselines.kernels: each kernel against the plain torch expression it replaces."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.baselines.kernels import cholesky, gram, map_row_blocks, whitened_sq_norms


def test_blas_helpers_match_torch():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 20, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gram(a), a.T @ a, rtol=1e-12, atol=1e-12)
    spd = gram(a) / 300 + 0.1 * torch.eye(20, dtype=torch.float64)
    chol = cholesky(torch.stack([spd, 2 * spd]))
    torch.testing.assert_close(chol, torch.linalg.cholesky(torch.stack([spd, 2 * spd])), rtol=1e-12, atol=1e-12)
    expected = torch.linalg.solve_triangular(chol[0], a.T, upper=False).square().sum(0)
    torch.testing.assert_close(whitened_sq_norms(chol[0], a.clone()), expected, rtol=1e-12, atol=1e-12)
    not_pd = torch.stack([spd, -spd])
    with pytest.raises(torch.linalg.LinAlgError, match="batch index 1 is not positive-definite"):
        cholesky(not_pd)


def test_map_row_blocks_keeps_block_order_and_reraises():
    starts = map_row_blocks(lambda rows: rows.start, 1000, 64, workers=3)
    assert starts == list(range(0, 1000, 64))

    def fail_on_third(rows):
        if rows.start == 128:
            raise ValueError("block 2 failed")
        return rows.start

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="block 2 failed"):
            map_row_blocks(fail_on_third, 1000, 64, workers=2)
        assert torch.get_num_threads() == 2  # the one-thread cap inside the workers was undone
    finally:
        torch.set_num_threads(threads)
