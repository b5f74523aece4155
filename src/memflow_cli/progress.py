"""Everything the user sees while a render runs: progress, stage lines, warnings and the final tables.

`render.py` calls a `Reporter`; the base class is silent (library use, `--quiet`). `RichReporter` draws a
progress bar on a terminal. Nothing here changes what is rendered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from memflow_cli.render import RenderSummary
    from memflow_cli.schedule import ChunkPlan, Schedule

FPS = 16


class Reporter:
    """Progress hooks; the base class is silent (library use, --quiet)."""

    def stage(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def show_plan(self, plan) -> None: ...
    def item(self, index: int, count: int, name: str) -> None: ...
    def start(self, schedule: "Schedule") -> None: ...
    def chunk(self, chunk: "ChunkPlan", frames_done: int, generation_fps: float) -> None: ...
    def stop(self) -> None: ...


class RichReporter(Reporter):
    """A progress bar per chunk (frames done / total, generation FPS, ETA) on stderr."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.progress = None

    def stage(self, text: str) -> None:
        self.console.print(f"[dim]•[/dim] {text}")

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)

    def show_plan(self, plan) -> None:
        self.console.print(plan_table(plan))

    def item(self, index: int, count: int, name: str) -> None:
        if count > 1:
            self.console.print(f"[bold]{name}[/bold] ({index + 1} of {count})", highlight=False)

    def start(self, schedule: "Schedule") -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]rendering"), BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"), TextColumn("chunk {task.fields[chunk]}"),
            TextColumn("{task.fields[fps]:.2f} gen fps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("render", total=schedule.total_frames, fps=0.0,
                                           chunk=f"0/{schedule.num_chunks}")
        self.num_chunks = schedule.num_chunks

    def chunk(self, chunk: "ChunkPlan", frames_done: int, generation_fps: float) -> None:
        self.progress.update(self.task, completed=frames_done, fps=generation_fps,
                             chunk=f"{chunk.index + 1}/{self.num_chunks}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _mib(n):
    return "–" if n is None else f"{n / 2**20:,.0f} MiB"


def summary_table(summary: "RenderSummary"):
    from rich.table import Table

    t = Table(title=f"{summary.output}" + ("" if summary.complete else " (partial)"), show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("frames", f"{summary.frames} ({summary.seconds:.2f} s at {FPS} fps, {summary.width}x{summary.height})")
    t.add_row("chunks", str(summary.chunks))
    t.add_row("device", f"{summary.device}, {summary.dtype}, {summary.attention}")
    t.add_row("decoder", getattr(summary, "vae", "wan"))
    for stage in ("load", "encode", "generate", "decode", "write", "total"):
        t.add_row(f"time {stage}", f"{summary.timings.get(stage, 0.0):.2f} s")
    t.add_row("FPS end-to-end", f"{summary.fps_end_to_end:.2f}")
    t.add_row("FPS generation", f"{summary.fps_generation:.2f}")
    t.add_row("peak GPU memory", _mib(summary.peak_gpu_memory_bytes))
    t.add_row("peak RSS", _mib(summary.peak_rss_bytes))
    t.add_row("manifest", summary.manifest)
    return t


def batch_table(results):
    """One row per batch item: what it is, where it went, frames, time, FPS and how it ended."""
    from rich.table import Table

    t = Table(title=f"batch: {len(results)} item(s)")
    for col in ("item", "output", "frames", "time", "FPS", "status"):
        t.add_column(col, justify="right" if col in ("frames", "time", "FPS") else "left")
    colours = {"done": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow"}
    for r in results:
        s = r.summary
        t.add_row(r.name, r.output or "", str(s.frames) if s else "", f"{s.timings.get('total', 0.0):.1f} s" if s else "",
                  f"{s.fps_end_to_end:.2f}" if s and s.frames else "",
                  f"[{colours.get(r.status, 'white')}]{r.status}[/]" + (f": {r.message}" if r.message else ""))
    return t


def plan_table(plan):
    from rich.table import Table

    from memflow_cli.hub import human_size

    t = Table(title="weights")
    for col in ("repository", "file", "size", "status"):
        t.add_column(col, justify="right" if col == "size" else "left")
    todo = 0
    for item in plan:
        t.add_row(item.file.repo, item.file.filename, human_size(item.size), "cached" if item.cached else "to download")
        todo += 0 if item.cached else (item.size or 0)
    t.caption = f"to download: {human_size(todo)}"
    return t
