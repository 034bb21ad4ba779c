"""The fused log-joint path: the buffered decoder and the in-place Bernoulli score."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_vae.models.fused import bernoulli_log_prob_pieces, buffered_decoder, log_lik_blocks
from pyro_vae.models.nets import MLPDecoder
from pyro_vae.models.vae import VAE


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_buffered_decoder_equals_the_module_and_reuses_its_buffers(activation):
    torch.manual_seed(0)
    decoder = MLPDecoder(5, 12, hidden=(7, 9), activation=activation)
    run = buffered_decoder(decoder, rows=40, like=torch.zeros(()))
    assert run is not None
    z = torch.randn(40, 5)
    with torch.no_grad():
        first = run(z)
        torch.testing.assert_close(first, decoder(z), atol=1e-6, rtol=1e-5)
        storage = first.data_ptr()
        second = run(z[:13])  # a smaller last block writes into the same buffer
        assert second.data_ptr() == storage and second.shape == (13, 12)
        torch.testing.assert_close(second, decoder(z[:13]), atol=1e-6, rtol=1e-5)


def test_other_decoders_are_called_as_they_are():
    like = torch.zeros(())
    assert buffered_decoder(MLPDecoder(3, 4, hidden=(5,), activation="gelu"), 8, like) is None

    class Shifted(MLPDecoder):
        def forward(self, z):
            return super().forward(z) + 1.0

    assert buffered_decoder(Shifted(3, 4, hidden=(5,)), 8, like) is None
    hooked = MLPDecoder(3, 4, hidden=(5,))
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert buffered_decoder(hooked, 8, like) is None
    inner = MLPDecoder(3, 4, hidden=(5,))
    inner.net[1].register_forward_pre_hook(lambda module, args: None)  # a hook on the activation
    assert buffered_decoder(inner, 8, like) is None
    assert buffered_decoder(nn.Linear(3, 4), 8, like) is None


@pytest.mark.parametrize("hidden", [(8,), (6, 6)])
def test_blocks_equal_the_bernoulli_log_prob_of_the_decoder(hidden):
    torch.manual_seed(1)
    vae = VAE((3, 4), latent_dim=3, likelihood="bernoulli", hidden=list(hidden), activation="tanh")
    x = (torch.rand(5, 3, 4) < 0.4).float()
    z = torch.randn(9, 5, 3)
    with torch.no_grad():
        blocks = log_lik_blocks(vae, z, x)
        ref = vae.decode(z).log_prob(x)
    assert blocks.shape == (9, 5)
    torch.testing.assert_close(blocks, ref, atol=1e-4, rtol=1e-5)


def test_overwriting_score_destroys_only_its_own_logits():
    torch.manual_seed(2)
    logits, x = 6 * torch.randn(2, 3, 10), (torch.rand(2, 10) < 0.5).float()
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x.unsqueeze(1)).sum(-1)
    kept = logits.clone()
    torch.testing.assert_close(bernoulli_log_prob_pieces(logits, x), ref, atol=1e-4, rtol=1e-5)
    assert torch.equal(logits, kept)  # the default leaves the logits alone
    torch.testing.assert_close(bernoulli_log_prob_pieces(logits, x, overwrite=True), ref, atol=1e-4, rtol=1e-5)
    assert not torch.equal(logits, kept)


def test_deferred_last_bias_is_added_piece_by_piece():
    torch.manual_seed(3)
    decoder = MLPDecoder(4, 10, hidden=(6,), activation="tanh")
    run = buffered_decoder(decoder, rows=12, like=torch.zeros(()))
    z, x = torch.randn(12, 4), (torch.rand(3, 10) < 0.5).float()
    with torch.no_grad():
        ref = torch.distributions.Bernoulli(logits=decoder(z).view(3, 4, 10)).log_prob(x.unsqueeze(1)).sum(-1)
        unbiased = run(z, last_bias=False)
        torch.testing.assert_close(unbiased + run.last_bias, decoder(z), atol=1e-6, rtol=1e-5)
        scored = bernoulli_log_prob_pieces(unbiased.view(3, 4, 10), x, overwrite=True, bias=run.last_bias)
    torch.testing.assert_close(scored, ref, atol=1e-4, rtol=1e-5)
