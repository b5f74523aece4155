"""The pipeline: the parts of a render loaded once (weights, prompt embeddings, DiT, decoder, VACE blocks,
compiled block), called once per job (`render`) or for a whole batch (`render_batch`).

What a diffusers pipeline is, without its framework: `memflow_cli.load(...)` builds one, and a Python program
or a batch renders many timelines through it. The stream of one job (its chunk loop, resume, publishing) is a
`stream.JobStream`; a batch's planning and bookkeeping is batch.py.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Sequence

import torch

from memflow_cli.errors import CheckpointError, MemflowError, counted
from memflow_cli.inputs.schedule import ChunkPlan
from memflow_cli.inputs.timeline import Timeline
from memflow_cli.render.job import (BatchResult, OutOfMemory, RenderJob, RenderOptions, RenderSummary, _system_memory,
                                    out_of_memory, plan_job, resolve_device, resolve_dtype)
from memflow_cli.render.manifest import identity, input_path, is_complete_render, provenance, read_manifest
from memflow_cli.render.progress import Reporter
from memflow_cli.render.video import manifest_path

class Pipeline:
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
            from memflow_cli.weights.hub import resolve_weights
            from memflow_cli.weights.models import revision_for

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
            from memflow_cli.weights.models import choose_model

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
        from memflow_cli.inputs.prompts import PromptEncoder

        t = time.perf_counter()
        self.reporter.stage(f"encoding {counted(len(todo), 'prompt')}")
        from memflow_cli.weights.low_vram import text_encoder_file

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
            from memflow_cli.engine.decoders import decoder_spec
            from memflow_cli.weights.hub import resolve_weights, sha256_file

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
        from memflow_cli.engine.decoders import load_decoder
        from memflow_cli.weights.low_vram import load_generator
        from memflow_cli.model.dit import DiTConfig
        from memflow_cli.weights.models import get_model

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
            from memflow_cli.engine.compiled import compile_blocks

            compile_blocks(self._model, mode=self.compile_mode, on_fallback=lambda why: self.reporter.warn(
                f"--compile: compiling failed, running eager ({why})"))
        if self._vae_kind != vae:
            self.reporter.stage(f"loading the {vae} decoder")
            self._vae = None  # free the previous decoder first
            self._vae = load_decoder(vae, self.decoder_file(vae)["path"], device=self.device, dtype=self.dtype)
            self._vae_kind = vae
        if self.options.compile and self.device.type == "cuda":  # (on the CPU oneDNN's convs bound it: eager)
            from memflow_cli.engine.decoders import compile_decoder

            compile_decoder(self._vae, on_fallback=lambda why: self.reporter.warn(
                f"--compile: compiling the decoder failed, decoding eager ({why})"))
        self.timings["load"] += time.perf_counter() - t

    @property
    def compile_mode(self) -> str:
        from memflow_cli.engine.compiled import default_mode

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
        from memflow_cli.weights.low_vram import plan_for

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
        from memflow_cli.weights import memory_plan
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
            from memflow_cli.weights.loras import prepare_loras

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
        from memflow_cli.render.manifest import fingerprint
        from memflow_cli.weights.models import get_model, manifest_entry

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
        from memflow_cli.render.outputs import output_lock
        from memflow_cli.render.stream import JobStream

        started = time.perf_counter()
        if isinstance(job, Timeline):
            job = self.plan(job)
        with output_lock(job.output):
            try:
                return JobStream(self, job, on_chunk, started).run()
            except (MemoryError, RuntimeError) as exc:
                if not out_of_memory(exc):
                    raise
                raise self._out_of_memory(job, exc) from None

    def _out_of_memory(self, job: RenderJob, exc: BaseException) -> "OutOfMemory":
        """The allocator's failure as a message: the resolution, what the memory plan says it needs, the levers."""
        where = "GPU" if self.device.type == "cuda" else "CPU"
        needs = ""
        try:
            from memflow_cli.weights.low_vram import plan_for

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

    def render_batch(self, items: Sequence[tuple[str, Timeline | MemflowError]]) -> list[BatchResult]:
        """Render every item; a bad or failing item is reported and the others go on (see batch.py)."""
        from memflow_cli.render.batch import render_batch

        return render_batch(self, items)

    def _compile_stats(self):
        block = self._model.compiled_block if self._model is not None else None
        return getattr(block, "stats", None)

    @property
    def overlap(self) -> bool:
        """Whether decode + write run beside generation (decode_stage.py): --overlap on or auto, and not
        --low-vram. (With auto on CUDA the stream may still end up serial: its ScheduleProbe measures.)"""
        from memflow_cli.engine.decode_stage import overlap_mode

        return overlap_mode(self.options.overlap) != "off" and not self.options.low_vram


Renderer = Pipeline  # its name before the package had layers


def render(
    timeline: Timeline,
    options: RenderOptions | None = None,
    *,
    reporter: Reporter | None = None,
    on_chunk: Callable[[ChunkPlan], None] | None = None,
) -> RenderSummary:
    """Render one timeline with a fresh pipeline: the one-call Python API."""
    options = options or RenderOptions()
    job = plan_job(timeline, options)  # input errors before the device or any weight is touched
    return Pipeline(options, reporter).render(job, on_chunk=on_chunk)
