"""The three JVP modes agree; the automatic choice works through a diffusers UNet with attention on the CPU."""

from __future__ import annotations

import pytest
import torch

from distill.jvp import chosen_mode, jvp

from .conftest import tiny_unet

F64 = torch.float64


def test_modes_agree_on_a_smooth_function():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3)).double()

    def fn(x, t):
        return net(torch.cat([x, t[:, None]], dim=1)) * torch.cos(t)[:, None]

    x, t = torch.randn(5, 3, dtype=F64), torch.rand(5, dtype=F64)
    tangents = (torch.randn(5, 3, dtype=F64), torch.ones(5, dtype=F64))
    out_f, jvp_f = jvp(fn, (x, t), tangents, mode="forward")
    out_b, jvp_b = jvp(fn, (x, t), tangents, mode="double_backward")
    out_d, jvp_d = jvp(fn, (x, t), tangents, mode="finite_difference", eps=1e-5)
    assert torch.allclose(out_f, fn(x, t)) and torch.allclose(out_b, out_f) and torch.allclose(out_d, out_f)
    assert torch.allclose(jvp_f, jvp_b, atol=1e-12)
    assert torch.allclose(jvp_d, jvp_f, atol=1e-8)
    assert not jvp_f.requires_grad and not jvp_b.requires_grad


def test_auto_jvp_through_unet_with_attention_matches_finite_differences():
    unet = tiny_unet().eval()

    def fn(x, t):
        return unet(x, t * 1000).sample

    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8, generator=generator), torch.tensor([0.3, 0.7])
    tangents = (torch.randn(2, 3, 8, 8, generator=generator), torch.ones(2))
    _, auto = jvp(fn, (x, t), tangents)
    _, reverse = jvp(fn, (x, t), tangents, mode="double_backward")
    assert chosen_mode(fn) in ("forward", "double_backward")
    assert (auto - reverse).abs().max() / reverse.abs().max() < 1e-5
    # In float64 a central difference checks the derivative itself. diffusers embeds the timestep in float32, so
    # along t the difference step must stay well above float32 resolution (and the bound is looser).
    unet.double()
    primals64 = (x.double(), t.double())
    for tangents64, eps, bound in (((tangents[0].double(), torch.zeros(2, dtype=F64)), 1e-6, 1e-6),
                                   ((torch.zeros(2, 3, 8, 8, dtype=F64), torch.ones(2, dtype=F64)), 1e-4, 1e-2)):
        _, reverse64 = jvp(fn, primals64, tangents64, mode="double_backward")
        _, difference64 = jvp(fn, primals64, tangents64, mode="finite_difference", eps=eps)
        assert (difference64 - reverse64).abs().max() / reverse64.abs().max() < bound


def test_bad_jvp_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown JVP mode 'symbolic'"):
        jvp(torch.sin, (x,), (x,), mode="symbolic")
    with pytest.raises(ValueError, match="matching shapes"):
        jvp(torch.sin, (x,), (torch.zeros(3, 2),))
