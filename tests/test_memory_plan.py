"""The memory plan: its weight and cache figures are the real model's bytes; the free-memory check."""

import pytest
import torch

from memflow_cli.errors import InputError
from memflow_cli.engine.generator import StreamSettings
from memflow_cli.engine.memory import MemoryLayout, StreamMemory
from memflow_cli.weights.memory_plan import (
    GiB, cache_bytes, check_fits, dit_weight_bytes, plan_memory, plan_table, umt5_weight_bytes,
)
from memflow_cli.model.dit import CausalDiT, DiTConfig
from memflow_cli.model.t5 import UMT5Config, UMT5Encoder
from memflow_cli.model.quantization import Fp8Embedding, module_bytes, quantize_dit, quantize_linears


def _meta_dit(dtype):
    with torch.device("meta"):
        return CausalDiT(DiTConfig()).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dit_weight_figure_is_the_real_size_models_bytes(dtype):
    model = _meta_dit(dtype)
    assert dit_weight_bytes(DiTConfig(), dtype) == module_bytes(model)
    assert sum(p.numel() for p in model.parameters()) > 1.3e9  # it is the real 1.3B model
    quantize_dit(model, compute="dequantize")  # on the meta device: shapes and dtypes, no data
    assert dit_weight_bytes(DiTConfig(), dtype, "fp8") == module_bytes(model)


def test_cache_figures_are_the_real_caches_bytes():
    config, settings = DiTConfig(), StreamSettings()
    tokens = config.frame_tokens(480 // 8, 832 // 8)
    layout = MemoryLayout(config.num_layers, config.num_heads, config.head_dim, tokens, settings.sink_size,
                          settings.bank_size, settings.local_attn_size - settings.sink_size)
    memory = StreamMemory(layout, config.text_len, "meta", torch.bfloat16)
    planned = cache_bytes(config, settings, tokens, torch.bfloat16)

    def nbytes(*tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    assert planned["kv"] == nbytes(memory.k, memory.v)
    assert planned["staged"] == nbytes(memory.bank.staged_k, memory.bank.staged_v)
    assert planned["text"] == nbytes(memory.text.keys, memory.text.values)
    # the arithmetic: 15 frames x 1560 tokens x 30 layers x 2 x 1536 x 2 bytes (about 4.3 GB)
    assert tokens == 1560 and planned["kv"] == 15 * 1560 * 30 * 2 * 1536 * 2
    plan = plan_memory(832, 480)
    assert plan.part("KV cache + memory bank").bytes == planned["kv"] + planned["staged"]
    assert plan.part("DiT weights").bytes == dit_weight_bytes(DiTConfig(), torch.bfloat16)


def test_text_encoder_figures_are_umt5_xxl_bytes():
    config = UMT5Config.umt5_xxl()
    with torch.device("meta"):
        model = UMT5Encoder(config).to(torch.bfloat16)
    assert umt5_weight_bytes(config, torch.bfloat16) == module_bytes(model)
    assert 11.2e9 < module_bytes(model) < 11.5e9  # the 11.4 GB models_t5_umt5-xxl-enc-bf16.pth
    quantize_linears(model)
    model.token_embedding = Fp8Embedding(config.vocab, config.dim, device="meta")
    assert umt5_weight_bytes(config, torch.bfloat16, "fp8") == module_bytes(model)


def test_the_levers_lower_the_plan():
    default = plan_memory(832, 480)
    fp8 = plan_memory(832, 480, quantization="fp8")
    low = plan_memory(832, 480, low_vram=True)
    tae = plan_memory(832, 480, low_vram=True, decoder="lighttae")
    small = plan_memory(640, 368)
    assert default.peak_bytes > fp8.peak_bytes > low.peak_bytes > tae.peak_bytes
    assert small.peak_bytes < default.peak_bytes
    assert low.quantization == "fp8" and low.part("text encoder").bytes == 0
    assert fp8.part("DiT weights").bytes < 0.52 * default.part("DiT weights").bytes
    assert fp8.part("text encoder").bytes < 0.51 * default.part("text encoder").bytes
    assert low.peak_bytes < 12 * GiB  # the bar for --low-vram at 832x480
    assert default.to_dict()["parts"][0]["name"] == "text encoder"
    plan_table(low, measured_peak=5 * GiB)  # renders


def test_a_plan_larger_than_the_free_memory_stops_with_the_levers():
    plan = plan_memory(832, 480)
    with pytest.raises(InputError) as info:
        check_fits(plan, free_bytes=8 * GiB, device="cuda:0")
    message = str(info.value)
    for lever in ("--low-vram", "--quantization fp8", "--vae lighttae", "--resolution"):
        assert lever in message
    assert "8.0 GiB is free" in message and f"{plan.peak_bytes / GiB:.1f} GiB" in message
    check_fits(plan, free_bytes=2 * plan.peak_bytes)  # fits: no error
    check_fits(plan, free_bytes=None)  # not a CUDA device: nothing to check
    low = plan_memory(832, 480, low_vram=True, decoder="lighttae")
    with pytest.raises(InputError) as info:
        check_fits(low, free_bytes=1 * GiB)
    assert "--low-vram," not in str(info.value) and "smaller --resolution" in str(info.value)


def test_unknown_decoder_is_an_input_error():
    with pytest.raises(InputError, match="--vae: expected one of wan, lightvae, tae, lighttae"):
        plan_memory(832, 480, decoder="vq")


def test_overlap_holds_both_working_sets():
    """Decoding beside generation (render's default) holds the decode call's working set with the DiT pass."""
    serial = plan_memory(832, 480)
    overlap = plan_memory(832, 480, overlap=True)
    work = serial.part("decoder working set").bytes
    assert not overlap.part("decoder working set").transient and "overlap" in overlap.part("decoder working set").note
    dit = serial.part("DiT activations").bytes
    assert overlap.peak_bytes == serial.peak_bytes + min(work, dit)  # the larger of the two, plus the smaller
    # --low-vram keeps decoding serial: its plan is the same either way
    assert plan_memory(832, 480, low_vram=True, overlap=True).peak_bytes == plan_memory(832, 480, low_vram=True).peak_bytes


def test_live_bytes_counts_storages_once_until_freed():
    from memflow_cli.weights.memory_plan import LiveBytes

    with LiveBytes() as counter:
        a = torch.empty(1000)  # 4000 bytes
        view = a[10:]  # the same storage: nothing more
        del a
        assert counter.live == 4000
        b = view * 2  # 3960 more, while both are alive
        view.mul_(3)  # in place: nothing more
        del view
        assert (counter.live, counter.peak) == (3960, 7960)
        del b
        assert counter.live == 0


@pytest.mark.parametrize("family", ["wan", "tae"])
def test_decoder_plan_counts_what_a_real_decode_holds(family):
    """The plan counts the decoder on the meta device; the same count over a real CPU decode agrees exactly."""
    from memflow_cli.weights.memory_plan import counted_decode
    from memflow_cli.model.tae import TAEConfig, TinyAutoencoder
    from memflow_cli.model.vae import VAEConfig, WanVAE

    def build():
        return WanVAE(VAEConfig(dim=8)) if family == "wan" else TinyAutoencoder(TAEConfig(decoder_widths=(32, 16, 8, 8)))

    latents = torch.randn(1, 4, 16, 4, 6)
    real = counted_decode(build().stream_decoder(), latents, 2)
    with torch.device("meta"):
        planned = counted_decode(build().stream_decoder(), latents.to("meta"), 2)
    assert real == planned and real[1] > 0


def test_decoder_lines_are_counted_at_real_size():
    from memflow_cli.weights.memory_plan import decoder_bytes

    weights, state, work = decoder_bytes("wan", 832, 480, torch.bfloat16, 3)
    # the largest tensor of a steady chunk alone: the last level's conv input, 96 channels x (12 + 2) frames
    assert work > 96 * 14 * 832 * 480 * 2
    assert work < 5 * 2**30  # below the former code's 5.2 GiB (cat + norm temporaries), counted the same way
    assert weights == sum(p.numel() for p in _meta_wan_vae().parameters()) * 2
    _, tae_state, tae_work = decoder_bytes("lighttae", 832, 480, torch.bfloat16, 3)
    assert tae_work < work and tae_state < state
    plan = plan_memory(832, 480, decoder="lighttae", overlap=True)
    assert plan.part("decoder working set").bytes == tae_work


def _meta_wan_vae():
    from memflow_cli.model.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        return WanVAE(VAEConfig())


def test_cuda_graphs_add_their_pool():
    from memflow_cli.weights.memory_plan import pass_activation_bytes

    eager, graphs = plan_memory(832, 480, overlap=True), plan_memory(832, 480, overlap=True, cuda_graphs=True)
    pool = graphs.part("CUDA-graph pool (--compile)")
    assert not pool.transient and graphs.peak_bytes == eager.peak_bytes + pool.bytes
    config, settings = DiTConfig(), StreamSettings()
    tokens = config.frame_tokens(60, 104)
    steady = pass_activation_bytes(config, settings, tokens, torch.bfloat16, None, frames=settings.frames_per_chunk)
    assert steady < pass_activation_bytes(config, settings, tokens, torch.bfloat16, None)  # a chunk < the re-cache
    assert pool.bytes == steady + config.num_layers * 3 * tokens * config.dim * 2
