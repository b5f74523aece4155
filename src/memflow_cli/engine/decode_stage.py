"""Decode and write while the next chunk generates: the decode → uint8 → host → writer stage on its own thread.

The render loop hands each chunk's latents to a `DecodeStage` (`put`) and goes on generating; one worker
thread decodes them strictly in order (the streaming decoders keep causal caches), converts them to uint8 on
the device, copies them to the host and passes them to the sinks (the VideoWriter's pipe to ffmpeg, the resume
recorder). At most `depth` chunks are handed in and not yet written: a full stage blocks `put` (back-pressure),
so memory stays flat and the loop never runs more than `depth` chunks ahead.

On CUDA the decode runs on a second stream. `put` records an event on the loop's stream after the latents
(copied, so that the generator may reuse its buffers) and the side stream waits for it on the device; the
frames come back through pinned memory with a non-blocking copy and an event that only the worker thread
waits on. The loop never synchronises the device between chunks. On the CPU the same thread overlaps because
torch releases the GIL inside its ops.

Rules the render relies on:
- frames reach the sinks in the order handed in, the same bytes as decoding in the loop would give;
- an error in the worker (decoder, ffmpeg, disk) is raised in the loop's thread, the very exception, at the
  next `put` or `drain`; the worker stops at once and is joined when the stage closes (never left running);
- `drain()` returns once everything handed in is written (the decoder's state then matches the frames
  written: what a checkpoint needs);
- leaving the `with` block: normally, the stage drains; on KeyboardInterrupt it drains too (the partial file
  keeps every chunk generated, as when decoding in the loop), unless the interrupt came while draining (a
  second Ctrl-C: stop at once, `abandon`); on any other error it drops what is queued.
- `abandon()` (a second Ctrl-C) stops at once: what is queued is dropped and the chunk being decoded is never
  written (its decode cannot be cut short; the worker finishes it on its own and ends without touching the
  sinks), so the sinks hold whole chunks only and can be closed right away.
- `on_written(Written)` is called in the loop's thread (from `put`, `drain` and `collect`), in order, with the
  chunk's tag, its frame count and the stage's own timings: decode (CUDA events on the side stream, else the
  wall clock of the worker) and write (the worker's wall clock). `waited` is how long the loop was blocked.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from memflow_cli.model.vae import pixels_to_uint8

DEFAULT_DEPTH = 2  # chunks handed in and not yet written; 2 keeps one decoding while the next waits


@dataclass
class Written:
    """One chunk's frames are in the sinks."""

    tag: Any  # what the loop handed in with the latents (the ChunkPlan in a render)
    frames: int
    decode_s: float  # decode + uint8 + copy to the host (device time on CUDA)
    write_s: float  # the sinks (the pipe to ffmpeg, the resume segment)
    at: float  # time.perf_counter() when the frames were written


@dataclass
class _Item:
    latents: torch.Tensor
    keep: int | None
    tag: Any
    ready: Any = None  # torch.cuda.Event recorded on the loop's stream after the latents


_ABANDONED: list[threading.Thread] = []  # workers left to finish a decode that will never be written


def abandoned_decodes_running() -> bool:
    """A decode abandoned by a second Ctrl-C is still computing: Python's own shutdown would kill its thread
    inside a torch op (the C++ runtime then aborts), so the command leaves with os._exit (cli.main)."""
    return any(t.is_alive() for t in _ABANDONED)


class _Abandoned(Exception):
    """The stage was abandoned while this chunk decoded: it is not written."""


class DecodeStage:
    """A bounded, ordered decode → write stage on a worker thread (see the module's docstring)."""

    def __init__(self, decoder, sinks: Sequence[Callable[[Any], None]], device: torch.device | str, *,
                 depth: int = DEFAULT_DEPTH, on_written: Callable[[Written], None] | None = None,
                 convert: Callable[[torch.Tensor], torch.Tensor] = pixels_to_uint8):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.decoder, self.sinks, self.depth = decoder, list(sinks), depth
        self.device = torch.device(device)
        self.on_written, self.convert = on_written, convert
        self.waited = 0.0  # seconds the loop's thread was blocked by the stage (back-pressure and drains)
        self.handed = 0  # chunks handed in
        self.written = 0  # chunks whose frames are in the sinks (reported by on_written so far: `reported`)
        self.reported = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._done: collections.deque[Written] = collections.deque()
        self._open = 0  # handed in, not yet written
        self._error: BaseException | None = None
        self._closing = False  # no more items: the worker ends once the queue is empty
        self._cancelled = False  # drop what is queued: the worker ends after its current item
        self._hurried = False
        self._abandoned = False  # abandon(): the worker writes nothing more (checked under _sink_lock)
        self._sink_lock = threading.Lock()
        self._stream = None
        self._first = True
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
            # whatever the loop's stream did before (a restored checkpoint, the decoder's weights) comes first
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
        self._thread = threading.Thread(target=self._work, name="memflow-decode", daemon=True)
        self._thread.start()

    # -- the loop's side -----------------------------------------------------------------------------

    def put(self, latents: torch.Tensor, keep: int | None = None, tag: Any = None) -> None:
        """Hand in one chunk's latents (keep its first `keep` frames); blocks while `depth` chunks are open."""
        self.collect()
        latents = latents.detach().clone()  # ours: the generator may reuse or overwrite its own buffers
        ready = None
        if self._stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        self._wait(lambda: self._open < self.depth)
        with self._cond:
            self._queue.append(_Item(latents, keep, tag, ready))
            self._open += 1
            self.handed += 1
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every chunk handed in is written (and reported); raises the worker's error if it failed."""
        try:
            self._wait(lambda: self._open == 0)
        except KeyboardInterrupt:
            self._hurried = True  # interrupted while draining: leaving the stage stops at once
            raise
        self.collect()

    def collect(self) -> list[Written]:
        """Report the chunks written since the last call (on_written, in order); raises the worker's error."""
        out = []
        while True:
            with self._cond:
                if not self._done:
                    break
                item = self._done.popleft()
            self.reported += 1
            out.append(item)
            if self.on_written is not None:
                self.on_written(item)
        self._raise_failure()
        return out

    def close(self, *, drain: bool = True) -> None:
        """End the stage: drain first, or drop what is queued (the chunk being decoded is still written and
        reported); the worker is joined either way."""
        if drain and not self._closing:
            try:
                self.drain()
            except BaseException:
                self._stop(cancel=True)
                raise
        self._stop(cancel=not drain)
        self._report_quietly()

    def __enter__(self) -> "DecodeStage":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close(drain=True)
        elif issubclass(kind, KeyboardInterrupt) and not (self._hurried or self._closing):
            # Ctrl-C outside a drain: keep every chunk generated so far (as decoding in the loop would); another
            # Ctrl-C meanwhile stops at once. The worker's own error, if any, yields to the interrupt.
            try:
                self._wait(lambda: self._open == 0, raise_failure=False)
            except KeyboardInterrupt:
                self.abandon()
            self._stop(cancel=True)
            self._report_quietly()
        elif issubclass(kind, KeyboardInterrupt) and self._hurried:
            self.abandon()  # interrupted while draining: a second Ctrl-C, stop at once
            self._report_quietly()
        else:
            self._stop(cancel=True)
            self._report_quietly()

    def abandon(self) -> None:
        """Stop at once (a second Ctrl-C): drop what is queued and never write the chunk being decoded; returns
        without waiting for the worker, whose decode ends on its own. The sinks can be closed right after."""
        with self._sink_lock:  # a write under way finishes first: the sinks only ever get whole chunks
            self._abandoned = True
        _ABANDONED.append(self._thread)
        self._stop(cancel=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- internals -----------------------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], raise_failure: bool = True) -> None:
        started = time.perf_counter()
        try:
            with self._cond:
                while not ready() and self._error is None:
                    if not self._thread.is_alive():  # cannot happen short of a bug; never hang on it
                        raise RuntimeError("the decode stage's worker ended unexpectedly")
                    self._cond.wait(0.25)  # a timeout: signals and Ctrl-C reach this thread promptly
        finally:
            self.waited += time.perf_counter() - started
        if raise_failure:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            error = self._error
            self._stop(cancel=True)
            raise error

    def _report_quietly(self) -> None:
        """collect() without raising the worker's error (it yields to the exception being handled)."""
        error, self._error = self._error, None
        try:
            self.collect()
        finally:
            self._error = self._error or error

    def _stop(self, cancel: bool) -> None:
        with self._cond:
            self._closing = True
            if cancel:
                self._cancelled = True
                self._queue.clear()
            self._cond.notify_all()
        while self._thread is not threading.current_thread() and not self._abandoned:
            try:  # the item being decoded finishes (it cannot be cut short, and it is bounded): wait it out
                self._thread.join()
                break
            except KeyboardInterrupt:  # (only ever joined while stopping: the stop is already under way)
                continue

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._cancelled or not self._queue:
                    return
                item = self._queue.popleft()
            try:
                with torch.no_grad():  # grad mode is per thread: the loop's does not reach this one
                    self._process(item)
            except _Abandoned:
                return
            except BaseException as exc:  # noqa: BLE001 — handed to the loop's thread, raised there
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._cond.notify_all()
                return
            del item

    def _process(self, item: _Item) -> None:
        if self._stream is None:
            started = time.perf_counter()
            frames = self._frames(item).cpu().numpy()
            decoded = time.perf_counter()
            decode_s = decoded - started
        else:
            frames, decode_s = self._process_cuda(item)
            decoded = time.perf_counter()
        with self._sink_lock:  # written and counted as one step: abandon() sees both or neither
            if self._abandoned:
                raise _Abandoned
            for sink in self.sinks:
                sink(frames)
            now = time.perf_counter()
            with self._cond:
                self._done.append(Written(item.tag, len(frames), decode_s, now - decoded, now))
                self._open -= 1
                self.written += 1
                self._cond.notify_all()

    def _frames(self, item: _Item) -> torch.Tensor:
        frames = self.convert(self.decoder.decode(item.latents))
        return frames[: item.keep] if item.keep is not None else frames

    def _process_cuda(self, item: _Item):
        side = self._stream
        with torch.cuda.stream(side):
            if self._first:
                # State the loop's stream made before the stage (a restored checkpoint) is read here and freed
                # when the decoder replaces it: that memory must not be reused before this stream is done with it.
                for tensor in _tensors(self.decoder):
                    if tensor.device.type == "cuda":
                        tensor.record_stream(side)
                self._first = False
            side.wait_event(item.ready)
            item.latents.record_stream(side)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(side)
            frames = self._frames(item)
            host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            end.record(side)
        del frames
        end.synchronize()  # this thread waits for its own stream; the loop's thread never does
        return host.numpy(), start.elapsed_time(end) / 1000.0


def _tensors(obj, seen=None) -> list[torch.Tensor]:
    """Every tensor held by a plain state object (attributes, lists, dicts; not inside nn.Modules)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, torch.nn.Module):
        return []
    if isinstance(obj, dict):
        values = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        values = list(obj)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("memflow_cli."):
        values = list(vars(obj).values())
    else:
        return []
    return [t for v in values for t in _tensors(v, seen)]


class StreamLaps:
    """Stage times on the device's current stream without synchronising it.

    `lap(stage)` charges the time since the previous lap (or the start) to `stage` (None: to nothing) and
    starts the next one. On CUDA each lap is a pair of events read once the device has passed them (`collect`
    looks without waiting; `collect(wait=True)` waits, for the end of a run); on the CPU, the wall clock.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._pending: collections.deque = collections.deque()
        self._last = self._mark()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def lap(self, stage: str | None) -> None:
        now = self._mark()
        if stage is not None:
            self._pending.append((stage, self._last, now))
        self._last = now

    def collect(self, wait: bool = False) -> list[tuple[str, float]]:
        """(stage, seconds) of the laps the device has finished, in order (all of them with `wait`)."""
        out = []
        while self._pending:
            stage, start, end = self._pending[0]
            if self.cuda:
                if wait:
                    end.synchronize()
                elif not end.query():
                    break
                seconds = start.elapsed_time(end) / 1000.0
            else:
                seconds = end - start
            self._pending.popleft()
            out.append((stage, seconds))
        return out


OVERLAP_MODES = ("auto", "on", "off")


def overlap_mode(value) -> str:
    """`--overlap auto|on|off` (booleans from older callers: True = on, False = off)."""
    if value is True:
        return "on"
    if value is False or value is None:
        return "off" if value is False else "auto"
    mode = str(value).strip().lower()
    if mode not in OVERLAP_MODES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_MODES)}, got {value!r}")
    return mode


class SerialSchedule:
    """--overlap off (and --low-vram): after each chunk the loop waits until it is written, so the DiT and the
    decoder never run at the same time (one working set at a time). The same stage, the same bytes."""

    choice = "serial"

    def begin(self, index: int, changed: bool) -> None:
        """Nothing to measure."""

    def serial(self, index: int) -> bool:
        return True

    def end(self, index: int) -> None:
        """Nothing to measure."""


class ScheduleProbe:
    """`--overlap auto` on a GPU: measure both schedules on the render's own steady chunks, keep the faster one.

    Whether decoding beside generation helps is a property of the device (on one GPU the decoder's kernels may
    just slow the DiT's by as much as they take), so it is measured, not assumed. After `warmup` chunks (the key
    set grows until chunk 7, where --compile then compiles and records its graphs), a window of `window` chunks
    runs overlapped (decode on the stage while the next chunk generates), then a window runs serial (after each
    chunk, the loop waits until it is written: the DiT runs alone). Each window is timed on the wall clock from a drained stage to a drained
    stage, so it counts everything the schedule costs; the faster schedule is kept for the rest of the render.
    The frames are the same bytes either way: the decode order never changes, only whether the loop waits.

    A window that sees a prompt switch (a re-cache pass: not a steady chunk) starts again. A render too short
    to finish both windows keeps overlapping (the default). The loop calls, per chunk: `serial(index)` before
    generating (True: wait for the stage after handing this chunk in), `begin(index, changed)` before
    generating, and `end(index)` after the chunk is handed in (and, when serial, written). `clock` is injectable
    (tests use a fake one); `drain` is the stage's drain, called at window boundaries.
    """

    def __init__(self, drain: Callable[[], None], *, warmup: int = 10, window: int = 3,
                 clock: Callable[[], float] = time.perf_counter,
                 on_decided: Callable[["ScheduleProbe"], None] | None = None):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.drain, self.warmup, self.window, self.clock = drain, warmup, window, clock
        self.on_decided = on_decided
        self.phase = "warmup"  # → "overlapped" → "serial" → "decided"
        self.choice: str | None = None  # "overlap" or "serial" once decided
        self.seconds: dict[str, float] = {}  # phase → seconds per chunk of its window
        self._count = 0
        self._started = 0.0

    @property
    def decided(self) -> bool:
        return self.choice is not None

    def serial(self, index: int) -> bool:
        """Whether the loop waits for chunk `index` to be written before generating the next one."""
        return self.phase == "serial" or self.choice == "serial"

    def begin(self, index: int, changed: bool) -> None:
        if self.decided:
            return
        if self.phase == "warmup":
            if index < self.warmup:
                return
            self.phase = "overlapped"
        if changed or self._count == 0:  # a (re)start of the window, from a drained stage
            self.drain()
            self._count = 0
            self._started = self.clock()

    def end(self, index: int) -> None:
        if self.decided or self.phase == "warmup":
            return
        self._count += 1
        if self._count < self.window:
            return
        self.drain()
        self.seconds[self.phase] = (self.clock() - self._started) / self.window
        self._count = 0
        if self.phase == "overlapped":
            self.phase = "serial"
        else:
            self.phase = "decided"
            self.choice = "overlap" if self.seconds["overlapped"] <= self.seconds["serial"] else "serial"
            if self.on_decided is not None:
                self.on_decided(self)

    def describe(self) -> str:
        s = self.seconds
        return (f"decode schedule: {'overlapped' if self.choice == 'overlap' else 'serial'} (measured "
                f"{s['overlapped']:.3f} s per chunk overlapped, {s['serial']:.3f} s serial)")

    def report(self) -> dict:
        """For the render summary (not its identity): what was measured and chosen."""
        out = {"overlap": "auto", "chosen": self.choice or "overlap",
               "measured": self.decided}
        for phase, seconds in self.seconds.items():
            out[f"{phase}_s_per_chunk"] = round(seconds, 4)
        return out
