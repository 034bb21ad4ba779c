import pytest
import torch

from pyro_vae.core import ops


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


def test_bernoulli_log_prob_is_finite_for_extreme_logits():
    logits = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]])
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    out = ops.bernoulli_log_prob(logits, x)
    ref = torch.distributions.Bernoulli(logits=logits.double()).log_prob(x.double()).sum(-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)  # float32 on terms of size 200


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_matches_torch_in_value_and_gradient(dtype):
    x = torch.cat([torch.linspace(-100, 100, 2001, dtype=dtype), torch.tensor([0.0, 16.9, 17.1, 19.9, 20.1], dtype=dtype)])
    x.requires_grad_()
    out, ref = ops.Softplus()(x), torch.nn.functional.softplus(x)
    # Float32 rounding of a value near 20 is 2e-6; below -17 ours is 0 where the truth is < 4e-8.
    atol = 4e-6 if dtype == torch.float32 else 1e-7
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)
    assert (out >= 0).all() and torch.isfinite(out).all()
    weights = torch.randn_like(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    torch.testing.assert_close(grad, torch.sigmoid(x.detach()) * weights, rtol=1e-6, atol=0)


def test_softplus_is_twice_differentiable():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.Softplus(), (x,))
    assert torch.autograd.gradgradcheck(ops.Softplus(), (x,))


def test_softplus_keeps_torch_path_for_other_settings_and_half_precision():
    x = torch.randn(3, 7)
    for module in (ops.Softplus(beta=2.0), ops.Softplus(threshold=5.0)):
        torch.testing.assert_close(module(x), torch.nn.Softplus(module.beta, module.threshold)(x), rtol=0, atol=0)
    xb = x.bfloat16().requires_grad_()
    out = ops.Softplus()(xb)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ == "SoftplusBackward0"  # torch's own kernel
    assert ops.Softplus()(x.requires_grad_()).grad_fn.__class__.__name__ == "_SoftplusBackward"


def test_mlp_softplus_activation_is_ours_and_still_an_nn_softplus():
    from pyro_vae.models.nets import MLP

    net = MLP([4, 8, 2], activation="softplus")
    assert isinstance(net[1], ops.Softplus) and isinstance(net[1], torch.nn.Softplus)
