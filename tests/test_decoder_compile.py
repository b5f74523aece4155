"""--compile for the Wan decoder: the steady calls through torch.compile give the eager decode, with one graph."""

import pytest
import torch

from golden_metric import compare
from memflow_cli.engine.decoders import CompiledDecoderCall, compile_decoder, load_decoder
from memflow_cli.model.vae import VAEConfig, WanVAE


@pytest.fixture()
def vae():
    """The Wan VAE's layers at two levels (every kind of layer, a quarter of the ops to trace), random weights."""
    torch.manual_seed(0)
    return WanVAE(VAEConfig(dim=4, dim_mult=(1, 2), num_res_blocks=1, temporal_downsample=(True,),
                            has_encoder=False)).eval()


def _stream(vae, latents):
    stream = vae.stream_decoder()
    return torch.cat([stream.decode(latents[:, s:s + 3]) for s in range(0, latents.shape[1], 3)], dim=1)


def test_compiled_steady_calls_equal_the_eager_decode(vae):
    from torch._dynamo.utils import counters

    latents = torch.randn(1, 11, 16, 4, 6, generator=torch.Generator().manual_seed(2))  # chunks 3, 3, 3, 2
    eager = _stream(vae, latents)
    torch._dynamo.reset()
    counters.clear()
    stats = compile_decoder(vae, backend="eager")  # traces (no code generation: fast, the same graph)
    assert compile_decoder(vae, backend="eager") is stats  # idempotent
    compiled = _stream(vae, latents)
    rel, mx = compare(compiled, eager)
    assert rel < 1e-5 and mx < 1e-5
    # the first chunk (empty caches) and the shorter last one ran eager; chunks 2 and 3 compiled, one graph
    assert stats.compiled_calls == 2 and stats.compilations == 1 and stats.fallback is None
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_a_compiler_failure_falls_back_to_eager(vae):
    def broken(*args):
        raise RuntimeError("inductor: no C++ compiler")  # what a failing toolchain raises at the first call

    latents = torch.randn(1, 9, 16, 4, 6, generator=torch.Generator().manual_seed(3))
    eager = _stream(vae, latents)
    reasons = []
    vae.compiled_decoder = call = CompiledDecoderCall(vae.decoder, backend="eager", on_fallback=reasons.append)
    call._fn = broken
    out = _stream(vae, latents)
    assert torch.equal(out, eager)  # the failed call ran again eagerly, and every later one
    assert len(reasons) == 1 and "no C++ compiler" in reasons[0] and call.stats.compiled_calls == 0
    assert call.stats.fallback == reasons[0]


def test_the_tiny_ae_is_left_eager(tmp_path):
    from memflow_cli.testing.tiny_weights import tiny_decoder_state

    torch.save(tiny_decoder_state("tae", torch.Generator().manual_seed(3)), tmp_path / "taew2_1.pth")
    assert compile_decoder(load_decoder("tae", tmp_path / "taew2_1.pth")) is None
