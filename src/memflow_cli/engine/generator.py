"""The streaming loop: chunks of latent frames, each denoised in a few steps against everything remembered.

Per chunk (MemFlow's interactive pipeline):
  1. if the conditioning changed since the last chunk: re-cache — the last `local_attn_size` clean frames
     run once more under the new prompt, rewriting the local window (the sink keeps the first prompt);
  2. denoise: one DiT pass per step on the noisy chunk; between steps x0 is re-noised to the next sigma;
     only the first step refreshes the memory bank;
  3. context pass: the clean x0 once more at t = context_noise, committing its keys/values to the cache
     and, on record chunks, staging its first frame for the memory bank.
LongLive streams the same way with no memory bank (`bank_size=0`, `record_interval=None`): its keys are
the sink frames and the local window only.

Random numbers follow the reference's order: one generator seeded once draws the whole initial noise
`[1, T, C, h, w]` first, then the re-noising draws `[3, C, h, w]` per chunk. We never hold that whole draw
(it grows with the video: gigabytes for a long one). Instead two generators share the seed: one draws the
initial noise a chunk at a time when the chunk starts, the other — advanced past the whole initial draw on
first use, drawing it piecewise into one reused buffer — makes the re-noising draws. On the CPU, draws whose
sizes are multiples of 16 values continue one another exactly as one big draw (each chunk holds 16 channels),
so the stream is the reference's bit for bit (the golden cases check it). On CUDA the Philox kernel lays a
draw out by its total size, so per-chunk draws are a different (still seeded, reproducible on the same
device) stream than the reference's single draw. Both can be injected instead.

Video-to-video: a chunk may come with input latents z and a strength s in (0, 1]. The chunk then starts
from x = (1 - s)·z + s·eps at sigma = s, eps being the very draw text-to-video uses as that chunk's
initial noise; the first step runs at the timestep whose sigma is s, then the step list's steps whose
sigma is below s. A re-noise to step k of the list always uses text-to-video's draw for step k (draws for
skipped steps are still taken), so the random stream, the record schedule and everything else stay those
of text-to-video; at s = 1 (and a list starting at t = 1000) the chunk is exactly the text-to-video chunk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from memflow_cli.engine.memory import MemoryLayout, StreamMemory
from memflow_cli.model.dit import CausalDiT
from memflow_cli.model.vace import VaceGuide, VaceModule, VaceTextCache
from memflow_cli.engine.flow_matching import DEFAULT_STEPS, FlowMatchSchedule, add_noise, flow_to_x0

BANK_STAGING_MODES = ("interactive", "every_chunk")


@dataclass(frozen=True)
class StreamSettings:
    """How MemFlow streams. Defaults are the released interactive configuration."""

    frames_per_chunk: int = 3
    local_attn_size: int = 12  # frames of self-attention context: sink + local window
    sink_size: int = 3
    bank_size: int = 3  # memory-bank slots, one frame each; 0: no bank (LongLive)
    record_interval: int | None = 3  # a record chunk (staging a bank frame) every this many chunks; None: never
    sma: bool = False  # sparse memory activation
    sma_top_k: int = 3
    # "interactive": only record chunks stage a bank frame (the multi-prompt pipeline, default);
    # "every_chunk": every chunk stages, record chunks advance the slot (the single-prompt pipeline).
    bank_staging: str = "interactive"
    context_noise: float = 0.0
    denoising_steps: tuple[int, ...] = DEFAULT_STEPS
    warp: bool = True
    shift: float = 5.0

    def __post_init__(self):
        if self.bank_staging not in BANK_STAGING_MODES:
            raise ValueError(f"bank_staging must be one of {BANK_STAGING_MODES}, got {self.bank_staging!r}")
        if not 0 <= self.sink_size < self.local_attn_size:
            raise ValueError("sink_size must be at least 0 and smaller than local_attn_size")
        if self.local_attn_size - self.sink_size < self.frames_per_chunk:
            raise ValueError("the local window (local_attn_size - sink_size) must hold at least one chunk")
        if not self.denoising_steps:
            raise ValueError("denoising_steps must not be empty")
        if self.bank_size < 0:
            raise ValueError(f"bank_size must be at least 0, got {self.bank_size}")
        if self.bank_size > 0 and (self.record_interval is None or self.record_interval < 1):
            raise ValueError(f"a memory bank (bank_size {self.bank_size}) needs a record_interval of at least 1")

    @property
    def has_bank(self) -> bool:
        """Whether past frames are kept beyond sink and window (MemFlow) or not (LongLive)."""
        return self.bank_size > 0 and self.record_interval is not None

    def to_dict(self) -> dict:
        return asdict(self)


def switch_chunks(switch_frames: list[int], num_chunks: int, frames_per_chunk: int = 3) -> list[int]:
    """Chunk index at which each segment after the first starts, by the reference's rule.

    A switch at latent frame i acts at the first chunk whose start frame is >= i, and at most one segment
    advances per chunk (two switches inside one chunk push the later one to the next chunk).
    """
    starts, pending = [], list(switch_frames)
    for chunk in range(num_chunks):
        if pending and chunk * frames_per_chunk >= pending[0]:
            starts.append(chunk)
            pending.pop(0)
    return starts


@dataclass
class ChunkRecord:
    """What a chunk did, for traces and tests (filled only when the generator keeps records)."""

    index: int
    recached: bool
    step_x0: list[torch.Tensor] = field(default_factory=list)
    renoise: list[torch.Tensor] = field(default_factory=list)
    noise: torch.Tensor | None = None  # this chunk's initial noise [1, n, C, h, w]
    key_frames: list[int] = field(default_factory=list)  # per pass, layer-independent unless SMA
    bank_frames: list[list[int]] = field(default_factory=list)
    step_inputs: list[torch.Tensor] = field(default_factory=list)  # the noisy x fed to each step
    step_timesteps: list[float] = field(default_factory=list)
    strength: float | None = None  # video-to-video strength of this chunk (None: text-to-video)


class StreamingGenerator:
    """Generates a video's latents chunk by chunk. One object per video: it owns caches, bank and RNG."""

    # rebuilt by the constructor (from the model and the seed), so a resume checkpoint does not carry them
    _transient = ("model", "noise")

    def __init__(
        self,
        model: CausalDiT,
        settings: StreamSettings = StreamSettings(),
        *,
        num_latent_frames: int,
        latent_height: int,
        latent_width: int,
        seed: int | None = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        noise: torch.Tensor | None = None,
        renoise: Callable[[int, int], torch.Tensor] | None = None,
        keep_records: bool = False,
        vace: VaceModule | None = None,
        vace_scale: float = 1.0,
    ):
        config = model.config
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype or param.dtype
        n = settings.frames_per_chunk
        if num_latent_frames <= 0 or num_latent_frames % n:
            raise ValueError(f"num_latent_frames must be a positive multiple of {n}, got {num_latent_frames}")
        _, ph, pw = config.patch_size
        if latent_height % ph or latent_width % pw:
            raise ValueError(f"latent size {latent_height}x{latent_width} must be a multiple of the patch {ph}x{pw}")

        self.model = model
        self.settings = settings
        self.num_latent_frames = num_latent_frames
        self.latent_shape = (config.in_dim, latent_height, latent_width)
        self.frame_tokens = config.frame_tokens(latent_height, latent_width)
        layout = MemoryLayout(
            layers=config.num_layers,
            heads=config.num_heads,
            head_dim=config.head_dim,
            frame_tokens=self.frame_tokens,
            sink_frames=settings.sink_size,
            bank_slots=settings.bank_size,
            window_frames=settings.local_attn_size - settings.sink_size,
        )
        self.memory = StreamMemory(layout, config.text_len, self.device, self.dtype, settings.sma_top_k if settings.sma else None)
        self.memory.bank.track_frames = keep_records  # records name the bank's frames on every device
        if model.compiled_block is not None:  # --compile: the buffers the compiled block writes in place
            from memflow_cli.engine.compiled import prepare_memory

            prepare_memory(model, self.memory)

        schedule = self.schedule = FlowMatchSchedule(shift=settings.shift)
        self.timesteps = schedule.warped_timesteps(settings.denoising_steps, settings.warp)
        self.sigmas = [schedule.sigma(t) for t in self.timesteps]
        self.context_sigma = schedule.sigma(settings.context_noise)

        seed = 0 if seed is None else int(seed)
        self._rng = self._renoise_rng = None  # initial-noise and re-noising generators (see the module doc)
        self._renoise_behind = 0  # initial-noise chunks the re-noising generator has still to skip
        if noise is None:
            self._rng = torch.Generator(device=self.device).manual_seed(seed)
        if renoise is None:
            self._renoise_rng = torch.Generator(device=self.device).manual_seed(seed)
            self._renoise_behind = 0 if noise is not None else num_latent_frames // n
        self.noise = noise.to(self.device, self.dtype) if noise is not None else None  # injected only
        expected = (1, num_latent_frames, *self.latent_shape)
        if self.noise is not None and tuple(self.noise.shape) != expected:
            raise ValueError(f"noise has shape {tuple(self.noise.shape)}, expected {expected}")
        self._renoise = renoise

        self.latents: list[torch.Tensor] = []  # clean chunks (needed by the re-cache; at most a window's worth kept)
        self.chunk_index = 0
        self._prompt: torch.Tensor | None = None
        self._prompt_changed = False
        self.keep_records = keep_records
        self.records: list[ChunkRecord] = []
        # VACE (optional): the blocks, the guidance scale and their text keys/values for the current prompt.
        self.vace = vace
        self.vace_scale = float(vace_scale)
        self.vace_text = VaceTextCache()

    # -- public -------------------------------------------------------------------------------------------

    @property
    def num_chunks(self) -> int:
        return self.num_latent_frames // self.settings.frames_per_chunk

    def set_conditioning(self, text_embedding: torch.Tensor) -> None:
        """Text embedding [L, text_dim] or [1, L, text_dim] (L <= text_len, zero-padded by the model).

        Takes effect at the next chunk; after the first chunk a change triggers the KV re-cache.
        """
        self._prompt = self.model.pad_text(text_embedding.to(self.device, self.dtype))
        self._prompt_changed = True
        self.vace_text.reset()

    @torch.no_grad()
    def next_chunk(self, vace_context: torch.Tensor | None = None, source_latents: torch.Tensor | None = None,
                   strength: float | None = None) -> torch.Tensor:
        """Generate the next chunk; returns its clean latents [1, frames_per_chunk, C, h, w].

        `vace_context` [1, R + frames_per_chunk, 96, h, w] (R reference frames first) guides the chunk's
        denoising passes through the VACE blocks; the context pass that commits the chunk's keys runs
        without hints, so the cache holds plain keys. At scale 0 the blocks are not run at all.

        Video-to-video: `source_latents` [1, frames_per_chunk, C, h, w] (normalized, like the VAE encoder
        gives them) and `strength` in (0, 1] (how much of them is replaced by noise).
        """
        if self.chunk_index >= self.num_chunks:
            raise IndexError("all chunks of this video have been generated")
        if self._prompt is None:
            raise RuntimeError("set_conditioning() must be called before the first chunk")
        n = self.settings.frames_per_chunk
        first = self.chunk_index * n
        record = ChunkRecord(self.chunk_index, recached=False) if self.keep_records else None

        self.apply_conditioning(record)

        guide = self._vace_guide(vace_context)
        x = self._initial_noise(first)
        if record is not None:
            record.noise = x
        # (timestep, sigma, index in the step list or None) of each step this chunk runs
        plan = [(t, sigma, k) for k, (t, sigma) in enumerate(zip(self.timesteps, self.sigmas))]
        if source_latents is not None or strength is not None:
            x, plan = self._video_start(x, source_latents, strength, plan)
            if record is not None:
                record.strength = plan[0][1]
        drawn = []  # re-noise draws of this chunk, taken in text-to-video's order
        for i, (t, sigma, _) in enumerate(plan):
            if record is not None:
                record.step_inputs.append(x)
                record.step_timesteps.append(t)
            # The bank is refreshed before the first step's blocks only.
            flow = self._pass(x, t, first, commit=False, stage=False, refresh_bank=(i == 0), record=record, vace=guide)
            x0 = flow_to_x0(x, flow, sigma)
            if record is not None:
                record.step_x0.append(x0)
            if i + 1 < len(plan):
                target = plan[i + 1][2]  # re-noise to step `target` with text-to-video's draw for it
                while len(drawn) < target:
                    drawn.append(self._next_renoise(len(drawn)))
                eps = drawn[target - 1]
                if record is not None:
                    record.renoise.append(eps)
                x = add_noise(x0, eps, plan[i + 1][1])
        while len(drawn) < len(self.timesteps) - 1:  # keep the random stream aligned with text-to-video
            drawn.append(self._next_renoise(len(drawn)))
        steps = len(plan)

        # Context pass: commit the clean chunk's keys. With a single denoising step the reference also
        # refreshes the bank here (its flag outlives the loop); we keep that for parity.
        self._pass(x0, self.settings.context_noise, first, commit=True, stage=self._stages(first),
                   refresh_bank=(steps == 1), record=record)
        self.latents.append(x0)
        self._forget_old_latents()
        if record is not None:
            record.bank_frames = [list(ids) for ids in self.memory.bank.frame_ids]
            self.records.append(record)
        self.chunk_index += 1
        return x0

    def _video_start(self, eps, source_latents, strength, plan):
        """x = (1 - s)·z + s·eps at sigma = s; the steps: t(s) first, then the list's steps below s."""
        if source_latents is None or strength is None:
            raise ValueError("video-to-video needs both source_latents and strength")
        s = float(torch.tensor(float(strength), dtype=torch.float32))  # sigmas are float32 values
        if not 0.0 < s <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        expected = tuple(eps.shape)
        if tuple(source_latents.shape) != expected:
            raise ValueError(f"source_latents has shape {tuple(source_latents.shape)}, expected {expected}")
        z = source_latents.to(self.device, self.dtype)
        x = add_noise(z, eps, s)
        steps = [(self.schedule.timestep_for_sigma(s), s, None)] + [p for p in plan if p[1] < s]
        return x, steps

    @torch.no_grad()
    def apply_conditioning(self, record: ChunkRecord | None = None) -> bool:
        """Run a pending prompt switch now (the re-cache) instead of at the start of the next chunk.

        `next_chunk` calls it; calling it first only lets a caller time the re-cache on its own.
        Returns whether a switch was applied.
        """
        if not self._prompt_changed:
            return False
        self._switch_prompt(self.chunk_index * self.settings.frames_per_chunk, record)
        self._prompt_changed = False
        return True

    def __iter__(self):
        while self.chunk_index < self.num_chunks:
            yield self.next_chunk()

    # -- internals ----------------------------------------------------------------------------------------

    def _stages(self, first: int) -> bool:
        if not self.settings.has_bank:
            return False  # nothing to stage into: without a bank, keys are sink + local window only
        if self.settings.bank_staging == "every_chunk":
            return True
        return self._is_record_chunk(first)

    def _is_record_chunk(self, first: int) -> bool:
        if not self.settings.has_bank:
            return False
        return first % (self.settings.frames_per_chunk * self.settings.record_interval) == 0

    def _vace_guide(self, context: torch.Tensor | None) -> VaceGuide | None:
        if context is None:
            return None
        if self.vace is None:
            raise ValueError("a VACE context was given but the generator has no VACE module")
        n = self.settings.frames_per_chunk
        expected = (self.vace.vace_patch_embedding.in_channels, *self.latent_shape[1:])
        if context.dim() != 5 or context.shape[1] < n or tuple(context.shape[2:]) != expected:
            raise ValueError(f"VACE context has shape {tuple(context.shape)}, expected [1, R + {n}, {', '.join(map(str, expected))}]")
        if self.vace_scale == 0.0:
            return None  # hints * 0 add nothing: skip the blocks
        return VaceGuide(self.vace, context.to(self.device, self.dtype), self.vace_scale, self.vace_text,
                         reference_frames=context.shape[1] - n)

    def _pass(self, x, t, first, *, commit, stage, refresh_bank, record, vace=None):
        memory = self.memory
        if refresh_bank and self.settings.has_bank:
            memory.refresh_bank()
        memory.begin_pass(first, x.shape[1], commit=commit, stage=stage)
        timesteps = torch.full(x.shape[:2], float(t), device=self.device, dtype=torch.float32)
        flow = self.model(x, timesteps, first, memory.text, memory, text_embedding=self._prompt, vace=vace)
        memory.end_pass(staging_advances=self._is_record_chunk(first))
        if record is not None:
            record.key_frames.append(memory.last_key_frames)
        return flow

    def _switch_prompt(self, first: int, record) -> None:
        """The reference's prompt switch: reset the text cache, re-cache the window, reset it again."""
        memory = self.memory
        memory.text.reset()
        if first == 0:
            return
        window = min(self.settings.local_attn_size, first)
        clean = torch.cat(self.latents, dim=1)[:, -window:]
        # One pass over the recent clean frames with the new prompt: the bank is refreshed first (against
        # the just-zeroed text keys), the keys are rewritten in place, nothing is staged.
        self._pass(clean, self.settings.context_noise, first - window, commit=True, stage=False,
                   refresh_bank=True, record=record)
        memory.text.reset()
        if record is not None:
            record.recached = True

    def _forget_old_latents(self) -> None:
        # Only the last local_attn_size frames can ever be re-cached.
        n = self.settings.frames_per_chunk
        keep = -(-self.settings.local_attn_size // n)
        del self.latents[:-keep]

    def _initial_noise(self, first: int) -> torch.Tensor:
        n = self.settings.frames_per_chunk
        if self.noise is not None:
            return self.noise[:, first : first + n]
        return torch.randn((1, n, *self.latent_shape), generator=self._rng, device=self.device, dtype=self.dtype)

    def _next_renoise(self, step: int) -> torch.Tensor:
        n = self.settings.frames_per_chunk
        if self._renoise is not None:
            eps = self._renoise(self.chunk_index, step).to(self.device, self.dtype)
        else:
            if self._renoise_behind:
                # Skip what the reference's whole initial draw consumed: the same draws, one chunk at a time.
                scratch = torch.empty((1, n, *self.latent_shape), device=self.device, dtype=self.dtype)
                for _ in range(self._renoise_behind):
                    torch.randn(scratch.shape, generator=self._renoise_rng, out=scratch)
                self._renoise_behind = 0
            eps = torch.randn((n, *self.latent_shape), generator=self._renoise_rng, device=self.device, dtype=self.dtype)
        return eps.reshape(1, n, *self.latent_shape)
