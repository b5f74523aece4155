"""fp8 storage: per-row scales, the layer's two compute paths, the DiT swap, and the quality guard."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import memflow_cli.model.quantization as quant
from golden_metric import compare
from golden_pipeline import build_case_model, generate_case
from memflow_cli.model.dit import DiTConfig, build_dit
from memflow_cli.model.quantization import (
    DIT_KEEP, FP8, Fp8Embedding, Fp8Linear, dequantize_rows, fp8_compute_path, module_bytes, parse_quantization,
    quantize_dit, quantize_rows,
)

FP8_GUARD = 0.05  # latents rel-L2 against the float32 golden, every pipeline case


def _weight(out=48, inp=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # rows of very different magnitudes: a single scale for the whole tensor would flush the small rows
    return torch.randn(out, inp, generator=g) * torch.logspace(-4, 1, out)[:, None]


def test_rows_use_the_whole_e4m3_range_and_round_within_its_precision():
    w = _weight()
    q, scale = quantize_rows(w)
    assert q.dtype == FP8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((w.shape[0],), 448.0))
    back = dequantize_rows(q, scale, torch.float32)
    # e4m3: 3 mantissa bits (relative step 2^-3, so rounding <= 2^-4), subnormal step 2^-9 of the scale
    bound = w.abs() * 2**-4 + scale[:, None] * 2**-10
    assert ((back - w).abs() <= bound * 1.0001).all()
    rel_per_row = (back - w).norm(dim=1) / w.norm(dim=1)
    assert rel_per_row.max() < 0.04


def test_zero_rows_stay_zero():
    w = _weight(16, 32)
    w[3] = 0
    q, scale = quantize_rows(w)
    assert scale[3] == 1 and torch.equal(dequantize_rows(q, scale, torch.float32)[3], torch.zeros(32))


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_matches_the_linear_it_replaces(bias):
    linear = nn.Linear(64, 48, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(_weight())
    layer = Fp8Linear.from_linear(linear)
    assert layer.weight.dtype == FP8 and layer.compute == "dequantize"
    x = torch.randn(2, 5, 64)
    ref = linear(x)
    out = layer(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.04
    # the storage is one byte a weight plus one float32 scale a row
    assert layer.weight.numel() * layer.weight.element_size() == 64 * 48
    assert module_bytes(layer) == 64 * 48 + 48 * 4 + (48 * 4 if bias else 0)


def test_scaled_mm_path_agrees_with_the_dequantize_path():
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this torch has no _scaled_mm")
    linear = nn.Linear(64, 48).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(_weight())
    fast = Fp8Linear.from_linear(linear, compute="scaled_mm")
    slow = Fp8Linear.from_linear(linear, compute="dequantize")
    assert fast.compute == "scaled_mm"
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16)
    try:
        a = fast(x)
    except (RuntimeError, NotImplementedError) as exc:  # CPU fp8 kernels are not in every build
        pytest.skip(f"_scaled_mm unavailable on this CPU build: {exc}")
    b = slow(x)
    ref = linear(x).float()
    assert a.dtype == torch.bfloat16 and a.shape == b.shape
    # the activations are rounded to fp8 as well: a little further from bf16 than weight-only fp8
    assert ((a.float() - ref).norm() / ref.norm()) < 0.08
    assert ((b.float() - ref).norm() / ref.norm()) < 0.04


def test_sizes_that_scaled_mm_cannot_take_fall_back_to_dequantize():
    assert Fp8Linear(20, 48, compute="scaled_mm").compute == "dequantize"
    assert Fp8Linear(64, 48, compute="scaled_mm", dtype=torch.float32).compute == "dequantize"
    with pytest.raises(ValueError):
        Fp8Linear(64, 48, compute="int4")


def test_fp8_embedding_looks_up_scaled_rows():
    table = _weight(30, 16)
    q, scale = quantize_rows(table)
    emb = Fp8Embedding(30, 16, dtype=torch.float32)
    emb.weight.copy_(q)
    emb.weight_scale.copy_(scale)
    ids = torch.tensor([[0, 29, 7], [3, 3, 12]])
    torch.testing.assert_close(emb(ids), dequantize_rows(q, scale, torch.float32)[ids])


def test_quantize_dit_swaps_block_linears_and_keeps_embeddings_and_head():
    model = build_dit(DiTConfig.preset("tiny"))
    for p in model.parameters():
        p.data.normal_()
    dense = module_bytes(model)
    quantize_dit(model)
    swapped = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    plain = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    assert len(swapped) == 2 * 10  # per block: q k v o twice (self, cross) + 2 FFN
    assert all(n.startswith("blocks.") for n in swapped)
    assert plain and all(n.split(".")[0] in DIT_KEEP for n in plain)
    assert all(m.compute == "dequantize" for m in model.modules() if isinstance(m, Fp8Linear))
    assert module_bytes(model) < 0.5 * dense
    assert getattr(model, "quantization") == "fp8"


def test_fp8_linear_compiles_without_graph_breaks():
    layer = Fp8Linear.from_linear(nn.Linear(32, 16))
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(4, 32)
    torch.testing.assert_close(compiled(x), layer(x))


def test_compute_path_per_device(monkeypatch):
    assert fp8_compute_path("cpu") == "dequantize"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quant, "_SCALED_MM_OK", {"cuda:0": True, "cuda:1": False})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 6))  # A100-class: no fp8 units
    assert fp8_compute_path("cuda:0") == "dequantize"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 9))  # 4090
    assert fp8_compute_path("cuda:0") == "scaled_mm"
    assert fp8_compute_path("cuda:1") == "dequantize"  # kernel probe failed on this one
    assert "de-quantized" in quant.describe_fp8_path("cpu")


@pytest.mark.parametrize("value, expected", [
    ("fp8_e4m3fn", "fp8"), ("FP8", "fp8"), (True, "fp8"), (None, None), ("none", None), (False, None),
])
def test_quantization_spellings(value, expected):
    assert parse_quantization(value, "x") == expected


def test_unknown_quantization_names_the_source():
    with pytest.raises(ValueError, match="scope.json: quantization.*int4"):
        parse_quantization("int4", "scope.json: quantization")


def test_fp8_storage_path_stays_within_the_guard_on_every_golden_case(golden_dir):
    """The CI path (fp8 weights, de-quantized per layer, float32 compute) against the float32 goldens.

    A wrong scale (e.g. per-tensor instead of per-row, or a transposed one) lands near rel-L2 1.
    """
    index = json.loads((golden_dir / "cases.json").read_text())
    cases = [c for c in index["cases"] if c["kind"] == "pipeline"]
    assert cases
    for case in cases:
        expected = load_file(str(golden_dir / case["expected"]["file"]))["latents"]
        model = quantize_dit(build_case_model(case, index, golden_dir))
        _, chunks = generate_case(case, index, golden_dir, model=model)
        rel, _ = compare(torch.cat(chunks, dim=1).reshape(expected.shape), expected)
        print(f"{case['id']}: fp8 latents rel_l2={rel:.3e}")
        assert 1e-4 < rel < FP8_GUARD, (case["id"], rel)


# ------------------------------------------------------------------------------------------- umT5 in fp8


def _t5_inputs(golden_dir):
    data = load_file(str(golden_dir / "t5" / "D_t5.safetensors"))
    return data["ids"], data["mask"], data["encoder_out_raw"]


def test_t5_quantized_at_load_stores_fp8_and_stays_close(golden_dir):
    from memflow_cli.model.t5 import load_umt5_encoder

    path = golden_dir / "t5" / "tiny_umt5_enc_bf16.pth"
    ids, mask, expected = _t5_inputs(golden_dir)
    model = load_umt5_encoder(path, quantization="fp8")
    linears = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 2 * 7 and isinstance(model.token_embedding, Fp8Embedding)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.dtype == torch.float32 and model.token_embedding.weight.dtype == FP8
    assert module_bytes(model) < 0.6 * module_bytes(load_umt5_encoder(path))
    out = model(ids, mask)
    valid = mask.bool()
    rel, _ = compare(out[valid], expected[valid])
    # measured 7.1e-2 (bf16 weights: 8.6e-3); random tiny weights are harsher than trained ones
    print(f"umT5 fp8 rel_l2 vs float32 golden: {rel:.3e}")
    assert 1e-4 < rel < 0.1


def test_t5_file_already_in_fp8_is_taken_as_is(golden_dir, tmp_path):
    """Kijai's umt5-xxl-enc-fp8_e4m3fn.safetensors: fp8 tensors under the original names, no scales."""
    from safetensors.torch import save_file

    from memflow_cli.model.weights import read_state_dict
    from memflow_cli.model.t5 import load_umt5_encoder

    state = read_state_dict(golden_dir / "t5" / "tiny_umt5_enc_bf16.pth")
    fp8_file = tmp_path / "umt5-xxl-enc-fp8_e4m3fn.safetensors"
    save_file({k: (v.to(FP8) if v.dim() == 2 and "pos_embedding" not in k else v).contiguous()
               for k, v in state.items()}, str(fp8_file))
    stored = load_umt5_encoder(fp8_file, quantization="fp8")
    upcast = load_umt5_encoder(fp8_file)  # the same file read into float32 weights
    q = stored.blocks[0].attn.q
    assert torch.equal(q.weight.view(torch.uint8), state["blocks.0.attn.q.weight"].to(FP8).view(torch.uint8))
    assert torch.equal(q.weight_scale, torch.ones(q.out_features))
    ids, mask, _ = _t5_inputs(golden_dir)
    torch.testing.assert_close(stored(ids, mask), upcast(ids, mask), rtol=0, atol=0)
