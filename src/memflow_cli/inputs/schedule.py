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

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from memflow_cli.limits import DEFAULT_MAX_HOURS, check_length
from memflow_cli.inputs.timeline import FPS, Block, Timeline

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
class _Event:
    """A block taking effect at chunk `start`: straight to `target`, or (with a `source`) a transition of
    `steps` chunks from the conditioning in use then."""

    start: int
    block: int
    target: Blend
    source: "Conditioning | None" = None
    steps: int = 0
    method: str = "linear"

    def conditioning(self, index: int) -> Conditioning:
        if self.source is None:
            return self.target
        done = index - self.start + 1
        return self.target if done >= self.steps else Transition(self.source, self.target, done / self.steps, self.method)


class Chunks(Sequence):
    """The chunk plans of a schedule, computed on demand from the blocks' events: O(blocks) memory whatever
    the length (a 10^20-second timeline must not build a plan entry per chunk). Indexing, slicing (a lazy view),
    iteration and len work like a tuple's."""

    def __init__(self, count: int, total: int, events: tuple[_Event, ...]):
        self._count, self._total, self._events = count, total, events
        self._starts = [e.start for e in events]

    def __len__(self) -> int:
        return self._count

    def _event(self, index: int) -> _Event:
        return self._events[bisect.bisect_right(self._starts, index) - 1]

    def conditioning(self, index: int) -> Conditioning:
        return self._event(index).conditioning(index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return _View(self, range(self._count)[index])
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"chunk indices are integers, not {type(index).__name__}")
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"chunk {index} of {self._count}")
        event = self._event(index)
        current = event.conditioning(index)
        changed = index == 0 or current != self.conditioning(index - 1)
        first = chunk_start_frame(index)
        kept = min(FIRST_CHUNK_FRAMES if index == 0 else CHUNK_FRAMES, self._total - first)
        return ChunkPlan(index, first, kept, current, changed, event.block)

    def __iter__(self):
        return (self[i] for i in range(self._count))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other))

    def __hash__(self):
        return hash((self._count, self._total, self._events))

    def __repr__(self) -> str:
        return f"Chunks({self._count} chunks)"

    def switches(self) -> list[int]:
        """Chunks after the first where the conditioning changes: only event starts and transition chunks can."""
        found = []
        for n, event in enumerate(self._events):
            end = self._starts[n + 1] if n + 1 < len(self._events) else self._count
            last = min(end, event.start + max(event.steps, 1))
            found.extend(c for c in range(max(event.start, 1), last) if self.conditioning(c) != self.conditioning(c - 1))
        return found

    @property
    def blocks(self) -> int:
        """How many blocks the chunks use (the highest block index in effect + 1)."""
        return max(e.block for e in self._events) + 1


class _View(Sequence):
    """chunks[a:b]: the plans of a range of chunks, computed as they are read."""

    def __init__(self, chunks: Chunks, indices: range):
        self._chunks, self._indices = chunks, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return _View(self._chunks, self._indices[index])
        return self._chunks[self._indices[index]]

    def __iter__(self):
        return (self._chunks[i] for i in self._indices)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))


@dataclass(frozen=True)
class Schedule:
    total_frames: int
    chunks: Chunks
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
        return self.chunks.switches()

    @property
    def blocks(self) -> int:
        """How many timeline blocks take effect (the last one in use is block `blocks - 1`)."""
        return self.chunks.blocks


def plan(timeline: Timeline, *, blend_method: str = "linear", max_hours: float = DEFAULT_MAX_HOURS) -> Schedule:
    """Lay the timeline's blocks onto chunks.

    `blend_method` is how a block's own prompts are mixed when it has exactly two ("linear" or "slerp");
    transitions between blocks use each block's `interpolation`. A timeline longer than `max_hours` of
    video is refused before a single chunk is planned; the plan itself is O(blocks) in memory (`Chunks`).
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

    # One event per chunk where a block takes effect; between events the conditioning is the event's
    # (a transition reaches its target exactly on its N-th chunk, gaps keep the blend in use).
    events: list[_Event] = []
    for chunk in sorted(starts):
        block = blocks[starts[chunk]]
        target = Blend.of(block, blend_method)
        current = events[-1].conditioning(chunk - 1) if events else None
        if current is None or block.transition_steps <= 0 or target == current:
            events.append(_Event(chunk, starts[chunk], target))
        else:
            events.append(_Event(chunk, starts[chunk], target, current, block.transition_steps, block.interpolation))
    return Schedule(total, Chunks(count, total, tuple(events)))


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
