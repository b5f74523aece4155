"""Orchestration: timeline → schedule → weights → prompt embeddings → chunks → decoder → mp4 + manifest.

A `Renderer` is built once from the options and loads its parts once (text encoder, DiT, decoder); each
`render(job)` then streams one timeline:  source → generator → decoder → writer.  A batch is the same
renderer called many times (`render_batch`): the weights load once and every distinct prompt of the batch
is encoded up front, before the DiT loads, so that the 11 GB text encoder never shares the device with it.

Everything that can be checked without weights (timeline, resolution, output path) is checked in
`plan_job`, before any slow loading starts. `render(timeline, RenderOptions(...))` is the one-call API.
"""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from memflow_cli.errors import CheckpointError, InputError, MemflowError, counted
from memflow_cli.hub import sha256_file
from memflow_cli.manifest import figures, identity, input_path, is_complete_render, provenance, read_manifest
from memflow_cli.output_names import choose_output, prompt_output, refusal
from memflow_cli.progress import Reporter
from memflow_cli.limits import DEFAULT_MAX_HOURS, check_seed, check_steps
from memflow_cli.schedule import ChunkPlan, Schedule, plan
from memflow_cli.timeline import FPS, MAX_SIDE, Timeline
from memflow_cli.video import VideoWriter, check_output_path, manifest_path, partial_path

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
    from memflow_cli.models import check_bank_options, choose_model, model_for_pipeline

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
    from memflow_cli.v2v import resolve_video_input

    s = timeline.settings
    return resolve_video_input(options.video, timeline_frames=schedule.total_frames, input_mode=s.input_mode,
                               file_strength=s.noise_scale, file_controller=s.noise_controller,
                               strength=options.strength, fit=options.fit, noise_controller=options.noise_controller,
                               where=timeline.source)


def _prepare_vace(timeline: Timeline, options: RenderOptions, schedule: Schedule, warnings: list):
    """VACE inputs checked before any weights (None without any); the scale: option > file > 1.0."""
    from memflow_cli.vace import VaceInputs, VaceRender

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
    from memflow_cli.decoders import DEFAULT_DECODER, decoder_spec

    if options.vae is not None:
        return decoder_spec(options.vae, "--vae").kind
    if timeline.settings.vae is None and options.low_vram:
        # --low-vram: the tiny decoder when its file is already here (never downloaded for it)
        from memflow_cli.hub import decoder_presence

        if any(kind == "lighttae" and path is not None for kind, _, path in decoder_presence(options.weights_dir)):
            return "lighttae"
    return timeline.settings.vae or DEFAULT_DECODER  # validated when the file was read


PROBE_SCHEDULE_ON_CPU = False  # --overlap auto measures on CUDA only; tests switch it on for the CPU


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # honest per-stage timings: kernels are asynchronous


# ------------------------------------------------------------------------------------------------
# The renderer


class Renderer:
    """Loads its parts once; renders one timeline per `render()` call, or a whole batch.

    Owns the weights' locations, the prompt embeddings, the DiT and the decoder. A Python user builds one
    and calls it many times, as the CLI does for a batch.
    """

    def __init__(self, options: RenderOptions | None = None, reporter: Reporter | None = None):
        self.options = options or RenderOptions()
        self.reporter = reporter or Reporter()
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_dtype(self.options.dtype, self.device)
        self.timings = {"load": 0.0, "encode": 0.0}  # one-off costs, charged to the first item rendered
        self._weights: dict = {}  # model name → hub.WeightPaths (the Wan files are the same for every model)
        self._active: str | None = None  # the model the shared parts (text encoder, config, VAE) are read through
        self._config = None
        self._embeddings: dict = {}
        self._model = None
        self._model_name: str | None = None  # which model's DiT `_model` is: one resident at a time
        self._model_loras: tuple = ()  # keys of the user LoRAs merged into _model
        self._vae = None
        self._vace = None  # the VACE blocks, loaded by the first render that uses them
        self._vace_sha256: str | None = None
        self._vae_kind: str | None = None
        self._compile_before: dict | None = None  # the compiled block's figures when the current render began
        self._loaded_at = 0.0  # perf_counter when the current render's models were loaded (time to first frame)
        self._side_wan_vae = None  # the Wan VAE for VACE when another decoder is chosen
        self._decoder_files: dict[str, dict] = {}  # kind → {"path", "sha256", ...}
        self._warned: set[str] = set()
        self._quantization: str | None = None  # of the loaded DiT (decided by the first job that loads it)
        self._checked_memory = False
        self.prompt_cache = {"path": None, "cached": 0, "computed": 0}  # where embeddings came from

    # -- parts, each loaded once -----------------------------------------------------------------

    def weights_for(self, model: str):
        """A model's weight files (resolved, maybe downloaded, once per model)."""
        if model not in self._weights:
            from memflow_cli.hub import resolve_weights
            from memflow_cli.models import revision_for

            self.reporter.stage("resolving weights" + ("" if model == "memflow" else f" ({model})"))
            o = self.options
            self._weights[model] = resolve_weights(
                o.weights_dir, offline=o.offline, revision=revision_for(o.revision, model),
                verify_hashes=o.verify_hashes, show=self.reporter.show_plan, model=model)
        return self._weights[model]

    @property
    def weights(self):
        """The weights of the model in use; the shared Wan files (config, text encoder, VAE) are read from it."""
        if self._active is None:
            from memflow_cli.models import choose_model

            self._active = choose_model(self.options.model, None).name
        return self.weights_for(self._active)

    def use(self, model: str) -> None:
        """Make `model` the one the next shared-part loads and renders go through (loads nothing yet)."""
        self._active = model

    @property
    def config(self):
        if self._config is None:
            from memflow_cli.model.dit import DiTConfig

            self._config = DiTConfig.from_file(self.weights.config)
        return self._config

    def encode_prompts(self, texts: Sequence[str]) -> None:
        """Encode every text not encoded yet (disk-cached), then free the text encoder."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._embeddings]
        if not todo:
            return
        from memflow_cli.prompts import PromptEncoder

        t = time.perf_counter()
        self.reporter.stage(f"encoding {counted(len(todo), 'prompt')}")
        from memflow_cli.low_vram import text_encoder_file

        quantization = self._quantization or ("fp8" if self.options.low_vram else self.options.quantization)
        encoder = PromptEncoder(self.weights.tokenizer, text_encoder_file(self.weights.t5, self.options.weights_dir, quantization),
                                cache_dir=self.options.embedding_cache, dtype=self.dtype, quantization=quantization,
                                device=torch.device("cpu") if self.options.low_vram else self.device)
        try:
            embeddings = encoder.encode(todo)
            self.prompt_cache["path"] = str(encoder.cache_dir)
            self.prompt_cache["cached"] += encoder.cache_hits
            self.prompt_cache["computed"] += encoder.cache_misses
        finally:
            encoder.release()
            del encoder
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        dims = {e.shape[-1] for e in embeddings.values()}
        if dims != {self.config.text_dim}:
            raise CheckpointError(
                f"{self.weights.t5}: text encoder gives width {sorted(dims)}, the DiT expects {self.config.text_dim}")
        self._embeddings.update(embeddings)
        self.timings["encode"] += time.perf_counter() - t

    def decoder_file(self, vae: str) -> dict:
        """Where the `vae` decoder's weights are and their identity (sha256), resolved once per kind.

        A choice other than wan is found, downloaded (unless offline) and verified like the other files.
        """
        if vae not in self._decoder_files:
            from memflow_cli.decoders import decoder_spec
            from memflow_cli.hub import resolve_weights, sha256_file

            weights, o = self.weights, self.options
            if vae != "wan":
                weights = resolve_weights(o.weights_dir, offline=o.offline, revision=o.revision,
                                          verify_hashes=o.verify_hashes, show=self.reporter.show_plan,
                                          model=weights.model, vae=vae)
            path = weights.decoder(vae)
            name = decoder_spec(vae).filename
            ident = dict(weights.identities.get(name, {}))
            if not ident.get("sha256"):
                ident["sha256"] = sha256_file(path)  # the manifest names the exact decoder file
            ident["size"] = path.stat().st_size
            self._decoder_files[vae] = {"vae": vae, "file": name, "path": str(path), **ident}
        return self._decoder_files[vae]

    def wan_vae(self):
        """The Wan VAE itself (VACE encodes with it whatever the decoder): the loaded decoder when it is the
        Wan VAE, else loaded once on the side."""
        if self._vae_kind == "wan":
            return self._vae.module
        if self._side_wan_vae is None:
            from memflow_cli.model.vae import load_wan_vae

            self._side_wan_vae = load_wan_vae(self.weights.vae, device=self.device, dtype=self.dtype)
        return self._side_wan_vae

    def load(self, quantization: str | None = None, loras: Sequence = (), vae: str = "wan") -> None:
        """Load the active model's DiT (its own LoRA merged, then the user's `loras` in order, then quantized
        if asked) once, and the `vae` decoder (replacing another kind).

        One DiT is resident at a time: a batch renders its items grouped by model, so each loads once; another
        set of user LoRAs reloads the DiT from the released weights.
        """
        from memflow_cli.decoders import load_decoder
        from memflow_cli.low_vram import load_generator
        from memflow_cli.model.dit import DiTConfig
        from memflow_cli.models import get_model

        weights = self.weights
        key = tuple(lora.key for lora in loras)
        t = time.perf_counter()
        if self._model is not None and self._model_name == self._active and self._model_loras == key:
            if quantization != self._quantization:
                self._warn_once(f"the DiT is already loaded with quantization {self._quantization or 'none'}; "
                                f"items asking for {quantization or 'none'} use it as loaded")
        else:
            spec = get_model(self._active)
            self.reporter.stage(("reloading " if self._model is not None else "loading ") + spec.title
                                + (" (fp8 weights)" if quantization else ""))
            if self.device.type == "cpu" and self.config.dim >= DiTConfig().dim:
                self._warn_once("rendering the real model on the CPU: expect hours (use a CUDA GPU)")
            if self._model is not None:  # another model or LoRA set was resident: free it before loading this one
                self._model = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            if loras:
                self.reporter.stage(f"merging {counted(len(loras), 'LoRA')}")
            self._model = load_generator(self.config, weights, self.device, self.dtype, quantization,
                                         lora_alpha=spec.lora_alpha, user_loras=[(lora.file, lora.scale) for lora in loras])
            self._quantization = quantization
            self._model_name, self._model_loras = spec.name, key
        if self.options.compile and self._model.compiled_block is None:
            from memflow_cli.compiled import compile_blocks

            compile_blocks(self._model, mode=self.compile_mode, on_fallback=lambda why: self.reporter.warn(
                f"--compile: compiling failed, running eager ({why})"))
        if self._vae_kind != vae:
            self.reporter.stage(f"loading the {vae} decoder")
            self._vae = None  # free the previous decoder first
            self._vae = load_decoder(vae, self.decoder_file(vae)["path"], device=self.device, dtype=self.dtype)
            self._vae_kind = vae
        if self.options.compile and self.device.type == "cuda":  # (on the CPU oneDNN's convs bound it: eager)
            from memflow_cli.decoders import compile_decoder

            compile_decoder(self._vae, on_fallback=lambda why: self.reporter.warn(
                f"--compile: compiling the decoder failed, decoding eager ({why})"))
        self.timings["load"] += time.perf_counter() - t

    @property
    def compile_mode(self) -> str:
        from memflow_cli.compiled import default_mode

        return self.options.compile_mode or default_mode(self.device)

    def load_vace(self, job: RenderJob):
        """The VACE blocks for `job` (None without VACE or at scale 0), loaded once per renderer.

        Called once before the prompts are encoded (to find the module file: offline without it is exit 2)
        and once after the DiT loaded (to load it).
        """
        vace = job.vace
        if vace is None or not vace.runs:
            return None
        o = self.options
        vace.locate_module(weights_dir=o.weights_dir, offline=o.offline, verify_hashes=o.verify_hashes)
        if self._model is None:
            return None
        if self._vace is None:
            t = time.perf_counter()
            self.reporter.stage("loading the VACE blocks")
            self._vace = vace.load_module(self.config, device=self.device, dtype=self.dtype)
            self.timings["load"] += time.perf_counter() - t
        else:
            vace.module_sha256 = self._vace_sha256
        self._vace_sha256 = vace.module_sha256
        return self._vace
    def check_memory(self, job: RenderJob, summary: RenderSummary | None = None) -> None:
        """Show the memory plan once and stop (InputError naming the levers) if it cannot fit the device."""
        from memflow_cli.low_vram import plan_for

        plan = plan_for(job, self.config, self.weights, self.dtype, self.options.low_vram, overlap=self.overlap,
                        cuda_graphs=self.options.compile and self.compile_mode == "reduce-overhead")
        if summary is not None:
            summary.planned_peak_gpu_memory_bytes = plan.peak_bytes if self.device.type == "cuda" else None
        if self._checked_memory:
            return
        self._checked_memory = True
        if self.device.type == "cuda" or self.options.low_vram or job.quantization:
            self.reporter.memory_plan(plan)  # the table, where it decides something (GPU memory) or was asked about
        elif plan.peak_bytes >= 0.01 * 2**30:  # on the CPU one line: the parts are in `memflow info --resolution`
            self.reporter.stage(f"memory plan: a peak of about {plan.peak_bytes / 2**30:.2f} GiB (`memflow info "
                                f"--resolution {plan.width}x{plan.height}` lists the parts)")
        from memflow_cli import memory_plan

        memory_plan.check_fits(plan, memory_plan.free_device_memory(self.device), str(self.device))

    def _warn_once(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.reporter.warn(text)

    # -- planning ----------------------------------------------------------------------------------

    def plan(self, timeline: Timeline) -> RenderJob:
        job = plan_job(timeline, self.options)
        self.use(job.model)  # the LoRAs are checked against this model's config
        self.check_loras(job)
        return job

    def check_loras(self, job: RenderJob) -> None:
        """Find, read and check the job's LoRAs (names and shapes against the DiT config; no weights load)."""
        specs = (*job.timeline.settings.loras, *self.options.loras)
        job.loras = []
        if specs:
            from memflow_cli.loras import prepare_loras

            job.loras, notes = prepare_loras(specs, lambda: self.config)  # the config only after the file checks
            job.warnings.extend(notes)

    def settings(self, job: RenderJob) -> dict:
        """What determines the frames besides the input and the weights (recorded in the manifest)."""
        from memflow_cli.model.dit import attention_backend

        extra = {"quantization": job.quantization} if job.quantization else {}  # absent: unchanged identity
        if self.options.compile:  # compiled kernels round differently (like another attention kernel)
            extra["compile"] = self.compile_mode
        return {
            "seed": job.seed,
            "resolution": f"{job.width}x{job.height}",
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attention": attention_backend(self.device, self.dtype),
            "blend": self.options.blend,
            "model": job.model,
            **job.stream.to_dict(),
            **({"vace": job.vace.described} if job.vace is not None else {}),
            **extra,
            **({"video_to_video": job.video.settings()} if job.video is not None else {}),
            # the user's LoRAs change the frames: their content and strength are part of the fingerprint
            **({"loras": [[lora.file.sha256, lora.scale] for lora in job.loras]} if job.loras else {}),
            "vae": job.vae,
        }

    def identity(self, job: RenderJob) -> dict:
        from memflow_cli.manifest import fingerprint
        from memflow_cli.models import get_model, manifest_entry

        weights = self.weights_for(job.model)
        data = identity(job.timeline, job.schedule, self.settings(job), weights, [lora.manifest() for lora in job.loras or ()])
        data["model"] = manifest_entry(get_model(job.model), weights)  # its name is in the settings' fingerprint
        data["input"]["path"] = input_path(job.timeline)
        if job.video is not None:
            data["input"]["video"] = job.video.manifest()
        data.update(provenance(job.timeline, self.options))
        # the decoder that makes the frames, with its file's hash; part of the fingerprint
        decoder = self.decoder_file(job.vae)
        data["decoder"] = decoder
        data["weights"]["files"][decoder["file"]] = {k: v for k, v in decoder.items() if k not in ("vae", "file")}
        data["fingerprint"] = fingerprint(data)
        return data

    def already_rendered(self, job: RenderJob) -> bool:
        """The output exists with a matching manifest (same input, settings and weights), complete."""
        return is_complete_render(job.output, read_manifest(manifest_path(job.output)), self.identity(job)["fingerprint"])

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, job: RenderJob | Timeline, *, on_chunk: Callable[[ChunkPlan], None] | None = None) -> RenderSummary:
        """Render one timeline to an mp4 (+ manifest). Raises MemflowError subclasses with plain messages;
        `Interrupted` (exit code 130) after Ctrl-C, with the partial file kept.

        `on_chunk(chunk)` is called in this thread after each chunk is generated; with `overlap` (the default)
        its frames may still be decoding then (they are written before a checkpoint, a stop or the end).
        The output is locked while it renders: a second render of the same output is refused (outputs.output_lock).
        """
        from memflow_cli.outputs import output_lock

        started = time.perf_counter()
        if isinstance(job, Timeline):
            job = self.plan(job)
        with output_lock(job.output):
            try:
                return self._render(job, on_chunk, started)
            except (MemoryError, RuntimeError) as exc:
                if not out_of_memory(exc):
                    raise
                raise self._out_of_memory(job, exc) from None

    def _out_of_memory(self, job: RenderJob, exc: BaseException) -> "OutOfMemory":
        """The allocator's failure as a message: the resolution, what the memory plan says it needs, the levers."""
        where = "GPU" if self.device.type == "cuda" else "CPU"
        needs = ""
        try:
            from memflow_cli.low_vram import plan_for

            plan = plan_for(job, self.config, self.weights, self.dtype, self.options.low_vram, overlap=self.overlap)
            needs = f"; the memory plan needs about {plan.peak_bytes / 2**30:.1f} GiB at this size"
        except Exception:  # noqa: BLE001 — the plan is a courtesy; the failure itself is the message
            pass
        total = _system_memory() if where == "CPU" else None
        has = f" and this machine has {total / 2**30:.1f} GiB" if total else ""
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        asked = f" (one allocation of {int(asked.group(1)) / 2**30:.1f} GiB failed)" if asked else ""
        levers = [f"a smaller --resolution than {job.width}x{job.height}"]
        if self.device.type == "cpu" and job.vae != "lighttae":
            levers.append("--vae lighttae")
        return OutOfMemory(f"out of memory on the {where} rendering {job.width}x{job.height}{asked}{needs}{has}. "
                           f"Try {' or '.join(levers)}; nothing was published for {job.output}")

    def _render(self, job: RenderJob, on_chunk, started: float) -> RenderSummary:
        self.use(job.model)
        if job.loras is None:
            self.check_loras(job)
        for w in job.warnings:
            self.reporter.warn(w)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        ident = self.identity(job)
        summary = self._summary(job, ident)
        if not self.options.overwrite and self._skip(job, ident, summary, started):
            return summary

        # the memory plan, and the stop when it cannot fit, come before anything loads
        self.check_memory(job, summary)
        checkpoint = self._checkpoint_to_resume(job, ident)

        # one-off costs (encoder, loading) are charged to the item that pays them
        before = dict(self.timings)
        self.load_vace(job)  # finds the VACE module first: a missing one fails before any weight loads
        if self._model is None or self._model_name != job.model:
            self._quantization = job.quantization  # the first job that loads a DiT decides its quantization
        self.encode_prompts(job.timeline.texts)
        self.load(job.quantization, job.loras or (), job.vae)
        vace_module = self.load_vace(job)
        self._loaded_at = time.perf_counter()  # time to first frame counts from here
        summary.timings.update({k: self.timings[k] - before[k] for k in before})
        if job.vace is not None:
            ident["vace"] = job.vace.manifest()
        summary.prompt_cache = dict(self.prompt_cache)
        stats = self._compile_stats()
        self._compile_before = stats.to_dict() if stats is not None else None

        from memflow_cli.conditioning import Conditioner
        from memflow_cli.generator import StreamingGenerator
        from memflow_cli.resume import CheckpointRecorder, resume_dir
        from memflow_cli.signals import StopRequest, exit_code, exit_code_of, name

        conditioner = Conditioner({t: self._embeddings[t] for t in job.timeline.texts})
        generator = StreamingGenerator(self._model, job.stream, num_latent_frames=job.schedule.num_latent_frames,
                                       latent_height=job.height // 8, latent_width=job.width // 8, seed=job.seed,
                                       device=self.device, dtype=self.dtype, vace=vace_module,
                                       vace_scale=job.vace.inputs.scale if job.vace is not None else 0.0)
        decoder = self._vae.stream_decoder(max_frames_per_call=1 if self.options.low_vram else None)  # 1 latent frame a call: smallest
        owners = {"generator": generator, "decoder": decoder}  # the streaming state a checkpoint carries
        contexts = None
        if vace_module is not None:  # the VACE context stream: two encoder caches and the input buffers
            contexts = owners["vace"] = job.vace.open(
                self.wan_vae(), num_latent_frames=job.schedule.num_latent_frames, width=job.width, height=job.height,
                frames_per_chunk=job.stream.frames_per_chunk)
        source = self._source_latents(job, summary)
        if source is not None:
            owners["encoder"] = source.encoder  # video-to-video: the encoder's causal caches
        finishing = [0.0]  # when ffmpeg began finishing the file

        def manifest_for(path: Path, complete: bool | None) -> dict:
            """The manifest of the file about to be published; the writer publishes both as one step.
            None: the preview file that is still growing (frames and sha256 are not known yet)."""
            if complete is None:
                return {**ident, "video": {"path": str(path), "complete": False, "in_progress": True, "frames": None,
                                           "sha256": None, "fps": FPS, "width": job.width, "height": job.height,
                                           "encoder": writer.encoder, "codec": "h264", "pix_fmt": "yuv420p"}}
            if writer.remux_seconds is not None:
                summary.timings["remux"] = writer.remux_seconds
            if complete:
                self.reporter.stop()
                summary.timings["write"] += time.perf_counter() - finishing[0]  # ffmpeg finishing (+faststart)
            summary.complete, summary.output = complete, str(path)
            self._finish(summary, started)
            summary.sha256 = sha256_file(writer.tmp)  # ffmpeg has finished the file; it is published next
            if source is not None:
                ident["input"]["video"]["chunk_strengths"] = [round(v, 6) for v in source.strengths]
            return {**ident, **figures(summary)}

        existed = job.output.exists()
        writer = recorder = None
        stop = StopRequest(lambda signum: self.reporter.warn(
            f"{name(signum)}: stopping after this chunk; the chunks generated are decoded and kept "
            "(Ctrl-C again to stop at once, keeping only what is written)"))
        try:
            sheet = None
            if self.options.sheet:
                from memflow_cli.sheet import ContactSheet, sheet_path

                sheet = ContactSheet.for_timeline(job.timeline, job.schedule.total_frames, job.width, job.height,
                                                  title=f"{job.output.name} · seed {job.seed}",
                                                  live=sheet_path(partial_path(job.output)),
                                                  temp_for=partial_path(job.output))
            writer = VideoWriter(job.output, job.width, job.height, FPS, manifest=manifest_for,
                                 preview=self.options.preview, sheet=sheet,
                                 fragment_frames=max(c.frames for c in job.schedule.chunks))
            summary.encoder = writer.encoder
            with writer, stop:
                start = 0
                if checkpoint is not None:
                    t = time.perf_counter()
                    checkpoint.restore(owners, self.device)
                    for frame in checkpoint.frames_written(job.width, job.height):
                        writer.write(frame)
                        summary.frames += 1
                    if summary.frames != checkpoint.frames:
                        from memflow_cli.resume import ResumeError

                        raise ResumeError(f"{checkpoint.folder}: holds {summary.frames} frames, its record says "
                                          f"{checkpoint.frames}; remove it (or render with -y) to start over")
                    start = checkpoint.chunk
                    summary.timings["resume"] = time.perf_counter() - t
                    self.reporter.stage(f"resumed at frame {summary.frames} of {summary.total_frames}: continuing with "
                                        f"chunk {start + 1} of {job.schedule.num_chunks}")  # 1-based, as the progress
                recorder = CheckpointRecorder(resume_dir(job.output), ident, job.width, job.height, FPS,
                                              self.options.checkpoint_every, resumed=checkpoint)
                self.reporter.start(job.schedule, start, summary.frames)  # after a resume: from where it was
                self._stream(job, conditioner, generator, decoder, writer, summary, on_chunk, start, recorder, owners, stop,
                             contexts, source)
                if stop.requested:
                    raise KeyboardInterrupt  # stopped at a chunk boundary: the writer keeps the partial file
                finishing[0] = time.perf_counter()
        except KeyboardInterrupt as exc:
            self.reporter.stop()
            if recorder is not None:
                recorder.abandon_open_segment()
            self._finish(summary, started)
            code = exit_code(stop.signum) if stop.signum is not None else exit_code_of(exc)
            raise self._interrupted(job, writer, recorder, summary, existed, code) from None
        except BaseException:
            if recorder is not None:
                recorder.abandon_open_segment()  # the last complete checkpoint stays usable
            raise
        self.reporter.stop()
        recorder.remove()
        summary.manifest = str(writer.manifest)
        stale = partial_path(job.output)
        if stale.exists():  # an earlier interrupted attempt is superseded by this complete file
            stale.unlink()
            manifest_path(stale).unlink(missing_ok=True)
        return summary

    def _checkpoint_to_resume(self, job: RenderJob, ident: dict):
        """The checkpoint to continue from (--resume), after checking it is this render's and intact."""
        from memflow_cli.resume import Checkpoint, clean_stale, is_incomplete, read_meta, resume_dir

        folder = resume_dir(job.output)
        clean_stale(folder)  # what a killed render left beside it (never a live one's)
        if folder.is_dir() and is_incomplete(folder):  # no checkpoint: what a failed render of an older version left
            import shutil

            self.reporter.warn(f"{folder}: an incomplete checkpoint left by a failed render (no readable meta.json); "
                               "removed it")
            shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            if self.options.resume:
                self.reporter.warn(f"--resume: no checkpoint at {folder}; rendering from the start")
            return None
        if self.options.resume:
            checkpoint = Checkpoint.load(folder, ident["fingerprint"], ident["settings"], ident["input"].get("sha256"))
            checkpoint.check_position(job.schedule.num_chunks, job.schedule.total_frames)
            return checkpoint
        if not self.options.overwrite:
            meta = read_meta(folder)
            if meta is None:
                raise InputError(f"{folder}: exists and is not a memflow checkpoint (files of another kind in it); "
                                 "move it away or choose another output name with -o")
            if meta.get("fingerprint") != ident["fingerprint"]:
                from memflow_cli.resume import _difference

                of = meta.get("input") or "another input"
                raise InputError(f"{folder}: holds an interrupted render of {of} that this render cannot continue "
                                 f"({_difference(meta, ident['settings'], ident['input'].get('sha256'))}); render it "
                                 "again with its own input and settings and --resume to finish it, choose another "
                                 "output name with -o, or -y/--overwrite to discard it")
            raise InputError(f"{folder}: an interrupted render of {job.output} can be continued; add --resume to "
                             "continue it, or -y/--overwrite to start over")
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return None

    @staticmethod
    def _interrupted(job: RenderJob, writer, recorder, summary: RenderSummary, existed: bool, code: int) -> Interrupted:
        """Say exactly what an interrupted render kept (the exit code is 128 + the signal)."""
        what = "stopped"  # by Ctrl-C or a signal: the user's choice, said plainly (not as an error)
        old = f"; the existing {job.output} was left untouched" if existed else ""
        published = getattr(writer, "published", None)
        if published == job.output:  # the signal came while the finished video was being put in place
            summary.complete, summary.output, summary.manifest = True, str(job.output), str(writer.manifest)
            return Interrupted(f"{what} after the video was complete: kept {job.output} and {writer.manifest}",
                               summary, code)
        if writer is None or writer.partial is None:
            return Interrupted(f"{what} before a frame was complete: nothing was written{old}", summary, code)
        summary.output, summary.manifest = str(writer.partial), str(writer.manifest)
        kept = f"kept {writer.partial} and its manifest {writer.manifest}"
        if recorder is not None and recorder.saves:
            kept += f", and a checkpoint in {recorder.folder} (add --resume to the same command to continue)"
        return Interrupted(f"{what} after {summary.frames} of {summary.total_frames} frames; {kept}{old}", summary, code)

    def _source_latents(self, job: RenderJob, summary: RenderSummary):
        """Video-to-video: the input video's chunks through the streaming VAE encoder (None for text-to-video)."""
        if job.video is None:
            return None
        from memflow_cli.v2v import SourceLatents

        try:
            encoder = self._vae.stream_encoder()
        except RuntimeError:
            raise CheckpointError(f"{self.weights.vae}: this VAE file has no encoder weights; video-to-video "
                                  "needs the full Wan2.1_VAE.pth") from None
        v = job.video
        self.reporter.stage(f"video-to-video: {v.info.describe()}; {v.info.uses(v.frames)}, fit {v.fit}, strength "
                            f"{v.strength:g}" + (" with the noise controller" if v.noise_controller else ""))
        timings = summary.timings
        timings.update(read=0.0, vae_encode=0.0)
        sync = lambda: synchronize(self.device)  # noqa: E731
        if self.overlap and self.device.type == "cuda":  # the loop's stream only: never wait for the decode stream
            sync = lambda: torch.cuda.current_stream(self.device).synchronize()  # noqa: E731
        return SourceLatents(job.video, job.width, job.height, encoder, timings=timings, device=self.device,
                             synchronize=sync)

    @property
    def overlap(self) -> bool:
        """Whether decode + write run on the stage (decode_stage.py): --overlap on or auto, and not --low-vram.
        (With auto on CUDA the stage may still end up serial: `_schedule_probe`.)"""
        from memflow_cli.decode_stage import overlap_mode

        return overlap_mode(self.options.overlap) != "off" and not self.options.low_vram

    def _stream(self, job, conditioner, generator, decoder, writer, summary, on_chunk, start, recorder, owners, stop,
                contexts=None, source=None) -> None:
        """source → generator → decoder → writer, one chunk at a time; memory stays flat.

        Between chunks (the only points where the streaming state is consistent) a checkpoint is saved
        when one is due or a stop was requested; after a requested stop the loop ends there.
        """
        from memflow_cli.decode_stage import overlap_mode

        summary.schedule = {"overlap": overlap_mode(self.options.overlap),
                            "chosen": "overlap" if self.overlap else "serial", "measured": False}
        if self.overlap:  # (with --overlap auto on CUDA, _schedule_probe measures and may choose serial)
            return self._stream_overlapped(job, conditioner, generator, decoder, writer, summary, on_chunk, start,
                                           recorder, owners, stop, contexts, source)
        from memflow_cli.model.vae import pixels_to_uint8

        timings = summary.timings
        # video-to-video: after a resume the input restarts at the same chunk (the encoder's caches are restored)
        inputs = source.iterate(start) if source is not None else None
        for chunk in job.schedule.chunks[start:]:
            if chunk.changed:  # (after a resume, the current prompt and a pending re-cache are restored state)
                generator.set_conditioning(conditioner(chunk.conditioning))
            given = next(inputs) if inputs is not None else None  # read + VAE-encode, timed by the source
            t = time.perf_counter()
            latents = generator.next_chunk(contexts.next_chunk() if contexts is not None else None,
                                           source_latents=given.latents if given is not None else None,
                                           strength=given.strength if given is not None else None)
            synchronize(self.device)
            t2 = time.perf_counter()
            frames = pixels_to_uint8(decoder.decode(latents))[: chunk.frames].cpu().numpy()
            synchronize(self.device)
            t3 = time.perf_counter()
            writer.write(frames)
            recorder.write(frames)
            t4 = time.perf_counter()
            timings.setdefault("first_frame", t4 - self._loaded_at)  # models loaded → first frame written
            timings["generate"] += t2 - t
            timings["decode"] += t3 - t2
            timings["write"] += t4 - t3
            summary.frames += len(frames)
            self.reporter.chunk(chunk, summary.frames, summary.frames / max(timings["generate"], 1e-9))
            if on_chunk:
                on_chunk(chunk)
            last = chunk.index + 1 == job.schedule.num_chunks
            if not last and (stop.requested or recorder.due()):
                recorder.save(owners, chunk.index + 1, summary.frames, timings)
                timings["checkpoint"] = recorder.seconds
            if stop.requested and not last:
                return

    def _stream_overlapped(self, job, conditioner, generator, decoder, writer, summary, on_chunk, start, recorder,
                           owners, stop, contexts=None, source=None) -> None:
        """`_stream` with decode + write on a DecodeStage: chunk k is decoded and written while k+1 generates.

        The loop never synchronises the device: generation is timed with events on its stream, read once the
        device has passed them; decode and write are timed by the stage. `on_chunk(chunk)` is called once the
        chunk is generated and handed to the stage (the stop it may ask for comes after that chunk, as in the
        serial loop); summary.frames and the progress count frames written. Before a checkpoint and at a
        requested stop the stage is drained: the decoder's state, the frames written and the count agree.
        """
        from memflow_cli.decode_stage import DecodeStage, StreamLaps

        timings = summary.timings
        timings["queue_wait"] = 0.0  # the loop blocked on the decode/write stage: back-pressure and drains
        laps = StreamLaps(self.device)

        def add_generation(wait: bool = False) -> None:
            for _, seconds in laps.collect(wait):
                timings["generate"] += seconds

        def written(item) -> None:  # in this thread, in order, as the stage reports chunks written
            timings.setdefault("first_frame", item.at - self._loaded_at)  # models loaded → first frame written
            timings["decode"] += item.decode_s
            timings["write"] += item.write_s
            summary.frames += item.frames
            self.reporter.chunk(item.tag, summary.frames, summary.frames / max(timings["generate"], 1e-9))

        inputs = source.iterate(start) if source is not None else None
        stage = DecodeStage(decoder, (writer.write, recorder.write), self.device, on_written=written)
        probe = self._schedule_probe(stage, summary)
        try:
            with stage:
                try:
                    self._overlapped_loop(job, conditioner, generator, summary, on_chunk, start, recorder, owners,
                                          stop, contexts, inputs, stage, laps, add_generation, probe)
                except KeyboardInterrupt:
                    if stop.requested:  # a second Ctrl-C while stopping: at once; what is written is kept
                        stage.abandon()
                    raise
        finally:
            timings["queue_wait"] = stage.waited
            if probe is not None:
                summary.schedule = probe.report()
            try:
                add_generation(wait=True)  # after a drain the device is already past these events
            except RuntimeError:  # a failed device: the error that ended the render is the one to see
                pass

    def _schedule_probe(self, stage, summary: RenderSummary):
        """--overlap auto on CUDA: a ScheduleProbe that measures both schedules (None: overlap as asked)."""
        from memflow_cli.decode_stage import ScheduleProbe, overlap_mode

        mode = overlap_mode(self.options.overlap)
        if mode != "auto" or not (self.device.type == "cuda" or PROBE_SCHEDULE_ON_CPU):
            return None
        return ScheduleProbe(stage.drain, on_decided=lambda probe: self.reporter.stage(probe.describe()))

    @staticmethod
    def _overlapped_loop(job, conditioner, generator, summary, on_chunk, start, recorder, owners, stop, contexts,
                         inputs, stage, laps, add_generation, probe=None) -> None:
        timings = summary.timings
        for chunk in job.schedule.chunks[start:]:
            if chunk.changed:
                generator.set_conditioning(conditioner(chunk.conditioning))
            if probe is not None:
                probe.begin(chunk.index, chunk.changed)
            given = next(inputs) if inputs is not None else None  # read + VAE-encode, timed by the source
            laps.lap(None)
            latents = generator.next_chunk(contexts.next_chunk() if contexts is not None else None,
                                           source_latents=given.latents if given is not None else None,
                                           strength=given.strength if given is not None else None)
            laps.lap("generate")
            stage.put(latents, chunk.frames, chunk)  # waits while the stage is full; raises its errors
            del latents
            if probe is not None:
                if probe.serial(chunk.index):  # the serial schedule: the next chunk's DiT runs alone
                    stage.drain()
                probe.end(chunk.index)
            add_generation()
            timings["queue_wait"] = stage.waited
            if on_chunk:
                on_chunk(chunk)
            last = chunk.index + 1 == job.schedule.num_chunks
            if not last and (stop.requested or recorder.due()):
                stage.drain()  # the decoder's caches and the frames written catch up with the generator
                add_generation(wait=True)
                timings["queue_wait"] = stage.waited
                recorder.save(owners, chunk.index + 1, summary.frames, timings)
                timings["checkpoint"] = recorder.seconds
            if stop.requested and not last:
                break
        stage.drain()

    def _summary(self, job: RenderJob, ident: dict) -> RenderSummary:
        s = ident["settings"]
        return RenderSummary(str(job.output), False, 0, job.schedule.total_frames, 0.0, job.schedule.num_chunks,
                             job.width, job.height, job.seed, s["device"], s["dtype"], s["attention"],
                             {"load": 0.0, "encode": 0.0, "generate": 0.0, "decode": 0.0, "write": 0.0},
                             warnings=list(job.warnings), model=job.model, vae=job.vae)

    def _skip(self, job: RenderJob, ident: dict, summary: RenderSummary, started: float) -> bool:
        """The overwrite rule (one rule for single renders and batches; -y/--overwrite/--force lifts it):
        an output that already is this exact render is skipped; any other existing output is refused."""
        if not job.output.exists():
            return False
        if is_complete_render(job.output, read_manifest(manifest_path(job.output)), ident["fingerprint"]):
            summary.skipped = summary.complete = True
            summary.frames = job.schedule.total_frames
            summary.manifest = str(manifest_path(job.output))
            self._finish(summary, started)
            summary.fps_end_to_end = summary.fps_generation = 0.0
            self.reporter.stage(f"{job.output} is already this render (same input, settings and weights): skipped; "
                                "-y/--overwrite renders it again")
            return True
        raise InputError(refusal(job.output))

    def _finish(self, summary: RenderSummary, started: float) -> None:
        total = time.perf_counter() - started
        summary.timings["total"] = total
        summary.seconds = summary.frames / FPS
        summary.fps_end_to_end = summary.frames / total if total > 0 else 0.0
        gen = summary.timings.get("generate", 0.0)
        compiled = self._compile_figures()
        if compiled is not None:  # compiling is a one-off: reported apart from the generation rate
            decoder = getattr(getattr(self._vae, "module", None), "compiled_decoder", None)
            if decoder is not None:  # the decoder's steady calls (decoders.compile_decoder); in decode time
                compiled["decoder"] = decoder.stats.to_dict()
            summary.compile = compiled
            summary.timings["compile"] = compiled["compile_seconds"]
            gen = max(gen - compiled["compile_seconds"], 0.0)
        summary.fps_generation = summary.frames / gen if gen > 0 else 0.0
        if self.device.type == "cuda":
            summary.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        summary.peak_rss_bytes = rss if sys.platform == "darwin" else rss * 1024

    def _compile_stats(self):
        block = self._model.compiled_block if self._model is not None else None
        return getattr(block, "stats", None)

    def _compile_figures(self) -> dict | None:
        """--compile: this render's share of the compiled block's figures (a batch compiles once)."""
        stats = self._compile_stats()
        if stats is None:
            return None
        before = self._compile_before or {}
        now = stats.to_dict()
        counts = ("compiled_calls", "compile_seconds", "compilations")
        return {**now, **{k: round(now[k] - before.get(k, 0), 3) for k in counts}}

    # -- batches -----------------------------------------------------------------------------------

    def _check_batch_outputs(self, items: Sequence[tuple[str, object]], jobs: Sequence[RenderJob]) -> None:
        """The single-render rule for the whole batch: no file any item writes (video, manifest, partial file,
        checkpoint, lock) may be a file any item reads (each item's timeline, also one that failed to read,
        and its LoRAs). Raises InputError (exit 2) before anything renders: the batch is refused as a whole."""
        inputs: list[Path] = []
        for name, _ in items:
            path = Path(str(name).rsplit(" line ", 1)[0])
            if path.exists():
                inputs.append(path)
        for job in jobs:
            inputs.extend(job_inputs(job.timeline))
            inputs.extend(lora.file.path for lora in job.loras or ())
        for job in jobs:
            check_output_path(job.output, inputs=inputs)

    def render_batch(self, items: Sequence[tuple[str, Timeline | MemflowError]]) -> list[BatchResult]:
        """Render every item; a bad or failing item is reported and the others go on.

        `items` are (name, timeline) pairs, or (name, error) for an input that could not be read. Every
        item is planned first; the prompts of all items to render are encoded up front; then the items
        stream one after another through the same loaded weights. Ctrl-C stops the whole batch.
        """
        results: list[BatchResult | None] = [None] * len(items)
        jobs: list[tuple[int, RenderJob]] = []
        outputs: dict[Path, str] = {}
        for i, (name, item) in enumerate(items):
            if isinstance(item, MemflowError):
                results[i] = BatchResult(name, "failed", message=str(item), exit_code=item.exit_code)
                continue
            try:
                job = self.plan(item)
            except MemflowError as exc:
                results[i] = BatchResult(name, "failed", message=str(exc), exit_code=exc.exit_code)
                continue
            key = job.output.resolve()
            if key in outputs:
                results[i] = BatchResult(name, "failed", str(job.output), exit_code=InputError.exit_code,
                                         message=f"same output as {outputs[key]}; give the items different names")
                continue
            outputs[key] = name
            jobs.append((i, job))
        self._check_batch_outputs(items, [job for _, job in jobs])

        todo = []
        for i, job in jobs:
            try:
                if not self.options.overwrite and job.output.exists() and self.already_rendered(job):
                    results[i] = BatchResult(job.name, "skipped", str(job.output), message="already rendered")
                    continue
            except MemflowError as exc:  # the weights themselves are missing or broken: nothing can render
                for k, j in jobs:
                    results[k] = results[k] or BatchResult(j.name, "failed", str(j.output), message=str(exc),
                                                           exit_code=exc.exit_code)
                return results  # type: ignore[return-value]
            todo.append((i, job))
        # Grouped by model (in order of first appearance), so that each model's DiT loads once.
        first_seen = {m: n for n, m in reversed(list(enumerate(job.model for _, job in todo)))}
        todo.sort(key=lambda item: first_seen[item[1].model])
        if todo:
            self.use(todo[0][1].model)
            try:
                self.check_memory(todo[0][1])
                self._quantization = todo[0][1].quantization
                self.encode_prompts([t for _, job in todo for t in job.timeline.texts])
            except MemflowError as exc:
                for i, job in todo:
                    results[i] = BatchResult(job.name, "failed", str(job.output), message=str(exc), exit_code=exc.exit_code)
                return results  # type: ignore[return-value]

        for n, (i, job) in enumerate(todo):
            self.reporter.item(n, len(todo), job.name)
            try:
                summary = self.render(job)
            except Interrupted as exc:
                results[i] = BatchResult(job.name, "interrupted", exc.summary.output if exc.summary else None,
                                         exc.summary, str(exc), exc.exit_code)
                for k, j in todo[n + 1:]:
                    results[k] = BatchResult(j.name, "not started", str(j.output), message="the batch was interrupted",
                                             exit_code=exc.exit_code)
                break
            except MemflowError as exc:
                results[i] = BatchResult(job.name, "failed", str(job.output), message=str(exc), exit_code=exc.exit_code)
                continue
            except Exception as exc:  # noqa: BLE001 — one broken item must not sink the batch
                results[i] = BatchResult(job.name, "failed", str(job.output), exit_code=1,
                                         message=f"{type(exc).__name__}: {exc}")
                continue
            results[i] = BatchResult(job.name, "skipped" if summary.skipped else "done", summary.output, summary,
                                     "already rendered" if summary.skipped else "")
        return results  # type: ignore[return-value]


def render(
    timeline: Timeline,
    options: RenderOptions | None = None,
    *,
    reporter: Reporter | None = None,
    on_chunk: Callable[[ChunkPlan], None] | None = None,
) -> RenderSummary:
    """Render one timeline with a fresh Renderer: the one-call Python API."""
    options = options or RenderOptions()
    job = plan_job(timeline, options)  # input errors before the device or any weight is touched
    return Renderer(options, reporter).render(job, on_chunk=on_chunk)


def batch_exit_code(results: Sequence[BatchResult]) -> int:
    """0 when every item was rendered or skipped; else the worst item's code (130 if interrupted)."""
    codes = [r.exit_code for r in results if r.status not in ("done", "skipped")]
    if not codes:
        return 0
    return 130 if 130 in codes else max(codes)
