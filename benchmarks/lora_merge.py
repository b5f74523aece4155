"""Time merging user LoRAs into the full-size Wan2.1-1.3B DiT (random weights; no download needed).

    PYTHONPATH=src python benchmarks/lora_merge.py [--loras 4] [--rank 32] [--dtype fp32|bf16] [--device cpu]

Writes N rank-R LoRAs (bf16 safetensors, one per common layout, on every attention and FFN Linear of the
30 blocks, as trainers do) into a temporary folder, then measures side by side:
  - inspect: reading headers/shapes and checking every key (what render does before loading),
  - merge:   memflow_cli.weights.loras.merge_loras (one read-modify-write per weight, all LoRAs in one matmul),
  - naive:   the usual loop, one LoRA after another, one layer at a time, W = (W.float() + s·B@A).to(dtype),
             side by side on the first few blocks (two copies of the full model would not fit a small box),
and checks that both give the same weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from memflow_cli.weights.lora_files import inspect_lora
from memflow_cli.weights.loras import merge_loras
from memflow_cli.model.dit import DiTConfig, build_dit

LAYOUTS = ("kohya", "comfyui", "diffusers", "peft")
DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}


def write_lora(path: Path, model, layout: str, rank: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, m in model.named_modules():
        if not (isinstance(m, torch.nn.Linear) and name.startswith("blocks.")):
            continue
        down = (torch.randn(rank, m.in_features, generator=gen) / m.in_features**0.5).to(torch.bfloat16)
        up = (torch.randn(m.out_features, rank, generator=gen) * 1e-3).to(torch.bfloat16)
        block, part = name.split(".", 2)[1], name.split(".", 2)[2]
        if layout == "kohya":
            k = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up, f"{k}.alpha": torch.tensor(16.0)}
        elif layout == "comfyui":
            tensors |= {f"diffusion_model.{name}.lora_A.weight": down, f"diffusion_model.{name}.lora_B.weight": up}
        elif layout == "diffusers":
            k = f"transformer.blocks.{block}.{DIFFUSERS[part]}"
            tensors |= {f"{k}.lora_A.weight": down, f"{k}.lora_B.weight": up}
        else:
            tensors |= {f"{name}.lora_A.default.weight": down, f"{name}.lora_B.default.weight": up}
    save_file(tensors, str(path))


def naive_merge(model, loras) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for lora, strength in loras:
            from safetensors import safe_open

            f = safe_open(str(lora.path), framework="pt")
            for t in lora.targets:
                layer = modules[t.module]
                a, b = (f.get_tensor(k).to(layer.weight.device, torch.float32) for k in t.keys)
                layer.weight.copy_((layer.weight.float() + strength * t.scale * (b @ a)).to(layer.weight.dtype))


def random_model(config, device, dtype):
    model = build_dit(config, device=device, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def write_loras(folder: Path, model, count: int, rank: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"lora{i}.safetensors"
        write_lora(path, model, LAYOUTS[i % len(LAYOUTS)], rank, seed=i)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loras", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-blocks", type=int, default=3,
                        help="blocks of the side-by-side comparison with the one-by-one merge (0: skip it)")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    config = DiTConfig()
    model = random_model(config, device, dtype)
    print(f"model: Wan2.1-1.3B shapes, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, "
          f"{args.dtype} on {device}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_loras(Path(tmp), model, args.loras, args.rank)
        size = sum(p.stat().st_size for p in paths)
        print(f"{args.loras} LoRAs of rank {args.rank}: {size / 2**20:.0f} MiB in all "
              f"({', '.join(LAYOUTS[i % 4] for i in range(args.loras))})")

        t = time.perf_counter()
        loras = [(inspect_lora(p, config).check(), 0.8) for p in paths]
        print(f"inspect (headers, checks, sha256): {time.perf_counter() - t:.2f} s; {loras[0][0].modules} layers per LoRA")

        sync()
        t, cpu = time.perf_counter(), time.process_time()
        changed = merge_loras(model, loras)
        sync()
        t_merge, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"merge_loras, full model: {t_merge:.2f} s wall, {cpu:.2f} s CPU time ({torch.get_num_threads()} threads) "
              f"for {changed} weights; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    del model

    if args.compare_blocks:
        # Side by side on the first blocks only (same layer shapes), so that two copies fit in memory.
        small = DiTConfig(num_layers=args.compare_blocks)
        model = random_model(small, device, dtype)
        original = {k: v.clone() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            loras = [(inspect_lora(p, small).check(), 0.8) for p in write_loras(Path(tmp), model, args.loras, args.rank)]
            sync()
            t = time.perf_counter()
            merge_loras(model, loras)
            sync()
            t_merge = time.perf_counter() - t
            merged = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(original)
            sync()
            t = time.perf_counter()
            naive_merge(model, loras)
            sync()
            t_naive = time.perf_counter() - t
        diff = max((model.state_dict()[k].float() - merged[k].float()).abs().max().item() for k in merged)
        print(f"side by side, {args.compare_blocks} blocks: merge_loras {t_merge:.2f} s, one-by-one {t_naive:.2f} s "
              f"({t_naive / t_merge:.2f}x); max |difference| {diff:.3g}")


if __name__ == "__main__":
    main()
