"""The shared parameter tables, layers and sign-aligned noise (models/layers.py), against draws and
formulas written out by hand."""
import math

import pytest
import torch
from torch import nn

from models.layers import sign_perturb, xavier_linear, xavier_normal, xavier_table


def test_xavier_table_is_a_trainable_uniform_draw_in_the_glorot_bound():
    torch.manual_seed(3)
    t = xavier_table(50, 8)
    torch.manual_seed(3)
    bound = math.sqrt(6.0 / (50 + 8))  # fan_in = 8 columns, fan_out = 50 rows
    want = torch.empty(50, 8).uniform_(-bound, bound)
    assert isinstance(t, nn.Parameter) and t.requires_grad and t.shape == (50, 8)
    assert torch.equal(t.data, want)
    assert t.abs().max() <= bound


def test_xavier_normal_draws_the_glorot_normal():
    torch.manual_seed(4)
    t = xavier_normal(30, 6)
    torch.manual_seed(4)
    want = torch.empty(30, 6).normal_(0.0, math.sqrt(2.0 / (30 + 6)))
    assert not isinstance(t, nn.Parameter) and torch.equal(t, want)


@pytest.mark.parametrize("bias", [True, False])
def test_xavier_linear_redraws_only_the_weight(bias):
    torch.manual_seed(5)
    layer = xavier_linear(7, 3, bias=bias)
    torch.manual_seed(5)
    default = nn.Linear(7, 3, bias=bias)  # the default init draws first (weight, then bias) ...
    weight = torch.empty(3, 7).uniform_(-math.sqrt(6.0 / 10), math.sqrt(6.0 / 10))  # ... then the weight again
    assert torch.equal(layer.weight.data, weight)
    assert (layer.bias is None) == (not bias)
    if bias:
        assert torch.equal(layer.bias.data, default.bias.data)


def test_sign_perturb_by_hand():
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, 0.0, 0.5]], requires_grad=True)
    torch.manual_seed(6)
    y = sign_perturb(x, 0.1)
    torch.manual_seed(6)
    u = torch.rand(2, 3)
    want = x.detach() + torch.sign(x.detach()) * (u / u.norm(dim=1, keepdim=True)) * 0.1
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=1e-7)
    d = (y - x).detach()
    assert d[1, 1] == 0.0                                    # a zero coordinate does not move
    assert (torch.sign(d) == torch.sign(x.detach())).all()    # the others move away from zero
    assert d[0].norm().item() == pytest.approx(0.1, rel=1e-5)  # a row without zeros moves by the scale
    (g,) = torch.autograd.grad((y * torch.arange(6.0).reshape(2, 3)).sum(), x)
    assert torch.equal(g, torch.arange(6.0).reshape(2, 3))   # the noise is a constant shift


def test_sign_perturb_draws_fresh_noise_each_call():
    x = torch.ones(4, 5)
    torch.manual_seed(7)
    assert not torch.equal(sign_perturb(x, 0.5), sign_perturb(x, 0.5))
