"""--compile (compiled.py): one graph for the steady state, no graph break, no recompilation, same numbers.

Graph structure and recompilation are properties of dynamo's tracing, checked here with the `eager` backend
(no code generation: fast). The golden pipeline cases run with inductor's C++ backend, as a render does.
"""

import json

import pytest
import torch
from torch._dynamo.utils import counters

import golden_pipeline
import memflow_cli.model.dit as dit
from memflow_cli.engine.compiled import CompiledBlock, compile_blocks, uncompile
from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
from memflow_cli.model.dit import DiTConfig, build_dit
from test_golden import _CASES, _GOLDEN, _INDEX

PIPELINE_CASES = [c for c in _CASES if c["kind"] == "pipeline"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny_model(layers=2, seed=0):
    torch.manual_seed(seed)
    model = build_dit(DiTConfig(dim=64, ffn_dim=128, text_dim=16, num_heads=1, num_layers=layers, text_len=16))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def stream(model, chunks, settings=StreamSettings(), switch_at=(), seed=0):
    """Latents of `chunks` chunks (a new prompt at each chunk in `switch_at`), 4x4 latents."""
    gen = StreamingGenerator(model, settings, num_latent_frames=3 * chunks, latent_height=4, latent_width=4, seed=seed)
    prompts = torch.randn(len(switch_at) + 1, 5, 16, generator=torch.Generator().manual_seed(1))
    gen.set_conditioning(prompts[0])
    out = []
    for chunk in range(chunks):
        if chunk in switch_at:
            gen.set_conditioning(prompts[list(switch_at).index(chunk) + 1])
        out.append(gen.next_chunk())
    return gen, torch.cat(out, 1)


SETTINGS = {
    "memflow": StreamSettings(),
    "sma": StreamSettings(sma=True),
    "longlive": StreamSettings(bank_size=0, record_interval=None),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_a_block_forward_traces_as_one_graph_without_breaks(name, monkeypatch):
    """torch._dynamo.explain over the real arguments of a steady-state pass and of a warm-up pass."""
    model = tiny_model()
    explained = {}
    original = dit._run_block

    def explain_then_run(steady):
        def run(block, *args):
            if steady not in explained:
                explained[steady] = torch._dynamo.explain(original)(block, *args)
            return block(*args)
        return run

    class Explaining:  # stands in for the compiled block: sees exactly what it would see
        stats = None

        def begin_pass(self):
            pass

        __call__ = staticmethod(explain_then_run(True))

    model.compiled_block = Explaining()
    monkeypatch.setattr(dit, "_run_block", explain_then_run(False))
    stream(model, 10, SETTINGS[name])
    assert set(explained) == {True, False}
    for steady, result in explained.items():
        assert result.graph_break_count == 0, (steady, result.break_reasons)
        assert result.graph_count == 1


@pytest.mark.parametrize("name", list(SETTINGS))
def test_no_recompilation_after_the_first_steady_state_chunk(name):
    """20 chunks after the first steady one — staging and non-staging chunks, a prompt switch with its
    re-cache — run the one graph compiled at chunk 7, and every pass of them runs it."""
    model = tiny_model()
    stats = compile_blocks(model, backend="eager")
    gen = StreamingGenerator(model, SETTINGS[name], num_latent_frames=3 * 28, latent_height=4, latent_width=4)
    gen.set_conditioning(torch.randn(5, 16))
    compilations, calls = [], []
    for chunk in range(28):
        if chunk == 15:
            gen.set_conditioning(torch.randn(5, 16))
        gen.next_chunk()
        compilations.append(stats.compilations)
        calls.append(stats.compiled_calls)
    first_steady = next(i for i, c in enumerate(calls) if c)
    assert first_steady <= 7  # the key set is the whole buffer from chunk 7 on (sooner without a bank)
    assert compilations[first_steady] == 1
    assert compilations[-1] == 1, compilations  # nothing compiled in the 20 chunks after it
    assert counters["stats"]["unique_graphs"] == 1
    per_chunk = 5 * model.config.num_layers  # 4 denoising passes + the context pass, each through every block
    assert [b - a for a, b in zip(calls[first_steady:], calls[first_steady + 1:])] == [per_chunk] * (27 - first_steady)
    assert stats.fallback is None


def test_compiled_stream_equals_eager_and_uncompile_restores_eager():
    model = tiny_model()
    _, eager = stream(model, 12, switch_at=(9,))
    stats = compile_blocks(model)  # inductor, C++ on the CPU
    _, compiled = stream(model, 12, switch_at=(9,))
    assert stats.fallback is None and stats.compiled_calls == 5 * 2 * (12 - 7)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert stats.compilations == 1
    uncompile(model)
    _, again = stream(model, 12, switch_at=(9,))
    assert torch.equal(again, eager)


def test_a_compiler_failure_falls_back_to_eager_with_the_same_result():
    model = tiny_model()
    _, eager = stream(model, 9)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    heard = []
    stats = compile_blocks(model, backend=broken_backend, on_fallback=heard.append)
    _, fell_back = stream(model, 9)
    assert torch.equal(fell_back, eager)
    assert stats.fallback is not None and "no C++ compiler here" in stats.fallback
    assert len(heard) == 1 and stats.compiled_calls == 0


def test_compile_blocks_is_idempotent_and_checks_the_mode():
    model = tiny_model()
    first = compile_blocks(model, backend="eager")
    assert compile_blocks(model, backend="eager") is first
    assert isinstance(model.compiled_block, CompiledBlock)
    with pytest.raises(ValueError, match="compile mode"):
        compile_blocks(tiny_model(), mode="fastest")


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=[c["id"] for c in PIPELINE_CASES])
def test_golden_pipeline_case_passes_compiled_with_inductor(case):
    model = golden_pipeline.build_case_model(case, _INDEX, _GOLDEN)
    stats = compile_blocks(model)
    golden_pipeline.run_pipeline_case(case, _INDEX, _GOLDEN, model=model)
    assert stats.fallback is None
    assert stats.compiled_calls > 0  # the steady-state chunks (7 to 13) really ran compiled


@pytest.mark.usefixtures("isolated")
def test_render_with_compile_records_it_and_reports_the_compile_apart(tiny, tmp_path):
    from cli_run import cli

    code, text = cli("render", "--prompt", "a lighthouse at dusk", "--seconds", "8", "-o", tmp_path / "out.mp4",
                     "--weights-dir", tiny, "--resolution", "32x32", "--compile", "--quiet")
    assert code == 0, text
    data = json.loads((tmp_path / "out.manifest.json").read_text())
    assert data["settings"]["compile"] == "default"  # part of the identity, like the attention kernel
    compiled = data["compile"]
    assert compiled["fallback"] is None and compiled["compiled_calls"] > 0 and compiled["compilations"] == 1
    assert data["timings_s"]["compile"] == pytest.approx(compiled["compile_seconds"], abs=1e-3)
    # the same command again is the same render: skipped
    code, text = cli("render", "--prompt", "a lighthouse at dusk", "--seconds", "8", "-o", tmp_path / "out.mp4",
                     "--weights-dir", tiny, "--resolution", "32x32", "--compile", "--quiet")
    assert code == 0, text
    code, text = cli("render", "--prompt", "x", "-o", tmp_path / "o.mp4", "--weights-dir", tiny, "--compile-mode", "fastest")
    assert code == 2 and "--compile-mode" in text


def test_when_torch_compile_itself_is_unavailable_the_model_runs_eager(monkeypatch):
    model = tiny_model()
    _, eager = stream(model, 9)

    def unavailable(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    heard = []
    stats = compile_blocks(model, on_fallback=heard.append)
    _, out = stream(model, 9)
    assert torch.equal(out, eager)
    assert heard == [stats.fallback] and "Dynamo is not supported" in stats.fallback and stats.compiled_calls == 0
