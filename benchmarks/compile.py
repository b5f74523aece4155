"""Eager against `--compile` on this machine, side by side in one run: DiT ms per steady-state chunk.

    PYTHONPATH=src python benchmarks/compile.py                      # both configurations below
    PYTHONPATH=src python benchmarks/compile.py --config tiny --chunks 12 --save benchmarks/results

For each configuration one model streams two videos at once, chunk by chunk in turns: one with the eager
block, one with the compiled block (the same weights, the same seed). A slow moment of a shared machine
hits both alike. Chunks 0-6 fill the caches (the warm-up: both eager); from chunk 7 on the key set is the
whole buffer and the compiled one runs its graph. The first compiled chunk holds the compilation: it is
reported apart, and the steady-state figure is the median of the chunks after it.

Configurations: the golden `tiny` DiT (dim 256, 2 layers, 2 heads of 128) at the real 832x480 geometry
(60x104 latents, 1560 tokens a frame), and a mid-size DiT (dim 512, 8 layers, 4 heads of 128, FFN 2048) at
416x240 (30x52 latents; at 60x104 its attention alone would take minutes per chunk on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from memflow_cli.engine.compiled import compile_blocks
from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
from memflow_cli.model.dit import DiTConfig, build_dit

CONFIGS = {
    "tiny": (DiTConfig.preset("tiny"), 60, 104),
    "mid": (DiTConfig(dim=512, ffn_dim=2048, text_dim=64, num_heads=4, num_layers=8), 30, 52),
}


def random_model(config: DiTConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_dit(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) else p.normal_(0, 0.02)
    return model


def measure(name: str, chunks: int, mode: str | None) -> dict:
    config, h, w = CONFIGS[name]
    model = random_model(config)
    stats = compile_blocks(model, mode=mode)
    compiled_block = model.compiled_block
    prompt = torch.randn(32, config.text_dim, generator=torch.Generator().manual_seed(1))
    gens = {}
    for kind in ("eager", "compiled"):
        gens[kind] = StreamingGenerator(model, StreamSettings(), num_latent_frames=3 * chunks, latent_height=h,
                                        latent_width=w, seed=0)
        gens[kind].set_conditioning(prompt)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    compile_chunk = None
    for chunk in range(chunks):
        for kind, gen in gens.items():
            model.compiled_block = compiled_block if kind == "compiled" else None
            before = stats.compilations
            t0 = time.perf_counter()
            latents = gen.next_chunk()
            elapsed = time.perf_counter() - t0
            times[kind].append(elapsed)
            if kind == "compiled" and stats.compilations != before:
                compile_chunk = chunk
            print(f"{name} chunk {chunk} {kind}: {1000 * elapsed:.0f} ms", file=sys.stderr, flush=True)
        if chunk == chunks - 1:
            difference = (latents - gens["eager"].latents[-1]).norm() / gens["eager"].latents[-1].norm()
    first_steady = 7
    steady = range(first_steady + 1, chunks)  # after the chunk that compiled
    eager_ms = 1000 * statistics.median(times["eager"][i] for i in steady)
    compiled_ms = 1000 * statistics.median(times["compiled"][i] for i in steady)
    return {
        "config": {"dim": config.dim, "layers": config.num_layers, "heads": config.num_heads, "ffn_dim": config.ffn_dim,
                   "latent": f"{h}x{w}", "resolution": f"{8 * w}x{8 * h}", "frame_tokens": config.frame_tokens(h, w)},
        "chunks": chunks,
        "steady_chunks_measured": len(steady),
        "eager_ms_per_chunk": round(eager_ms, 1),
        "compiled_ms_per_chunk": round(compiled_ms, 1),
        "speedup": round(eager_ms / compiled_ms, 3),
        "compile_chunk": compile_chunk,
        "compile_seconds": round(stats.compile_seconds, 2),
        "first_compiled_chunk_ms": round(1000 * times["compiled"][first_steady], 1),
        "warmup_eager_ms_per_chunk": round(1000 * statistics.median(times["eager"][1:first_steady]), 1),
        "compilations": stats.compilations,
        "fallback": stats.fallback,
        "last_chunk_rel_difference": float(difference),
        "ms_per_chunk": {k: [round(1000 * v, 1) for v in vs] for k, vs in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), action="append", help="default: all")
    parser.add_argument("--chunks", type=int, default=11, help="chunks per stream (at least 9: 7 warm-up, 1 compiling, 1 measured)")
    parser.add_argument("--mode", default=None, help="torch.compile mode (default: compiled.default_mode)")
    parser.add_argument("--save", type=Path, help="write the JSON report into this folder")
    args = parser.parse_args()
    if args.chunks < 9:
        parser.error("--chunks: at least 9")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": {name: measure(name, args.chunks, args.mode) for name in (args.config or list(CONFIGS))},
    }
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        path = args.save / f"{report['date']}-compile-cpu.json"
        path.write_text(text + "\n")
        print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
