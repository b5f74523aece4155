"""Where a steady chunk's time goes: torch.profiler over a few chunks of the bench's stream, by kernel kind.

    PYTHONPATH=src python benchmarks/kernel_profile.py --device cuda --dtype bf16            # 832x480, Wan VAE
    PYTHONPATH=src python benchmarks/kernel_profile.py --preset tiny --resolution 64x64 --vae-dim 8 --device cpu

The stream is `memflow bench`'s (random full-size weights, memory bank on, no prompt switch), decoded chunk by
chunk in the loop (serial: the profile attributes every kernel to one chunk). The first `--warmup` chunks are
not profiled (the key set reaches its steady size at chunk 7), then `--chunks` are. Per chunk it reports:

  - on CUDA: self GPU time of the kernels by kind — attention, GEMM, elementwise/copies, conv, other — and
    the kernel launches (kernels, memcpys and memsets the device ran);
  - on a CPU (the device check's dry run): self CPU time of the aten ops by the same kinds, and the ops called
    (a CPU runs no kernels: the count is an upper bound of what a GPU would launch, not a GPU figure).

The kinds come from the kernel's name (`classify_kernel`); `top` lists the largest names so a misfiled kernel
shows. One JSON object on stdout (as `memflow bench --json`), progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

KINDS = ("attention", "gemm", "elementwise", "conv", "other")

# Substrings of kernel / op names (lower case), checked in this order: attention by its own words first (cuDNN's
# and CUTLASS's attention kernels say flash / sdpa / fmha, some also "fprop"), then conv (a conv's implicit GEMM
# is a conv), then "cudnn" alone (attention), GEMM, norms and reductions (other), elementwise and copies.
_ATTENTION = ("flash", "fmha", "sdpa", "scaled_dot_product", "attention")
_CONV = ("conv", "implicit_gemm", "dgrad", "wgrad", "winograd", "im2col", "col2im", "krsc")
_GEMM = ("gemm", "cutlass", "matmul", "nvjet", "sm90_xmma", "xmma", "cublas", "_scaled_mm", "aten::mm",
         "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::einsum")
_LAYOUT = ("nchwtonhwc", "nhwctonchw")
_NOT_ELEMENTWISE = ("norm", "reduce", "softmax", "triton_per", "triton_red")
_ELEMENTWISE = ("elementwise", "copy", "cat", "vectorized", "memcpy", "memset", "fill", "index", "gather",
                "scatter", "unrolled", "triton_poi", "aten::add", "aten::mul", "aten::sub", "aten::div",
                "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to", "aten::stack", "aten::where",
                "aten::gelu", "aten::silu", "aten::neg", "aten::pow", "aten::rsqrt", "aten::exp", "aten::sin",
                "aten::cos", "aten::zero_", "aten::lerp", "aten::clamp", "aten::tanh", "aten::sigmoid",
                "aten::expand_as", "aten::copy_", "aten::addcmul")


# CPU ops that launch nothing on a GPU (views, metadata, allocations): left out of the CPU op count.
_NO_LAUNCH = {f"aten::{n}" for n in (
    "view", "_unsafe_view", "as_strided", "expand", "slice", "select", "reshape", "permute", "transpose",
    "unsqueeze", "squeeze", "flatten", "unflatten", "t", "alias", "narrow", "split", "chunk", "unbind",
    "empty", "empty_strided", "empty_like", "detach", "resolve_conj", "resolve_neg", "lift_fresh", "result_type",
    "is_nonzero", "item", "_local_scalar_dense", "size", "stride", "numel", "contiguous", "to", "view_as")}


def classify_kernel(name: str) -> str:
    """The kind of a GPU kernel or a CPU aten op, from its name: attention, gemm, elementwise, conv or other.

    'cudnn' alone means attention (cuDNN's SDPA kernels) unless the name also says conv; norms and reductions
    are 'other' even when their kernel is vectorized."""
    n = name.lower()
    if name in _NO_LAUNCH:
        return "other"
    if any(k in n for k in _ATTENTION):
        return "attention"
    if any(k in n for k in _CONV):
        return "conv"
    if any(k in n for k in _LAYOUT):
        return "elementwise"  # a layout copy (cuDNN's nchwToNhwc around a conv)
    if "cudnn" in n:
        return "attention"
    if any(k in n for k in _GEMM):
        return "gemm"
    if any(k in n for k in _NOT_ELEMENTWISE):
        return "other"
    if any(k in n for k in _ELEMENTWISE):
        return "elementwise"
    return "other"


def _self_time_us(event, device: bool) -> float:
    names = ("self_device_time_total", "self_cuda_time_total") if device else ("self_cpu_time_total",)
    for attr in names:
        value = getattr(event, attr, None)
        if value is not None:
            return float(value)
    return 0.0


def summarize_events(events, chunks: int, device: bool) -> dict:
    """Per-chunk figures from profiler key averages: (name, self time µs, count) by kind, and the launches.

    `events`: objects with `key`, `count`, `device_type` and self-time attributes (torch.profiler's
    key_averages()); on a device only the device's own events (kernels, memcpy, memset) are counted."""
    import torch

    by_kind = {k: 0.0 for k in KINDS}
    launches = 0
    names = {}
    for e in events:
        if getattr(e, "is_user_annotation", False):
            continue  # ranges (a compiled region, a graph replay) mirrored on the GPU timeline: their kernels count
        on_device = getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        if device != on_device:
            continue
        if not device and not e.key.startswith("aten::"):
            continue  # a CPU profile: aten ops only (not the Python-level ranges around them)
        us = _self_time_us(e, device)
        if not device and us <= 0 and e.count == 0:
            continue
        kind = classify_kernel(e.key)
        by_kind[kind] += us
        if device or e.key not in _NO_LAUNCH:
            launches += e.count
        entry = names.setdefault(e.key, [kind, 0.0, 0])
        entry[1] += us
        entry[2] += e.count
    total = sum(by_kind.values())
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:25]
    return {
        "ms_per_chunk": {k: v / 1000 / chunks for k, v in by_kind.items()},
        "percent": {k: (100.0 * v / total if total else 0.0) for k, v in by_kind.items()},
        "total_ms_per_chunk": total / 1000 / chunks,
        "launches_per_chunk": launches / chunks,
        "top": [{"name": name[:160], "kind": kind, "ms_per_chunk": us / 1000 / chunks, "calls_per_chunk": count / chunks}
                for name, (kind, us, count) in top],
    }


def profile(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from memflow_cli.render.bench import _random_dit, random_decoder
    from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
    from memflow_cli.model.dit import DiTConfig, attention_backend
    from memflow_cli.render.job import DTYPES, synchronize

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    width, height = (int(v) for v in args.resolution.lower().split("x"))
    config = DiTConfig.preset(args.preset)
    model = _random_dit(config, device, dtype, 0)
    if args.compile:
        from memflow_cli.engine.compiled import compile_blocks

        compile_blocks(model)
    vae = random_decoder(args.vae, device, dtype, 0, args.vae_dim)
    total = args.warmup + args.chunks
    gen = StreamingGenerator(model, StreamSettings(), num_latent_frames=3 * total, latent_height=height // 8,
                             latent_width=width // 8, seed=0, device=device, dtype=dtype)
    gen.set_conditioning(torch.randn(64, config.text_dim, generator=torch.Generator().manual_seed(0)))
    decoder = vae.stream_decoder()

    def chunk():
        decoder.decode(gen.next_chunk())

    t0 = time.perf_counter()
    for i in range(args.warmup):
        chunk()
        print(f"profile warm-up: chunk {i + 1}/{args.warmup}", file=sys.stderr, flush=True)
    synchronize(device)
    warm = time.perf_counter() - t0
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    t0 = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for _ in range(args.chunks):
            chunk()
        synchronize(device)
    profiled = time.perf_counter() - t0
    print(f"profile: {args.chunks} chunk(s) profiled in {profiled:.1f} s", file=sys.stderr, flush=True)
    figures = summarize_events(prof.key_averages(), args.chunks, on_device)
    return {
        "format": "memflow-kernel-profile/1",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(device) if on_device else "cpu",
        "torch": torch.__version__,
        "attention": attention_backend(device, dtype),
        "options": {"preset": args.preset, "width": width, "height": height, "dtype": args.dtype, "vae": args.vae,
                    "vae_dim": args.vae_dim, "warmup": args.warmup, "chunks": args.chunks, "compile": args.compile,
                    "device": args.device},
        "what": "self GPU time of the kernels, kernel launches" if on_device
        else "self CPU time of the aten ops; aten ops called, views and allocations left out, composite ops counted"
             " with their parts (a CPU runs no kernels)",
        "warmup_seconds": warm,
        "profiled_seconds": profiled,
        "profile": figures,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--resolution", default="832x480")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--vae", default="wan")
    parser.add_argument("--vae-dim", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=8, help="chunks streamed before the profile (steady from 7)")
    parser.add_argument("--chunks", type=int, default=3, help="chunks profiled")
    parser.add_argument("--compile", action="store_true", help="the DiT's block compiled (compiled.py)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.warmup < 0:
        parser.error("--chunks must be at least 1 and --warmup at least 0")
    report = profile(args)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
