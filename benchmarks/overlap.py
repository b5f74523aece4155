"""Serial against overlapped decode + write, end to end, side by side in one process (random weights).

    PYTHONPATH=src python benchmarks/overlap.py --preset tiny --resolution 256x256 --vae-dim 16 --chunks 10 \
        --rounds 3 --threads 1

Builds one DiT and one VAE, then streams the same chunks `rounds` times in each mode, alternating serial and
overlapped runs (`memflow bench`'s loop, `BenchOptions.overlap`), so that drift in the machine's load hits
both alike. Reports each mode's median end-to-end FPS, the ratio, and the stage figures; writes
results/<date>-overlap-<device>.json with the machine's load (`uptime`) before and after. Absolute CPU figures
are noise on a shared machine; the ratio of interleaved runs is the figure.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from memflow_cli import __version__
from memflow_cli.render.bench import BenchOptions, _random_dit, _run, random_decoder
from memflow_cli.model.dit import DiTConfig
from memflow_cli.render.job import DTYPES


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--resolution", default="256x256")
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--vae", default="wan")
    p.add_argument("--vae-dim", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.resolution.split("x"))
    opts = BenchOptions(preset=args.preset, width=w, height=h, chunks=args.chunks, steps=args.steps,
                        switch_every=0, vae=args.vae, vae_dim=args.vae_dim, device=args.device, dtype=args.dtype,
                        compare_without_memory=False)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = _random_dit(DiTConfig.preset(args.preset), device, dtype, opts.seed)
    vae = random_decoder(opts.vae, device, dtype, opts.seed, opts.vae_dim)
    load_before = uptime()
    for overlap in (False, True):  # warm-up: kernels, allocator pools, ffmpeg start-up
        _run(replace(opts, chunks=2, overlap=overlap), model, vae, bank=True)
    runs: dict[str, list[dict]] = {"serial": [], "overlap": []}
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)  # alternate who goes first
        for overlap in order:
            cpu = time.process_time()
            result = _run(replace(opts, overlap=overlap), model, vae, bank=True)
            result["cpu_seconds"] = time.process_time() - cpu  # this process, all its threads (not ffmpeg)
            runs["overlap" if overlap else "serial"].append(result)
            print(f"round {r + 1} {'overlap' if overlap else 'serial ':7}: {result['end_to_end_fps']:.2f} FPS end to end, "
                  f"{result['seconds_total']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU", flush=True)
    load_after = uptime()

    def summary(results: list[dict]) -> dict:
        stages = results[0]["per_chunk_ms"].keys()
        return {
            "end_to_end_fps": [round(r["end_to_end_fps"], 3) for r in results],
            "end_to_end_fps_median": statistics.median(r["end_to_end_fps"] for r in results),
            "per_chunk_ms_median": {k: statistics.median(r["per_chunk_ms"][k] for r in results) for k in stages},
            "queue_wait_ms_per_chunk_median": statistics.median(r["queue_wait_ms_per_chunk"] for r in results),
            "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in results),
            "seconds_total_median": statistics.median(r["seconds_total"] for r in results),
        }

    serial, overlapped = summary(runs["serial"]), summary(runs["overlap"])
    ratio = overlapped["end_to_end_fps_median"] / serial["end_to_end_fps_median"]
    pairs = [o["end_to_end_fps"] / s["end_to_end_fps"] for s, o in zip(runs["serial"], runs["overlap"])]
    report = {
        "memflow_cli": __version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": load_after,
        "command": " ".join(["python", *sys.argv]),
        "options": asdict(opts),
        "rounds": args.rounds,
        "serial": serial,
        "overlap": overlapped,
        "ratio_of_medians": ratio,
        "ratio_per_round": [round(v, 3) for v in pairs],
        "runs": runs,
    }
    s, o = serial["per_chunk_ms_median"], overlapped["per_chunk_ms_median"]
    print(f"| mode | e2e FPS (median of {args.rounds}) | wall s | CPU s | DiT ms/chunk | VAE ms/chunk | write ms/chunk "
          "| queue wait ms/chunk |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m, st in (("serial", serial, s), ("overlap", overlapped, o)):
        wait = f"{m['queue_wait_ms_per_chunk_median']:.0f}" if name == "overlap" else "–"
        print(f"| {name} | {m['end_to_end_fps_median']:.2f} | {m['seconds_total_median']:.1f} | {m['cpu_seconds_median']:.1f} "
              f"| {st['dit']:.0f} | {st['vae']:.0f} | {st['encode']:.0f} | {wait} |")
    print(f"overlap / serial: {ratio:.2f}x (per round: {', '.join(f'{v:.2f}' for v in pairs)}); "
          f"torch threads {torch.get_num_threads()} of {os.cpu_count()} CPUs; load {load_before.split('load average: ')[-1]}"
          f" → {load_after.split('load average: ')[-1]}")
    if not args.no_save:
        tag = f"{args.device}-{args.threads or 'default'}threads-{args.steps}steps-vae{args.vae_dim}"
        out = Path(__file__).parent / "results" / f"{report['date']}-overlap-{tag}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written {out}")


if __name__ == "__main__":
    main()
