"""User LoRAs: every layout gives the same weights, the scale is right, and nothing is dropped silently."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from lora_files import CONFIG, DIFFUSERS, RANK, expected, layouts, low_rank_delta, tiny_model, write
from memflow_cli.errors import InputError
from memflow_cli.weights.lora_files import LoraError, inspect_lora
from memflow_cli.weights.loras import check_sha256, lora_search_dirs, merge_loras, parse_lora_option

DELTA = low_rank_delta()
LAYOUTS = layouts(DELTA)


def max_error(model, want) -> float:
    return max((v.double() - want[k]).abs().max().item() for k, v in model.state_dict().items())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_merges_the_same_delta(tmp_path, layout):
    path = write(tmp_path / f"{layout}.safetensors", LAYOUTS[layout])
    lora = inspect_lora(path, CONFIG).check()
    assert lora.modules == len(DELTA) and lora.ranks == [RANK]
    model = tiny_model()
    want = expected(model, DELTA, strength=0.7)
    assert merge_loras(model, [(lora, 0.7)]) == len(DELTA)
    assert max_error(model, want) < 1e-6


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_pickled_files_load_like_safetensors(tmp_path, suffix):
    path = write(tmp_path / f"lora{suffix}", LAYOUTS["comfyui-lora_A"])
    model = tiny_model()
    want = expected(model, DELTA)
    merge_loras(model, [(inspect_lora(path, CONFIG), 1.0)])
    assert max_error(model, want) < 1e-6


def test_memflow_training_checkpoint_layout(tmp_path):
    tensors = {f"base_model.model.{k}": v for k, v in LAYOUTS["diffsynth"].items()}
    path = tmp_path / "lora.pt"
    torch.save({"generator_lora": tensors, "critic_lora": {}, "step": 7}, path)
    lora = inspect_lora(path, CONFIG).check()
    assert lora.format == "peft" and lora.modules == len(DELTA)


def test_formats_are_detected_from_the_keys(tmp_path):
    want = {"kohya": "kohya", "comfyui-lora_A": "comfyui-lora_A", "comfyui-lora_A-alpha": "comfyui-lora_A",
            "comfyui-lora_down": "comfyui-lora_down", "diffsynth": "peft", "peft-default": "peft",
            "peft-base_model": "peft", "diffusers": "diffusers", "diffusers-alpha": "diffusers"}
    for layout, fmt in want.items():
        # the file name means nothing
        path = write(tmp_path / layout / "style.safetensors", LAYOUTS[layout])
        assert inspect_lora(path, CONFIG).format == fmt, layout


def test_several_loras_add_up_in_order_and_strength_scales(tmp_path):
    other = low_rank_delta(seed=5, rank=2)
    a = inspect_lora(write(tmp_path / "a.safetensors", LAYOUTS["kohya"]), CONFIG)
    b = inspect_lora(write(tmp_path / "b.safetensors", layouts(other)["diffusers"]), CONFIG)
    model = tiny_model()
    want = expected(model, DELTA, 0.5)
    for name, (down, up) in other.items():
        want[name + ".weight"] += -1.5 * (up.double() @ down.double())
    merge_loras(model, [(a, 0.5), (b, -1.5)])
    assert max_error(model, want) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strength_zero_leaves_weights_bit_identical(tmp_path, dtype):
    lora = inspect_lora(write(tmp_path / "a.safetensors", LAYOUTS["comfyui-lora_down"]), CONFIG)
    model = tiny_model(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert merge_loras(model, [(lora, 0.0)]) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bf16_model_is_merged_in_float32_and_rounded_once(tmp_path):
    lora = inspect_lora(write(tmp_path / "a.safetensors", LAYOUTS["peft-default"]), CONFIG)
    model = tiny_model(torch.bfloat16)
    want = expected(model, DELTA)
    merge_loras(model, [(lora, 1.0)])
    for key, value in model.state_dict().items():
        # one rounding to bf16 (8 significant bits) of the exact sum, not one per LoRA or per step
        assert ((value.double() - want[key]).abs() <= want[key].abs() * 2**-8 + 1e-7).all(), key


# ---------------------------------------------------------------------------------------- alpha / rank


def _pair(prefix: str, name: str, down_key: str, up_key: str, alpha: float | None, alpha_key: str = "alpha"):
    down, up = DELTA[name]
    t = {f"{prefix}{name}.{down_key}": down, f"{prefix}{name}.{up_key}": up}
    if alpha is not None:
        t[f"{prefix}{name}.{alpha_key}"] = torch.tensor(alpha)
    return t


SCALE_ROWS = {
    # table row: (key prefix, down suffix, up suffix, alpha written) -> scale
    "kohya alpha": ("kohya", 2.0, 0.5),
    "kohya no alpha (alpha = rank)": ("kohya", None, 1.0),
    "kohya alpha 0 (alpha = rank)": ("kohya", 0.0, 1.0),
    "comfyui lora_A": ("comfyui-A", None, 1.0),
    "comfyui lora_A + alpha": ("comfyui-A", 8.0, 2.0),
    "comfyui lora_down + alpha": ("comfyui-down", 1.0, 0.25),
    "peft": ("peft", None, 1.0),
    "peft + alpha": ("peft", 16.0, 4.0),
    "diffusers": ("diffusers", None, 1.0),
    "diffusers + alpha": ("diffusers", 3.0, 0.75),
}


@pytest.mark.parametrize("row", sorted(SCALE_ROWS))
def test_alpha_over_rank_per_format(tmp_path, row):
    family, alpha, scale = SCALE_ROWS[row]
    name = "blocks.1.ffn.2"
    down, up = DELTA[name]
    if family == "kohya":
        k = "lora_unet_" + name.replace(".", "_")
        t = {f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up}
        alpha_key = f"{k}.alpha"
    elif family.startswith("comfyui"):
        d, u = ("lora_A", "lora_B") if family == "comfyui-A" else ("lora_down", "lora_up")
        t = {f"diffusion_model.{name}.{d}.weight": down, f"diffusion_model.{name}.{u}.weight": up}
        alpha_key = f"diffusion_model.{name}.alpha"
    elif family == "peft":
        t = {f"{name}.lora_A.default.weight": down, f"{name}.lora_B.default.weight": up}
        alpha_key = f"{name}.alpha"
    else:
        d = "transformer." + DIFFUSERS[name]
        t = {f"{d}.lora_A.weight": down, f"{d}.lora_B.weight": up}
        alpha_key = f"{d}.alpha"
    if alpha is not None:
        t[alpha_key] = torch.tensor(alpha)
    lora = inspect_lora(write(tmp_path / "a.safetensors", t), CONFIG).check()
    assert lora.scales == [scale] and lora.ranks == [RANK]
    model = tiny_model()
    want = expected(model, {name: (down, up * scale)})
    merge_loras(model, [(lora, 1.0)])
    assert max_error(model, want) < 1e-6


# ---------------------------------------------------------------------------------------- full deltas


def test_diff_and_diff_b_are_added_as_they_are(tmp_path):
    gen = torch.Generator().manual_seed(3)
    model = tiny_model()
    state = model.state_dict()
    diffs = {
        "blocks.0.norm3.weight": "diffusion_model.blocks.0.norm3.diff",
        "blocks.0.norm3.bias": "diffusion_model.blocks.0.norm3.diff_b",
        "blocks.0.ffn.0.bias": "diffusion_model.blocks.0.ffn.0.diff_b",
        "blocks.1.self_attn.norm_q.weight": "diffusion_model.blocks.1.self_attn.norm_q.diff",
        "blocks.1.modulation": "diffusion_model.blocks.1.modulation.diff",
        "head.head.weight": "diffusion_model.head.head.diff",
        "patch_embedding.weight": "diffusion_model.patch_embedding.diff",
    }
    tensors = {key: torch.randn(state[param].shape, generator=gen) for param, key in diffs.items()}
    down, up = DELTA["blocks.0.self_attn.q"]
    tensors |= {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
                "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(RANK / 2.0)}
    lora = inspect_lora(write(tmp_path / "d.safetensors", tensors), CONFIG).check()
    assert lora.format == "comfyui-lora_down" and lora.modules == 7  # norm3 weight and bias are one module
    want = {k: v.double() for k, v in state.items()}
    for param, key in diffs.items():
        want[param] += 0.5 * tensors[key].double()
    want["blocks.0.self_attn.q.weight"] += 0.5 * 0.5 * (up.double() @ down.double())
    merge_loras(model, [(lora, 0.5)])
    assert max_error(model, want) < 1e-6


def test_diffusers_norm2_is_our_norm3(tmp_path):
    model = tiny_model()
    delta = torch.full((CONFIG.dim,), 0.25)
    lora = inspect_lora(write(tmp_path / "d.safetensors", {"transformer.blocks.1.norm2.diff": delta,
                                                           "transformer.blocks.1.norm2.diff_b": delta.clone()}), CONFIG).check()
    assert {t.param for t in lora.targets} == {"blocks.1.norm3.weight", "blocks.1.norm3.bias"}
    before = model.blocks[1].norm3.weight.clone()
    merge_loras(model, [(lora, 1.0)])
    assert torch.allclose(model.blocks[1].norm3.weight, before + 0.25)


# ---------------------------------------------------------------------------------------- never silent


def _error(path) -> str:
    with pytest.raises(LoraError) as info:
        inspect_lora(path, CONFIG).check()
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    return str(info.value)


def test_unmatched_keys_are_an_error_listing_them(tmp_path):
    t = dict(LAYOUTS["comfyui-lora_A"])
    for i in range(6):
        t[f"diffusion_model.blocks.0.self_attn.zz{i}.lora_A.weight"] = torch.zeros(RANK, CONFIG.dim)
    message = _error(write(tmp_path / "x.safetensors", t))
    assert "6 keys fit nothing" in message and "ComfyUI" in message
    assert "diffusion_model.blocks.0.self_attn.zz0.lora_A.weight" in message and "(6 in all)" in message


def test_half_pairs_and_misfit_shapes_are_errors(tmp_path):
    down, up = DELTA["blocks.0.ffn.0"]
    message = _error(write(tmp_path / "half.safetensors", {"blocks.0.ffn.0.lora_A.weight": down}))
    assert "blocks.0.ffn.0.lora_A.weight" in message and "up half is missing" in message
    message = _error(write(tmp_path / "shape.safetensors", {"blocks.0.ffn.0.lora_A.weight": down,
                                                            "blocks.0.ffn.0.lora_B.weight": up[:, :2]}))
    assert "do not fit blocks.0.ffn.0" in message


def test_image_to_video_parts_are_ignored_with_a_warning(tmp_path):
    t = dict(LAYOUTS["comfyui-lora_A"])
    t["diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight"] = torch.zeros(RANK, CONFIG.dim)
    t["diffusion_model.blocks.0.cross_attn.k_img.lora_B.weight"] = torch.zeros(CONFIG.dim, RANK)
    t["diffusion_model.img_emb.proj.1.lora_A.weight"] = torch.zeros(RANK, 1280)
    t["diffusion_model.img_emb.proj.1.lora_B.weight"] = torch.zeros(CONFIG.dim, RANK)
    lora = inspect_lora(write(tmp_path / "i2v.safetensors", t), CONFIG).check()
    assert lora.modules == len(DELTA)
    assert len(lora.warnings) == 1 and "4 image-conditioning tensors" in lora.warnings[0]
    k = "lora_unet_blocks_1_cross_attn_v_img"
    kohya = dict(LAYOUTS["kohya"]) | {f"{k}.lora_down.weight": torch.zeros(RANK, CONFIG.dim),
                                      f"{k}.lora_up.weight": torch.zeros(CONFIG.dim, RANK), f"{k}.alpha": torch.tensor(1.0)}
    assert "3 image-conditioning" in inspect_lora(write(tmp_path / "k.safetensors", kohya), CONFIG).check().warnings[0]


def test_a_14b_lora_says_so(tmp_path):
    k = "lora_unet_blocks_0_self_attn_q"
    t = {f"{k}.lora_down.weight": torch.zeros(8, 5120), f"{k}.lora_up.weight": torch.zeros(5120, 8), f"{k}.alpha": torch.tensor(8.0)}
    message = _error(write(tmp_path / "big.safetensors", t))
    assert "width 5120" in message and "14B" in message
    deep = {f"diffusion_model.blocks.{i}.ffn.0.diff_b": torch.zeros(CONFIG.ffn_dim) for i in range(CONFIG.num_layers + 3)}
    assert "block 4" in _error(write(tmp_path / "deep.safetensors", deep))


def test_a_stable_diffusion_text_encoder_lora_says_so(tmp_path):
    t = {}
    for i in range(3):
        k = f"lora_te_text_model_encoder_layers_{i}_mlp_fc1"
        t |= {f"{k}.lora_down.weight": torch.zeros(4, 768), f"{k}.lora_up.weight": torch.zeros(3072, 4), f"{k}.alpha": torch.tensor(4.0)}
    assert "Stable Diffusion text encoder" in _error(write(tmp_path / "sd.safetensors", t))
    t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] = torch.zeros(4, 320)
    assert "UNet" in _error(write(tmp_path / "sd2.safetensors", t))


def test_inspect_shows_rank_and_alpha_of_a_refused_file(tmp_path):
    """`memflow lora inspect` on a file render refuses (another model size, another network) still shows the rank
    and alpha its tensors hold, not `–` and `none`; exit 2 as before."""
    from cli_run import cli

    k = "lora_unet_blocks_0_self_attn_q"
    big = write(tmp_path / "big.safetensors", {f"{k}.lora_down.weight": torch.zeros(8, 5120),
                                               f"{k}.lora_up.weight": torch.zeros(5120, 8), f"{k}.alpha": torch.tensor(6.0)})
    lora = inspect_lora(big, CONFIG)
    assert lora.error() and (lora.ranks, lora.alphas) == ([8], [6.0])
    assert lora.describe()["ranks"] == [8] and lora.describe()["alphas"] == [6.0]
    code, text = cli("lora", "inspect", big)
    assert code == 2 and "14B" in text
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3}
    assert rows["rank"] == "8" and rows["alpha"] == "6", rows
    sd = {f"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
          f"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4)}
    lora = inspect_lora(write(tmp_path / "sd.safetensors", sd), CONFIG)
    assert lora.error() and lora.ranks == [4] and lora.alphas == []  # no alpha in the file: none shown


def test_full_checkpoints_and_garbage_are_clear_errors(tmp_path):
    model = tiny_model()
    full = write(tmp_path / "model.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    assert "full model checkpoint" in _error(full)
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    assert "not a readable safetensors file" in _error(garbage)
    pt = tmp_path / "junk.pt"
    pt.write_bytes(b"PK\x03\x04 truncated")
    assert "cannot read this weight file" in _error(pt)
    assert "expected a .safetensors LoRA" in _error(tmp_path / "x.gguf") if (tmp_path / "x.gguf").write_bytes(b"GGUF") else True
    assert "not found" in _error(tmp_path / "missing.safetensors")
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    assert "contains no tensors" in _error(empty)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_never_run_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f, protocol=2)
    _error(path)
    assert "must never run" not in capsys.readouterr().out


def test_other_adapter_kinds_are_named(tmp_path):
    t = {"lora_unet_blocks_0_self_attn_q.hada_w1_a": torch.zeros(4, 4), "lora_unet_blocks_0_self_attn_q.hada_w1_b": torch.zeros(4, 4)}
    assert "LyCORIS LoHa" in _error(write(tmp_path / "loha.safetensors", t))


# ---------------------------------------------------------------------------------------- where LoRAs come from


def test_lora_option_parsing(tmp_path):
    path = write(tmp_path / "style.safetensors", LAYOUTS["diffsynth"])
    assert parse_lora_option(str(path)) == (path, 1.0)
    assert parse_lora_option(f"{path}:0.8") == (path, 0.8)
    assert parse_lora_option(f"{path}:-1") == (path, -1.0)
    with pytest.raises(LoraError, match="not found"):
        parse_lora_option(f"{tmp_path}/nope.safetensors:0.5")


def test_search_dirs_are_cli_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFLOW_LORA_DIR", f"{tmp_path / 'e1'}{os.pathsep}{tmp_path / 'e2'}")
    assert lora_search_dirs([tmp_path / "c"]) == [tmp_path / "c", tmp_path / "e1", tmp_path / "e2"]


def test_sha256_is_checked(tmp_path):
    lora = inspect_lora(write(tmp_path / "a.safetensors", LAYOUTS["diffsynth"]), CONFIG)
    check_sha256(lora, lora.sha256.upper(), "loras[0]")
    with pytest.raises(LoraError, match="the timeline expects"):
        check_sha256(lora, "0" * 64, "loras[0]")
    with pytest.raises(LoraError, match="64 hex digits"):
        check_sha256(lora, "abc", "loras[0]")


def test_peft_adapter_config_alpha_is_used(tmp_path):
    name = "blocks.0.ffn.0"
    down, up = DELTA[name]
    t = {f"base_model.model.{name}.lora_A.weight": down, f"base_model.model.{name}.lora_B.weight": up}
    path = write(tmp_path / "adapter_model.safetensors", t)
    assert inspect_lora(path, CONFIG).scales == [1.0]  # no config: scale 1
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 2}')
    lora = inspect_lora(path, CONFIG).check()
    assert lora.scales == [0.5] and lora.alpha_source.endswith("adapter_config.json")
    (tmp_path / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 2, "use_rslora": true}')
    assert "rsLoRA" in _error(path)
