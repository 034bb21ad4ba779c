import pytest
import torch
import torch.nn.functional as F

from pyro_vae import ops
from pyro_vae.nets import ACTIVATIONS


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_softplus_matches_torch(dtype, rtol):
    x = torch.linspace(-18, 18, 10001, dtype=dtype)  # inside F.softplus's threshold of 20
    torch.testing.assert_close(ops.softplus(x), F.softplus(x), rtol=rtol, atol=0)


def test_tanh_matches_torch():
    x = torch.linspace(-12, 12, 10001, dtype=torch.float64)
    torch.testing.assert_close(ops.tanh(x), torch.tanh(x), rtol=0, atol=1e-15)
    x32 = x.float()
    torch.testing.assert_close(ops.tanh(x32), torch.tanh(x32), rtol=0, atol=3e-7)


def test_log1p_is_accurate_for_tiny_arguments():
    u = torch.logspace(-30, 2, 2000, dtype=torch.float32)
    rel = (ops.log1p_nonnegative(u) - torch.log1p(u)).abs() / torch.log1p(u)
    assert rel.max() < 5e-7  # plain log(1 + u) would be off by 100% below u = 6e-8
    assert ops.log1p_nonnegative(torch.zeros(3)).eq(0).all()


@pytest.mark.parametrize("fn", [ops.softplus, ops.tanh])
def test_backward_passes_are_exact(fn):
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))


def test_bernoulli_log_prob_value_and_gradients():
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


def test_activations_use_the_fast_layers_and_match_torch_layers():
    assert ACTIVATIONS["softplus"] is ops.Softplus and ACTIVATIONS["tanh"] is ops.Tanh
    x = torch.randn(64, 9)
    torch.testing.assert_close(ACTIVATIONS["softplus"]()(x), torch.nn.Softplus()(x))
    torch.testing.assert_close(ACTIVATIONS["tanh"]()(x), torch.nn.Tanh()(x), rtol=0, atol=3e-7)
