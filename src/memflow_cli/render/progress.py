"""Everything the user sees while a render runs: progress, stage lines, warnings and the final tables.

The render (stream.py, batch.py) calls a `Reporter`; the base class is silent (library use, `--quiet`). In a terminal
`RichReporter` draws a live bar; anywhere else (a log file, nohup, CI, a cluster job) `PlainReporter`
prints plain lines at a steady pace, since a live bar writes nothing useful to a file. Both take their
ETA and FPS from `Pace`, our own clock of chunk times. Nothing here changes what is rendered.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from memflow_cli.render.job import RenderSummary
    from memflow_cli.inputs.schedule import ChunkPlan, Schedule

FPS = 16


class Reporter:
    """Progress hooks; the base class is silent (library use, --quiet)."""

    def stage(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def show_plan(self, plan) -> None: ...
    def memory_plan(self, plan) -> None: ...
    def item(self, index: int, count: int, name: str) -> None: ...
    def start(self, schedule: "Schedule", done_chunks: int = 0, done_frames: int = 0) -> None:
        """Streaming begins; after a resume `done_chunks` / `done_frames` are already in the video."""
    def chunk(self, chunk: "ChunkPlan", frames_done: int, generation_fps: float) -> None: ...
    def stop(self) -> None: ...


# ------------------------------------------------------------------------------------------------
# Pace: our own clock, so that the ETA is right for chunks of a minute as well as of 50 ms


class Pace:
    """Frames and chunks done over time → end-to-end FPS and an ETA.

    The ETA is the remaining chunks times a moving average of the last `window` chunk durations: rich's
    own estimate looks at a 30-second speed window and shows `-:--:--` whenever one chunk takes longer
    than that, which is every chunk of a full-size render on a slow GPU. The first chunk (kernel warm-up,
    allocator growth) leaves the average as soon as later chunks are known. FPS is end to end: frames
    over the time since streaming began, generation, decoding and encoding included.
    """

    def __init__(self, total_chunks: int, total_frames: int, *, window: int = 8, clock=time.monotonic,
                 done_chunks: int = 0, done_frames: int = 0):
        self.total_chunks, self.total_frames = total_chunks, total_frames
        self.clock = clock
        self.window = window
        self.started = clock()
        self.last = self.started
        self.durations: list[float] = []
        self.chunks = done_chunks  # after a resume: counted as done, not as rendered in this run's time
        self.frames = self.first_frames = done_frames

    def tick(self, chunks_done: int, frames_done: int) -> None:
        now = self.clock()
        self.durations.append(now - self.last)
        self.last = now
        self.chunks, self.frames = chunks_done, frames_done

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def chunk_seconds(self) -> float | None:
        """Moving average of recent chunk durations (None before the first chunk)."""
        recent = self.durations[1:] or self.durations  # without the warm-up chunk once others exist
        recent = recent[-self.window:]
        return sum(recent) / len(recent) if recent else None

    @property
    def fps(self) -> float:
        elapsed = self.last - self.started
        return (self.frames - self.first_frames) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left, counted down between chunks; None until a chunk was timed."""
        per_chunk = self.chunk_seconds
        if per_chunk is None:
            return None
        left = (self.total_chunks - self.chunks) * per_chunk - (self.clock() - self.last)
        return max(left, 0.0)

    @property
    def fraction(self) -> float:
        return self.frames / self.total_frames if self.total_frames else 1.0


def clock_text(seconds: float | None) -> str:
    """`3671.2` → `1:01:11`; None → `-:--:--`."""
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def conditioning_text(conditioning) -> str:
    """The prompt(s) in full: `a fox…`, `70% a fox… + 30% a hare…`, or `→ a hare… (33%)` in a transition."""
    from memflow_cli.inputs.schedule import Transition

    if isinstance(conditioning, Transition):
        return f"→ {conditioning_text(conditioning.target)} ({conditioning.t:.0%} there)"
    if len(conditioning.texts) == 1:
        return conditioning.texts[0]
    return " + ".join(f"{w:.0%} {t}" for t, w in zip(conditioning.texts, conditioning.weights))


def block_text(schedule: Schedule, index: int) -> str:
    """What chunk `index` renders: `block 2/5: a fox trots…` (or the transition in progress)."""
    chunk = schedule.chunks[min(index, schedule.num_chunks - 1)]
    blocks = schedule.blocks  # from the blocks' events: never a walk over every chunk
    return f"block {chunk.block + 1}/{blocks}: {conditioning_text(chunk.conditioning)}"


def fps_text(fps: float) -> str:
    return f"{fps:.2f}" if fps < 10 else f"{fps:.1f}"


# ------------------------------------------------------------------------------------------------
# Plain lines: logs, nohup, CI, cluster jobs


class PlainReporter(Reporter):
    """One line per stage, then a progress line every `every_chunks` chunks or every `every_seconds`
    seconds, whichever is rarer (so that neither fast chunks nor slow ones flood a log), and always for
    the first and the last chunk. A block change gets a line of its own.

        chunk 120/960  1440/11520 frames  12.5% · 18.2 fps · ETA 0:41:10
    """

    def __init__(self, stream=None, *, every_chunks: int = 10, every_seconds: float = 30.0, clock=time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.every_chunks, self.every_seconds = every_chunks, every_seconds
        self.clock = clock
        self.pace: Pace | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def stage(self, text: str) -> None:
        self._print(text)

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}")

    def show_plan(self, plan) -> None:
        from memflow_cli.weights.hub import human_size

        todo = [p for p in plan if not p.cached]
        self._print(f"weights: {len(plan) - len(todo)} of {len(plan)} files cached, "
                    f"{human_size(sum(p.size or 0 for p in todo))} to download")

    def memory_plan(self, plan) -> None:
        from rich import box
        from rich.console import Console

        from memflow_cli.weights.memory_plan import plan_table as memory_table

        # the same table as in a terminal, in plain ASCII (no colours, no box-drawing characters in a log)
        table = memory_table(plan)
        table.box = box.ASCII
        Console(file=self.stream, no_color=True, width=100, force_terminal=False).print(table)

    def item(self, index: int, count: int, name: str) -> None:
        if count > 1:
            self._print(f"item {index + 1} of {count}: {name}")

    def start(self, schedule: Schedule, done_chunks: int = 0, done_frames: int = 0) -> None:
        self.schedule = schedule
        self.pace = Pace(schedule.num_chunks, schedule.total_frames, clock=self.clock, done_chunks=done_chunks,
                         done_frames=done_frames)
        self._line_at, self._line_chunks, self._block = self.clock(), done_chunks, None
        self._first = done_chunks
        self._print(f"rendering {schedule.total_frames} frames ({clock_text(schedule.seconds)} at {schedule.fps} fps) "
                    f"in {schedule.num_chunks} chunks" + (f", from chunk {done_chunks + 1} on" if done_chunks else ""))
        self._announce(done_chunks)

    def _announce(self, index: int) -> None:
        if index < self.schedule.num_chunks and self.schedule.chunks[index].block != self._block:
            self._block = self.schedule.chunks[index].block
            self._print(f"chunk {index + 1}: {block_text(self.schedule, index)}")

    def chunk(self, chunk: ChunkPlan, frames_done: int, generation_fps: float) -> None:
        self.pace.tick(chunk.index + 1, frames_done)
        now = self.clock()
        first, last = chunk.index == self._first, chunk.index + 1 == self.schedule.num_chunks
        due = (chunk.index + 1 - self._line_chunks >= self.every_chunks and now - self._line_at >= self.every_seconds)
        if first or last or due:
            self._print(self.line())
            self._line_at, self._line_chunks = now, chunk.index + 1
        self._announce(chunk.index + 1)

    def line(self) -> str:
        p = self.pace
        return (f"chunk {p.chunks}/{p.total_chunks}  {p.frames}/{p.total_frames} frames  {100 * p.fraction:.1f}% · "
                f"{fps_text(p.fps)} fps · ETA {clock_text(p.eta())}")


# ------------------------------------------------------------------------------------------------
# A terminal: a live bar


class RichReporter(Reporter):
    """A live bar on stderr: frames and chunks done, end-to-end FPS, our ETA, and which block renders."""

    def __init__(self, console=None, *, clock=time.monotonic):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.clock = clock
        self.progress = None

    def stage(self, text: str) -> None:
        self.console.print(f"[dim]•[/dim] {text}", highlight=False)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)

    def show_plan(self, plan) -> None:
        self.console.print(plan_table(plan))

    def memory_plan(self, plan) -> None:
        from memflow_cli.weights.memory_plan import plan_table as memory_table

        self.console.print(memory_table(plan))

    def item(self, index: int, count: int, name: str) -> None:
        if count > 1:
            self.console.print(f"[bold]{name}[/bold] ({index + 1} of {count})", highlight=False)

    def start(self, schedule: Schedule, done_chunks: int = 0, done_frames: int = 0) -> None:
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        pace = self.pace = Pace(schedule.num_chunks, schedule.total_frames, clock=self.clock, done_chunks=done_chunks,
                                done_frames=done_frames)

        class EtaColumn(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"ETA {clock_text(pace.eta())}", style="progress.remaining")

        class WithBlock(Progress):
            """The bar, and below it the block / prompt being rendered."""

            def get_renderables(self):
                yield from super().get_renderables()
                for task in self.tasks:
                    yield Text(f"  {task.fields['block']}", style="dim", no_wrap=True, overflow="ellipsis")

        self.schedule = schedule
        self.progress = WithBlock(
            TextColumn("[bold]rendering"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.completed}/{task.total} frames"), TextColumn("chunk {task.fields[chunk]}"),
            TextColumn("{task.fields[fps]} fps"), TimeElapsedColumn(), EtaColumn(),
            console=self.console, transient=False, get_time=self.clock,
        )
        self.progress.start()
        self.task = self.progress.add_task("render", total=schedule.total_frames, completed=done_frames, fps=fps_text(0.0),
                                           chunk=f"{done_chunks}/{schedule.num_chunks}",
                                           block=block_text(schedule, done_chunks))

    def chunk(self, chunk: ChunkPlan, frames_done: int, generation_fps: float) -> None:
        self.pace.tick(chunk.index + 1, frames_done)
        self.progress.update(self.task, completed=frames_done, fps=fps_text(self.pace.fps),
                             chunk=f"{chunk.index + 1}/{self.schedule.num_chunks}",
                             block=block_text(self.schedule, chunk.index + 1))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def reporter_for(console, *, quiet: bool = False) -> Reporter:
    """Silent with --quiet, a live bar in a terminal, plain lines anywhere else (logs, nohup, CI)."""
    if quiet:
        return Reporter()
    return RichReporter(console) if console.is_terminal else PlainReporter(console.file)


class BenchProgress:
    """`memflow bench` progress: a bar per run in a terminal, a line per run and per 10 % elsewhere."""

    def __init__(self, console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.bar, self.tasks = None, {}

    def __enter__(self) -> "BenchProgress":
        if not self.quiet and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]bench[/bold] {task.description:>14}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                                console=self.console)
            self.bar.start()
        return self

    def __call__(self, run: str, done: int, total: int) -> None:
        if self.quiet:
            return
        unit = "tensor" if run.endswith("weights") else "chunk"  # the random weights are drawn tensor by tensor
        if self.bar is not None:
            if run not in self.tasks:
                self.tasks[run] = self.bar.add_task(run, total=total, unit=unit + "s")
            self.bar.update(self.tasks[run], completed=done)
        elif done == total or done == 1 or done * 10 // total != (done - 1) * 10 // total:
            print(f"bench {run}: {unit} {done}/{total}", file=self.console.file, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def middle_ellipsis(text: str, width: int) -> str:
    """`text` in at most `width` cells, cut in the middle: the file name (after the last `/`) stays whole when
    it fits, since that is what tells rows apart (`/tmp/newcomer/re…/scene-12.mp4`)."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    name = text[text.rstrip("/").rfind("/"):] if "/" in text.rstrip("/") else ""
    if name and cell_len(name) + 4 <= width:  # keep a little of the start too: where it is
        head = width - 1 - cell_len(name)
        return text[:head] + "…" + name
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


class PathCell:
    """A table cell holding a path or a name: shortened in the middle to the column's width, never at the end.

    Every table with paths uses it (batch, summary, `memflow info`), so at 80 columns the part of a path that
    tells rows apart, the file name, stays visible."""

    def __init__(self, text: str, style: str = "", min_width: int = 12):
        self.text, self.style, self.min_width = str(text), style, min_width

    def __rich_measure__(self, console, options):
        from rich.cells import cell_len
        from rich.measure import Measurement

        full = cell_len(self.text)
        return Measurement(min(full, self.min_width), full)

    def __rich_console__(self, console, options):
        from rich.text import Text

        yield Text(middle_ellipsis(self.text, options.max_width), style=self.style, no_wrap=True, overflow="ignore",
                   end="")

    def __str__(self) -> str:
        return self.text


def _mib(n):
    return "–" if n is None else f"{n / 2**20:,.0f} MiB"


def stage_labels(summary: "RenderSummary") -> dict:
    """Timing keys → words: "encode" and "write" alone do not say whether prompts or video are meant."""
    cache = summary.prompt_cache or {}
    cached = cache.get("computed") == 0 and cache.get("cached", 0) > 0
    labels = {"load": "loading models", "encode": "prompt encoding" + (" (cached)" if cached else ""),
              "generate": "generation", "decode": "decoding", "write": "video encoding", "total": "total"}
    if "queue_wait" in (getattr(summary, "timings", None) or {}):
        # decode + write ran beside generation (decode_stage.py): the stages overlap, and this is how long
        # generation waited for them (large: decoding or the encoder bounds the speed; small: generation does)
        labels = {**{k: v for k, v in labels.items() if k != "total"}, "queue_wait": "generation waiting for decoding",
                  "total": "total"}
    return labels


def summary_table(summary: "RenderSummary"):
    from rich.table import Table

    t = Table(title=f"{summary.output}" + ("" if summary.complete else " (partial)"), show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("frames", f"{summary.frames} ({summary.seconds:.2f} s at {FPS} fps, {summary.width}x{summary.height})")
    t.add_row("chunks", str(summary.chunks))
    t.add_row("device", f"{summary.device}, {summary.dtype}, {summary.attention}")
    t.add_row("decoder", getattr(summary, "vae", "wan"))
    skipped = getattr(summary, "skipped", False)
    for stage, label in ({} if skipped else stage_labels(summary)).items():
        t.add_row(f"time {label}", f"{summary.timings.get(stage, 0.0):.2f} s")
        compiled = getattr(summary, "compile", None)
        if stage == "generate" and compiled:
            what = (f"eager after a failure ({compiled['fallback']})" if compiled.get("fallback")
                    else f"{compiled['mode']}, {compiled['compiled_calls']} compiled block calls" if compiled["compiled_calls"]
                    else "nothing ran compiled: the video ended before the steady state (chunk 8)")
            t.add_row("  of which compiling", f"{compiled['compile_seconds']:.2f} s ({what})")
    first = summary.timings.get("first_frame")
    if first is not None:
        t.add_row("time to first frame", f"{first:.2f} s (after the models loaded)")
    schedule = getattr(summary, "schedule", None)
    if schedule:
        chosen = "overlapped" if schedule.get("chosen") == "overlap" else "serial"
        how = (f"measured {schedule['overlapped_s_per_chunk']:.3f} s per chunk overlapped, "
               f"{schedule['serial_s_per_chunk']:.3f} s serial" if schedule.get("measured")
               else f"--overlap {schedule.get('overlap')}")
        t.add_row("decode schedule", f"{chosen} ({how})")
    if skipped:  # nothing was rendered: no times or speed to report
        t.add_row("status", "skipped (already rendered: same input, settings and weights; -y renders it again)")
    else:
        t.add_row("FPS end-to-end", f"{summary.fps_end_to_end:.2f}")
        t.add_row("FPS generation", f"{summary.fps_generation:.2f}")
    if summary.planned_peak_gpu_memory_bytes is not None:
        t.add_row("peak GPU memory planned", _mib(summary.planned_peak_gpu_memory_bytes))
    t.add_row("peak GPU memory", _mib(summary.peak_gpu_memory_bytes))
    t.add_row("peak RSS", _mib(summary.peak_rss_bytes))
    if summary.prompt_cache.get("path"):
        t.add_row("prompt cache", PathCell(summary.prompt_cache["path"]))
    t.add_row("manifest", PathCell(summary.manifest))
    return t


def batch_table(results):
    """One row per batch item: what it is, where it went, frames, time, FPS and how it ended."""
    from rich.table import Table

    from memflow_cli.errors import counted

    t = Table(title=f"batch: {counted(len(results), 'item')}")
    for col in ("item", "output", "frames", "time", "FPS", "status"):
        t.add_column(col, justify="right" if col in ("frames", "time", "FPS") else "left")
    colours = {"done": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow"}
    for r in results:
        s = r.summary
        t.add_row(PathCell(r.name), PathCell(r.output or ""), str(s.frames) if s else "", f"{s.timings.get('total', 0.0):.1f} s" if s else "",
                  f"{s.fps_end_to_end:.2f}" if s and s.frames and not s.skipped else "",
                  f"[{colours.get(r.status, 'white')}]{r.status}[/]" + (f": {r.message}" if r.message else ""))
    return t


def plan_table(plan):
    from rich.table import Table

    from memflow_cli.weights.hub import human_size

    t = Table(title="weights")
    for col in ("repository", "file", "size", "status"):
        t.add_column(col, justify="right" if col == "size" else "left")
    todo = 0
    for item in plan:
        t.add_row(item.file.repo, item.file.filename, human_size(item.size), "cached" if item.cached else "to download")
        todo += 0 if item.cached else (item.size or 0)
    t.caption = f"to download: {human_size(todo)}"
    return t
