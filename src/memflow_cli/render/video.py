"""Streaming mp4 writer and the manifest written next to the video.

Frames go to ffmpeg (the binary that imageio-ffmpeg ships) through a pipe as they are decoded: H.264,
yuv420p tagged BT.709 limited range, 16 fps, `+faststart` so that players can start before the whole
file is read. The video is
written to a hidden temporary file next to the target and renamed over it only when ffmpeg finished
cleanly, so an existing good file is never replaced by a broken one; with a manifest, the two are published
as one step (`outputs.publish`). On Ctrl-C the frames written so far are finalised into a playable
`NAME.partial.mp4`. Temporaries carry the owning process id, and stale ones of dead processes are removed
when a new writer starts on the same output (see outputs.py).

With `preview` (the default of renders), ffmpeg writes a fragmented MP4 (`empty_moov`, a fragment every
`fragment_frames` frames, each flushed to disk) that plays while it grows: it starts as a hidden temporary,
and takes the name `NAME.partial.mp4` (with a manifest saying the render is in progress) once the first
frames are written; it is the file an interrupt keeps. On completion it is remuxed (`-c copy`, not encoded
again) into a hidden temporary with `+faststart`, which is published as `NAME.mp4` like the direct file; the
partial file goes. The encoder and its settings are the same in both modes, so the H.264 stream, and the
decoded frames, are identical; only the container differs (`btrt` bitrate fields). The partial file trails
the frames written by the encoder's delay (x264 lookahead and B-frames: about 3-4 chunks), never more.

A `sheet` (sheet.ContactSheet) sees every frame written; the complete and the partial file each get theirs,
renamed into place with the video and its manifest and listed in the manifest (`sheet`).

ffmpeg runs in its own session: a Ctrl-C in the terminal reaches only us, and we decide to finish the
file instead of ffmpeg dying mid-write.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from memflow_cli.errors import MemflowError
from memflow_cli.render.outputs import (
    PublishError,
    check_output,
    create_temp,
    manifest_path,
    partial_path,
    publish,
    remove_stale_temporaries,
    sheet_path,
    signals_deferred,
)

FPS = 16


# Colour description written into every file: BT.709 primaries, transfer and matrix, limited ("tv") range,
# the convention for HD video. Untagged files are guessed at by players (often as BT.601), which shifts
# colours; tagging without converting with the same matrix would be just as wrong, so the RGB→YUV
# conversion is pinned to BT.709 too (swscale's default matrix is BT.601).
COLOUR = {"colorspace": "bt709", "color_primaries": "bt709", "color_trc": "bt709", "color_range": "tv"}


def encoder_args(crf: int = 18, preset: str = "medium") -> list[str]:
    """ffmpeg output options: H.264 yuv420p, converted from full-range RGB with the BT.709 matrix and tagged so."""
    return [
        "-vf", "scale=in_range=pc:out_range=tv:out_color_matrix=bt709,format=yuv420p,"
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv",
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        *(arg for key, value in COLOUR.items() for arg in (f"-{key}", value)),
    ]  # fmt: skip


def encoder_settings(crf: int = 18, preset: str = "medium") -> dict:
    """The encoder settings as recorded in the manifest."""
    return {"codec": "h264", "encoder": "libx264", "preset": preset, "crf": crf, "pix_fmt": "yuv420p", **COLOUR}


def remux_command(ffmpeg: str, source: Path, target: Path) -> list[str]:
    """The preview's fragmented file → an MP4 with +faststart, streams copied (no encoding). movie_timescale
    1000 as the direct writer's file (a fragmented file uses the track's)."""
    return [ffmpeg, "-y", "-hide_banner", "-loglevel", "error", "-i", str(source), "-map", "0", "-c", "copy",
            "-movflags", "+faststart", "-movie_timescale", "1000", "-f", "mp4", str(target)]


class VideoError(MemflowError):
    """ffmpeg failed or the output cannot be written."""


def check_output_path(path: str | Path, inputs=()) -> Path:
    """Fail before any work if the video cannot be written where asked (InputError, exit 2); see outputs.py."""
    return check_output(path, inputs)


class VideoWriter:
    """Append uint8 RGB frames `[n, H, W, 3]`; `finish()` publishes the file atomically.

    Use as a context manager: leaving normally finishes, leaving by KeyboardInterrupt keeps a partial
    file (see `partial`), any other error discards the temporary file. `manifest(path, complete)`, if given,
    returns the manifest of the file about to be published at `path`; video and manifest then appear together.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int = FPS, *, crf: int = 18, preset: str = "medium",
                 manifest: Callable[[Path, bool | None], dict] | None = None, preview: bool = False,
                 fragment_frames: int = 12, sheet=None):
        import imageio_ffmpeg

        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), fps
        self.frames = 0
        self.partial: Path | None = None  # set when an interrupt kept a partial file
        self.manifest: Path | None = None  # set when a manifest was published with the video
        self.published: Path | None = None  # the video file that was put in place (target or partial)
        self._manifest = manifest
        self.encoder = encoder_settings(crf, preset)  # recorded in the manifest
        self.preview = bool(preview)
        self.fragment_frames = max(1, int(fragment_frames))
        self.live: Path | None = None  # preview: NAME.partial.mp4 once the growing file took that name
        self.remux_seconds: float | None = None  # preview: the remux into NAME.mp4 at the end
        self.sheet = sheet  # sheet.ContactSheet: sees every frame; published with the video
        self._waited = False
        self._ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        self._done = False
        self._pending: KeyboardInterrupt | None = None  # an interrupt that arrived while ffmpeg was finishing
        self.tmp: Path | None = None
        self._proc = None
        remove_stale_temporaries(self.path)
        self._log = tempfile.TemporaryFile()
        try:
            # A Ctrl-C between creating the file and starting ffmpeg must not leave a hidden file behind:
            # signals wait until both exist, and any interruption right after cleans both up.
            with signals_deferred():
                self.tmp = create_temp(partial_path(self.path) if self.preview else self.path, ".mp4")
                self._proc = self._start(self._ffmpeg, crf, preset)
        except BaseException:
            self.discard()
            raise

    def container_args(self) -> list[str]:
        """The muxer's options: `+faststart`, or (preview) a fragmented MP4 flushed every `fragment_frames`."""
        if not self.preview:
            return ["-movflags", "+faststart"]
        micros = int(self.fragment_frames * 1_000_000 / self.fps)
        return ["-movflags", "+frag_keyframe+empty_moov+default_base_moof", "-frag_duration", str(micros),
                "-flush_packets", "1"]

    def _start(self, ffmpeg: str, crf: int, preset: str) -> subprocess.Popen:
        width, height, fps = self.width, self.height, self.fps
        cmd = [
            ffmpeg, "-y", "-hide_banner", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
            "-an", *encoder_args(crf, preset), *self.container_args(), "-f", "mp4", str(self.tmp),
        ]  # fmt: skip
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                start_new_session=True)

    # -- writing ---------------------------------------------------------------------------------

    def write(self, frames: Any) -> None:
        if hasattr(frames, "detach"):  # a torch tensor
            frames = frames.detach().cpu().numpy()
        frames = np.ascontiguousarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames [n, {self.height}, {self.width}, 3], got {frames.dtype} {list(frames.shape)}"
            )
        try:
            self._proc.stdin.write(frames.tobytes())
            if self.preview:
                self._proc.stdin.flush()  # the frames reach ffmpeg now, not when a pipe buffer fills
        except (BrokenPipeError, OSError) as exc:
            self._proc.wait()
            raise VideoError(f"{self.path}: ffmpeg stopped while writing ({self._ffmpeg_error() or exc})") from None
        self.frames += len(frames)
        if self.sheet is not None:
            self.sheet.add(frames)
        if self.preview and self.live is None:
            # the first write waits (briefly) for ffmpeg to open the file, so that it is there from the first
            # chunk on; later ones only look
            opened, self._waited = self._opened(wait=0.0 if self._waited else 2.0), True
            if opened:
                self._go_live()

    def _opened(self, wait: float = 0.0) -> bool:
        """Whether ffmpeg has opened its output (it does so once the first frame reached the encoder, and
        writes the header at once). Only then may the file be renamed: ffmpeg keeps writing the same file."""
        import time

        deadline = time.monotonic() + wait
        while True:
            try:
                if self.tmp.stat().st_size > 0:
                    return True
            except OSError:
                return False
            if time.monotonic() >= deadline or self._proc.poll() is not None:
                return False
            time.sleep(0.005)

    def _go_live(self) -> None:
        """The growing file takes the name NAME.partial.mp4, with a manifest saying the render is in progress
        (both as one step: an earlier partial file and its manifest are replaced together). ffmpeg goes on
        writing the same file under its new name (it has it open: see `_opened`)."""
        target = partial_path(self.path)
        with signals_deferred():
            data = self._manifest(target, None) if self._manifest is not None else None
            publish(None, None, data, manifest_path(target)) if data is not None else None
            try:
                os.replace(self.tmp, target)
            except OSError as exc:
                manifest_path(target).unlink(missing_ok=True)
                raise VideoError(f"{target}: cannot put the preview file in place ({exc.strerror or exc})") from None
            self.live = self.tmp = target
        if self.sheet is not None and self.sheet.live == sheet_path(target):
            self.sheet.write(self.sheet.live, compress_level=1)  # replaces an earlier attempt's partial sheet
        else:
            sheet_path(target).unlink(missing_ok=True)

    def finish(self) -> Path:
        """Finalise and rename over the target. Raises VideoError (and removes the temp file) on failure."""
        if self._close() != 0 or self.frames == 0:
            reason = self._ffmpeg_error() or ("no frames were written" if self.frames == 0 else "unknown error")
            self.discard()
            raise VideoError(f"{self.path}: ffmpeg could not write the video ({reason}); nothing was replaced")
        if self.preview:
            if self.live is None:  # finished before the file could take its name: it does now
                self._go_live()
            self._remux()
        try:
            self._publish(self.path, complete=True)
        except PublishError:
            if self.live is not None:  # NAME.mp4 could not be put in place: the partial file stays, as partial
                with contextlib.suppress(Exception):
                    self._keep_live()
            raise
        with signals_deferred():
            if self.live is not None:  # NAME.mp4 holds every frame of the partial file: it goes, with its pair
                for leftover in (self.live, manifest_path(self.live), sheet_path(self.live)):
                    leftover.unlink(missing_ok=True)
            elif self.sheet is not None and self.sheet.live is not None:
                self.sheet.live.unlink(missing_ok=True)
        if self._pending is not None:  # a signal came while ffmpeg finished: the complete file is kept, then we stop
            raise self._pending
        return self.path

    def _remux(self) -> None:
        """The finished fragmented file → a hidden temporary of NAME.mp4 with +faststart, streams copied."""
        import time

        t = time.perf_counter()
        with signals_deferred():
            out = create_temp(self.path, ".mp4")
        cmd = remux_command(self._ffmpeg, self.live, out)
        self._log.seek(0)
        self._log.truncate()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
                                    start_new_session=True)
        except OSError as exc:
            proc, failed = None, exc.strerror or str(exc)
        while proc is not None:  # a Ctrl-C while remuxing waits for it (as for ffmpeg finishing): the frames are there
            try:
                rc = proc.wait()
                failed = None if rc == 0 else self._ffmpeg_error() or f"exit code {rc}"
                break
            except KeyboardInterrupt as exc:
                self._pending = self._pending or exc
        self.remux_seconds = time.perf_counter() - t
        if failed is not None:
            out.unlink(missing_ok=True)
            reason = failed
            self._keep_live()
            raise VideoError(f"{self.path}: could not remux {self.live} into the final file ({reason}); "
                             f"kept {self.live} (all {self.frames} frames); nothing was replaced")
        self.tmp = out

    def keep_partial(self) -> Path | None:
        """Finalise what was written as `NAME.partial.mp4` (after an interrupt); None if nothing usable."""
        if self._close() != 0 or self.frames == 0:
            self.discard()
            return None
        if self.preview:
            if self.live is None:
                self._go_live()
            self._keep_live()
            return self.partial
        try:
            self._publish(partial_path(self.path), complete=False)
        finally:
            if self.published is not None:
                self.partial = self.published
        return self.partial

    def _keep_live(self) -> None:
        """The growing file is finished and stays as NAME.partial.mp4: its manifest now says what it holds."""
        self.tmp = self.live  # in place already: only its manifest (and sheet) are published
        self._publish(self.live, complete=False, move=False)
        self.partial = self.live

    def discard(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._close()
        self._remove_tmp()
        if self.live is not None:  # the growing file went with the error: so does its in-progress manifest
            manifest_path(self.live).unlink(missing_ok=True)
            self.live = None
        if self.sheet is not None and self.sheet.live is not None and self.sheet.writes:
            self.sheet.live.unlink(missing_ok=True)  # the partial sheet we wrote describes nothing kept

    def _publish(self, target: Path, complete: bool, move: bool = True) -> None:
        # Signals wait while the manifest is made and both files are put in place: a finished video is never
        # thrown away because Ctrl-C came a moment too late, and the pair never half-appears.
        sheet_tmp = None
        try:
            with signals_deferred():
                data = self._manifest(target, complete) if self._manifest is not None else None
                extras = []
                if self.sheet is not None:
                    sheet_tmp = self.sheet.write_temp(sheet_path(target))
                    if data is not None:
                        data["sheet"] = {**self.sheet.entry(sheet_tmp), "path": str(sheet_path(target))}
                    extras.append((sheet_tmp, sheet_path(target)))
                publish(self.tmp if move else None, target if move else None, data,
                        manifest_path(target) if data is not None else None, extras)
                self.published = target
                self.manifest = manifest_path(target) if data is not None else None
        except BaseException:
            if move:
                self._remove_tmp()
            if sheet_tmp is not None:
                sheet_tmp.unlink(missing_ok=True)
            raise

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if self._done:
            return
        if kind is None:
            self.finish()
        elif issubclass(kind, KeyboardInterrupt):
            self.keep_partial()
        else:
            self.discard()

    # -- internals -------------------------------------------------------------------------------

    def _close(self) -> int:
        self._done = True
        if self._proc is None:
            return -1
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        # A second Ctrl-C while ffmpeg writes the index must not leave it half-written: wait it out.
        while True:
            try:
                return self._proc.wait()
            except KeyboardInterrupt as exc:
                self._pending = self._pending or exc
                continue

    def _ffmpeg_error(self) -> str:
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else ""

    def _remove_tmp(self) -> None:
        if self.tmp is None:
            return
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def write_manifest(path: str | Path, data: dict) -> Path:
    """Write JSON atomically (temp file + rename), so a reader never sees half a manifest."""
    path = Path(path)
    publish(None, None, data, path)
    return path


def probe(path: str | Path) -> dict:
    """Frame count, duration, fps and size of a video, decoded with imageio-ffmpeg's ffmpeg (it has no ffprobe)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    reader.close()
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    return {"frames": frames, "seconds": seconds, "fps": meta.get("fps"), "size": tuple(meta.get("size", ())),
            "codec": meta.get("codec")}


def colour_tags(path: str | Path) -> dict:
    """The colour description of a video's first stream, read from `ffmpeg -i` (imageio-ffmpeg ships no ffprobe).

    ffmpeg prints e.g. `yuv420p(tv, bt709, progressive)` when matrix, primaries and transfer agree, and
    `yuv420p(tv, bt709/unknown/unknown)` (matrix/primaries/transfer) when they do not.
    """
    import re

    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            capture_output=True, text=True)
    match = re.search(r"Video: .*?, (\w+)\(([^)]*)\)", result.stderr)
    if not match:
        return {"pix_fmt": None, "color_range": None, "colorspace": None, "color_primaries": None, "color_trc": None}
    parts = [p.strip() for p in match.group(2).split(",")]
    colour_range = parts[0] if parts and parts[0] in ("tv", "pc") else None
    described = [p for p in parts if p not in ("tv", "pc", "progressive") and not p.startswith(("top ", "bottom "))]
    matrix = primaries = trc = None
    if described:
        names = described[0].split("/")
        matrix, primaries, trc = (names * 3)[:3] if len(names) == 1 else (names + [None, None])[:3]
    return {"pix_fmt": match.group(1), "color_range": colour_range, "colorspace": matrix,
            "color_primaries": primaries, "color_trc": trc}
