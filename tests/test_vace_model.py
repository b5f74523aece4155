"""The VACE blocks: loading the module file (and refusing what does not fit), and the hint path."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.errors import CheckpointError
from memflow_cli.model.dit import DiTConfig
from memflow_cli.model.vace import OwnTokens, VaceGuide, VaceTextCache, load_vace_module, vace_main_layers

GOLDEN = Path(__file__).parent / "golden"
CONFIG = DiTConfig.preset("tiny")
MODULE = GOLDEN / "vace" / "tiny_vace_module.safetensors"


@pytest.fixture(scope="module")
def dit():
    return load_dit(CONFIG, GOLDEN / "dit" / "tiny_dit.safetensors")


@pytest.fixture(scope="module")
def vace():
    return load_vace_module(MODULE, CONFIG)


def _write(tmp_path, state, name="module.safetensors"):
    path = tmp_path / name
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(path))
    return path


def test_layer_map_of_the_real_model():
    assert vace_main_layers(30) == tuple(range(0, 30, 2)) and len(vace_main_layers(30)) == 15
    assert vace_main_layers(2) == (0,)


def test_module_loads_in_bf16_and_float32(vace):
    state = load_file(str(MODULE))
    loaded = vace.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k].to(torch.bfloat16), state[k]) for k in state)
    half = load_vace_module(MODULE, CONFIG, dtype=torch.bfloat16)
    assert half.vace_patch_embedding.weight.dtype == torch.bfloat16
    assert vace.vace_blocks[0].before_proj is not None


def test_prefixed_pickle_and_full_model_file_load(tmp_path, vace):
    state = load_file(str(MODULE))
    extra = {"model." + k: v for k, v in state.items()}
    extra["model.blocks.0.ffn.0.weight"] = torch.zeros(3, 3)  # a full VACE model file also has main blocks
    path = tmp_path / "full.pt"
    torch.save(extra, path)
    again = load_vace_module(path, CONFIG)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in vace.state_dict().items())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: {k: v for k, v in s.items() if not k.startswith("vace")} | {"x.weight": torch.zeros(2)}, "not a VACE module"),
        (lambda s: {k: v for k, v in s.items() if k != "vace_blocks.0.after_proj.bias"}, "missing tensors: vace_blocks.0.after_proj.bias"),
        (lambda s: s | {"vace_blocks.0.extra.weight": torch.zeros(2)}, "unexpected tensors: vace_blocks.0.extra.weight"),
        (lambda s: s | {"vace_blocks.2.after_proj.bias": torch.zeros(256)}, "VACE blocks [1] are missing"),
        (lambda s: s | {"vace_patch_embedding.weight": torch.zeros(128, 96, 1, 2, 2)}, "width 128, but the DiT has width 256"),
        (lambda s: s | {"vace_patch_embedding.weight": torch.zeros(256, 48, 1, 2, 2)}, "48 channels, expected 96"),
        (lambda s: s | {"vace_patch_embedding.weight": torch.zeros(256, 96, 1, 4, 4)}, "patch size"),
        (lambda s: s | {"vace_blocks.0.norm3.weight": torch.zeros(7)}, "mis-shaped tensors: vace_blocks.0.norm3.weight"),
    ],
)
def test_module_that_does_not_fit_is_refused(tmp_path, edit, message):
    path = _write(tmp_path, edit(load_file(str(MODULE))))
    with pytest.raises(CheckpointError) as info:
        load_vace_module(path, CONFIG)
    assert message in str(info.value) and str(path) in str(info.value)


def test_block_count_must_fit_the_dit(tmp_path):
    state = load_file(str(MODULE))
    state |= {k.replace("vace_blocks.0.", "vace_blocks.1."): v for k, v in state.items()
              if k.startswith("vace_blocks.0.") and "before_proj" not in k}
    with pytest.raises(CheckpointError, match="2 VACE blocks, but a DiT with 2 layers takes 1"):
        load_vace_module(_write(tmp_path, state), CONFIG)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_vace_module(path, CONFIG)
    with pytest.raises(CheckpointError, match="not found"):
        load_vace_module(tmp_path / "absent.safetensors", CONFIG)


def _flow(dit, latents, guide=None, frame_start=0):
    from memflow_cli.engine.memory import CrossAttentionCache, MemoryLayout

    layout = MemoryLayout(CONFIG.num_layers, CONFIG.num_heads, CONFIG.head_dim, 4, 0, 0, 3)
    text = CrossAttentionCache(layout, CONFIG.text_len, "cpu", torch.float32)
    emb = torch.randn(5, CONFIG.text_dim, generator=torch.Generator().manual_seed(3))
    t = torch.full((1, latents.shape[1]), 700.0)
    return dit(latents, t, frame_start, text, OwnTokens(), text_embedding=emb, vace=guide)


def _inputs(refs=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 3, 16, 4, 4, generator=g)
    context = torch.randn(1, refs + 3, 96, 4, 4, generator=g)
    return latents, context


def test_scale_zero_is_bit_identical_and_scale_changes_flow(dit, vace):
    latents, context = _inputs()
    with torch.no_grad():
        plain = _flow(dit, latents)
        zero = _flow(dit, latents, VaceGuide(vace, context, 0.0, VaceTextCache()))
        one = _flow(dit, latents, VaceGuide(vace, context, 1.0, VaceTextCache()))
        two = _flow(dit, latents, VaceGuide(vace, context, 2.0, VaceTextCache()))
    assert torch.equal(zero, plain)
    assert not torch.allclose(one, plain, atol=1e-3) and not torch.allclose(two, one, atol=1e-3)


def test_references_lengthen_the_context_not_the_hints(dit, vace):
    latents, context = _inputs(refs=2)
    captured = []
    original = vace.forward

    def capture(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    vace.forward = capture
    try:
        with torch.no_grad():
            with_refs = _flow(dit, latents, VaceGuide(vace, context, 1.0, VaceTextCache(), reference_frames=2))
            without = _flow(dit, latents, VaceGuide(vace, context[:, 2:], 1.0, VaceTextCache()))
    finally:
        del vace.forward
    assert captured[0][0].shape == captured[1][0].shape == (1, 3 * 4, CONFIG.dim)  # the chunk's tokens only
    assert with_refs.shape == without.shape
    assert not torch.allclose(with_refs, without, atol=1e-4)  # the references are attended to


def test_vace_positions_do_not_follow_the_chunk(dit, vace):
    """VACE RoPE runs over the VACE context itself; main positions are relative, so a chunk's flow
    (no history) is the same at any frame_start, with or without hints."""
    latents, context = _inputs()
    with torch.no_grad():
        at0 = _flow(dit, latents, VaceGuide(vace, context, 1.0, VaceTextCache()), frame_start=0)
        at30 = _flow(dit, latents, VaceGuide(vace, context, 1.0, VaceTextCache()), frame_start=30)
    torch.testing.assert_close(at30, at0, rtol=1e-4, atol=1e-4)


# -- in the streaming generator --------------------------------------------------------------------------------


def _generate(dit, vace=None, scale=1.0, contexts=None, chunks=3, switch_at=None):
    from memflow_cli.engine.generator import StreamingGenerator

    gen = StreamingGenerator(dit, num_latent_frames=3 * chunks, latent_height=4, latent_width=4, seed=7,
                             vace=vace, vace_scale=scale)
    gen.set_conditioning(torch.randn(6, CONFIG.text_dim, generator=torch.Generator().manual_seed(1)))
    out = []
    for k in range(chunks):
        if switch_at == k:
            gen.set_conditioning(torch.randn(6, CONFIG.text_dim, generator=torch.Generator().manual_seed(2)))
        out.append(gen.next_chunk(None if contexts is None else contexts[k]))
    return torch.cat(out, 1)


def _contexts(seed, chunks=3, refs=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, refs + 3, 96, 4, 4, generator=g) for _ in range(chunks)]


def test_generator_scale_zero_equals_no_vace_and_contexts_steer(dit, vace):
    plain = _generate(dit)
    assert torch.equal(_generate(dit, vace, 0.0, _contexts(1)), plain)
    a = _generate(dit, vace, 1.0, _contexts(1))
    b = _generate(dit, vace, 1.0, _contexts(2))
    assert (a - plain).abs().max() > 1e-2 and (b - a).abs().max() > 1e-2
    assert torch.equal(_generate(dit, vace, 1.0, _contexts(1)), a)  # deterministic
    # a prompt switch re-caches without hints and refreshes the VACE text keys
    switched = _generate(dit, vace, 1.0, _contexts(1), switch_at=1)
    assert torch.equal(switched[:, :3], a[:, :3]) and not torch.allclose(switched[:, 3:], a[:, 3:])


def test_hints_in_denoising_passes_only(dit, vace):
    from memflow_cli.engine.generator import StreamingGenerator, StreamSettings

    seen = []
    original = dit.forward

    def spy(*args, vace=None, **kwargs):
        seen.append(vace is not None)
        return original(*args, vace=vace, **kwargs)

    gen = StreamingGenerator(dit, num_latent_frames=6, latent_height=4, latent_width=4, vace=vace)
    gen.set_conditioning(torch.randn(6, CONFIG.text_dim))
    dit.forward = spy
    try:
        gen.next_chunk(_contexts(3, refs=1)[0])
        gen.next_chunk()  # a chunk without context runs plain
    finally:
        del dit.forward
    steps = len(StreamSettings().denoising_steps)
    assert seen == [True] * steps + [False] + [False] * (steps + 1)
    with pytest.raises(ValueError, match="VACE context has shape"):
        gen2 = StreamingGenerator(dit, num_latent_frames=3, latent_height=4, latent_width=4, vace=vace)
        gen2.set_conditioning(torch.randn(6, CONFIG.text_dim))
        gen2.next_chunk(torch.zeros(1, 3, 32, 4, 4))
