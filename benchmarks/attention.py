"""Attention kernels side by side at the DiT's steady self-attention shape (issue 25).

A steady chunk at 832x480 attends 4680 queries (3 latent frames × 1560 tokens) to 23,400 keys (15 frames: sink 3
+ bank 3 + local 9), 12 heads of 128, bf16. This times every kernel that is importable here at exactly that shape
and measures each one's error against a float32 reference on a slice of the queries:

  sdpa-cudnn, sdpa-flash, sdpa-efficient   torch's SDPA with one backend forced (CUDA)
  flash-attn-3                             flash_attn_interface.flash_attn_func (Hopper wheels)
  flash-attn-2                             flash_attn.flash_attn_func
  sage                                     sageattention.sageattn (8-bit QK: approximate)
  sdpa                                     torch's SDPA, its own choice (every device; the CPU dry run's only one)

It prints one JSON object: per kernel ms per call, TFLOP/s (4·B·H·Lq·Lk·D per call), rel-L2 against the float32
reference, and why a kernel did not run. Which kernel may become the default is the rule of issue 25: only one
within the bf16 golden tolerance on every case; an approximate one (sage) would be opt-in with its error printed.
`--tiny` runs a small shape (the CPU dry run of device-check.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

STEADY = {"batch": 1, "queries": 4680, "keys": 23400, "heads": 12, "head_dim": 128}
TINY = {"batch": 1, "queries": 96, "keys": 480, "heads": 2, "head_dim": 128}
REFERENCE_QUERIES = 512  # the float32 reference on a slice of the queries (its memory stays small)


def _sdpa_with(backend_name: str):
    """SDPA with one backend forced; [B, L, H, D] in and out, like the DiT's `attention`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    return run


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def candidates(device: torch.device) -> dict:
    """name -> callable(q, k, v) or the reason it cannot run here."""
    found: dict = {"sdpa": _sdpa}
    if device.type == "cuda":
        for name, backend in (("sdpa-cudnn", "CUDNN_ATTENTION"), ("sdpa-flash", "FLASH_ATTENTION"),
                              ("sdpa-efficient", "EFFICIENT_ATTENTION")):
            found[name] = _sdpa_with(backend)
    else:
        for name in ("sdpa-cudnn", "sdpa-flash", "sdpa-efficient"):
            found[name] = "CUDA only"
    try:
        from flash_attn_interface import flash_attn_func as fa3  # type: ignore

        found["flash-attn-3"] = lambda q, k, v: (lambda out: out[0] if isinstance(out, tuple) else out)(fa3(q, k, v))
    except ImportError as exc:
        found["flash-attn-3"] = f"not installed ({exc.name})"
    try:
        from flash_attn import flash_attn_func as fa2  # type: ignore

        found["flash-attn-2"] = fa2
    except ImportError as exc:
        found["flash-attn-2"] = f"not installed ({exc.name})"
    try:
        from sageattention import sageattn  # type: ignore

        found["sage"] = lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")
    except ImportError as exc:
        found["sage"] = f"not installed ({exc.name})"
    return found


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_kernel(fn, q, k, v, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Mean seconds per call (CUDA events on a GPU, the wall clock on a CPU)."""
    for _ in range(warmup):
        fn(q, k, v)
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn(q, k, v)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(q, k, v)
    return (time.perf_counter() - t0) / repeats


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def run(shape: dict, device: torch.device, dtype: torch.dtype, repeats: int, seed: int = 0) -> dict:
    b, lq, lk, h, d = shape["batch"], shape["queries"], shape["keys"], shape["heads"], shape["head_dim"]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=gen).to(device, dtype)
    k = torch.randn(b, lk, h, d, generator=gen).to(device, dtype)
    v = torch.randn(b, lk, h, d, generator=gen).to(device, dtype)
    part = min(REFERENCE_QUERIES, lq)
    reference = _sdpa(q[:, :part].float(), k.float(), v.float())  # float32 math on the same bf16 inputs
    flops = 4.0 * b * h * lq * lk * d
    kernels = {}
    for name, fn in candidates(device).items():
        if isinstance(fn, str):
            kernels[name] = {"ran": False, "reason": fn}
            continue
        try:
            out = fn(q, k, v)
            error = rel_l2(out[:, :part].float(), reference)
            seconds = time_kernel(fn, q, k, v, device, repeats)
        except Exception as exc:  # noqa: BLE001 — a kernel that refuses this shape or device is a finding
            kernels[name] = {"ran": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        kernels[name] = {"ran": True, "ms": round(seconds * 1000, 4), "tflops": round(flops / seconds / 1e12, 2),
                         "rel_l2_vs_fp32": error}
    ran = {n: r for n, r in kernels.items() if r["ran"]}
    fastest = min(ran, key=lambda n: ran[n]["ms"]) if ran else None
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "shape": shape,
            "reference": f"float32 SDPA on the first {part} queries", "kernels": kernels, "fastest": fastest,
            "per_steady_chunk_ms": {n: round(r["ms"] * 150, 1) for n, r in ran.items()}}  # 5 passes × 30 layers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bf16 (default on CUDA) or fp32 (default on the CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="a small shape (the CPU dry run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    shape = TINY if args.tiny else STEADY
    repeats = args.repeats or (20 if device.type == "cuda" else 2)
    json.dump(run(shape, device, dtype, repeats), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
