"""Orchestration: timeline → schedule → weights → prompt embeddings → chunks → VAE → mp4 + manifest.

`render(timeline, RenderOptions(...))` is the Python API; the CLI only parses options and prints.
Order matters for memory: the text encoder (11 GB for the real umT5-XXL) is loaded, used for the few
distinct prompts (disk-cached) and freed before the DiT starts generating. Frames are decoded and
written chunk by chunk, so memory does not grow with the length of the video.

Everything that can be checked without weights (timeline, resolution, output folder) is checked before
the slow loading starts.
"""

from __future__ import annotations

import datetime as _dt
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from memflow_cli import __version__
from memflow_cli.errors import CheckpointError, InputError, MemflowError
from memflow_cli.schedule import ChunkPlan, Schedule, plan
from memflow_cli.timeline import FPS, Timeline
from memflow_cli.video import VideoWriter, check_output_path, manifest_path, partial_path, write_manifest

DEFAULT_WIDTH, DEFAULT_HEIGHT = 832, 480  # MemFlow's training resolution
DEFAULT_SEED = 1  # MemFlow's interactive default
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


class Interrupted(MemflowError):
    """Ctrl-C during a render; what was rendered is kept as NAME.partial.mp4. Exit code 130 like a shell."""

    exit_code = 130

    def __init__(self, message: str, summary: "RenderSummary | None" = None):
        super().__init__(message)
        self.summary = summary


@dataclass
class RenderOptions:
    """Every knob of a render; None = take the timeline's value, else the default."""

    output: Path | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    sma: bool | None = None
    steps: tuple[int, ...] | None = None
    blend: str = "linear"  # how a block's two prompts are blended: "linear" or "slerp"
    device: str | None = None
    dtype: str | None = None
    weights_dir: Path | None = None
    offline: bool = False
    revision: str | None = None
    verify_hashes: bool = False
    embedding_cache: Path | None = None


@dataclass
class RenderSummary:
    output: str
    complete: bool
    frames: int
    total_frames: int
    seconds: float
    chunks: int
    width: int
    height: int
    seed: int
    device: str
    dtype: str
    attention: str
    timings: dict = field(default_factory=dict)  # seconds per stage
    fps_end_to_end: float = 0.0
    fps_generation: float = 0.0
    peak_gpu_memory_bytes: int | None = None
    peak_rss_bytes: int = 0
    manifest: str = ""
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Reporter:
    """Progress hooks; the base class is silent (library use, --quiet)."""

    def stage(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def start(self, schedule: Schedule) -> None: ...
    def chunk(self, chunk: ChunkPlan, frames_done: int, generation_fps: float) -> None: ...
    def stop(self) -> None: ...


# ------------------------------------------------------------------------------------------------
# Settings resolution (command line > file > defaults)


def resolve_device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None or name == "auto":
        # bf16 as trained on GPUs; float32 on CPUs, where bf16 matmuls are slow or emulated
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"--dtype: expected one of bf16, fp16, fp32, got {name!r}")
    return DTYPES[name]


def resolve_size(timeline: Timeline, options: RenderOptions) -> tuple[int, int]:
    width = options.width or timeline.settings.width or DEFAULT_WIDTH
    height = options.height or timeline.settings.height or DEFAULT_HEIGHT
    for value, name in ((width, "width"), (height, "height")):
        if value <= 0 or value % 16:
            raise InputError(f"--resolution: expected a {name} that is a positive multiple of 16, got {value}")
    return width, height


def default_output(timeline: Timeline) -> Path:
    if timeline.format == "prompt":
        return Path("memflow.mp4")
    name = Path(timeline.source.split(" line ")[0]).stem
    if " line " in timeline.source:
        name += "-" + timeline.source.rsplit(" line ", 1)[1]
    return Path(name + ".mp4")


# ------------------------------------------------------------------------------------------------
# The render


def render(
    timeline: Timeline,
    options: RenderOptions | None = None,
    *,
    reporter: Reporter | None = None,
    on_chunk: Callable[[ChunkPlan], None] | None = None,
) -> RenderSummary:
    """Render one timeline to an mp4 (+ manifest). Raises MemflowError subclasses with plain messages;
    `Interrupted` (exit code 130) after Ctrl-C, with the partial file kept."""
    from memflow_cli.generator import StreamSettings

    options = options or RenderOptions()
    reporter = reporter or Reporter()
    started = time.perf_counter()
    timings = {"load": 0.0, "encode": 0.0, "generate": 0.0, "decode": 0.0, "write": 0.0}

    # -- everything that needs no weights first
    schedule = plan(timeline, blend_method=options.blend)
    width, height = resolve_size(timeline, options)
    seed = options.seed if options.seed is not None else (timeline.settings.seed if timeline.settings.seed is not None else DEFAULT_SEED)
    output = check_output_path(options.output or default_output(timeline))
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    if timeline.settings.loras:
        names = ", ".join(str(l.path) for l in timeline.settings.loras)
        raise InputError(f"{timeline.source}: settings.loras: extra LoRAs ({names}) are not supported yet; expected an empty list")
    steps = options.steps or timeline.settings.denoising_steps
    stream = StreamSettings(sma=bool(options.sma), **({"denoising_steps": tuple(steps)} if steps else {}))
    warnings = list(timeline.warnings)
    for w in warnings:
        reporter.warn(w)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # -- weights
    from memflow_cli.checkpoints import load_dit
    from memflow_cli.hub import resolve_weights
    from memflow_cli.model.dit import DiTConfig, attention_backend
    from memflow_cli.model.vae import load_wan_vae, pixels_to_uint8
    from memflow_cli.prompts import PromptEncoder

    reporter.stage("resolving weights")
    weights = resolve_weights(options.weights_dir, offline=options.offline, revision=options.revision,
                              verify_hashes=options.verify_hashes, show=getattr(reporter, "show_plan", None))
    config = DiTConfig.from_file(weights.config)

    # -- prompts first: encode once (cached on disk) and free the encoder before the DiT and VAE load,
    #    so that the 11 GB umT5-XXL never shares the device with them.
    t = time.perf_counter()
    reporter.stage(f"encoding {len(timeline.texts)} prompt(s)")
    encoder = PromptEncoder(weights.tokenizer, weights.t5, cache_dir=options.embedding_cache, device=device, dtype=dtype)
    embeddings = encoder.encode(list(timeline.texts))
    encoder.release()
    del encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timings["encode"] = time.perf_counter() - t

    t = time.perf_counter()
    reporter.stage("loading the generator and the VAE")
    if device.type == "cpu" and config.dim >= DiTConfig().dim:
        warnings.append("rendering the real model on the CPU: expect hours (use a CUDA GPU)")
        reporter.warn(warnings[-1])
    model = load_dit(config, weights.base, weights.lora, device=device, dtype=dtype)
    vae = load_wan_vae(weights.vae, device=device, dtype=dtype)
    timings["load"] = time.perf_counter() - t

    dims = {e.shape[-1] for e in embeddings.values()}
    if dims != {config.text_dim}:
        raise CheckpointError(f"{weights.t5}: text encoder gives width {sorted(dims)}, the DiT expects {config.text_dim}")
    from memflow_cli.conditioning import Conditioner

    conditioner = Conditioner(embeddings)

    # -- stream: generate → decode → write, one chunk at a time
    from memflow_cli.generator import StreamingGenerator

    generator = StreamingGenerator(model, stream, num_latent_frames=schedule.num_latent_frames,
                                   latent_height=height // 8, latent_width=width // 8, seed=seed,
                                   device=device, dtype=dtype)
    decoder = vae.stream_decoder()
    frames_done = 0
    summary = RenderSummary(str(output), False, 0, schedule.total_frames, 0.0, schedule.num_chunks, width, height,
                            seed, str(device), str(dtype).replace("torch.", ""), attention_backend(device, dtype),
                            timings, warnings=warnings)
    identity = _manifest_base(timeline, schedule, options, summary, stream, weights)
    writer = VideoWriter(output, width, height, FPS)
    reporter.start(schedule)
    try:
        with writer:
            for chunk in schedule.chunks:
                if chunk.changed:
                    generator.set_conditioning(conditioner(chunk.conditioning))
                t = time.perf_counter()
                latents = generator.next_chunk()
                synchronize(device)
                t2 = time.perf_counter()
                frames = pixels_to_uint8(decoder.decode(latents))[: chunk.frames].cpu().numpy()
                synchronize(device)
                t3 = time.perf_counter()
                writer.write(frames)
                t4 = time.perf_counter()
                timings["generate"] += t2 - t
                timings["decode"] += t3 - t2
                timings["write"] += t4 - t3
                frames_done += len(frames)
                summary.frames = frames_done
                reporter.chunk(chunk, frames_done, frames_done / max(timings["generate"], 1e-9))
                if on_chunk:
                    on_chunk(chunk)
            t = time.perf_counter()
        timings["write"] += time.perf_counter() - t  # ffmpeg finishing the file (+faststart rewrite)
    except KeyboardInterrupt:
        reporter.stop()
        _finish(summary, started, device)
        if writer.partial is None:
            raise Interrupted("interrupted; no frame was complete, nothing was written", summary) from None
        summary.output = str(writer.partial)
        summary.manifest = str(write_manifest(manifest_path(writer.partial), {**identity, **_figures(summary)}))
        raise Interrupted(
            f"interrupted after {summary.frames} of {summary.total_frames} frames; kept {writer.partial}"
            + (f" ({output} was left untouched)" if output.exists() else ""),
            summary,
        ) from None
    reporter.stop()
    summary.complete = True
    _finish(summary, started, device)
    summary.manifest = str(write_manifest(manifest_path(output), {**identity, **_figures(summary)}))
    stale = partial_path(output)
    if stale.exists():  # an earlier interrupted attempt is superseded by this complete file
        stale.unlink()
        manifest_path(stale).unlink(missing_ok=True)
    return summary


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # honest per-stage timings: kernels are asynchronous


def _finish(summary: RenderSummary, started: float, device: torch.device) -> None:
    total = time.perf_counter() - started
    summary.timings["total"] = total
    summary.seconds = summary.frames / FPS
    summary.fps_end_to_end = summary.frames / total if total > 0 else 0.0
    summary.fps_generation = summary.frames / summary.timings["generate"] if summary.timings["generate"] > 0 else 0.0
    if device.type == "cuda":
        summary.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated(device)
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary.peak_rss_bytes = rss if sys.platform == "darwin" else rss * 1024


def _manifest_base(timeline, schedule, options, summary, stream, weights) -> dict:
    import huggingface_hub
    import imageio_ffmpeg

    return {
        "memflow_cli": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "source": timeline.source,
            "format": timeline.format,
            "sha256": timeline.sha256,
            "blocks": [{"start": b.start, "end": b.end, "prompts": [[p.text, p.weight] for p in b.prompts],
                        "transition_steps": b.transition_steps, "interpolation": b.interpolation} for b in timeline.blocks],
        },
        "settings": {
            "seed": summary.seed,
            "resolution": f"{summary.width}x{summary.height}",
            "device": summary.device,
            "dtype": summary.dtype,
            "attention": summary.attention,
            "blend": options.blend,
            **stream.to_dict(),
        },
        "schedule": {"chunks": schedule.num_chunks, "latent_frames": schedule.num_latent_frames,
                     "video_frames": schedule.total_frames, "fps": FPS, "conditioning_changes": schedule.switches},
        "weights": {"source": weights.source, "files": weights.describe()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if summary.device.startswith("cuda") else None,
            "huggingface_hub": huggingface_hub.__version__,
            "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(),
        },
    }


def _figures(summary: RenderSummary) -> dict:
    return {
        "video": {"path": summary.output, "complete": summary.complete, "frames": summary.frames, "fps": FPS,
                  "seconds": summary.seconds, "width": summary.width, "height": summary.height,
                  "codec": "h264", "pix_fmt": "yuv420p"},
        "timings_s": {k: round(v, 4) for k, v in summary.timings.items()},
        "fps": {"end_to_end": round(summary.fps_end_to_end, 3), "generation": round(summary.fps_generation, 3)},
        "peak_memory_bytes": {"gpu": summary.peak_gpu_memory_bytes, "rss": summary.peak_rss_bytes},
        "warnings": summary.warnings,
    }


# ------------------------------------------------------------------------------------------------
# Rich output for the command line


class RichReporter(Reporter):
    """A progress bar per chunk (frames done / total, generation FPS, ETA) on stderr."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.progress = None

    def stage(self, text: str) -> None:
        self.console.print(f"[dim]•[/dim] {text}")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)

    def show_plan(self, plan) -> None:
        from memflow_cli.cli import plan_table

        self.console.print(plan_table(plan))

    def start(self, schedule: Schedule) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]rendering"), BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"), TextColumn("chunk {task.fields[chunk]}"),
            TextColumn("{task.fields[fps]:.2f} gen fps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("render", total=schedule.total_frames, fps=0.0,
                                           chunk=f"0/{schedule.num_chunks}")
        self.num_chunks = schedule.num_chunks

    def chunk(self, chunk: ChunkPlan, frames_done: int, generation_fps: float) -> None:
        self.progress.update(self.task, completed=frames_done, fps=generation_fps,
                             chunk=f"{chunk.index + 1}/{self.num_chunks}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary_table(summary: RenderSummary):
    from rich.table import Table

    def mib(n):
        return "–" if n is None else f"{n / 2**20:,.0f} MiB"

    t = Table(title=f"{summary.output}" + ("" if summary.complete else " (partial)"), show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("frames", f"{summary.frames} ({summary.seconds:.2f} s at {FPS} fps, {summary.width}x{summary.height})")
    t.add_row("chunks", str(summary.chunks))
    t.add_row("device", f"{summary.device}, {summary.dtype}, {summary.attention}")
    for stage in ("load", "encode", "generate", "decode", "write", "total"):
        t.add_row(f"time {stage}", f"{summary.timings.get(stage, 0.0):.2f} s")
    t.add_row("FPS end-to-end", f"{summary.fps_end_to_end:.2f}")
    t.add_row("FPS generation", f"{summary.fps_generation:.2f}")
    t.add_row("peak GPU memory", mib(summary.peak_gpu_memory_bytes))
    t.add_row("peak RSS", mib(summary.peak_rss_bytes))
    t.add_row("manifest", summary.manifest)
    return t
