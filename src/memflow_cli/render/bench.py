"""`memflow bench`: how fast the whole stream runs, stage by stage, with random weights (no download).

It builds the model at full size (or a small preset for CPU smoke runs), streams N chunks with a prompt
switch every few chunks, decodes every chunk with the streaming VAE, encodes the frames to an H.264 file
in a temporary folder, and reports per stage the time per chunk, generation and end-to-end FPS, time to
first frame and peak memory. The same run without the memory bank measures what the memory costs.

With `video=True` (`memflow bench --video`) it streams video-to-video instead: an input clip made by
ffmpeg's test source is read chunk by chunk (stage `read`: decode, resample, fit), encoded by the
streaming VAE encoder (stage `vae_encode`) and denoised from the given strength.

With overlap (the default, as in renders) the VAE decode and the H.264 write run on a worker thread (on CUDA
a second stream) while the next chunk generates: the loop's stages are timed with CUDA events on its stream,
decode and write by the stage itself, and `queue_wait_ms_per_chunk` says how long the loop waited for them.
With `overlap=False` (`--no-overlap`) the stages run one after the other, each boundary synchronising the
device: the only place the project synchronises on purpose, and it costs little next to a DiT pass.
"""

from __future__ import annotations

import gc
import json
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from memflow_cli import __version__
from memflow_cli.engine.decode_stage import DecodeStage, StreamLaps
from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
from memflow_cli.model.dit import DiTConfig, attention_backend, build_dit
from memflow_cli.model.vae import VAEConfig, WanVAE
from memflow_cli.render.job import DTYPES, synchronize



@dataclass(frozen=True)
class BenchOptions:
    preset: str = "wan2.1-t2v-1.3b"
    width: int = 832
    height: int = 480
    chunks: int = 20
    steps: int = 4
    switch_every: int = 10  # chunks between prompt switches (0: never); each switch runs a re-cache
    sma: bool = False
    vae_dim: int = 96  # 96 = the real Wan2.1 VAE; smaller for CPU smoke runs
    encode_video: bool = True
    compare_without_memory: bool = True
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "bf16" if torch.cuda.is_available() else "fp32"  # --dtype spellings (float32 etc. accepted too)
    seed: int = 0
    video: bool = False  # video-to-video: read + VAE-encode an input clip per chunk
    strength: float = 0.7
    vae: str = "wan"  # decoder choice (decoders.py); `vae_dim` scales the Wan-family ones
    compile: bool = False  # torch.compile the DiT's block (compiled.py); warm-up and compile timed apart
    compile_mode: str | None = None  # None: reduce-overhead (CUDA graphs) on CUDA, default elsewhere
    quantization: str | None = None  # "fp8": fp8 DiT weights (quantization.py)
    overlap: bool = True  # decode + write on a worker thread (CUDA: a second stream) while the next chunk generates
    compare_schedules: bool = True  # also a short run in the other schedule: DiT ms beside the decoder and alone


def _random_dit(config: DiTConfig, device, dtype, seed: int, progress: "Progress | None" = None):
    model = build_dit(config, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    params = list(model.named_parameters())
    with torch.no_grad():
        for i, (name, p) in enumerate(params):
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or name.endswith("norm3.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
            if progress is not None:
                progress("random weights", i + 1, len(params))
    return model


def dit_parameter_count(config: DiTConfig) -> int:
    """Parameters of the DiT a config describes (counted on the meta device: nothing is allocated)."""
    from memflow_cli.model.dit import CausalDiT

    with torch.device("meta"):
        return sum(p.numel() for p in CausalDiT(config).parameters())


def describe_build(opts: BenchOptions) -> list[str]:
    """What the bench is about to build and stream, said before it starts (it can take minutes on a CPU)."""
    config = DiTConfig.preset(opts.preset)
    params = dit_parameter_count(config)
    count = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"
    extras = "".join(f", {x}" for x in (opts.quantization and f"--quantization {opts.quantization}",
                                        opts.compile and "--compile") if x)
    lines = [f"bench: building the DiT '{opts.preset}' ({count} parameters, {opts.dtype}{extras}) and the "
             f"'{opts.vae}' decoder" + (f" (width {opts.vae_dim})" if opts.vae in ("wan", "lightvae") else "")
             + f" with random weights on {opts.device}; then {opts.chunks} chunks at {opts.width}x{opts.height},"
             f" {opts.steps} steps" + (", with and without the memory bank" if opts.compare_without_memory else "")]
    if torch.device(opts.device).type == "cpu" and opts.preset != "tiny":
        lines.append("bench: on a CPU the full-size model takes minutes per chunk; for a quick run use "
                     "--preset tiny --resolution 64x64 --vae-dim 8 (its figures say nothing about a GPU)")
    return lines


def random_decoder(kind: str, device, dtype, seed: int = 0, vae_dim: int = 96, encoder: bool = False):
    """A `--vae` choice at its real size (Wan family: `vae_dim` wide) with random weights (decoder only unless `encoder`).

    lightvae keeps a quarter of every Wan width (the released file prunes 75 % of the channels).
    """
    from memflow_cli.engine.decoders import DECODERS, TinyVideoAutoencoder, WanVideoAutoencoder, decoder_spec
    from memflow_cli.model.tae import TAEConfig
    from memflow_cli.model.tae import TinyAutoencoder as TAEModule

    spec = decoder_spec(kind)
    torch.manual_seed(seed)
    if spec.family == "tae":
        with torch.device(device):
            module = TAEModule(TAEConfig(has_encoder=encoder))
        return TinyVideoAutoencoder(DECODERS[spec.kind], module.to(dtype).eval().requires_grad_(False))
    cfg = replace(VAEConfig(), dim=vae_dim, has_encoder=encoder)
    if spec.kind == "lightvae":
        cfg = replace(cfg, decoder_dims=tuple(max(1, w // 4) for w in cfg.decoder_widths()))
    with torch.device(device):
        module = WanVAE(cfg)
    return WanVideoAutoencoder(DECODERS[spec.kind], module.to(dtype).eval().requires_grad_(False))


# progress(run, chunks_done, chunks_total): called after each chunk, outside the timed stages
Progress = Callable[[str, int, int], None]


@dataclass
class _BenchChunk:
    """What the chunk loop reads of a chunk: the bench's own schedule (a prompt switch every few chunks)."""

    index: int
    changed: bool
    conditioning: int  # which of the two random prompts
    frames: int | None = None  # keep every decoded frame


def bench_chunks(chunks: int, switch_every: int) -> list[_BenchChunk]:
    """The first prompt is set before the loop (its first pass is part of chunk 0, as in a render)."""
    return [_BenchChunk(i, bool(i and switch_every and i % switch_every == 0),
                        (i // switch_every) % 2 if switch_every else 0) for i in range(chunks)]


@dataclass
class _SourceChunk:
    latents: torch.Tensor
    strength: float


def _run(opts: BenchOptions, model, vae, bank: bool, progress: Progress | None = None, label: str = "") -> dict:
    """One timed stream: the render's own chunk loop (render/chunk_loop.py) with timers around it."""
    from memflow_cli.engine.decode_stage import SerialSchedule
    from memflow_cli.render.chunk_loop import ChunkLoop

    device = torch.device(opts.device)
    dtype = DTYPES[opts.dtype]
    gc.collect()  # the previous run's generator (its KV cache and bank) is gone before this one is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
    h, w = opts.height // 8, opts.width // 8
    settings = StreamSettings(
        # Evenly spaced steps: (1000, 750, 500, 250) for the released 4-step model.
        denoising_steps=tuple(int(1000 - i * 1000 / opts.steps) for i in range(opts.steps)),
        sma=opts.sma,
        bank_size=StreamSettings().bank_size if bank else 0,
    )
    gen = StreamingGenerator(model, settings, num_latent_frames=3 * opts.chunks, latent_height=h, latent_width=w,
                             seed=opts.seed, device=device, dtype=dtype)
    prompts = [torch.randn(64, model.config.text_dim, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    stages = {"dit": [], "recache": [], "vae": [], "encode": []}
    counts = {"frames": 0, "first": None}

    with tempfile.TemporaryDirectory() as tmp:
        laps = StreamLaps(device)
        inputs = None
        if opts.video:
            stages.update(read=[], vae_encode=[])
            inputs = _source_chunks(opts, Path(tmp), vae.stream_encoder(), laps, device, dtype)
        writer = None
        if opts.encode_video:
            from memflow_cli.render.video import VideoWriter

            writer = VideoWriter(Path(tmp) / "bench.mp4", opts.width, opts.height, preset="veryfast")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        t0 = time.perf_counter()

        def written(item):
            stages["vae"].append(item.decode_s)
            stages["encode"].append(item.write_s)
            counts["frames"] += item.frames
            counts["first"] = counts["first"] or item.at

        def lap(stage: str, seconds: float) -> None:
            stages["dit" if stage == "generate" else stage].append(seconds)

        # The decode and the H.264 write run on the render's DecodeStage (a worker thread; on CUDA a second
        # stream): beside the next chunk with overlap, else the loop waits for each chunk (the DiT runs alone).
        stage = DecodeStage(vae.stream_decoder(), [writer.write] if writer is not None else [], device,
                            on_written=written)
        loop = ChunkLoop(gen, lambda which: prompts[which], stage, laps, inputs=inputs, recache_apart=True,
                         schedule=None if opts.overlap else SerialSchedule(), on_lap=lap)
        on_chunk = (lambda chunk: progress(label, chunk.index + 1, opts.chunks)) if progress is not None else None
        gen.set_conditioning(prompts[0])
        with stage:
            loop.run(bench_chunks(opts.chunks, opts.switch_every), on_chunk=on_chunk)
        if writer is not None:
            started = time.perf_counter()
            writer.finish()
            stages["encode"][-1] += time.perf_counter() - started
        total = time.perf_counter() - t0

    frames_out, first = counts["frames"], counts["first"]
    generation = sum(stages["dit"]) + sum(stages["recache"])
    steady = stages["dit"][len(stages["dit"]) // 2:] or stages["dit"]
    early = stages["dit"][1: 1 + max(1, len(steady))] or stages["dit"]
    return {
        "frames": frames_out,
        "chunks": opts.chunks,
        "seconds_total": total,
        "per_chunk_ms": {k: (1000 * statistics.mean(v) if v else 0.0) for k, v in stages.items()},
        "recaches": len(stages["recache"]),
        "generation_fps": frames_out / generation,
        "end_to_end_fps": frames_out / total,
        "time_to_first_frame_s": None if first is None else first - t0,
        # Flatness over length: steady-state chunks (second half) against early ones (after the first).
        "dit_ms_early": 1000 * statistics.mean(early),
        "dit_ms_late": 1000 * statistics.mean(steady),
        "dit_ms_per_chunk": [round(1000 * v, 3) for v in stages["dit"]],
        "peak_memory_gb": _peak_memory_gb(device),
        "overlap": opts.overlap,
        # the loop blocked on the decode/write stage (back-pressure, the final drain): which stage bounds
        "queue_wait_ms_per_chunk": 1000 * stage.waited / opts.chunks if opts.overlap else 0.0,
        "_first_frame_at": first,  # perf_counter (run_bench's)
    }


def _source_chunks(opts: BenchOptions, folder: Path, encoder, laps: StreamLaps, device, dtype):
    """Video-to-video: a test clip read (stage `read`) and VAE-encoded (stage `vae_encode`) chunk by chunk."""
    frames = _input_chunks(opts, folder, device, dtype)
    while True:
        laps.lap(None)  # the loop's own bookkeeping since its last lap is in no stage
        try:
            video = next(frames)
        except StopIteration:
            return
        laps.lap("read")
        latents = encoder.encode(video)
        laps.lap("vae_encode")
        yield _SourceChunk(latents, opts.strength)


def _input_chunks(opts: BenchOptions, folder: Path, device, dtype):
    """Frames of a test clip, chunk by chunk, as the encoder's input on the device."""
    import subprocess

    from memflow_cli.inputs.schedule import FIRST_CHUNK_FRAMES, CHUNK_FRAMES
    from memflow_cli.inputs.video_source import VideoSource, ffmpeg_exe, frames_to_video_tensor

    frames = FIRST_CHUNK_FRAMES + CHUNK_FRAMES * (opts.chunks - 1)
    clip = folder / "input.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size={opts.width}x{opts.height}:rate=24", "-t", f"{frames / 16 + 0.1:.3f}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True)
    for chunk in VideoSource(clip, opts.width, opts.height, frames=frames).chunks():
        yield frames_to_video_tensor(chunk, device=device).to(dtype)


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # CPU: the process's peak resident set (kilobytes on Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _rss_bytes() -> int | None:
    """This process's resident set now (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def planned_memory(opts: BenchOptions) -> dict:
    """The plan `memflow info` prints (memory_plan.py) for this bench: its generate phase (the bench never
    loads the text encoder), DiT and caches exact, activations and decoder estimated."""
    from memflow_cli.weights.memory_plan import plan_memory

    plan = plan_memory(opts.width, opts.height, dtype=DTYPES[opts.dtype], quantization=opts.quantization,
                       decoder=opts.vae, dit=DiTConfig.preset(opts.preset), overlap=opts.overlap)
    note = None
    if opts.vae in ("wan", "lightvae") and opts.vae_dim != VAEConfig().dim:
        note = f"the plan counts the real decoder; this bench's is {opts.vae_dim} wide"
    return {"planned_gb": plan.phase_bytes("generate") / 2**30, "plan_note": note}


def _memory_report(opts: BenchOptions, device: torch.device, runs: list[dict], rss_start, peak_rss_start) -> dict:
    """Planned against measured peak. CUDA: torch.cuda.max_memory_allocated over the timed runs. CPU: how far
    the process's peak resident set rose during the bench (None when an earlier peak of the process hides it)."""
    memory = planned_memory(opts)
    if device.type == "cuda":
        measured, how = max(r["peak_memory_gb"] for r in runs), "torch.cuda.max_memory_allocated (timed runs)"
    else:
        peak = _peak_rss_bytes()
        rose = rss_start is not None and peak > peak_rss_start
        measured = (peak - rss_start) / 2**30 if rose else None
        how = "process peak RSS minus RSS before the build (host memory: weights, Python, torch)" if rose else \
            "n/a (the process's earlier peak RSS hides the bench's)"
    memory.update(measured_gb=measured, measured_by=how,
                  # against the plan on a device only: host RSS is not what the plan counts
                  over_plan_percent=None if measured is None or device.type != "cuda" or not memory["planned_gb"]
                  else 100.0 * (measured - memory["planned_gb"]) / memory["planned_gb"])
    return memory


def _schedules(opts: BenchOptions, main: dict, other: dict) -> dict:
    """DiT ms per chunk with the decoder beside it (overlap) and alone (serial), over the same chunks."""
    runs = {("overlap" if opts.overlap else "serial"): main, ("serial" if opts.overlap else "overlap"): other}
    n = other["chunks"]
    first = n // 2 if n >= 4 else 1 if n > 1 else 0  # the second half (steady), as dit_ms_late
    out = {"chunks_compared": [first, n - 1]}
    for name, run in runs.items():
        out[f"dit_ms_{name}"] = statistics.mean(run["dit_ms_per_chunk"][first:n])
        out[f"decode_ms_{name}"] = run["per_chunk_ms"]["vae"]
        out[f"end_to_end_fps_{name}"] = run["end_to_end_fps"]
        out[f"chunks_{name}"] = run["chunks"]
    out["dit_slowdown_beside_decoder_percent"] = 100.0 * (out["dit_ms_overlap"] - out["dit_ms_serial"]) / out["dit_ms_serial"]
    return out


def run_bench(opts: BenchOptions, progress: Progress | None = None,
              announce: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark and return a JSON-ready report; `progress` hears about every chunk of every run (and
    the random weights as they are drawn), `announce` gets a line on what is built before it is built."""
    if opts.width % 16 or opts.height % 16:
        raise ValueError("width and height must be multiples of 16")
    device = torch.device(opts.device)
    dtype = DTYPES[opts.dtype]
    config = DiTConfig.preset(opts.preset)
    if announce is not None:
        for line in describe_build(opts):
            announce(line)
    rss_start, peak_rss_start = _rss_bytes(), _peak_rss_bytes()
    model = _random_dit(config, device, dtype, opts.seed, progress)
    if opts.quantization:
        from memflow_cli.model.quantization import describe_fp8_path, quantize_dit

        model = quantize_dit(model)
    stats = None
    if opts.compile:
        from memflow_cli.engine.compiled import compile_blocks

        stats = compile_blocks(model, mode=opts.compile_mode)
    vae = random_decoder(opts.vae, device, dtype, opts.seed, opts.vae_dim, encoder=opts.video)
    # Untimed streams first: kernels, allocator pools and ffmpeg start-up are paid here. With --compile,
    # each configuration streams into its steady state (chunk 7 on), where the block compiles.
    synchronize(device)
    loaded = time.perf_counter()
    warmup, first_frame_after_load = {}, None
    configurations = [("with_memory", True)] + ([("without_memory", False)] if opts.compare_without_memory else [])
    for name, bank in configurations if opts.compile else configurations[:1]:
        t0 = time.perf_counter()
        chunks = 9 if opts.compile else min(2, opts.chunks)
        cold = _run(replace(opts, chunks=chunks, switch_every=chunks - 1 if opts.compile else 1, encode_video=False),
                    model, vae, bank=bank, progress=progress, label="warm-up")
        warmup[name] = time.perf_counter() - t0
        if first_frame_after_load is None and cold["_first_frame_at"] is not None:
            first_frame_after_load = cold["_first_frame_at"] - loaded
    report = {
        "memflow_cli": __version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "attention": attention_backend(device, dtype),
        "date": time.strftime("%Y-%m-%d"),
        "options": asdict(opts),
        "warmup_seconds": {k: round(v, 3) for k, v in warmup.items()},
        # a render's wait for its first frame: models loaded -> the first chunk decoded, in the first (cold)
        # stream of the process (the warm-up, which writes no video; with --compile its first chunks are eager)
        "time_to_first_frame_after_load_s": first_frame_after_load,
    }
    if opts.quantization:
        report["fp8"] = describe_fp8_path(device)
    compiled_before = stats.to_dict() if stats is not None else None
    report["with_memory"] = _run(opts, model, vae, bank=True, progress=progress, label="with memory")
    if opts.compare_without_memory:
        report["without_memory"] = _run(opts, model, vae, bank=False, progress=progress, label="without memory")
        report.update(memory_cost(report["with_memory"]["dit_ms_per_chunk"],
                                  report["without_memory"]["dit_ms_per_chunk"]))
    if opts.compare_schedules:
        other = replace(opts, overlap=not opts.overlap, chunks=min(opts.chunks, 12))
        label = "serial" if opts.overlap else "overlap"
        report["other_schedule"] = _run(other, model, vae, bank=True, progress=progress, label=label)
        report["schedules"] = _schedules(opts, report["with_memory"], report["other_schedule"])
    timed = [report[k] for k in ("with_memory", "without_memory", "other_schedule") if k in report]
    for run in timed:
        run.pop("_first_frame_at", None)
    report["memory"] = _memory_report(opts, device, timed, rss_start, peak_rss_start)
    if stats is not None:
        after = stats.to_dict()
        report["compile"] = {**after, "compile_seconds_in_warmup": compiled_before["compile_seconds"],
                             # compilations during the timed runs: 0 when the steady state never recompiles
                             "compilations_in_timed_runs": after["compilations"] - compiled_before["compilations"]}
    return report


def memory_cost(with_memory_ms: list[float], without_memory_ms: list[float]) -> dict:
    """What the memory bank costs in DiT time, with its noise.

    The cost is the difference of the mean chunk times, in percent of the run without memory. Its noise
    is twice the standard error of that difference (from the spread of the chunk times of each run). A
    cost smaller than its noise is not a measured cost; neither is a negative one (the bank only adds
    work, so a "saving" is the machine's drift): both are reported as within noise.
    """
    def mean_and_se(values):
        mean = statistics.mean(values)
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("inf")
        return mean, se

    a, se_a = mean_and_se(with_memory_ms)
    b, se_b = mean_and_se(without_memory_ms)
    cost = 100.0 * (a - b) / b
    noise = 100.0 * 2 * (se_a**2 + se_b**2) ** 0.5 / b
    return {"memory_cost_percent": cost, "memory_cost_noise_percent": noise,
            "memory_cost_within_noise": bool(abs(cost) <= noise or cost < 0)}


def memory_cost_text(report: dict) -> str:
    """`memory bank costs +6.2 % ± 1.1 % of DiT time`, or `... within noise (-3.5 % ± 4.0 %)`."""
    what = "memory bank" + (" + SMA" if report["options"]["sma"] else "")
    cost, noise = report["memory_cost_percent"], report.get("memory_cost_noise_percent")
    if noise is None:  # a report saved before the noise was measured
        return f"{what} costs {cost:+.1f} % of DiT time"
    if report.get("memory_cost_within_noise"):
        return f"{what} cost is within noise ({cost:+.1f} % ± {noise:.1f} % of DiT time)"
    return f"{what} costs {cost:+.1f} % ± {noise:.1f} % of DiT time"


def report_table(report: dict):
    """A Rich table of the report (one column per run)."""
    from rich.table import Table

    runs = [k for k in ("with_memory", "without_memory") if k in report]
    o = report["options"]
    mode = f", video-to-video at strength {o['strength']}" if o.get("video") else ""
    extras = (", --compile" if o.get("compile") else "") + (f", --quantization {o['quantization']}" if o.get("quantization") else "")
    table = Table(title=f"memflow bench — {o['preset']} {o['width']}x{o['height']} {o['dtype']} on {report['device']}"
                        f", --vae {o.get('vae', 'wan')}{extras}"
                        f" ({report['attention']}), {o['chunks']} chunks, {o['steps']} steps{mode}")
    table.add_column("")
    for run in runs:
        table.add_column(run.replace("_", " "), justify="right")

    def row(label, fmt, get):
        table.add_row(label, *(fmt.format(get(report[r])) for r in runs))

    stages = ("read", "vae_encode", "dit", "recache", "vae", "encode") if o.get("video") else ("dit", "recache", "vae", "encode")
    for stage in stages:
        row(f"{stage} ms / chunk" + (" (per switch)" if stage == "recache" else ""), "{:.1f}", lambda r, s=stage: r["per_chunk_ms"][s])
    if o.get("overlap"):
        row("queue wait ms / chunk", "{:.1f}", lambda r: r.get("queue_wait_ms_per_chunk", 0.0))
    row("generation FPS", "{:.2f}", lambda r: r["generation_fps"])
    row("end-to-end FPS", "{:.2f}", lambda r: r["end_to_end_fps"])
    row("time to first frame s", "{:.2f}", lambda r: r["time_to_first_frame_s"])
    row("dit ms early → late", "{}", lambda r: f"{r['dit_ms_early']:.1f} → {r['dit_ms_late']:.1f}")
    row("peak memory GB", "{:.2f}", lambda r: r["peak_memory_gb"])
    captions = [memory_cost_text(report)] if "memory_cost_percent" in report else []
    if report.get("warmup_seconds"):
        captions.append("untimed warm-up: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in report["warmup_seconds"].items()))
    if report.get("time_to_first_frame_after_load_s") is not None:
        captions.append(f"time to first frame after the models loaded: {report['time_to_first_frame_after_load_s']:.2f} s"
                        " (first stream of the process)")
    sc = report.get("schedules")
    if sc:
        a, b = sc["chunks_compared"]
        captions.append(f"DiT ms / chunk beside the decoder (overlap) {sc['dit_ms_overlap']:.1f}, alone (serial) "
                        f"{sc['dit_ms_serial']:.1f} ({sc['dit_slowdown_beside_decoder_percent']:+.1f} %), chunks {a}–{b}; "
                        f"decode ms / chunk {sc['decode_ms_overlap']:.1f} beside, {sc['decode_ms_serial']:.1f} alone")
    m = report.get("memory")
    if m:
        measured = "n/a" if m["measured_gb"] is None else f"{m['measured_gb']:.2f} GB"
        over = "" if m["over_plan_percent"] is None else f" ({m['over_plan_percent']:+.1f} % of plan)"
        captions.append(f"peak memory: planned {m['planned_gb']:.2f} GB (memflow info's plan), measured {measured}{over}"
                        + (f"; {m['plan_note']}" if m.get("plan_note") else ""))
    c = report.get("compile")
    if c:
        captions.append(f"compile ({c['mode']}): {c['compile_seconds']:.1f} s in {c['compilations']} compilation(s), "
                        f"{c['compilations_in_timed_runs']} during the timed runs"
                        + (f"; FELL BACK TO EAGER: {c['fallback']}" if c.get("fallback") else ""))
    table.caption = "\n".join(captions) or None
    return table


def save_report(report: dict, folder: str | Path, command: str) -> Path:
    """Write the report as benchmarks/results/<date>-<device>-<preset>.json (with the command line)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{report['date']}-{report['device']}-{report['options']['preset']}".replace(" ", "_").replace("/", "_")
    path = folder / f"{name}.json"
    path.write_text(json.dumps({**report, "command": command}, indent=2) + "\n")
    return path


def run_decoder_bench(kinds=("tae", "lighttae", "lightvae", "wan"), width: int = 832, height: int = 480,
                      chunks: int = 4, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                      vae_dim: int = 96) -> dict:
    """VAE ms per chunk of each `--vae` choice at real size, side by side in one run.

    Every choice streams the same random latents (3 per chunk); the choices take turns chunk by chunk,
    so a slow moment of a shared machine hits them all alike. Chunk 0 (9 frames, warm-up) is not counted.
    """
    dev, dt = torch.device(device), DTYPES[dtype]
    decoders = {k: random_decoder(k, dev, dt, seed, vae_dim) for k in kinds}
    streams = {k: d.stream_decoder() for k, d in decoders.items()}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    gen = torch.Generator().manual_seed(seed)
    for chunk in range(chunks + 1):
        latents = torch.randn(1, 3, 16, height // 8, width // 8, generator=gen).to(dev, dt)
        for k in kinds:
            synchronize(dev)
            t0 = time.perf_counter()
            streams[k].decode(latents)
            synchronize(dev)
            if chunk:
                times[k].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    slowest = max(ms.values())
    return {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "options": {"width": width, "height": height, "chunks": chunks, "dtype": dtype, "kinds": list(kinds),
                    "vae_dim": vae_dim},
        "vae_ms_per_chunk": ms,
        "speedup_vs_slowest": {k: slowest / v for k, v in ms.items()},
    }
