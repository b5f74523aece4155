"""What the preview (a fragmented NAME.partial.mp4, remuxed at the end) and the contact sheet cost the writer.

    PYTHONPATH=src python benchmarks/preview.py --resolution 832x480 --chunks 20 --rounds 2

Writes the same synthetic footage (moving gradients and shapes with a little noise: smooth, like a render,
so that the bitrate is a realistic one) through `VideoWriter` in three modes, alternating so that drift in
the machine's load hits all alike: `direct` (--no-preview --no-sheet: today's writer), `preview` (the
fragmented file + the remux) and `preview+sheet`. Reports per mode the median wall time to write and
finish, the time of the remux at the end, the bytes written to disk (the partial file and the final one),
how many frames the partial file trailed the frames written just before the end (the encoder's delay), and
the time spent drawing the sheet, and the CPU time of the ffmpeg processes (the robust figure on a busy
machine: wall times there are mostly the load). Every mode pauses 1 s after the last frame (outside the timings) before
finishing, so that the trailing frames can be counted; the times are write + finish (close, remux, publish). Writes results/<date>-preview-<host>.json. No model is involved.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memflow_cli.render.sheet import ContactSheet, SheetBlock
from memflow_cli.render.video import VideoWriter, remux_command


def footage(width: int, height: int, chunks: int, per_chunk: int = 12):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(chunks):
        frames = np.empty((per_chunk, height, width, 3), np.uint8)
        for i in range(per_chunk):
            t = (k * per_chunk + i) / 16
            r = 127 + 100 * np.sin(x / 90 + t)
            g = 127 + 100 * np.sin(y / 70 - 0.7 * t)
            b = 127 + 100 * np.sin((x + y) / 130 + 0.3 * t)
            cx, cy = width * (0.5 + 0.35 * np.sin(t / 2)), height * (0.5 + 0.3 * np.cos(t / 3))
            disc = ((x - cx) ** 2 + (y - cy) ** 2) < (height / 6) ** 2
            img = np.stack([r, g, b], -1)
            img[disc] = (240, 200, 60)
            img += rng.normal(0, 3, img.shape).astype(np.float32)
            frames[i] = np.clip(img, 0, 255).astype(np.uint8)
        yield frames


def count_frames(path: Path, ffmpeg: str) -> int:
    r = subprocess.run([ffmpeg, "-i", str(path), "-map", "0:v:0", "-f", "null", "-"], capture_output=True, text=True)
    found = re.findall(r"frame=\s*(\d+)", r.stderr)
    return int(found[-1]) if found else 0


def one_run(mode: str, folder: Path, width: int, height: int, chunks: list, ffmpeg: str) -> dict:
    out = folder / f"{mode}.mp4"
    frames_total = sum(len(c) for c in chunks)
    seconds = frames_total / 16
    sheet = None
    if mode == "preview+sheet":
        blocks = [SheetBlock(s, min(s + 5.0, seconds), (("a prompt for this block of the benchmark", 1.0),))
                  for s in np.arange(0, seconds, 5.0)]
        sheet = ContactSheet(blocks, frames_total, width, height, title=out.name,
                             live=folder / f"{mode}.partial.sheet.png", temp_for=folder / f"{mode}.partial.mp4")
    sheet_seconds = [0.0]
    if sheet is not None:
        add = sheet.add

        def timed_add(frames):
            t = time.perf_counter()
            add(frames)
            sheet_seconds[0] += time.perf_counter() - t

        sheet.add = timed_add
    preview = mode != "direct"
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # ffmpeg's CPU time: robust on a loaded machine
    t0 = time.perf_counter()
    writer = VideoWriter(out, width, height, preview=preview, sheet=sheet, manifest=lambda p, c: {"complete": c})
    for frames in chunks:
        writer.write(frames)
    t1 = time.perf_counter()
    partial = folder / f"{mode}.partial.mp4"
    trailing = None
    time.sleep(1.0)  # (every mode) ffmpeg catches up with what it can: what is left is the encoder's own delay
    if preview:
        trailing = frames_total - count_frames(partial, ffmpeg)
        partial_bytes_before_finish = partial.stat().st_size
    t2 = time.perf_counter()
    writer._close()
    writer._done = False  # finish() closes again (a no-op) and publishes
    finish_close = time.perf_counter() - t2
    partial_bytes = partial.stat().st_size if preview else 0
    t3 = time.perf_counter()
    writer.finish()
    t4 = time.perf_counter()
    final_bytes = out.stat().st_size
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ffmpeg_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    result = {
        "ffmpeg_cpu_s": round(ffmpeg_cpu, 3),
        "mode": mode, "frames": frames_total, "write_s": round(t1 - t0, 3), "close_s": round(finish_close, 3),
        "publish_s": round(t4 - t3, 3), "total_s": round((t1 - t0) + finish_close + (t4 - t3), 3),
        "remux_s": round(writer.remux_seconds, 3) if writer.remux_seconds is not None else None,
        "final_bytes": final_bytes, "partial_bytes": partial_bytes,
        "bytes_written": final_bytes + partial_bytes + (len(json.dumps({"complete": None})) if preview else 0),
        "partial_trailing_frames": trailing,
        "partial_bytes_before_finish": partial_bytes_before_finish if preview else None,
        "sheet_s": round(sheet_seconds[0], 3) if sheet is not None else None,
        "sheet_writes": sheet.writes if sheet is not None else None,
        "sheet_bytes": (folder / f"{mode}.sheet.png").stat().st_size if sheet is not None else None,
    }
    for p in folder.iterdir():
        p.unlink()
    return result


def long_remux(width: int, height: int, minutes: float, ffmpeg: str) -> dict:
    """The remux at the end of a long render: a fragmented file of `minutes` (15 s of the footage encoded once,
    then repeated by stream copy, fragment per chunk as the writer makes them) → +faststart, as the writer does."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        writer = VideoWriter(tmp / "seed.mp4", width, height, preview=True)
        for frames in footage(width, height, 20):
            writer.write(frames)
        writer._close()
        loops = max(0, round(minutes * 60 / 15) - 1)
        long = tmp / "long.partial.mp4"
        subprocess.run([ffmpeg, "-v", "error", "-stream_loop", str(loops), "-i", str(writer.live), "-c", "copy",
                        "-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "750000",
                        "-f", "mp4", str(long)], check=True)
        with open(long, "rb") as f:  # as at the end of a render, the file is in the page cache
            while f.read(1 << 24):
                pass
        t = time.perf_counter()
        subprocess.run(remux_command(ffmpeg, long, tmp / "long.mp4"), check=True)
        seconds = time.perf_counter() - t
        return {"minutes": minutes, "partial_bytes": long.stat().st_size, "final_bytes": (tmp / "long.mp4").stat().st_size,
                "remux_s": round(seconds, 3)}


def main() -> None:
    import imageio_ffmpeg

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", default="832x480")
    p.add_argument("--chunks", type=int, default=20, help="12-frame chunks (20 = 15 s of video)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--remux-minutes", type=float, default=20.0, help="also time the remux of a video this long (0: no)")
    p.add_argument("--save", action="store_true", help="write results/<date>-preview-<host>.json")
    args = p.parse_args()
    width, height = (int(v) for v in args.resolution.split("x"))
    chunks = list(footage(width, height, args.chunks))
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    modes = ("direct", "preview", "preview+sheet")
    runs = {m: [] for m in modes}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for mode in modes:
                runs[mode].append(one_run(mode, Path(tmp), width, height, chunks, ffmpeg))
                print(json.dumps(runs[mode][-1]), flush=True)
    summary = {}
    for mode in modes:
        rs = runs[mode]
        summary[mode] = {k: statistics.median(r[k] for r in rs) for k in rs[0]
                         if isinstance(rs[0][k], (int, float)) and rs[0][k] is not None}
    base = summary["direct"]
    for mode in modes[1:]:
        s = summary[mode]
        s["extra_total_s"] = round(s["total_s"] - base["total_s"], 3)
        s["extra_ffmpeg_cpu_s"] = round(s["ffmpeg_cpu_s"] - base["ffmpeg_cpu_s"], 3)
        s["extra_total_percent"] = round(100 * (s["total_s"] / base["total_s"] - 1), 1)
        s["bytes_written_ratio"] = round(s["bytes_written"] / base["bytes_written"], 3)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(), "resolution": args.resolution,
              "frames": sum(len(c) for c in chunks), "rounds": args.rounds,
              "load_before": load_before, "load_after": os.getloadavg(), "summary": summary, "runs": runs}
    if args.remux_minutes:
        report["long_remux"] = long_remux(width, height, args.remux_minutes, ffmpeg)
        summary["long_remux"] = report["long_remux"]
    print(json.dumps({"summary": summary}, indent=2))
    if args.save:
        folder = Path(__file__).parent / "results"
        folder.mkdir(exist_ok=True)
        name = f"{datetime.date.today().isoformat()}-preview-{platform.machine()}-{args.resolution}.json"
        (folder / name).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {folder / name}")


if __name__ == "__main__":
    sys.exit(main())
