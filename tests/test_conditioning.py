"""Blends and transitions on encoder outputs (timelines.md §3)."""

import math

import pytest
import torch

from memflow_cli.inputs.conditioning import Conditioner, blend, linear_blend, slerp
from memflow_cli.inputs.schedule import Blend, Transition


def _emb(seed, rows=8, dim=16, used=5):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(rows, dim, generator=g)
    e[used:] = 0  # padding rows are zero, like the text encoder's output
    return e


def test_single_prompt_is_identity():
    e = _emb(0)
    assert torch.equal(linear_blend([e], [3.0]), e)


def test_linear_blend_preserves_weighted_mean_norm():
    a, b, c = _emb(1), _emb(2) * 3, _emb(3) * 0.5
    w = [1.0, 2.0, 1.0]
    out = linear_blend([a, b, c], w)
    expected = sum(wi / 4 * torch.linalg.vector_norm(x) for wi, x in zip(w, [a, b, c]))
    assert torch.linalg.vector_norm(out).item() == pytest.approx(expected.item(), rel=1e-5)
    # and it points the way of the plain weighted sum
    plain = (a + 2 * b + c) / 4
    cos = torch.nn.functional.cosine_similarity(out.flatten(), plain.flatten(), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    # padding rows stay zero
    assert torch.count_nonzero(out[5:]) == 0


def test_weights_are_normalised():
    a, b = _emb(1), _emb(2)
    assert torch.allclose(linear_blend([a, b], [30, 70]), linear_blend([a, b], [0.3, 0.7]))


def test_slerp_endpoints_and_unit_rows():
    a, b = _emb(4), _emb(5)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    ua = a[:5] / a[:5].norm(dim=-1, keepdim=True)
    ub = b[:5] / b[:5].norm(dim=-1, keepdim=True)
    mid = slerp(ua, ub, 0.5)
    assert torch.allclose(mid.norm(dim=-1), torch.ones(5), atol=1e-5)  # stays on the sphere
    # the midpoint makes equal angles with both ends
    ang_a = torch.arccos((mid * ua).sum(-1).clamp(-1, 1))
    ang_b = torch.arccos((mid * ub).sum(-1).clamp(-1, 1))
    assert torch.allclose(ang_a, ang_b, atol=1e-4)


def test_slerp_known_angle():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])
    out = slerp(a, b, 0.5)
    # direction at 45°, length halfway between 1 and 2
    assert torch.allclose(out, torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)]]) * 1.5, atol=1e-6)


def test_slerp_falls_back_to_linear_for_parallel_and_padding_rows():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    out = slerp(a, b, 0.25)
    assert torch.allclose(out, 0.75 * a + 0.25 * b)
    assert torch.isfinite(out).all()


def test_blend_dispatch_and_dtype():
    a, b = _emb(6).bfloat16(), _emb(7).bfloat16()
    out = blend([a, b], [1, 1], "slerp")
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), slerp(a.float(), b.float(), 0.5), atol=2e-2)
    with pytest.raises(ValueError):
        blend([a, b], [0, 0])


def test_conditioner_blends_and_transitions():
    e = {"a": _emb(8), "b": _emb(9).unsqueeze(0)}  # [1, L, D] is accepted too
    cond = Conditioner(e)
    a, b = Blend(("a",), (1.0,)), Blend(("b",), (1.0,))
    assert torch.equal(cond(a), e["a"])
    half = cond(Transition(a, b, 0.5, "slerp"))
    assert torch.allclose(half, slerp(e["a"], e["b"][0], 0.5))
    lin = cond(Transition(a, b, 0.25, "linear"))
    assert torch.allclose(lin, linear_blend([e["a"], e["b"][0]], [0.75, 0.25]))
    mix = cond(Blend(("a", "b"), (0.5, 0.5), "linear"))
    assert mix.shape == (8, 16)
    assert cond(Blend(("a", "b"), (0.5, 0.5), "linear")) is mix  # cached per conditioning
    # a transition from a mid-transition state composes
    nested = cond(Transition(Transition(a, b, 0.5, "linear"), a, 0.5, "linear"))
    assert nested.shape == (8, 16) and torch.isfinite(nested).all()
    with pytest.raises(KeyError):
        cond(Blend(("zzz",), (1.0,)))
