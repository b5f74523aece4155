"""LoRAs in a real render: from the timeline (found by name), from --lora, checked before loading, in the manifest."""

from __future__ import annotations

import json

import pytest
import torch

from lora_files import layouts, low_rank_delta, write
from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.model.dit import DiTConfig
from memflow_cli.render import Renderer, RenderOptions
from memflow_cli.inputs.timeline import LoraSpec, read_timeline
from cli_run import cli


pytestmark = pytest.mark.usefixtures("isolated")


def tiny_delta(tiny, seed=1, rank=2):
    return low_rank_delta(seed=seed, rank=rank, config=DiTConfig.from_file(tiny / "config.json"))


def scope_timeline(path, loras):
    path.write_text(json.dumps({
        "version": "2.1",
        "prompts": [{"startTime": 0, "endTime": 0.75, "prompts": [{"text": "a red kite over a beach", "weight": 100}]}],
        "settings": {"pipelineId": "memflow", "resolution": {"width": 32, "height": 32}, "loras": loras},
    }))
    return path


def test_timeline_loras_render_and_are_in_the_manifest(tiny, tmp_path, monkeypatch):
    style = write(tmp_path / "shelf" / "style.safetensors", layouts(tiny_delta(tiny))["kohya"])
    grain = write(tmp_path / "grain.safetensors", layouts(tiny_delta(tiny, seed=2))["diffusers"])
    monkeypatch.setenv("MEMFLOW_LORA_DIR", str(tmp_path / "shelf"))  # a path from another machine, found by name
    timeline = scope_timeline(tmp_path / "t.json", [
        {"id": "a", "path": "C:\\Users\\someone\\loras\\style.safetensors", "scale": 0.8, "mergeMode": "runtime_peft"}])
    code, text = cli("render", timeline, "--weights-dir", tiny, "-o", tmp_path / "v.mp4", "--quiet",
                     "--lora", f"{grain}:0.5")
    assert code == 0, text
    manifest = json.loads((tmp_path / "v.manifest.json").read_text())
    assert manifest["video"]["complete"] and manifest["video"]["frames"] == 12
    first, second = manifest["loras"]
    assert first["path"] == str(style) and first["scale"] == 0.8 and first["format"] == "kohya"
    assert first["ranks"] == [2] and first["modules"] == 13 and len(first["sha256"]) == 64
    assert second["path"] == str(grain) and second["scale"] == 0.5 and second["format"] == "diffusers"
    assert manifest["settings"]["loras"] == [[first["sha256"], 0.8], [second["sha256"], 0.5]]
    assert any("runtime_peft" in w and "merged" in w for w in manifest["warnings"])


def test_user_loras_are_merged_after_memflows_own(tiny, tmp_path):
    delta = tiny_delta(tiny)
    path = write(tmp_path / "a.safetensors", layouts(delta)["comfyui-lora_A"])
    tl = read_timeline(scope_timeline(tmp_path / "t.json", []))
    renderer = Renderer(RenderOptions(weights_dir=tiny, loras=(LoraSpec(path, -0.25, where="--lora"),)))
    job = renderer.plan(tl)
    renderer.load(loras=job.loras)
    base = load_dit(tiny / "config.json", tiny / "base.pt", tiny / "lora.pt")  # MemFlow's LoRA merged
    merged = renderer._model.state_dict()
    for name, (down, up) in delta.items():
        want = base.state_dict()[name + ".weight"].double() - 0.25 * (up.double() @ down.double())
        assert torch.allclose(merged[name + ".weight"].double(), want, atol=1e-6), name
    untouched = "blocks.0.self_attn.k.weight"
    assert torch.equal(merged[untouched], base.state_dict()[untouched])
    # the same set again keeps the model; another set reloads it from the released weights
    model = renderer._model
    renderer.load(loras=job.loras)
    assert renderer._model is model
    renderer.load(loras=[])
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in renderer._model.state_dict().items())


def test_workflow_lora_sha256_is_checked_before_loading(tiny, tmp_path):
    write(tmp_path / "loras" / "style.safetensors", layouts(tiny_delta(tiny))["peft-default"])
    doc = {"format": "scope-workflow", "format_version": "1.0",
           "pipelines": [{"role": "main", "pipeline_id": "memflow", "params": {"height": 32, "width": 32},
                          "loras": [{"filename": "style.safetensors", "weight": 1.0, "merge_mode": "permanent_merge",
                                     "sha256": "ab" * 32}]}],
           "timeline": {"entries": [{"start_time": 0, "end_time": 0.5, "prompts": [{"text": "a kite"}]}]}}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    code, text = cli("render", tmp_path / "w.json", "--weights-dir", tiny, "--lora-dir", tmp_path / "loras",
                     "-o", tmp_path / "v.mp4", "--quiet")
    assert code == 2 and "pipelines[0].loras[0]" in text and "the timeline expects" in text
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "embeddings").exists()


def test_a_lora_for_another_model_stops_before_loading(tiny, tmp_path):
    k = "lora_unet_blocks_0_self_attn_q"
    big = write(tmp_path / "big.safetensors", {f"{k}.lora_down.weight": torch.zeros(4, 5120),
                                               f"{k}.lora_up.weight": torch.zeros(5120, 4)})
    timeline = scope_timeline(tmp_path / "t.json", [])
    code, text = cli("render", timeline, "--weights-dir", tiny, "-o", tmp_path / "v.mp4", "--quiet", "--lora", big)
    assert code == 2 and "--lora" in text and "14B" in text
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "embeddings").exists()
    code, text = cli("render", timeline, "--weights-dir", tiny, "--lora", tmp_path / "nope.safetensors:0.3")
    assert code == 2 and "not found" in text


def test_lora_inspect(tiny, tmp_path):
    t = dict(layouts(tiny_delta(tiny))["comfyui-lora_down"])
    path = write(tmp_path / "ok.safetensors", t)
    code, text = cli("lora", "inspect", path, "--config", tiny / "config.json")
    assert code == 0, text
    for expected in ("ComfyUI (diffusion_model.…, lora_down/lora_up)", "rank", "layers changed",
                     "blocks.*.self_attn.q.weight (lora)", "time_projection.1.weight (lora)"):
        assert expected in text, expected
    code, text = cli("lora", "inspect", path, "--config", tiny / "config.json", "--json")
    data = json.loads(text)
    assert data["format"] == "comfyui-lora_down" and data["ranks"] == [2] and data["alphas"] == [0.25]
    assert data["scales"] == [0.125] and data["modules"] == 13 and data["error"] is None
    t["diffusion_model.blocks.0.self_attn.nothing.lora_down.weight"] = torch.zeros(2, 64)
    t["diffusion_model.blocks.0.self_attn.nothing.lora_up.weight"] = torch.zeros(64, 2)
    bad = write(tmp_path / "bad.safetensors", t)
    code, text = cli("lora", "inspect", bad, "--config", tiny / "config.json")
    assert code == 2 and "would not match (2)" in text and "no layer blocks.0.self_attn.nothing" in text
    assert "render would refuse this file" in text
    # the default model is the real 1.3B: a tiny LoRA is "for another model"
    code, text = cli("lora", "inspect", path)
    assert code == 2 and "width 64" in text and "width 1536" in text


def test_workflow_lora_sha256_field_is_validated(tmp_path):
    (tmp_path / "style.safetensors").write_bytes(b"x")
    doc = {"format": "scope-workflow", "pipelines": [{"role": "main", "pipeline_id": "memflow",
           "loras": [{"filename": "style.safetensors", "weight": 0.7, "sha256": "not-a-hash"}]}],
           "timeline": {"entries": [{"start_time": 0, "end_time": 0.5, "prompts": [{"text": "a kite"}]}]}}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    from memflow_cli.errors import InputError

    with pytest.raises(InputError, match=r"pipelines\[0\].loras\[0\].sha256: expected a sha256 of 64 hex digits"):
        read_timeline(tmp_path / "w.json")
    doc["pipelines"][0]["loras"][0]["sha256"] = "AB" * 32
    (tmp_path / "w.json").write_text(json.dumps(doc))
    spec = read_timeline(tmp_path / "w.json").settings.loras[0]
    assert spec.sha256 == "ab" * 32 and spec.scale == 0.7 and spec.where.endswith("pipelines[0].loras[0]")


def test_a_broken_lora_is_refused_before_the_weights_are_looked_up(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage" * 20)
    timeline = scope_timeline(tmp_path / "t.json", [])
    # --weights-dir does not exist: had the weights been looked up first, that would be the error
    code, text = cli("render", timeline, "--weights-dir", tmp_path / "no-weights", "--lora", f"{junk}:0.5", "--offline")
    assert code == 2 and "not a readable safetensors file" in text, text
