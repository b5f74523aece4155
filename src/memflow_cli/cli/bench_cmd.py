"""`memflow bench`: the stream timed stage by stage with random weights (render/bench.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from memflow_cli.errors import InputError
from memflow_cli.cli.app import (_Command, _errors, app, DTYPE_HELP, err, out, parse_compile_mode,
                                parse_quantization_option, parse_resolution)


@app.command(cls=_Command)
@_errors
def bench(
    preset: str = typer.Option("wan2.1-t2v-1.3b", help="DiT size: wan2.1-t2v-1.3b (full) or tiny (CPU smoke run)."),
    resolution: str = typer.Option("832x480", "--resolution", help="WIDTHxHEIGHT, multiples of 16."),
    chunks: int = typer.Option(20, min=2, help="Chunks to stream (12 video frames each after the first)."),
    steps: int = typer.Option(4, min=1, help="Denoising steps per chunk."),
    switch_every: int = typer.Option(10, min=0, help="Chunks between prompt switches (each runs a KV re-cache); 0 = none."),
    sma: bool = typer.Option(False, "--sma/--no-sma", help="Sparse memory activation."),
    vae_dim: int = typer.Option(96, help="VAE width: 96 is the real Wan2.1 VAE; smaller for CPU smoke runs."),
    no_video: bool = typer.Option(False, "--no-video", help="Skip the H.264 encode stage."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the comparison run without the memory bank."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON report into this folder (e.g. benchmarks/results)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    video: bool = typer.Option(False, "--video", help="Video-to-video: also time reading and VAE-encoding an input clip per chunk."),
    strength: float = typer.Option(0.7, "--strength", help="With --video: the strength (fewer denoising steps below 1)."),
    vae: str = typer.Option("wan", "--vae", help="Decoder to time: wan, lightvae, tae or lighttae."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the DiT's block (warm-up and compile timed apart)."),
    compile_mode: Optional[str] = typer.Option(None, "--compile-mode", help="With --compile: a torch.compile mode (default: reduce-overhead on CUDA)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="fp8: fp8 DiT weights."),
    overlap: bool = typer.Option(True, "--overlap/--no-overlap", help="Decode and write while the next chunk generates (as renders do)."),
    compare_schedules: bool = typer.Option(True, "--compare-schedules/--no-compare-schedules", help="Also a short run in the other schedule: DiT ms with the decoder beside it and alone."),
):
    """Measure speed stage by stage with random full-size weights (nothing to download).

    On a CPU, use --preset tiny --resolution 64x64 --vae-dim 8: the full-size model takes minutes per chunk."""
    from memflow_cli.engine.decoders import decoder_spec

    from memflow_cli.render.bench import BenchOptions, report_table, run_bench, save_report
    from memflow_cli.render.progress import BenchProgress
    from memflow_cli.render import DTYPES

    width, height = parse_resolution(resolution)
    defaults = BenchOptions()
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of bf16, fp16, fp32, got {dtype!r}")
    opts = BenchOptions(preset=preset, width=width, height=height, chunks=chunks, steps=steps, switch_every=switch_every,
                        sma=sma, vae_dim=vae_dim, encode_video=not no_video, compare_without_memory=not no_baseline,
                        device=device or defaults.device, dtype=dtype or defaults.dtype, video=video,
                        strength=strength, vae=decoder_spec(vae).kind, compile=compile or compile_mode is not None,
                        compile_mode=parse_compile_mode(compile_mode), quantization=parse_quantization_option(quantization),
                        overlap=overlap, compare_schedules=compare_schedules)
    if video:
        from memflow_cli.inputs.v2v import check_strength

        check_strength(strength)
    try:
        with BenchProgress(err, quiet=as_json and not err.is_terminal) as progress:
            report = run_bench(opts, progress=progress, announce=lambda line: err.print(line, highlight=False, soft_wrap=True))
    except (KeyError, ValueError) as exc:
        raise InputError(f"bench: {exc}") from None
    if save is not None:
        err.print(f"saved {save_report(report, save, ' '.join(['memflow', *sys.argv[1:]]))}")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out.print(report_table(report))
