"""Timeline (seconds) → per-chunk plan: how many chunks, and which conditioning each chunk uses.

Generation runs in chunks of 3 latent frames; the VAE turns latent frame 0 into 1 video frame and every
later latent frame into 4, so chunk 0 yields 9 video frames and every later chunk 12. A block that starts
at t seconds takes effect at the first chunk whose first video frame is at or after round(t·16)
(`timelines.md` §2). The video ends after exactly round(end·16) frames; the surplus frames of the last
chunk are dropped.

A chunk's conditioning is a small immutable tree: a `Blend` of prompts, or a `Transition` from whatever
was in use to a target blend at progress t. Equal trees mean equal tensors, so "did the conditioning
change" is a plain comparison, and `conditioning.py` can cache one tensor per distinct tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from memflow_cli.limits import DEFAULT_MAX_HOURS, check_length
from memflow_cli.timeline import FPS, Block, Timeline

LATENT_FRAMES_PER_CHUNK = 3
FIRST_CHUNK_FRAMES = 9  # 1 + 4·2 video frames from latent frames 0, 1, 2
CHUNK_FRAMES = 12  # 4·3 video frames from three later latent frames


def chunk_start_frame(index: int) -> int:
    """First video frame produced by chunk `index`."""
    return 0 if index == 0 else FIRST_CHUNK_FRAMES + CHUNK_FRAMES * (index - 1)


def first_chunk_at_or_after(frame: int) -> int:
    """Index of the first chunk whose first video frame is at or after `frame` (inverse of chunk_start_frame)."""
    if frame <= 0:
        return 0
    if frame <= FIRST_CHUNK_FRAMES:
        return 1
    return 1 + -(-(frame - FIRST_CHUNK_FRAMES) // CHUNK_FRAMES)


def chunks_for_frames(frames: int) -> int:
    """Fewest chunks whose video frames cover `frames` (at least one chunk)."""
    if frames <= FIRST_CHUNK_FRAMES:
        return 1
    return 1 + -(-(frames - FIRST_CHUNK_FRAMES) // CHUNK_FRAMES)


@dataclass(frozen=True)
class Blend:
    """A weighted blend of prompts; weights sum to 1. `method` is "linear" or "slerp" (two prompts only)."""

    texts: tuple[str, ...]
    weights: tuple[float, ...]
    method: str = "linear"

    @staticmethod
    def of(block: Block, method: str = "linear") -> "Blend":
        # Equal texts inside one block are merged so that a blend of "a" with "a" is just "a".
        merged: dict[str, float] = {}
        for prompt, weight in zip(block.prompts, block.weights):
            if weight > 0:
                merged[prompt.text] = merged.get(prompt.text, 0.0) + weight
        if len(merged) != 2:
            method = "linear"  # slerp is defined for exactly two prompts
        return Blend(tuple(merged), tuple(merged.values()), method if len(merged) > 1 else "linear")

    def describe(self) -> str:
        if len(self.texts) == 1:
            return _short(self.texts[0])
        return f" {self.method} + ".join(f"{w:.0%} {_short(t)}" for t, w in zip(self.texts, self.weights))


@dataclass(frozen=True)
class Transition:
    """Part-way from `source` (the conditioning in use when the transition began) to `target`: t in (0, 1)."""

    source: "Conditioning"
    target: Blend
    t: float
    method: str = "linear"

    def describe(self) -> str:
        return f"{self.t:.0%} {self.method} → {self.target.describe()}"


Conditioning = Union[Blend, Transition]


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    first_frame: int  # first video frame of this chunk
    frames: int  # video frames of this chunk that are kept (the last chunk may drop some)
    conditioning: Conditioning
    changed: bool  # conditioning differs from the previous chunk's: the generator re-caches
    block: int  # index of the timeline block in effect (sorted order)


@dataclass(frozen=True)
class Schedule:
    total_frames: int
    chunks: tuple[ChunkPlan, ...]
    fps: int = FPS

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def num_latent_frames(self) -> int:
        return LATENT_FRAMES_PER_CHUNK * len(self.chunks)

    @property
    def seconds(self) -> float:
        return self.total_frames / self.fps

    @property
    def switches(self) -> list[int]:
        """Indices of chunks (after the first) where the conditioning changes."""
        return [c.index for c in self.chunks[1:] if c.changed]


def plan(timeline: Timeline, *, blend_method: str = "linear", max_hours: float = DEFAULT_MAX_HOURS) -> Schedule:
    """Lay the timeline's blocks onto chunks.

    `blend_method` is how a block's own prompts are mixed when it has exactly two ("linear" or "slerp");
    transitions between blocks use each block's `interpolation`. A timeline longer than `max_hours` of
    video is refused before a single chunk is planned.
    """
    check_length(timeline.end, timeline.source, max_hours)
    blocks = sorted(timeline.blocks, key=lambda b: b.start)
    total = round(timeline.end * FPS)
    count = chunks_for_frames(total)

    # Chunk at which each block takes effect. Two blocks landing on one chunk: the later one wins
    # (the earlier one is shorter than a chunk and would never be seen).
    starts: dict[int, int] = {}
    for i, block in enumerate(blocks):
        chunk = 0 if i == 0 else first_chunk_at_or_after(round(block.start * FPS))
        if chunk < count:
            starts[chunk] = i

    chunks: list[ChunkPlan] = []
    current: Conditioning | None = None
    active = 0
    pending: tuple[Conditioning, Blend, int, str] | None = None  # (source, target, steps, method)
    done = 0  # transition steps taken so far
    for c in range(count):
        if c in starts:
            active = starts[c]
            block = blocks[active]
            target = Blend.of(block, blend_method)
            if current is None or block.transition_steps <= 0 or target == current:
                current_next: Conditioning = target
                pending = None
            else:
                pending = (current, target, block.transition_steps, block.interpolation)
                done = 0
        if pending is not None:
            source, target, steps, method = pending
            done += 1
            if done >= steps:
                current_next = target  # reaches the target exactly on the N-th chunk
                pending = None
            else:
                current_next = Transition(source, target, done / steps, method)
        elif c not in starts:
            current_next = current  # gaps and the rest of a block keep the blend in use
        first = chunk_start_frame(c)
        kept = min(FIRST_CHUNK_FRAMES if c == 0 else CHUNK_FRAMES, total - first)
        chunks.append(ChunkPlan(c, first, kept, current_next, current_next != current, active))
        current = current_next
    return Schedule(total, tuple(chunks))


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
