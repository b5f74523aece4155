"""A render job, planned: the options, the checks that need no weights, and what a render reports.

Everything that can be checked without weights (timeline, resolution, output path) is checked in `plan_job`,
before any slow loading starts; the pipeline (pipeline.py) then loads its parts once and streams the job
(stream.py). `RenderSummary` and `BatchResult` are what a render and a batch item report.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from memflow_cli.errors import InputError, MemflowError
from memflow_cli.limits import DEFAULT_MAX_HOURS, check_seed, check_steps
from memflow_cli.inputs.schedule import Schedule, plan
from memflow_cli.inputs.timeline import MAX_SIDE, Timeline
from memflow_cli.render.manifest import read_manifest
from memflow_cli.render.output_names import choose_output, prompt_output
from memflow_cli.render.video import check_output_path

DEFAULT_WIDTH, DEFAULT_HEIGHT = 832, 480  # MemFlow's training resolution
DEFAULT_SEED = 1  # MemFlow's interactive default
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


class OutOfMemory(MemflowError):
    """The allocator failed during a render (exit code 1): said with the resolution and the memory plan."""


_OOM_TEXTS = ("not enough memory", "defaultcpuallocator", "cuda out of memory", "cannot allocate memory",
              "can't allocate memory")  # the allocators' own words (not any error that says "memory")


def out_of_memory(exc: BaseException) -> bool:
    """A MemoryError, or a RuntimeError from an allocator (CPU: "DefaultCPUAllocator: not enough memory",
    CUDA: "CUDA out of memory")."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(t in text for t in _OOM_TEXTS)


def _system_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class Interrupted(MemflowError):
    """Ctrl-C (or SIGTERM/SIGHUP) during a render; what was rendered is kept as NAME.partial.mp4.
    Exit code 128 + the signal like a shell: 130 for Ctrl-C."""

    exit_code = 130

    def __init__(self, message: str, summary: "RenderSummary | None" = None, exit_code: int = 130):
        super().__init__(message)
        self.summary = summary
        self.exit_code = exit_code  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP


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
    output_dir: Path | None = None  # batches: where outputs go when no -o is given (default: the current folder)
    overwrite: bool = False  # -y/--overwrite/--force: replace an existing output, re-render a finished one
    resume: bool = False  # continue from NAME.resume/ when there is one
    checkpoint_every: float = 300.0  # seconds between resume checkpoints; 0 = only when stopped by a signal
    max_hours: float = DEFAULT_MAX_HOURS  # refuse longer videos before anything loads
    # VACE (vace.py): a control video, a mask video, reference images, the guidance scale (None: the file's, else 1)
    control: Path | None = None
    mask: Path | None = None
    references: tuple[Path, ...] = ()
    vace_scale: float | None = None
    quantization: str | None = None  # "fp8": fp8 weights for the DiT and the text encoder (else the file's choice)
    low_vram: bool = False  # text encoder on the CPU, fp8 DiT, the decoder's smallest working set
    command: str | None = None  # the command line, recorded in the manifest (the CLI sets it)
    video: Path | None = None  # video-to-video: the input video (see v2v.py)
    strength: float | None = None  # overrides the file's noiseScale; default 0.7
    fit: str | None = None  # crop (default), pad or stretch
    noise_controller: bool | None = None  # None = the file's noiseController
    model: str | None = None  # models.MODELS name; None: the file's pipelineId when it is one of ours, else memflow
    loras: tuple = ()  # --lora FILE[:SCALE]: timeline.LoraSpec, merged after the timeline's own LoRAs
    vae: str | None = None  # decoder (decoders.DECODER_KINDS); None = the timeline's `vae_type`, else "wan"
    compile: bool = False  # --compile: torch.compile the DiT's block for the steady state (compiled.py)
    compile_mode: str | None = None  # a torch.compile mode; None: CUDA graphs on CUDA, plain inductor elsewhere
    # decode and write each chunk on a worker thread (CUDA: a second stream) while the next one generates:
    # "on" (or True); "off" (or False): one stage after the other in the loop; "auto": on, except that on CUDA
    # the render measures both schedules on its first steady chunks and keeps the faster (decode_stage.py
    # ScheduleProbe). --low-vram keeps them serial (one working set at a time).
    overlap: bool | str = "auto"
    preview: bool = True  # NAME.partial.mp4 plays while rendering (a fragmented MP4, remuxed at the end; video.py)
    sheet: bool = True  # the contact sheet NAME.sheet.png (sheet.py)


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
    skipped: bool = False  # an existing complete output already was this render
    planned_peak_gpu_memory_bytes: int | None = None  # memory_plan's figure, shown beside the measured peak
    sha256: str | None = None  # of the video file written (complete or partial)
    encoder: dict = field(default_factory=dict)  # codec, preset, crf, colour tags (video.encoder_settings)
    prompt_cache: dict = field(default_factory=dict)  # {"path", "cached", "computed"}: distinct prompts
    model: str = "memflow"  # models.MODELS name of the model that rendered it
    vae: str = "wan"  # the decoder that made the frames
    compile: dict | None = None  # --compile: mode, compiled block calls, compile seconds, fallback (compiled.py)
    schedule: dict | None = None  # --overlap: asked for, chosen, and what auto measured (not the render's identity)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RenderJob:
    """One timeline, planned: everything decided without weights (schedule, size, seed, output)."""

    timeline: Timeline
    schedule: Schedule
    output: Path
    width: int
    height: int
    seed: int
    stream: "object"  # generator.StreamSettings
    warnings: list = field(default_factory=list)
    vace: "object | None" = None  # vace.VaceRender: the VACE inputs, checked
    quantization: str | None = None  # "fp8" from the options, --low-vram or the file
    video: "object | None" = None  # v2v.VideoInput for video-to-video, else None
    model: str = "memflow"  # models.MODELS name
    loras: list | None = None  # loras.UserLora in merge order; None until checked against the model config
    vae: str = "wan"  # decoder choice: --vae, else the timeline's vae_type, else wan

    @property
    def name(self) -> str:
        return self.timeline.source


@dataclass
class BatchResult:
    """How one batch item ended: done, skipped (already rendered), failed or interrupted."""

    name: str
    status: str
    output: str | None = None
    summary: RenderSummary | None = None
    message: str = ""
    exit_code: int = 0

    def to_dict(self) -> dict:
        return {"item": self.name, "status": self.status, "output": self.output, "message": self.message,
                "exit_code": self.exit_code, "summary": self.summary.to_dict() if self.summary else None}

    def to_json(self) -> dict:
        """For --json: the item's manifest (same key names as the file next to the video) as its summary."""
        manifest = self.summary.manifest if self.summary and self.summary.manifest else None
        return {"item": self.name, "status": self.status, "output": self.output, "message": self.message,
                "exit_code": self.exit_code, "skipped": self.status == "skipped", "manifest": manifest,
                "summary": read_manifest(manifest) if manifest else None}


# ------------------------------------------------------------------------------------------------
# Settings resolution (command line > file > defaults)


def resolve_device(name: str | None) -> torch.device:
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # meta, mps, xla...: nothing a render can run on here
        raise InputError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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
        if value <= 0 or value % 16 or value > MAX_SIDE:
            raise InputError(f"--resolution: expected a {name} that is a positive multiple of 16 up to {MAX_SIDE}, got {value}")
    return width, height


def default_output(timeline: Timeline, folder: Path | None = None, seed: int = DEFAULT_SEED) -> Path:
    """The name we pick: `<prompt words>-<seed>.mp4` for --prompt, else the timeline file's name (+ line)."""
    if timeline.format == "prompt":
        return prompt_output(timeline.blocks[0].prompts[0].text, seed, folder or Path())
    else:
        name = Path(timeline.source.split(" line ")[0]).stem
        if " line " in timeline.source:
            name += "-" + timeline.source.rsplit(" line ", 1)[1]
    return (folder or Path()) / (name + ".mp4")


def plan_job(timeline: Timeline, options: RenderOptions | None = None) -> RenderJob:
    """Check and plan one timeline with no weights loaded; raises InputError on anything wrong."""
    from memflow_cli.weights.models import check_bank_options, choose_model, model_for_pipeline

    options = options or RenderOptions()
    spec = choose_model(options.model, timeline.settings.pipeline_id)
    check_bank_options(spec, sma=options.sma)
    schedule = plan(timeline, blend_method=options.blend, max_hours=options.max_hours)
    width, height = resolve_size(timeline, options)
    seed = options.seed if options.seed is not None else (
        timeline.settings.seed if timeline.settings.seed is not None else DEFAULT_SEED)
    seed = check_seed(seed, "--seed")
    vace_files = [Path(p) for p in (options.control, options.mask, *options.references) if p]
    protected = [*job_inputs(timeline), *vace_files, *(lora.path for lora in options.loras),
                 *([Path(options.video)] if options.video else [])]
    default = default_output(timeline, options.output_dir, seed)
    check_output_path(options.output or default, inputs=protected)  # a valid target first
    picked = choose_output(options.output, default, options.overwrite, make_unique=timeline.format == "prompt")
    output = check_output_path(picked, inputs=protected)
    vae = _decoder_choice(timeline, options)
    steps = check_steps(options.steps, "--steps") if options.steps is not None else timeline.settings.denoising_steps
    try:
        stream = spec.stream_settings(sma=bool(options.sma), **({"denoising_steps": tuple(steps)} if steps else {}))
    except ValueError as exc:
        raise InputError(f"{timeline.source}: {exc}") from None
    warnings = list(timeline.warnings)
    vace = _prepare_vace(timeline, options, schedule, warnings)
    quantization = "fp8" if options.low_vram else (options.quantization or timeline.settings.quantization)
    made_with = model_for_pipeline(timeline.settings.pipeline_id)
    if made_with is not None and made_with is not spec:
        warnings.append(f"made with Scope's {made_with.name!r} pipeline; rendering it with {spec.title} as --model asks")
    return RenderJob(timeline, schedule, output, width, height, seed, stream, warnings, vace=vace, quantization=quantization,
                     video=video_input(timeline, schedule, options), model=spec.name, vae=vae)


def video_input(timeline: Timeline, schedule: Schedule, options: RenderOptions):
    """The checked video-to-video request of a job (probes the input video), or None for text-to-video."""
    from memflow_cli.inputs.v2v import resolve_video_input

    s = timeline.settings
    return resolve_video_input(options.video, timeline_frames=schedule.total_frames, input_mode=s.input_mode,
                               file_strength=s.noise_scale, file_controller=s.noise_controller,
                               strength=options.strength, fit=options.fit, noise_controller=options.noise_controller,
                               where=timeline.source)


def _prepare_vace(timeline: Timeline, options: RenderOptions, schedule: Schedule, warnings: list):
    """VACE inputs checked before any weights (None without any); the scale: option > file > 1.0."""
    from memflow_cli.inputs.vace import VaceInputs, VaceRender

    scale = options.vace_scale if options.vace_scale is not None else timeline.settings.vace_scale
    inputs = VaceInputs(
        control=str(options.control) if options.control else None,
        mask=str(options.mask) if options.mask else None,
        references=tuple(str(p) for p in options.references),
        scale=1.0 if scale is None else float(scale),
    )
    vace = VaceRender.prepare(inputs, schedule.total_frames)
    if vace is None and options.vace_scale is not None:
        warnings.append("--vace-scale has no effect without --control, --mask or --reference")
    return vace


def job_inputs(timeline: Timeline) -> list[Path]:
    """Files a render reads, which its outputs must never overwrite: the timeline file and its LoRAs."""
    found = [lora.path for lora in timeline.settings.loras]
    if timeline.format != "prompt":
        jsonl = timeline.format == "memflow-jsonl"  # its source is "FILE line N"
        found.append(Path(timeline.source.rsplit(" line ", 1)[0] if jsonl else timeline.source))
    return found


def _decoder_choice(timeline: Timeline, options: RenderOptions) -> str:
    from memflow_cli.engine.decoders import DEFAULT_DECODER, decoder_spec

    if options.vae is not None:
        return decoder_spec(options.vae, "--vae").kind
    if timeline.settings.vae is None and options.low_vram:
        # --low-vram: the tiny decoder when its file is already here (never downloaded for it)
        from memflow_cli.weights.hub import decoder_presence

        if any(kind == "lighttae" and path is not None for kind, _, path in decoder_presence(options.weights_dir)):
            return "lighttae"
    return timeline.settings.vae or DEFAULT_DECODER  # validated when the file was read


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # honest per-stage timings: kernels are asynchronous



def batch_exit_code(results: Sequence[BatchResult]) -> int:
    """0 when every item was rendered or skipped; else the worst item's code (130 if interrupted)."""
    codes = [r.exit_code for r in results if r.status not in ("done", "skipped")]
    if not codes:
        return 0
    return 130 if 130 in codes else max(codes)
