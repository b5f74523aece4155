"""The one chunk loop: conditioning → generator → decode stage, chunk after chunk. `render` and `bench` both run it.

Decoding runs on an `engine.decode_stage.DecodeStage` (a worker thread, on CUDA a second stream); whether the
loop waits for each chunk to be written is the schedule, a strategy handed in, not a copy of the loop: None
overlaps (chunk k decodes while k+1 generates), `SerialSchedule` waits after every chunk (the DiT and the decoder
never run at once: --overlap off, --low-vram), `ScheduleProbe` measures both on the first steady chunks and
keeps the faster (--overlap auto on CUDA). The loop never synchronises the device: its own stages are timed with
`StreamLaps` (events on its stream on CUDA), the stage times decode and write itself.

Between chunks, the only points where the streaming state is consistent, `between(chunk, last)` may drain the
stage and save a checkpoint; when it returns True the loop ends there (a requested stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from memflow_cli.engine.decode_stage import StreamLaps


@dataclass
class ChunkLoop:
    generator: Any  # engine.generator.StreamingGenerator
    conditioner: Callable[[Any], Any]  # a chunk's conditioning -> the text embedding to switch to
    stage: Any  # engine.decode_stage.DecodeStage: put / drain / waited
    laps: StreamLaps
    contexts: Any = None  # the VACE context stream (`next_chunk()` per chunk), or None
    inputs: Iterator | None = None  # video-to-video: one source chunk (.latents, .strength) per chunk
    schedule: Any = None  # None: overlap; else begin(index, changed) / serial(index) / end(index) (see above)
    recache_apart: bool = False  # run a prompt switch's re-cache as its own timed stage ("recache")
    on_lap: Callable[[str, float], None] = lambda stage, seconds: None

    def run(self, chunks: Sequence, *, on_chunk: Callable[[Any], None] | None = None,
            between: Callable[[Any, bool], bool] | None = None, last_index: int | None = None) -> None:
        """Stream `chunks` (ChunkPlans: index, frames, changed, conditioning). `last_index` is the index of the
        job's last chunk (no checkpoint or stop after it); default: the last one given."""
        last_index = chunks[-1].index if last_index is None and chunks else last_index
        for chunk in chunks:
            self.step(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            last = chunk.index == last_index
            if between is not None and not last and between(chunk, last):
                break
        self.stage.drain()
        self.collect_laps(wait=True)

    def step(self, chunk) -> None:
        """One chunk: switch the prompt if it changes here, generate, hand the latents to the decode stage."""
        generator, laps = self.generator, self.laps
        if chunk.changed:  # (after a resume, the current prompt and a pending re-cache are restored state)
            generator.set_conditioning(self.conditioner(chunk.conditioning))
            if self.recache_apart:
                laps.lap(None)
                laps.lap("recache" if generator.apply_conditioning() else None)  # (none before the first chunk)
        schedule = self.schedule
        if schedule is not None:
            schedule.begin(chunk.index, chunk.changed)
        given = next(self.inputs) if self.inputs is not None else None  # read + VAE-encode, timed by the source
        laps.lap(None)
        latents = generator.next_chunk(self.contexts.next_chunk() if self.contexts is not None else None,
                                       source_latents=given.latents if given is not None else None,
                                       strength=given.strength if given is not None else None)
        laps.lap("generate")
        self.collect_laps()
        self.stage.put(latents, chunk.frames, chunk)  # waits while the stage is full; raises its errors
        del latents
        if schedule is not None:
            if schedule.serial(chunk.index):  # the next chunk's DiT runs alone
                self.stage.drain()
            schedule.end(chunk.index)
        self.collect_laps()

    def collect_laps(self, wait: bool = False) -> None:
        for stage, seconds in self.laps.collect(wait):
            self.on_lap(stage, seconds)
