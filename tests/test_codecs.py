"""Text encoder, tokenizer, prompt cache and Wan VAE: behaviour beyond the golden numbers."""

import pytest
import torch
from safetensors.torch import save_file

from golden_metric import compare
from memflow_cli.inputs import prompts
from memflow_cli.model.weights import read_state_dict
from memflow_cli.errors import CheckpointError
from memflow_cli.model.t5 import UMT5Config, load_umt5_encoder
from memflow_cli.model.tokenizer import PromptTokenizer, clean_prompt
from memflow_cli.model.vae import load_wan_vae, pixels_to_uint8
from memflow_cli.inputs.prompts import PromptEncoder
from memflow_cli.testing.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_vae(golden_dir):
    return load_wan_vae(golden_dir / "vae" / "tiny_wan_vae.pth")


@pytest.fixture(scope="module")
def t5_path(golden_dir):
    return golden_dir / "t5" / "tiny_umt5_enc_bf16.pth"


@pytest.fixture()
def tokenizer_path(tmp_path):
    return build_tiny_tokenizer(tmp_path / "tok" / "tokenizer.json")


# ------------------------------------------------------------------------------------------------ VAE


def test_stream_decode_in_chunks_equals_whole_sequence(tiny_vae):
    torch.manual_seed(0)
    latents = torch.randn(1, 7, 16, 4, 6)
    whole = tiny_vae.decode(latents)
    assert whole.shape == (1, 1 + 4 * 6, 3, 32, 48)
    assert whole.dtype == torch.float32 and whole.abs().max() <= 1
    for chunk in (1, 2, 3):
        stream = tiny_vae.stream_decoder()
        parts = [stream.decode(latents[:, i:i + chunk]) for i in range(0, 7, chunk)]
        expected_counts = [1 + 4 * (min(chunk, 7) - 1)] + [4 * min(chunk, 7 - i) for i in range(chunk, 7, chunk)]
        assert [p.shape[1] for p in parts] == expected_counts
        rel, mx = compare(torch.cat(parts, dim=1), whole)
        assert rel < 1e-5 and mx < 1e-5, (chunk, rel, mx)


def test_stream_state_does_not_grow(tiny_vae):
    stream = tiny_vae.stream_decoder()
    sizes = []
    for _ in range(6):
        stream.decode(torch.randn(1, 2, 16, 4, 6))
        sizes.append(stream.state_bytes())
    assert len(set(sizes[1:])) == 1  # fixed once every cache has been filled


def test_max_frames_per_call_gives_same_result(tiny_vae):
    latents = torch.randn(1, 5, 16, 4, 6)
    rel, mx = compare(tiny_vae.decode(latents, max_frames_per_call=2), tiny_vae.decode(latents))
    assert rel < 1e-5 and mx < 1e-5


def test_encode_frame_counts_and_trailing_frames_dropped(tiny_vae):
    torch.manual_seed(1)
    video = torch.rand(1, 3, 10, 32, 48) * 2 - 1
    z9 = tiny_vae.encode(video[:, :, :9])
    assert z9.shape == (1, 3, 16, 4, 6)
    assert torch.equal(tiny_vae.encode(video), z9)  # frame 10 is never read
    assert tiny_vae.encode(video[:, :, :1]).shape == (1, 1, 16, 4, 6)
    # bigger groups are the same maths
    rel, _ = compare(tiny_vae.encode(video[:, :, :9], frames_per_call=8), z9)
    assert rel < 1e-5


def test_vae_runs_in_bfloat16(golden_dir):
    vae32 = load_wan_vae(golden_dir / "vae" / "tiny_wan_vae.pth")
    vae16 = load_wan_vae(golden_dir / "vae" / "tiny_wan_vae.pth", dtype=torch.bfloat16)
    latents = torch.randn(1, 3, 16, 4, 6)
    out16 = vae16.decode(latents)
    assert out16.dtype == torch.float32
    rel, _ = compare(out16, vae32.decode(latents))
    assert rel < 0.1


def test_pixels_to_uint8():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0]).view(1, 1, 1, 5).expand(2, 3, 1, 5)
    u8 = pixels_to_uint8(x)
    assert u8.dtype == torch.uint8 and u8.shape == (2, 1, 5, 3)
    assert u8[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255]  # truncation, 255 only at exactly 1
    assert torch.equal(pixels_to_uint8(x[None]), u8)


# ------------------------------------------------------------------------------------------------ T5


def _ids_mask():
    ids = torch.zeros(2, 512, dtype=torch.int64)
    mask = torch.zeros(2, 512, dtype=torch.int64)
    ids[0, :5] = torch.tensor([7, 9, 300, 4, 1])
    ids[1, :3] = torch.tensor([511, 2, 1])
    mask[0, :5] = 1
    mask[1, :3] = 1
    return ids, mask


def test_config_inferred_from_shapes(t5_path):
    cfg = UMT5Config.from_state_dict(read_state_dict(t5_path))
    assert (cfg.vocab, cfg.dim, cfg.dim_attn, cfg.dim_ffn, cfg.num_heads, cfg.num_layers) == (512, 64, 64, 128, 4, 2)


def test_t5_safetensors_variants(t5_path, tmp_path):
    state = read_state_dict(t5_path)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    bf16 = tmp_path / "enc-bf16.safetensors"
    fp8 = tmp_path / "enc-fp8_e4m3fn.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bf16))
    save_file({k: v.to(torch.float8_e4m3fn).contiguous() for k, v in state.items()}, str(fp8))
    ids, mask = _ids_mask()
    ref = load_umt5_encoder(t5_path)(ids, mask)
    from_bf16 = load_umt5_encoder(bf16)(ids, mask)
    model_fp8 = load_umt5_encoder(fp8)
    assert all(p.dtype == torch.float32 for p in model_fp8.parameters())  # up-cast to compute dtype
    from_fp8 = model_fp8(ids, mask)
    assert torch.equal(from_bf16, ref)
    rel, _ = compare(from_fp8, ref)
    assert 0 < rel < 0.2  # fp8 changes the result, but only a little


def test_t5_padding_does_not_leak(t5_path):
    enc = load_umt5_encoder(t5_path)
    ids, mask = _ids_mask()
    out = enc(ids, mask)
    ids2 = ids.clone()
    ids2[0, 5:] = 17  # different tokens in padded positions must not change the real rows
    out2 = enc(ids2, mask)
    assert torch.allclose(out[0, :5], out2[0, :5], atol=1e-6)


@pytest.mark.parametrize("make", ["truncated", "garbage", "wrong_model"])
def test_bad_weight_files_raise_checkpoint_error(make, t5_path, golden_dir, tmp_path):
    vae_file = golden_dir / "vae" / "tiny_wan_vae.pth"
    bad = tmp_path / f"{make}.pth"
    if make == "truncated":
        bad.write_bytes(t5_path.read_bytes()[: t5_path.stat().st_size // 2])
    elif make == "garbage":
        bad.write_bytes(b"not a checkpoint" * 100)
    else:
        bad.write_bytes(vae_file.read_bytes())
    with pytest.raises(CheckpointError, match=bad.name):
        load_umt5_encoder(bad)
    if make != "wrong_model":
        with pytest.raises(CheckpointError, match=bad.name):
            load_wan_vae(bad)
    else:
        t5_as_vae = tmp_path / "t5_as_vae.pth"
        t5_as_vae.write_bytes(t5_path.read_bytes())
        with pytest.raises(CheckpointError, match=t5_as_vae.name):
            load_wan_vae(t5_as_vae)


def test_vae_missing_tensor_names_file(golden_dir, tmp_path):
    state = read_state_dict(golden_dir / "vae" / "tiny_wan_vae.pth")
    del state["decoder.upsamples.4.shortcut.weight"]
    path = tmp_path / "partial_vae.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match="partial_vae.safetensors.*shortcut"):
        load_wan_vae(path)


# ------------------------------------------------------------------------------------------------ tokenizer


def test_clean_prompt():
    assert clean_prompt("  \u201cHello\u201d  &amp;amp;\n\tworld  ") == '"Hello" & world'
    assert clean_prompt("it\u2019s &lt;b&gt;") == "it's <b>"
    assert clean_prompt("a\u00a0\u00a0b") == "a b"


@pytest.mark.parametrize("with_post_processor", [True, False])
def test_tokenizer_eos_padding_truncation(tmp_path, with_post_processor):
    path = build_tiny_tokenizer(tmp_path / "tokenizer.json", with_eos_post_processor=with_post_processor)
    tok = PromptTokenizer.from_file(path)
    ids, mask = tok(["the cat", "  the   \u201ccat\u201d  ", "the " * 700])
    assert ids.shape == mask.shape == (3, 512) and ids.dtype == mask.dtype == torch.int64
    cat = tok._tok.token_to_id("\u2581cat")
    the = tok._tok.token_to_id("\u2581the")
    assert ids[0, :3].tolist() == [the, cat, 1] and mask[0].sum() == 3
    assert (ids[0, 3:] == 0).all() and (mask[0, 3:] == 0).all()
    # cleaning: whitespace collapsed, curly quotes straightened
    quote = tok._tok.token_to_id('"')
    assert quote in ids[1].tolist() and mask[1].sum() < 10
    # long prompt: 511 pieces then EOS at the last position, no padding
    assert mask[2].sum() == 512 and ids[2, 511] == 1 and (ids[2, :511] == the).all()
    # exactly one EOS even when the file's post-processor would add one too
    assert (ids[0] == 1).sum() == 1


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nope.json"):
        PromptTokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(CheckpointError, match="bad.json"):
        PromptTokenizer.from_file(bad)


# ------------------------------------------------------------------------------------------------ prompt cache


def test_prompt_encoder_matches_direct_encoding(tokenizer_path, t5_path, tmp_path):
    enc = PromptEncoder(tokenizer_path, t5_path, cache_dir=tmp_path / "cache")
    texts = ["the cat walks", "a dog  on the sky", "the cat walks "]  # the last cleans to the first
    out = enc.encode(texts)
    assert set(out) == set(texts) and enc.encoder_loads == 1
    ids, mask = PromptTokenizer.from_file(tokenizer_path)(["the cat walks"])
    n = int(mask.sum())
    direct = load_umt5_encoder(t5_path)(ids, mask)[0]
    emb = out["the cat walks"]
    assert emb.shape == (512, 64) and emb.dtype == torch.float32
    assert torch.equal(emb[:n], direct[:n]) and (emb[n:] == 0).all() and (emb[n - 1] != 0).any()
    assert torch.equal(out["the cat walks "], emb)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_prompt_cache_hit_skips_encoder(tokenizer_path, t5_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = PromptEncoder(tokenizer_path, t5_path, cache_dir=cache).encode(["the red cat"])

    def refuse(*a, **k):
        raise AssertionError("encoder must not load on a cache hit")

    monkeypatch.setattr(prompts, "load_umt5_encoder", refuse)
    again = PromptEncoder(tokenizer_path, t5_path, cache_dir=cache)
    second = again.encode(["the red cat"])
    assert again.encoder_loads == 0
    assert torch.equal(first["the red cat"], second["the red cat"])


def test_prompt_cache_rebuilds_corrupt_and_foreign_entries(tokenizer_path, t5_path, tmp_path):
    cache = tmp_path / "cache"
    good = PromptEncoder(tokenizer_path, t5_path, cache_dir=cache).encode(["the sky"])["the sky"]
    (entry,) = cache.glob("*.safetensors")

    entry.write_bytes(entry.read_bytes()[:-40])  # truncated
    enc = PromptEncoder(tokenizer_path, t5_path, cache_dir=cache)
    assert torch.equal(enc.encode(["the sky"])["the sky"], good) and enc.encoder_loads == 1

    # an entry written for another text (foreign content under this name) is not trusted
    other = torch.ones(3, 64)
    meta = {**enc.identity(), "text": "the dog", "tokens": "3"}
    save_file({"embedding": other}, str(entry), metadata=meta)
    enc = PromptEncoder(tokenizer_path, t5_path, cache_dir=cache)
    assert torch.equal(enc.encode(["the sky"])["the sky"], good) and enc.encoder_loads == 1

    # different weights -> different entry, never the old one
    other_weights = tmp_path / "other.safetensors"
    state = read_state_dict(t5_path)
    state["norm.weight"] = state["norm.weight"] * 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(other_weights))
    enc2 = PromptEncoder(tokenizer_path, other_weights, cache_dir=cache)
    assert torch.allclose(enc2.encode(["the sky"])["the sky"], good * 2, rtol=1e-2, atol=1e-3)
    assert enc2.encoder_loads == 1


def test_prompt_encoder_release_and_default_cache_dir(tokenizer_path, t5_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFLOW_CACHE", str(tmp_path / "envcache"))
    enc = PromptEncoder(tokenizer_path, t5_path)
    enc.encode(["the city at night"])
    assert list((tmp_path / "envcache").glob("*.safetensors"))
    enc.release()
    assert enc._encoder is None
    enc.encode(["a blue dog"])  # a later miss loads it again
    assert enc.encoder_loads == 2
