"""The render-side levers of issue 12: which text-encoder file, how the DiT is loaded, the memory plan of a job.

`--quantization fp8` (or a file's fp8_e4m3fn) stores the DiT's block Linears and umT5's weights in fp8;
`--low-vram` adds: the text encoder on the CPU, and the decoder's smallest working set (one latent frame per
decode call). Nothing is offloaded during generation: every DiT layer stays on the device.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Kijai's fp8 copy of the Wan text encoder (Kijai/WanVideo_comfy); used when it sits in --weights-dir.
KIJAI_FP8_T5 = "umt5-xxl-enc-fp8_e4m3fn.safetensors"


def text_encoder_file(default: Path, weights_dir: Path | None, quantization: str | None) -> Path:
    """The fp8 file when fp8 is asked for and the user has it, else the usual bf16 file (quantized at load)."""
    if quantization == "fp8" and weights_dir is not None and (Path(weights_dir) / KIJAI_FP8_T5).is_file():
        return Path(weights_dir) / KIJAI_FP8_T5
    return Path(default)


def load_generator(config, weights, device: torch.device, dtype: torch.dtype, quantization: str | None,
                   lora_alpha: float | None = None, user_loras=()):
    """The DiT with its own LoRA merged, then the user's (`user_loras`: (loras.LoraFile, scale) in order); with
    fp8, merged and quantized on the CPU first, so the device only ever holds the fp8 copy (the compute path
    is the device's: fp8 matmuls or per-layer de-quantization)."""
    from memflow_cli.weights.checkpoints import load_dit
    from memflow_cli.weights.loras import merge_loras

    if quantization is None:
        model = load_dit(config, weights.base, weights.lora, device=device, dtype=dtype, lora_alpha=lora_alpha)
        if user_loras:
            merge_loras(model, list(user_loras))
        return model
    from memflow_cli.model.quantization import fp8_compute_path, quantize_dit

    model = load_dit(config, weights.base, weights.lora, device="cpu", dtype=dtype, lora_alpha=lora_alpha)
    if user_loras:
        merge_loras(model, list(user_loras))  # every LoRA is merged before quantizing
    quantize_dit(model, compute=fp8_compute_path(device))
    return model.to(device)


def text_encoder_config(path: Path):
    """umT5 sizes from the file's tensor shapes, without reading its data (safetensors header / mmap)."""
    from memflow_cli.model.weights import read_flat_state
    from memflow_cli.model.t5 import UMT5Config

    try:
        if Path(path).suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
            return UMT5Config.from_state_dict(shapes)
        return UMT5Config.from_state_dict(read_flat_state(path, "umT5 encoder"))
    except Exception:  # noqa: BLE001 — an unreadable file fails later with its own message; plan the real size
        return UMT5Config.umt5_xxl()


def plan_for(job, config, weights, dtype: torch.dtype, low_vram: bool, overlap: bool = False, cuda_graphs: bool = False):
    from memflow_cli.weights.memory_plan import plan_memory

    return plan_memory(job.width, job.height, dtype=dtype, quantization=job.quantization, low_vram=low_vram,
                       decoder=getattr(job, "vae", "wan"), dit=config, text_encoder=text_encoder_config(weights.t5),
                       settings=job.stream, overlap=overlap, cuda_graphs=cuda_graphs)
