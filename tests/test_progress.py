"""Progress while a render runs: plain lines for logs, our own ETA, end-to-end FPS; with a fake clock."""

import io
from pathlib import Path

import pytest
from rich.console import Console, Group

from memflow_cli.render.progress import Pace, PlainReporter, RichReporter, clock_text, reporter_for
from memflow_cli.inputs.schedule import plan
from memflow_cli.inputs.timeline import prompt_timeline, read_timeline

REPO = Path(__file__).parent.parent


class SlowClock:
    """A clock that moves only when told: chunks of a minute without waiting a minute."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _stream(reporter, schedule, clock, seconds_per_chunk, first_chunk_seconds=None, upto=None):
    frames = 0
    for chunk in schedule.chunks[:upto]:
        clock.now += first_chunk_seconds if chunk.index == 0 and first_chunk_seconds else seconds_per_chunk
        frames += chunk.frames
        reporter.chunk(chunk, frames, 123.0)
    return frames


def test_clock_text():
    assert clock_text(None) == "-:--:--"
    assert clock_text(0) == "0:00:00" and clock_text(3671.4) == "1:01:11" and clock_text(41 * 60 + 10) == "0:41:10"


def test_eta_from_a_moving_average_of_chunk_times():
    clock = SlowClock()
    pace = Pace(total_chunks=10, total_frames=9 + 9 * 12, clock=clock)
    assert pace.eta() is None
    clock.now += 300  # the first chunk: warm-up, much slower
    pace.tick(1, 9)
    assert pace.eta() == pytest.approx(9 * 300)
    for done in range(2, 5):  # then a minute per chunk, far beyond rich's 30-second speed window
        clock.now += 60
        pace.tick(done, 9 + 12 * (done - 1))
    assert pace.chunk_seconds == pytest.approx(60)  # the warm-up chunk left the average
    assert clock_text(pace.eta()) == "0:06:00"  # 6 chunks left
    clock.now += 20  # counts down between chunks
    assert clock_text(pace.eta()) == "0:05:40"
    assert pace.fps == pytest.approx(45 / 480)  # end to end: frames over all the time since the start


def test_plain_lines_every_n_chunks_or_30_s_whichever_is_rarer():
    t = prompt_timeline("a lantern over a river", 1197 / 16)  # 9 + 99 × 12 frames: 100 chunks
    schedule = plan(t)
    assert schedule.num_chunks == 100
    for seconds, expected in ((1.0, [1, 31, 61, 91, 100]), (60.0, [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100])):
        clock, stream = SlowClock(), io.StringIO()
        reporter = PlainReporter(stream, every_chunks=10, every_seconds=30, clock=clock)
        reporter.stage("loading the generator")
        reporter.start(schedule)
        _stream(reporter, schedule, clock, seconds)
        lines = stream.getvalue().splitlines()
        assert lines[0] == "loading the generator"
        assert lines[1] == "rendering 1197 frames (0:01:15 at 16 fps) in 100 chunks"
        assert lines[2] == "chunk 1: block 1/1: a lantern over a river"
        progress = [l for l in lines if l.startswith("chunk ") and "frames" in l]
        assert [int(l.split()[1].split("/")[0]) for l in progress] == expected
        assert "\x1b" not in stream.getvalue()  # no terminal codes in a log
    assert progress[-1].startswith("chunk 100/100  1197/1197 frames  100.0% · ")
    assert progress[-1].endswith(" fps · ETA 0:00:00")


def test_plain_line_format_and_block_changes():
    schedule = plan(read_timeline(REPO / "timelines" / "smoke.json"))
    clock, stream = SlowClock(), io.StringIO()
    reporter = PlainReporter(stream, every_chunks=1, every_seconds=0, clock=clock)
    reporter.start(schedule)
    _stream(reporter, schedule, clock, 2.0, upto=2)
    lines = stream.getvalue().splitlines()
    # 9 + 12 frames in 4 s; 2 of 5 chunks done at 2 s each
    assert "chunk 2/5  21/48 frames  43.8% · 5.25 fps · ETA 0:00:06" in lines
    _stream(reporter, schedule, clock, 2.0)
    text = stream.getvalue()
    assert "block 1/2: A red paper lantern floating over a quiet river at night" in text
    assert "block 2/2: → A red paper lantern floating over a quiet river at dawn (50% there)" in text


def test_terminal_bar_shows_our_eta_end_to_end_fps_and_the_block():
    schedule = plan(read_timeline(REPO / "timelines" / "smoke.json"))
    clock = SlowClock()
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    reporter = RichReporter(console, clock=clock)
    reporter.start(schedule)
    try:
        _stream(reporter, schedule, clock, 45.0, upto=3)  # 45 s per chunk: rich's own ETA would be blank
        shown = Console(file=io.StringIO(), width=160, record=True)
        shown.print(Group(*reporter.progress.get_renderables()))
    finally:
        reporter.stop()
    text = shown.export_text()
    assert "33/48 frames" in text and "chunk 3/5" in text
    assert "ETA 0:01:30" in text and "-:--:--" not in text and "0:02:15" in text  # elapsed on the same clock
    assert f"{33 / 135:.2f} fps" in text and "gen fps" not in text
    assert "block 2/2: → A red paper lantern" in text


def test_reporter_for_picks_plain_lines_off_a_terminal():
    assert isinstance(reporter_for(Console(file=io.StringIO())), PlainReporter)
    assert isinstance(reporter_for(Console(file=io.StringIO(), force_terminal=True)), RichReporter)
    assert type(reporter_for(Console(file=io.StringIO()), quiet=True)).__name__ == "Reporter"


def test_summary_names_the_stages_and_says_when_prompts_were_cached():
    from types import SimpleNamespace

    from memflow_cli.render.progress import stage_labels

    cached = SimpleNamespace(prompt_cache={"path": "/c", "cached": 2, "computed": 0})
    fresh = SimpleNamespace(prompt_cache={"path": "/c", "cached": 1, "computed": 1})
    assert stage_labels(cached) == {"load": "loading models", "encode": "prompt encoding (cached)",
                                    "generate": "generation", "decode": "decoding", "write": "video encoding",
                                    "total": "total"}
    assert stage_labels(fresh)["encode"] == "prompt encoding"
    overlapped = SimpleNamespace(prompt_cache={}, timings={"generate": 2.0, "queue_wait": 0.5})
    assert list(stage_labels(overlapped))[-2:] == ["queue_wait", "total"]


def test_middle_ellipsis_keeps_the_file_name():
    from memflow_cli.render.progress import middle_ellipsis

    path = "/tmp/newcomer/repository/renders/out/scene-12.mp4"
    assert middle_ellipsis(path, 80) == path
    short = middle_ellipsis(path, 24)
    assert len(short) == 24 and short.endswith("/scene-12.mp4") and short.startswith("/tmp/newco…") and "…" in short
    tiny = middle_ellipsis(path, 9)  # narrower than the name: cut in the middle of it
    assert len(tiny) == 9 and tiny.startswith("/tmp") and tiny.endswith(".mp4")
    assert middle_ellipsis("no-slashes-at-all-here", 10) == "no-s…-here"


def _rendered(table, width=80) -> str:
    console = Console(file=io.StringIO(), width=width, no_color=True)
    console.print(table)
    return console.file.getvalue()


def test_batch_and_summary_tables_at_80_columns_keep_what_tells_rows_apart():
    """Rows whose paths share a long start (`/tmp/newcomer/repo…`) stay distinct: the path is cut in the middle."""
    from memflow_cli.render.progress import batch_table, summary_table
    from memflow_cli.render import BatchResult, RenderSummary

    base = "/tmp/newcomer/repository-with-a-long-name/timelines/scenes"
    results = [BatchResult(f"{base}/scene-{i}.json", "failed", f"{base}/out/scene-{i}.mp4", message="bad")
               for i in range(3)]
    text = _rendered(batch_table(results))
    assert max(len(line) for line in text.splitlines()) <= 80
    for i in range(3):
        assert f"scene-{i}.json" in text and f"scene-{i}.mp4" in text, text
    summary = RenderSummary(f"{base}/out/scene-1.mp4", True, 48, 48, 3.0, 5, 64, 64, 1, "cpu", "float32", "sdpa",
                            timings={"total": 1.0}, manifest=f"{base}/out/scene-1.manifest.json",
                            prompt_cache={"path": "/root/.cache/memflow-cli/prompt-embeddings-of-a-long-name"})
    text = _rendered(summary_table(summary))
    assert "scene-1.manifest.json" in text and "prompt-embeddings-of-a-long-name" in text, text


def test_after_a_resume_progress_continues_from_the_resumed_chunk():
    """Resumed at chunk 3 of 5 (21 frames already in the video): numbering, bar and FPS go on from there."""
    schedule = plan(read_timeline(REPO / "timelines" / "smoke.json"))
    done_frames = sum(c.frames for c in schedule.chunks[:2])
    clock, stream = SlowClock(), io.StringIO()
    reporter = PlainReporter(stream, every_chunks=10, every_seconds=30, clock=clock)
    reporter.start(schedule, 2, done_frames)
    frames = done_frames
    for chunk in schedule.chunks[2:]:
        clock.now += 2.0
        frames += chunk.frames
        reporter.chunk(chunk, frames, 1.0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "rendering 48 frames (0:00:03 at 16 fps) in 5 chunks, from chunk 3 on"
    assert lines[1].startswith("chunk 3: block ")
    # the first chunk of this run gets its line; FPS counts this run's frames (12 in 2 s), not the resumed 21
    assert lines[2] == "chunk 3/5  33/48 frames  68.8% · 6.00 fps · ETA 0:00:04"
    assert lines[-1].startswith("chunk 5/5  48/48 frames  100.0% · 4.50 fps")

    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    bar = RichReporter(console, clock=SlowClock())
    bar.start(schedule, 2, done_frames)
    try:
        shown = Console(file=io.StringIO(), width=160, record=True)
        shown.print(Group(*bar.progress.get_renderables()))
    finally:
        bar.stop()
    text = shown.export_text()
    assert "21/48 frames" in text and "chunk 2/5" in text and "43.8%" in text
