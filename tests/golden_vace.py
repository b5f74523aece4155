"""Golden runner for VACE (kind "vace"): one chunk with no history through our causal DiT + VACE blocks.

The reference is the official, non-causal Wan2.1 VaceWanModel; a chunk with no history is exactly chunk 0
of our causal model, so the DiT runs here through the streaming memory (`StreamMemory`) as the generator
runs it: the first denoising pass of chunk 0, at the case's timestep.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from golden_metric import assert_close
from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.engine.memory import MemoryLayout, StreamMemory
from memflow_cli.model.dit import DiTConfig
from memflow_cli.model.vace import VaceGuide, VaceTextCache, load_vace_module


def _chunk0_flow(model, latents, timestep, text_emb, guide=None):
    """Chunk 0 of the causal model (no history), on the latents' device and in their dtype."""
    config = model.config
    _, frames, _, height, width = latents.shape
    layout = MemoryLayout(layers=config.num_layers, heads=config.num_heads, head_dim=config.head_dim,
                          frame_tokens=config.frame_tokens(height, width), sink_frames=3, bank_slots=3,
                          window_frames=9)
    memory = StreamMemory(layout, config.text_len, latents.device, latents.dtype)
    memory.begin_pass(0, frames, commit=False, stage=False)
    timesteps = torch.full((1, frames), float(timestep), dtype=torch.float32, device=latents.device)
    flow = model(latents, timesteps, 0, memory.text, memory, text_embedding=text_emb, vace=guide)
    memory.end_pass()
    return flow


def run_vace_case(case: dict, index: dict, golden: Path) -> dict:
    files, cfg = case["files"], case["config"]
    data = load_file(str(golden / files["golden"]))
    config = DiTConfig.from_file(golden / files["dit_config"])
    model = load_dit(config, golden / files["dit_weights"], dtype=torch.float32)
    vace = load_vace_module(golden / files["vace_module"], config, dtype=torch.float32)
    assert list(vace.main_layers) == cfg["vace_layers"]
    assert vace.vace_patch_embedding.in_channels == cfg["vace_in_dim"]

    latents, text_emb = data["latents_in"], data["text_emb"]
    timestep = float(data["timestep"].item())
    assert timestep == cfg["timestep"]
    # The official context is one CFHW sample; ours is the pipeline layout [B, F, C, H, W].
    context = data["vace_context"].permute(1, 0, 2, 3).unsqueeze(0)
    tol = case["tolerance"]
    report = {}

    with torch.no_grad():
        tokens = vace.embed_context(context)
        assert_close("V1.vace_tokens", tokens, data["vace_tokens"], tol, report)

        # The hints themselves: run the VACE path with a capturing scale of 1 and read them back.
        text = VaceTextCache()
        no_vace = _chunk0_flow(model, latents, timestep, text_emb)
        assert_close("V1.flow_no_vace", no_vace, data["flow_no_vace"], tol, report)
        captured = _capture_hints(model, vace, context, text, latents, timestep, text_emb)
        assert_close("V1.hints", torch.stack(captured), data["hints"], tol, report)

        for scale in cfg["context_scales"]:
            guide = VaceGuide(vace, context, scale, text)
            flow = _chunk0_flow(model, latents, timestep, text_emb, guide)
            assert_close(f"V1.flow_vace_s{scale}", flow, data[f"flow_vace_s{scale}"], tol, report)

        # Scale 0 adds exact zeros: bit-identical to the DiT without VACE.
        flow0 = _chunk0_flow(model, latents, timestep, text_emb, VaceGuide(vace, context, 0.0, text))
        assert torch.equal(flow0, no_vace)
    return report


def _capture_hints(model, vace, context, text, latents, timestep, text_emb):
    captured = []
    original = vace.forward

    def capture(*args, **kwargs):
        hints = original(*args, **kwargs)
        captured.extend(hints)
        return hints

    vace.forward = capture
    try:
        _chunk0_flow(model, latents, timestep, text_emb, VaceGuide(vace, context, 1.0, text))
    finally:
        del vace.forward
    return captured


RUNNERS = {"vace": run_vace_case}
