"""Write one LoRA delta in every file layout people download, for the tiny DiT (test helper)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from memflow_cli.model.dit import DiTConfig, build_dit

CONFIG = DiTConfig.preset("tiny")
RANK = 4

# Our names -> diffusers' names, written out by hand (independent of the mapping under test).
DIFFUSERS = {
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q",
    "blocks.0.self_attn.v": "blocks.0.attn1.to_v",
    "blocks.1.self_attn.o": "blocks.1.attn1.to_out.0",
    "blocks.1.cross_attn.k": "blocks.1.attn2.to_k",
    "blocks.0.cross_attn.o": "blocks.0.attn2.to_out.0",
    "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
    "blocks.1.ffn.2": "blocks.1.ffn.net.2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
TARGETS = tuple(DIFFUSERS)


def tiny_model(dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = build_dit(CONFIG, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def low_rank_delta(seed: int = 1, rank: int = RANK, config: DiTConfig = CONFIG) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (down [r, in], up [out, r])}; the delta meant is up @ down."""
    model = build_dit(config, device="meta")
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in TARGETS:
        linear = modules[name]
        out[name] = (torch.randn(rank, linear.in_features, generator=gen) * 0.1,
                     torch.randn(linear.out_features, rank, generator=gen) * 0.1)
    return out


def expected(model, delta, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The merged weights computed here in float64, for comparison."""
    state = {k: v.double() for k, v in model.state_dict().items()}
    for name, (down, up) in delta.items():
        state[name + ".weight"] += strength * (up.double() @ down.double())
    return state


def layouts(delta) -> dict[str, dict[str, torch.Tensor]]:
    """The same delta in every layout; where an alpha is written, `up` is rescaled so the product is unchanged."""
    rank = next(iter(delta.values()))[0].shape[0]
    files = {
        "kohya": {}, "comfyui-lora_A": {}, "comfyui-lora_A-alpha": {}, "comfyui-lora_down": {},
        "diffsynth": {}, "peft-default": {}, "peft-base_model": {}, "diffusers": {}, "diffusers-alpha": {},
    }
    for name, (down, up) in delta.items():
        k = "lora_unet_" + name.replace(".", "_")
        files["kohya"].update({f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up * 2,
                               f"{k}.alpha": torch.tensor(rank / 2)})
        files["comfyui-lora_A"].update({f"diffusion_model.{name}.lora_A.weight": down,
                                        f"diffusion_model.{name}.lora_B.weight": up})
        files["comfyui-lora_A-alpha"].update({f"diffusion_model.{name}.lora_A.weight": down,
                                              f"diffusion_model.{name}.lora_B.weight": up / 4,
                                              f"diffusion_model.{name}.alpha": torch.tensor(4.0 * rank)})
        files["comfyui-lora_down"].update({f"diffusion_model.{name}.lora_down.weight": down,
                                           f"diffusion_model.{name}.lora_up.weight": up * 8,
                                           f"diffusion_model.{name}.alpha": torch.tensor(rank / 8, dtype=torch.bfloat16)})
        files["diffsynth"].update({f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up})
        files["peft-default"].update({f"{name}.lora_A.default.weight": down, f"{name}.lora_B.default.weight": up})
        files["peft-base_model"].update({f"base_model.model.{name}.lora_A.weight": down,
                                         f"base_model.model.{name}.lora_B.weight": up})
        d = DIFFUSERS[name]
        files["diffusers"].update({f"transformer.{d}.lora_A.weight": down, f"transformer.{d}.lora_B.weight": up})
        files["diffusers-alpha"].update({f"transformer.{d}.lora_A.weight": down, f"transformer.{d}.lora_B.weight": up * 2,
                                         f"transformer.{d}.alpha": torch.tensor(rank / 2)})
    return files


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path
