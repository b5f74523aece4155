"""The eager DiT block stays lean: non-view aten ops per block in a steady denoising pass (CPU).

Each counted op is at least one kernel launch on a GPU (issue 25: 66 in float32 / 80 in bf16 before the
block was fused, about 12,800 launches per chunk). The count comes from the real stream (tiny preset,
memory.py's key-set provider); the per-op table is printed so that a regression shows where the glue is.
"""

import pytest
import torch

from memflow_cli.model.dit import DiTConfig, build_dit
from memflow_cli.testing.op_count import steady_block_ops, table, total

LIMIT = 30  # ops per block and pass


@pytest.fixture(scope="module")
def counts():
    return {name: steady_block_ops(dtype) for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16))}


def test_block_op_count_is_at_most_the_limit(counts):
    print()
    print(table(counts))
    for name, ops in counts.items():
        assert total(ops) <= LIMIT, f"{name}: {total(ops)} ops per block and pass (limit {LIMIT})\n{table(counts)}"


def test_the_lean_block_has_the_fused_shape(counts):
    """What the count is made of: one GEMM for q/k/v (6 in all: qkv, o, cross q, cross o, 2 FFN), the
    cache written by one index copy per K and V, and no float casts in float32."""
    for name, ops in counts.items():
        assert ops["addmm"] + ops["mm"] == 6, name
        assert ops["index_copy_"] == 2, name  # no staging copies inside the block (end_pass stages)
        assert ops["stack"] == ops["cat"] == ops["clone"] == 0, name
    assert counts["float32"]["_to_copy"] == 0
    assert counts["bf16"]["_to_copy"] <= 1  # the rotated q/k from float32 back to bf16


def test_the_counter_sees_glue_it_is_meant_to_see():
    """An unfused block (q/k/v as three GEMMs, as before) counts more: the counter is not blind to them."""
    torch.manual_seed(0)
    model = build_dit(DiTConfig.preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    lean = steady_block_ops(torch.float32, model=model)
    block = model.blocks[0]
    fused = block.self_attn.__class__.forward

    def three_gemms(self, x, rope, keys, fused_block):
        # the same maths with separate projections: two extra GEMMs and a cat
        qkv = torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)
        saved = fused_block.qkv
        fused_block.qkv = lambda _x: qkv
        try:
            return fused(self, x, rope, keys, fused_block)
        finally:
            fused_block.qkv = saved

    block.self_attn.forward = three_gemms.__get__(block.self_attn)
    try:
        heavy = steady_block_ops(torch.float32, model=model)
    finally:
        del block.self_attn.forward
    assert heavy["addmm"] == lean["addmm"] + 2 and heavy["cat"] == 1
    assert total(heavy) == total(lean) + 3


# ------------------------------------------------------------------------------ the fused projections


def _tiny_random(seed=0):
    torch.manual_seed(seed)
    model = build_dit(DiTConfig(dim=64, ffn_dim=128, text_dim=16, num_heads=1, num_layers=2, text_len=16))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def _stream(model, chunks=3):
    from memflow_cli.engine.generator import StreamingGenerator

    gen = StreamingGenerator(model, num_latent_frames=3 * chunks, latent_height=4, latent_width=4, seed=0)
    gen.set_conditioning(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)))
    return torch.cat([gen.next_chunk() for _ in range(chunks)], 1)


def test_fused_qkv_shares_storage_keeps_names_and_follows_in_place_merges():
    """q/k/v become views of one fused weight (no second copy, base.pt names kept); an in-place change
    after a forward (what a LoRA merge does) reaches the fused GEMM: the result is that of a fresh model
    loaded with the changed weights."""
    model = _tiny_random()
    names = list(model.state_dict())
    before = _stream(model)
    attn = model.blocks[0].self_attn
    fused = model.blocks[0].fused.qkv
    assert attn.q.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    assert torch.equal(fused.weight[64:128], attn.k.weight) and list(model.state_dict()) == names
    with torch.no_grad():
        attn.k.weight.add_(0.1 * torch.randn_like(attn.k.weight))
        model.blocks[1].cross_attn.norm_q.weight.mul_(1.5)
    after = _stream(model)
    fresh = _tiny_random(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert not torch.equal(after, before)
    assert torch.equal(after, _stream(fresh))


def test_fp8_quantization_after_a_forward_re_fuses_the_projections_from_the_fp8_layers():
    from memflow_cli.model.quantization import Fp8Linear, quantize_dit

    model = _tiny_random()
    _stream(model, chunks=1)
    quantize_dit(model, compute="dequantize")
    out = _stream(model)
    assert isinstance(model.blocks[0].fused.qkv, Fp8Linear)
    fresh = quantize_dit(_tiny_random(), compute="dequantize")
    assert torch.equal(out, _stream(fresh))
