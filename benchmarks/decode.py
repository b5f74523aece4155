"""Wan VAE decode time per chunk, steady state (chunk 2 on), for comparing two versions of model/vae.py.

Same random weights (seeded) and the same latents whatever the code, so two checkouts compare directly:

    PYTHONPATH=/path/to/old/src python benchmarks/decode.py --label before --out /tmp/before.json
    PYTHONPATH=src              python benchmarks/decode.py --label after  --out /tmp/after.json --against /tmp/before.json

With --count WxH it also counts the decoder's working set of one steady chunk at that size (the real-size
network on the meta device, the tensors alive added up by memory_plan.LiveBytes, taken from this checkout so
that an older version is counted the same way): the memory side of the same changes.

Reports the median and minimum wall ms of the steady chunks' decode calls and their process CPU time (on a
shared machine, with one thread, the CPU time is the steadier figure) and, with --against, the ratio to the other run and the largest difference between their
pixels (same inputs: the outputs must agree to float rounding).
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from memflow_cli.model.vae import VAEConfig, WanVAE


def build(dim: int, device: str, dtype: torch.dtype) -> WanVAE:
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig(dim=dim))
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else p.numel()
            p.copy_(torch.randn(p.shape) * (1.0 / fan_in) ** 0.5 if p.dim() > 1 else 1 + 0.1 * torch.randn(p.shape))
    vae = vae.to(device, dtype).eval()
    return vae.use_device_layout() if hasattr(vae, "use_device_layout") else vae


def counted_working_set(dim: int, width: int, height: int, dtype: torch.dtype, latents: int) -> int:
    """Peak bytes alive during a steady chunk's decode + uint8 conversion, above what was alive before."""
    from memflow_cli.model.vae import pixels_to_uint8

    path = Path(__file__).resolve().parents[1] / "src" / "memflow_cli" / "memory_plan.py"
    spec = importlib.util.spec_from_file_location("_plan_of_this_checkout", path)
    plan = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    with torch.device("meta"), torch.no_grad():
        stream = WanVAE(VAEConfig(dim=dim)).to(dtype).stream_decoder()
        z = torch.empty(1, 2 * latents, 16, height // 8, width // 8)
        stream.decode(z[:, :latents])
        with plan.LiveBytes() as counter:
            before = counter.live
            pixels_to_uint8(stream.decode(z[:, latents:]))
    return counter.peak - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", default="128x80", help="WxH of the video (multiples of 16)")
    p.add_argument("--dim", type=int, default=96, help="VAE base width: 96 = the Wan VAE, 24 = lightvae-sized")
    p.add_argument("--chunks", type=int, default=4, help="chunks of --latents latent frames; the first is not timed")
    p.add_argument("--latents", type=int, default=3, help="latent frames per chunk (the renderer's 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="run")
    p.add_argument("--out", type=Path)
    p.add_argument("--against", type=Path, help="an earlier run's --out file: print the ratio")
    p.add_argument("--count", metavar="WxH", help="also count the working set of a steady chunk at this size")
    p.add_argument("--count-dtype", default="bfloat16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.resolution.split("x"))
    dtype = getattr(torch, args.dtype)
    vae = build(args.dim, args.device, dtype)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, args.chunks * args.latents, 16, h // 8, w // 8, generator=gen)
    stream = vae.stream_decoder()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times, cpu, outs = [], [], []
    for c in range(args.chunks):
        z = latents[:, c * args.latents:(c + 1) * args.latents].to(args.device)
        sync()
        t, c0 = time.perf_counter(), time.process_time()
        out = stream.decode(z)
        sync()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        outs.append(out.cpu())
    steady = times[1:] or times
    steady_cpu = cpu[1:] or cpu
    pixels = torch.cat(outs, 1)
    report = {"label": args.label, "device": args.device, "dtype": args.dtype, "threads": args.threads,
              "resolution": args.resolution, "dim": args.dim, "latents_per_chunk": args.latents,
              "ms_per_chunk": times, "steady_median_ms": statistics.median(steady), "steady_min_ms": min(steady),
              "cpu_ms_per_chunk": cpu, "steady_median_cpu_ms": statistics.median(steady_cpu),
              "frames_per_chunk": 4 * args.latents, "torch": torch.__version__}
    print(f"{args.label}: {args.device} {args.dtype} {args.resolution} dim {args.dim}, {args.threads} thread(s): "
          f"steady chunk median {report['steady_median_ms']:.0f} ms, min {report['steady_min_ms']:.0f} ms "
          f"(chunks: {', '.join(f'{v:.0f}' for v in times)}); process CPU time median {report['steady_median_cpu_ms']:.0f} ms")
    if args.count:
        cw, ch = (int(v) for v in args.count.split("x"))
        work = counted_working_set(args.dim, cw, ch, getattr(torch, args.count_dtype), args.latents)
        report["counted_working_set"] = {"resolution": args.count, "dtype": args.count_dtype, "bytes": work}
        print(f"{args.label}: working set of a steady chunk at {args.count} {args.count_dtype}: {work / 2**30:.2f} GiB")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        torch.save(pixels, args.out.with_suffix(".pixels.pt"))
    if args.against:
        other = json.loads(args.against.read_text())
        ratio = other["steady_median_ms"] / report["steady_median_ms"]
        if "counted_working_set" in other and "counted_working_set" in report:
            print(f"working set {other['label']} / {args.label}: "
                  f"{other['counted_working_set']['bytes'] / report['counted_working_set']['bytes']:.2f}x")
        diff = (torch.load(args.against.with_suffix(".pixels.pt")) - pixels).abs().max().item()
        print(f"{other['label']} / {args.label}: {ratio:.2f}x (median), "
              f"{other['steady_min_ms'] / report['steady_min_ms']:.2f}x (min), "
              f"{other['steady_median_cpu_ms'] / report['steady_median_cpu_ms']:.2f}x (process CPU time); "
              f"max |pixel difference| {diff:.2e}")


if __name__ == "__main__":
    main()
