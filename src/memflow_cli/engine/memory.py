"""What the streaming DiT remembers: KV cache (sink + local window), memory bank (NAM), text cache.

Storage. Every layer's self-attention keys/values live in one fixed-size buffer per K and V,
`[layers, B, tokens, heads, head_dim]`, laid out by frame as

    [ sink frames | memory-bank slots | local window (a ring of the most recent frames) ]

so that in the steady state the key set of a pass is the whole buffer, a view with no copy. Attention has
no mask and keys carry their RoPE position from when they were written, so the order of keys inside the
key set does not change the result; that is what lets the local window be a ring written by index instead
of a buffer shifted left at every eviction.

All counters are Python ints that follow from the chunk schedule alone, never from tensor values: the
streaming loop needs no host-device synchronisation.

Each pass is planned before the model runs (`PassPlan`): from those ints come index tensors — where the
pass's keys are written, which tokens form its key set, whether its first frame is staged for the bank —
built once per pattern and reused. A layer's self-attention then only indexes with them (`LayerKeys`): its
code has no branch on the chunk number, so `torch.compile` traces one graph that serves every pass of the
steady state (compiled.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemoryLayout:
    """Sizes, in frames, of the three regions, and the geometry of one frame's keys."""

    layers: int
    heads: int
    head_dim: int
    frame_tokens: int
    sink_frames: int
    bank_slots: int
    window_frames: int  # local_attn_size - sink_size: frames the local window holds (current chunk included)
    batch: int = 1

    @property
    def frames(self) -> int:
        return self.sink_frames + self.bank_slots + self.window_frames


class CrossAttentionCache:
    """Per-layer text keys/values of the current conditioning, computed once per prompt by the model.

    `reset()` zeroes the tensors in place, like the reference: the memory bank scores its slots against
    these keys before the model refills them, so right after a prompt switch every score is exactly 0.
    """

    _transient = ("_layers",)  # views of keys/values, rebuilt by the constructor

    def __init__(self, layout: MemoryLayout, text_len: int, device, dtype):
        shape = (layout.layers, layout.batch, text_len, layout.heads, layout.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # one fixed pair of views per layer: the same tensors every pass (static inputs for CUDA graphs)
        self._layers = [(self.keys[i], self.values[i]) for i in range(layout.layers)]
        self.ready = False

    def fill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys.copy_(keys)
        self.values.copy_(values)
        self.ready = True

    def reset(self) -> None:
        self.keys.zero_()
        self.values.zero_()
        self.ready = False

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._layers[index]


class KVCache:
    """Sink and local window: the keys/values of committed frames, written by absolute frame index.

    Frames below `sink_frames` go to the sink; every later frame f goes to window slot
    (f - sink_frames) mod window_frames, so the window always holds the most recent frames.
    """

    def __init__(self, sink_k, sink_v, window_k, window_v, layout: MemoryLayout):
        self.sink_k, self.sink_v = sink_k, sink_v  # [L, B, sink*T, H, D] views
        self.window_k, self.window_v = window_k, window_v  # [L, B, window*T, H, D] views
        self.layout = layout
        self.committed_frames = 0  # frames whose clean keys have been committed (the reference's global end)

    def is_recompute(self, first: int, count: int) -> bool:
        """A pass over frames that were committed already (the re-cache after a switch)."""
        return first > 0 and first + count <= self.committed_frames

    def _runs(self, first: int, count: int):
        """Where the keys of frames [first, first+count) go: (to_sink, destination frame slot, source frame
        offset, frames) per run of consecutive slots.

        A recompute never touches the sink (it keeps the keys of the first prompt: the design of MemFlow's
        sink). Of a pass longer than the window, only its last `window_frames` frames are kept.
        """
        lay = self.layout
        protect_sink = self.is_recompute(first, count)
        oldest_kept = first + count - lay.window_frames  # earlier non-sink frames of this pass are dropped
        runs: list[list] = []
        for offset in range(count):
            frame = first + offset
            if frame < lay.sink_frames:
                if protect_sink:
                    continue
                place = (True, frame)
            elif frame >= oldest_kept:
                place = (False, (frame - lay.sink_frames) % lay.window_frames)
            else:
                continue
            last = runs[-1] if runs else None
            if last and last[0] == place[0] and last[1] + last[3] == place[1] and last[2] + last[3] == offset:
                last[3] += 1
            else:
                runs.append([place[0], place[1], offset, 1])
        return runs

    def commit(self, first: int, count: int) -> None:
        """Mark frames as committed after a cache-writing pass (a recompute never moves the counter)."""
        if not self.is_recompute(first, count):
            self.committed_frames = max(self.committed_frames, first + count)

    def visible_frames(self, end: int) -> tuple[int, int]:
        """(sink frames, window frames) that a pass ending at frame `end` sees, its own frames included."""
        lay = self.layout
        sink = min(lay.sink_frames, end)
        window = min(lay.window_frames, max(0, end - lay.sink_frames))
        return sink, window


class MemoryBank:
    """Narrative Adaptive Memory: a few past frames' keys/values, chosen by relevance to the prompt.

    A context pass may *stage* the first frame of its chunk. At the start of the next pass that asks for
    it (`refresh`), the staged frame enters the bank: into the next free slot while there is one, else
    the bank is compressed — its slots scored against the current text keys, the best `slots - 1` kept
    in descending score order, and the staged frame appended. The reference repeats that compression on
    every refresh, re-appending the same staged frame (so the bank can fill with duplicates); we do too.
    """

    def __init__(self, slots_k, slots_v, layout: MemoryLayout):
        self.slots_k, self.slots_v = slots_k, slots_v  # [L, B, slots*T, H, D] views
        # Without slots (LongLive) nothing is ever staged: the staging buffer is empty too.
        staged_tokens = layout.frame_tokens if layout.bank_slots else 0
        # Place 0 holds the staged frame, copied from the KV buffer after a staging pass (StreamMemory.end_pass),
        # outside the blocks. Place 1 is unused since then; the layout is kept so that resume checkpoints of
        # earlier versions still fit.
        shape = (2, layout.layers, layout.batch, staged_tokens, layout.heads, layout.head_dim)
        self.staging_k = torch.zeros(shape, device=slots_k.device, dtype=slots_k.dtype)
        self.staging_v = torch.zeros_like(self.staging_k)
        self.staged_k, self.staged_v = self.staging_k[0], self.staging_v[0]
        self.layout = layout
        self.staged_count = 0  # staging events that advanced the slot pointer (the reference's bank counter)
        self.frame_ids: list[list[int]] = [[] for _ in range(layout.layers)]  # for traces; -1 = unknown
        # Which frames the slots hold is read back from the device only where that costs nothing (the CPU) or
        # where a trace asks for it (a generator keeping records): a render on a GPU never waits for it.
        self.track_frames = False
        self._staged_frame = -1

    @property
    def visible_slots(self) -> int:
        return min(self.staged_count, self.layout.bank_slots)

    def finish_staging(self, frame: int, advance: bool) -> None:
        """After a staging pass: remember which frame is staged; `advance` moves the slot pointer."""
        self._staged_frame = frame
        if advance:
            self.staged_count += 1

    def refresh(self, text_keys: torch.Tensor) -> None:
        """Bring the staged frame into the bank, compressing when full. text_keys [L, B, text_len, H, D]."""
        n, slots, t = self.staged_count, self.layout.bank_slots, self.layout.frame_tokens
        if n == 0 or slots == 0:
            return
        if n <= slots:
            dst = slice((n - 1) * t, n * t)
            self.slots_k[:, :, dst] = self.staged_k
            self.slots_v[:, :, dst] = self.staged_v
            for ids in self.frame_ids:
                del ids[n - 1:]
                ids.append(self._staged_frame)
            return
        keep = self.keep_order(text_keys)  # [L, B, slots - 1], device tensor
        self._compress(keep)

    def scores(self, text_keys: torch.Tensor) -> torch.Tensor:
        """Relevance of each slot to the text, [L, B, slots], in the reference's reduction order and dtype.

        Per head, S = K_text · K_slotᵀ / sqrt(D); then the mean over text rows, over heads, and over the
        slot's tokens, each rounded to the compute dtype (in bf16 the rounding decides ties).
        """
        lay = self.layout
        q = text_keys.transpose(2, 3)  # [L, B, H, text_len, D]
        k = self.slots_k.transpose(2, 3)  # [L, B, H, slots*T, D]
        s = torch.matmul(q, k.transpose(-1, -2)) * (lay.head_dim**-0.5)
        s = s.mean(dim=3).mean(dim=2)  # text rows, then heads -> [L, B, slots*T]
        return s.unflatten(-1, (lay.bank_slots, lay.frame_tokens)).mean(dim=-1)

    def keep_order(self, text_keys: torch.Tensor) -> torch.Tensor:
        """Indices of the `slots - 1` best slots, best first; equal scores keep the lower index first."""
        scores = self.scores(text_keys)
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        return order[..., : self.layout.bank_slots - 1]

    def _compress(self, keep: torch.Tensor) -> None:
        lay = self.layout
        t = lay.frame_tokens
        frames_k = self.slots_k.unflatten(2, (lay.bank_slots, t))  # [L, B, slots, T, H, D]
        frames_v = self.slots_v.unflatten(2, (lay.bank_slots, t))
        index = keep[:, :, :, None, None, None].expand(-1, -1, -1, t, lay.heads, lay.head_dim)
        kept_k = torch.gather(frames_k, 2, index).flatten(2, 3)
        kept_v = torch.gather(frames_v, 2, index).flatten(2, 3)
        split = (lay.bank_slots - 1) * t
        self.slots_k[:, :, :split] = kept_k
        self.slots_v[:, :, :split] = kept_v
        self.slots_k[:, :, split:] = self.staged_k
        self.slots_v[:, :, split:] = self.staged_v
        self._record_compression(keep)

    def _record_compression(self, keep: torch.Tensor) -> None:
        # Frame bookkeeping for traces only: reading the indices back from an accelerator would synchronise the
        # loop, so there it is done only when a trace asks for it (track_frames); else the slots are unknown.
        if keep.device.type != "cpu":
            if not self.track_frames:
                self.frame_ids = [[-1] * self.layout.bank_slots for _ in self.frame_ids]
                return
            keep = keep.cpu()
        for layer, ids in enumerate(self.frame_ids):
            kept = [ids[i] for i in keep[layer, 0].tolist()]
            self.frame_ids[layer] = kept + [self._staged_frame]


def route_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_tokens: int, top_k: int):
    """Sparse memory activation: per head, keep the `top_k` candidate frames most relevant to the queries.

    q [B, Lq, H, D]; k, v [B, n*T, H, D] are the candidate frames (sink + visible bank). Relevance is the dot
    product of the mean query with each frame's mean key (no scaling). The kept frames stay in candidate
    order. Returns routed k, v [B, min(top_k, n)*T, H, D] — each head with its own frames.
    """
    b, tokens, h, d = k.shape
    n = tokens // frame_tokens
    keep = min(top_k, n)
    q_mean = q.mean(dim=1)  # [B, H, D]
    k_mean = k.unflatten(1, (n, frame_tokens)).mean(dim=2)  # [B, n, H, D]
    relevance = torch.einsum("bhd,bnhd->bhn", q_mean, k_mean)
    picked = torch.topk(relevance, keep, dim=-1).indices.sort(dim=-1).values  # [B, H, keep]
    index = picked.transpose(1, 2)[:, :, None, :, None].expand(b, keep, frame_tokens, h, d)  # [B, keep, T, H, D]
    routed_k = torch.gather(k.unflatten(1, (n, frame_tokens)), 1, index).flatten(1, 2)
    routed_v = torch.gather(v.unflatten(1, (n, frame_tokens)), 1, index).flatten(1, 2)
    return routed_k, routed_v


@dataclass(frozen=True)
class PassPlan:
    """Where one pass's keys go and which keys it attends to, as index tensors on the device.

    Built from Python ints (the chunk schedule) before the pass; the blocks only index with it. The
    Python fields are the same for every pass of the steady state and the tensors keep their shapes,
    so a compiled block sees one set of guards from then on (no recompilation per chunk).
    """

    write_dst: torch.Tensor  # [n] buffer token positions this pass's kept tokens go to
    write_src: torch.Tensor | None  # [n] positions of those tokens in the pass (None: every token, in order)
    memory_index: torch.Tensor | None  # visible sink + bank tokens (None with `whole`: the buffer's prefix)
    window_index: torch.Tensor | None  # visible window tokens (None with `whole`: the buffer's suffix)
    key_index: torch.Tensor | None  # both, in that order: the key set without SMA (None with `whole`)
    whole: bool  # steady state: the key set is the whole buffer, no gather (and no copy)
    stage_src: torch.Tensor | None  # buffer positions of the pass's first frame (None: it is not written)
    memory_tokens: int  # tokens of sink + bank, visible or not (where the window starts in the buffer)
    key_frames: int  # frames the pass attends to (after SMA routing)
    frames: int  # frames in the pass


class LayerKeys:
    """One layer's view of the storage: what its self-attention writes and reads during a pass.

    Holds fixed views (created once) of that layer's buffers, so a block receives tensors, not a layer
    number: the 30 blocks run one compiled graph, and no Python int of the schedule reaches it.
    """

    def __init__(self, memory: "StreamMemory", index: int):
        self.memory = memory
        self.k, self.v = memory.k[index], memory.v[index]  # [B, tokens, H, D]

    def key_set(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's k/v [B, count*T, H, D] into the buffer; return the keys/values to attend to.

        k and v may be strided views (of the fused q/k/v projection): the index copy reads them in place.
        Staging for the bank reads the buffer after the pass (`StreamMemory.end_pass`), not here.
        """
        memory = self.memory
        plan = memory.plan
        t = memory.layout.frame_tokens
        # Writing also in passes that do not commit is safe: a denoising pass only overwrites window
        # slots of frames that are outside its own window and that its context pass will overwrite.
        kept_k = k if plan.write_src is None else k.index_select(1, plan.write_src)
        kept_v = v if plan.write_src is None else v.index_select(1, plan.write_src)
        self.k.index_copy_(1, plan.write_dst, kept_k)
        self.v.index_copy_(1, plan.write_dst, kept_v)
        if memory.sma_top_k:
            if plan.whole:
                split = plan.memory_tokens
                memory_k, memory_v = self.k[:, :split], self.v[:, :split]
                window_k, window_v = self.k[:, split:], self.v[:, split:]
            else:
                memory_k, memory_v = self.k.index_select(1, plan.memory_index), self.v.index_select(1, plan.memory_index)
                window_k, window_v = self.k.index_select(1, plan.window_index), self.v.index_select(1, plan.window_index)
            if memory_k.shape[1]:
                memory_k, memory_v = route_sparse(q, memory_k, memory_v, t, memory.sma_top_k)
            return torch.cat([memory_k, window_k], dim=1), torch.cat([memory_v, window_v], dim=1)
        if plan.whole:
            return self.k, self.v  # steady state: the whole buffer, no copy
        return self.k.index_select(1, plan.key_index), self.v.index_select(1, plan.key_index)


class StreamMemory:
    """Owns the key/value storage and the three views onto it; plans each pass's key set.

    Use: `begin_pass(...)`, run the model with this object as its key-set provider (`layer(i)` gives
    block i its `LayerKeys`), `end_pass()`.
    """

    # derived from the buffers by the constructor: a resume checkpoint does not carry them
    _transient = ("layers", "_indices", "plan")

    def __init__(self, layout: MemoryLayout, text_len: int, device, dtype, sma_top_k: int | None = None):
        self.layout = layout
        t = layout.frame_tokens
        shape = (layout.layers, layout.batch, layout.frames * t, layout.heads, layout.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        sink_end = layout.sink_frames * t
        bank_end = sink_end + layout.bank_slots * t
        self.cache = KVCache(self.k[:, :, :sink_end], self.v[:, :, :sink_end], self.k[:, :, bank_end:], self.v[:, :, bank_end:], layout)
        self.bank = MemoryBank(self.k[:, :, sink_end:bank_end], self.v[:, :, sink_end:bank_end], layout)
        self.text = CrossAttentionCache(layout, text_len, device, dtype)
        self.sma_top_k = sma_top_k
        self.layers = [LayerKeys(self, i) for i in range(layout.layers)]
        self.plan: PassPlan | None = None
        self._pass = None
        self._indices: dict[tuple, torch.Tensor] = {}  # index tensors by content: reused, never rebuilt
        self.last_key_frames: int = 0  # key frames seen by the latest pass (for traces and tests)

    def begin_pass(self, first: int, count: int, commit: bool, stage: bool) -> None:
        """Prepare a pass over frames [first, first+count). `commit` passes persist their keys."""
        self._pass = (first, count, commit, stage)
        self.plan = self._plan(first, count, stage)
        self.last_key_frames = self.plan.key_frames

    def end_pass(self, staging_advances: bool = True) -> None:
        first, count, commit, stage = self._pass
        if commit:
            self.cache.commit(first, count)
        if stage:
            self._stage_first_frame()
            self.bank.finish_staging(first, advance=staging_advances)
        self._pass = self.plan = None

    def layer(self, index: int) -> LayerKeys:
        return self.layers[index]

    def _stage_first_frame(self) -> None:
        """Copy the pass's first frame, as every layer just wrote it into the buffer, to the staging place
        (two copies for all layers, once per staging pass, instead of two per layer and pass)."""
        staged = self.bank.staged_k
        if staged.shape[2] == 0:
            return  # no bank slots: nothing is ever staged
        positions = self.plan.stage_src
        if positions is None:
            raise RuntimeError("a staging pass must write its first frame to the KV buffer")
        torch.index_select(self.k, 2, positions, out=self.bank.staged_k)
        torch.index_select(self.v, 2, positions, out=self.bank.staged_v)

    @property
    def steady(self) -> bool:
        """Whether the current pass is one of the steady state's repeating passes: the key set is the whole
        buffer and every token of the pass is written (a re-cache, which drops some, is a one-off)."""
        return self.plan is not None and self.plan.whole and self.plan.write_src is None

    def key_set(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """`layer(layer).key_set(q, k, v)`: store this pass's k/v; return the keys/values to attend to."""
        return self.layers[layer].key_set(q, k, v)

    def _plan(self, first: int, count: int, stage: bool) -> PassPlan:
        lay = self.layout
        t = lay.frame_tokens
        sink_end = lay.sink_frames * t
        bank_end = sink_end + lay.bank_slots * t
        # where the kept frames of this pass go, one run of consecutive slots at a time
        dst, src = [], []
        for to_sink, slot, offset, n in self.cache._runs(first, count):
            start = slot * t if to_sink else bank_end + slot * t
            dst.append((start, start + n * t))
            src.append((offset * t, (offset + n) * t))
        every_token = src == [(0, count * t)]
        # where the pass's first frame lands, when it is written whole (the bank stages it from there)
        first_frame = next(((d0, d0 + t) for (d0, _), (s0, s1) in zip(dst, src) if s0 == 0 and s1 >= t), None)
        sink, window = self.cache.visible_frames(first + count)
        # With no sink the reference attends to the local window alone and ignores the bank.
        slots = self.bank.visible_slots if lay.sink_frames > 0 else 0
        whole = sink == lay.sink_frames and slots == lay.bank_slots and window == lay.window_frames
        memory_frames = sink + slots
        key_frames = sink + slots + window
        if self.sma_top_k and memory_frames:
            key_frames = min(self.sma_top_k, memory_frames) + window
        memory_ranges = [(0, sink * t), (sink_end, sink_end + slots * t)]
        window_ranges = [(bank_end, bank_end + window * t)]
        return PassPlan(
            write_dst=self._index(dst),
            write_src=None if every_token else self._index(src),
            memory_index=None if whole else self._index(memory_ranges),
            window_index=None if whole else self._index(window_ranges),
            key_index=None if whole else self._index(memory_ranges + window_ranges),
            whole=whole,
            stage_src=self._index([first_frame]) if first_frame else None,
            memory_tokens=bank_end,
            key_frames=key_frames,
            frames=count,
        )

    def _index(self, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """The token positions of some [start, end) ranges, as a device tensor built once per content.

        The steady state cycles through a few write patterns (the ring's positions), so the cache stays
        small, and a pass allocates nothing and copies nothing from the host.
        """
        key = tuple(ranges)
        index = self._indices.get(key)
        if index is None:
            device = self.k.device
            parts = [torch.arange(a, b, device=device) for a, b in ranges if b > a]
            index = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)
            self._indices[key] = index
        return index

    def refresh_bank(self) -> None:
        """Run the bank's insert/compress step against the text keys as they are now (maybe zeroed)."""
        self.bank.refresh(self.text.keys)
