"""The levers end to end with tiny weights: --quantization fp8, --low-vram, a Scope file asking for fp8,
the memory plan before the render, the stop when it cannot fit, `memflow info --resolution`."""

import json
import re
from pathlib import Path

import pytest
import torch

from memflow_cli.weights import memory_plan
from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.weights.hub import resolve_weights
from memflow_cli.weights.low_vram import KIJAI_FP8_T5, load_generator, text_encoder_file
from memflow_cli.model.dit import DiTConfig
from memflow_cli.model.quantization import Fp8Linear, quantize_dit
from memflow_cli.inputs.timeline import read_timeline
from memflow_cli.render.video import probe
from cli_run import cli
from test_cli import FIXTURES

pytestmark = pytest.mark.usefixtures("isolated")


def _scope_fp8(tmp_path: Path, **settings) -> Path:
    doc = json.loads((FIXTURES / "scope_v21.json").read_text())
    doc["prompts"] = doc["prompts"][:1]  # its first second only: 16 frames
    doc["settings"].update(settings)
    path = tmp_path / "fp8-scope.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("extra", [["--quantization", "fp8"], ["--low-vram"]])
def test_fp8_and_low_vram_renders_reach_the_exact_length(tiny, tmp_path, extra):
    out = tmp_path / "v.mp4"
    code, text = cli("render", "--prompt", "a red kite over the dunes", "--seconds", "0.5", "--weights-dir", tiny,
                     "--resolution", "32x32", "-o", out, *extra)
    assert code == 0, text
    assert probe(out)["frames"] == 8
    assert "memory plan 32x32" in text and "fp8" in text and "planned peak" in text
    manifest = json.loads((tmp_path / "v.manifest.json").read_text())
    assert manifest["settings"]["quantization"] == "fp8" and manifest["video"]["frames"] == 8
    # --low-vram takes the tiny decoder when its file is there (the tiny weights have it); fp8 alone keeps wan
    assert manifest["decoder"]["vae"] == ("lighttae" if "--low-vram" in extra else "wan")


def test_a_plain_cpu_render_shows_one_line_of_memory_plan_not_the_table(tiny, tmp_path):
    code, text = cli("render", "--prompt", "a red kite over the dunes", "--seconds", "0.5", "--weights-dir", tiny,
                     "--resolution", "32x32", "-o", tmp_path / "v.mp4")
    assert code == 0, text
    assert "memory plan 32x32" not in text and "planned peak" not in text and "KV cache" not in text
    assert re.search(r"memory plan: a peak of about \d+\.\d\d GiB \(`memflow info --resolution 32x32`", text), text


def test_scope_file_asking_for_fp8_renders_with_fp8(tiny, tmp_path):
    source = _scope_fp8(tmp_path, quantization="fp8_e4m3fn")
    assert read_timeline(source).settings.quantization == "fp8"
    out = tmp_path / "s.mp4"
    code, text = cli("render", source, "--weights-dir", tiny, "--resolution", "32x32", "-o", out, "-q")
    assert code == 0, text
    assert probe(out)["frames"] == 16
    assert json.loads((tmp_path / "s.manifest.json").read_text())["settings"]["quantization"] == "fp8"


def test_other_spellings_of_fp8_in_files(tmp_path):
    assert read_timeline(_scope_fp8(tmp_path, useFp8E4m3fn=True)).settings.quantization == "fp8"
    assert read_timeline(FIXTURES / "scope_v21.json").settings.quantization is None
    doc = json.loads((FIXTURES / "workflow.json").read_text())
    doc["pipelines"][1]["params"]["quantization"] = "fp8_e4m3fn"
    (tmp_path / "wf.json").write_text(json.dumps(doc))
    assert read_timeline(tmp_path / "wf.json").settings.quantization == "fp8"


def test_unknown_quantization_option_is_an_input_error(tiny):
    code, text = cli("render", "--prompt", "x", "--weights-dir", tiny, "--quantization", "int4")
    assert code == 2 and "--quantization" in text and "int4" in text


def test_a_plan_that_does_not_fit_stops_before_anything_loads(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(memory_plan, "free_device_memory", lambda device: 1 << 20)  # a 1 MiB "GPU"
    out = tmp_path / "v.mp4"
    code, text = cli("render", "--prompt", "a cat", "--seconds", "0.5", "--weights-dir", tiny,
                     "--resolution", "32x32", "-o", out)
    assert code == 2, text
    assert "not enough GPU memory" in text and "--low-vram" in text and "--quantization fp8" in text
    assert "--vae lighttae" in text and "--resolution" in text
    assert "encoding" not in text and "loading the generator" not in text  # stopped before the weights
    assert not out.exists() and not (tmp_path / "embeddings").exists()


def test_the_lora_is_merged_before_quantizing(tiny):
    weights = resolve_weights(tiny, offline=True)
    config = DiTConfig.from_file(weights.config)
    model = load_generator(config, weights, torch.device("cpu"), torch.float32, "fp8")
    merged_then_quantized = quantize_dit(load_dit(config, weights.base, weights.lora))
    base_only = quantize_dit(load_dit(config, weights.base))
    name = "blocks.0.self_attn.q"
    got = model.get_submodule(name)
    assert isinstance(got, Fp8Linear)
    want = merged_then_quantized.get_submodule(name)
    assert torch.equal(got.weight.view(torch.uint8), want.weight.view(torch.uint8))
    assert torch.equal(got.weight_scale, want.weight_scale)
    assert not torch.equal(got.weight_scale, base_only.get_submodule(name).weight_scale)


def test_kijai_fp8_text_encoder_is_preferred_when_present(tmp_path):
    default = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    assert text_encoder_file(default, tmp_path, "fp8") == default  # not there: quantize the bf16 file
    (tmp_path / KIJAI_FP8_T5).write_bytes(b"")
    assert text_encoder_file(default, tmp_path, "fp8") == tmp_path / KIJAI_FP8_T5
    assert text_encoder_file(default, tmp_path, None) == default  # only with fp8


def test_info_prints_the_memory_plan():
    code, text = cli("info", "--resolution", "832x480", "--low-vram", "--json")
    assert code == 0, text
    data = json.loads(text)
    plan = data["memory_plan"]
    assert plan["resolution"] == "832x480" and plan["low_vram"] and plan["quantization"] == "fp8"
    parts = {p["name"]: p["bytes"] for p in plan["parts"]}
    assert parts["KV cache + memory bank"] == 15 * 1560 * 30 * 2 * 1536 * 2 + 1560 * 30 * 2 * 1536 * 2
    assert plan["peak_bytes"] < 12 * 2**30
    assert "fp8 weights" in data["fp8"]
    code, text = cli("info", "--resolution", "832x480", "--quantization", "fp8", "--vae", "lighttae")
    assert code == 0 and "planned peak" in text and "decoder lighttae" in text
    code, text = cli("info", "--resolution", "832x480", "--vae", "vq")
    assert code == 2 and "--vae" in text
