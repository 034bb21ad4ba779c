import pytest
import torch

from pyro_vae import ops


@pytest.fixture(params=["softplus", "abs-sigmoid-log"])
def forward_form(request, monkeypatch):
    """Both forward forms: F.softplus below ops.SOFTPLUS_BELOW logits, abs/sigmoid/log above."""
    if request.param != "softplus":
        monkeypatch.setattr(ops, "SOFTPLUS_BELOW", 0)
    return request.param


def test_bernoulli_log_prob_value_and_gradients(forward_form):
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(3, 6, 10, generator=g, dtype=torch.float64)).requires_grad_()
    x = torch.randint(0, 2, (6, 10), generator=g).double()  # broadcast over 3 particles
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    out = ops.bernoulli_log_prob(logits, x)
    assert out.shape == (3, 6)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn(3, 6, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    x_var = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(ops.bernoulli_log_prob, (logits.detach().requires_grad_(), x_var))


def test_bernoulli_log_prob_is_finite_for_extreme_logits(forward_form):
    logits = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]])
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    out = ops.bernoulli_log_prob(logits, x)
    ref = torch.distributions.Bernoulli(logits=logits.double()).log_prob(x.double()).sum(-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)  # float32 on terms of size 200
