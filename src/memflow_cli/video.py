"""Streaming mp4 writer and the manifest written next to the video.

Frames go to ffmpeg (the binary that imageio-ffmpeg ships) through a pipe as they are decoded: H.264,
yuv420p, 16 fps, `+faststart` so that players can start before the whole file is read. The video is
written to a hidden temporary file next to the target and renamed over it only when ffmpeg finished
cleanly, so an existing good file is never replaced by a broken one. On Ctrl-C the frames written so far
are finalised into a playable `NAME.partial.mp4`.

ffmpeg runs in its own session: a Ctrl-C in the terminal reaches only us, and we decide to finish the
file instead of ffmpeg dying mid-write.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from memflow_cli.errors import MemflowError

FPS = 16


class VideoError(MemflowError):
    """ffmpeg failed or the output cannot be written."""


def partial_path(path: str | Path) -> Path:
    """`out.mp4` → `out.partial.mp4`: where an interrupted render keeps its frames."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix or '.mp4'}")


def manifest_path(video: str | Path) -> Path:
    """`out.mp4` → `out.manifest.json`: the render's settings, inputs and figures."""
    video = Path(video)
    return video.with_name(f"{video.stem}.manifest.json")


def check_output_path(path: str | Path) -> Path:
    """Fail before any work if the video cannot be written where asked."""
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"{path}: is a directory; expected the path of an .mp4 file to write")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VideoError(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VideoError(f"{path}: cannot write into {parent} (permission denied)")
    return path


class VideoWriter:
    """Append uint8 RGB frames `[n, H, W, 3]`; `finish()` publishes the file atomically.

    Use as a context manager: leaving normally finishes, leaving by KeyboardInterrupt keeps a partial
    file (see `partial`), any other error discards the temporary file.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int = FPS, *, crf: int = 18, preset: str = "medium"):
        import imageio_ffmpeg

        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), fps
        self.frames = 0
        self.partial: Path | None = None  # set when an interrupt kept a partial file
        self._done = False
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".tmp.mp4", dir=self.path.parent or ".")
        os.close(fd)
        self.tmp = Path(tmp)
        self._log = tempfile.TemporaryFile()
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-r", str(fps), "-i", "-",
            "-an", "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(self.tmp),
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
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
        except (BrokenPipeError, OSError) as exc:
            self._proc.wait()
            raise VideoError(f"{self.path}: ffmpeg stopped while writing ({self._ffmpeg_error() or exc})") from None
        self.frames += len(frames)

    def finish(self) -> Path:
        """Finalise and rename over the target. Raises VideoError (and removes the temp file) on failure."""
        if self._close() != 0 or self.frames == 0:
            reason = self._ffmpeg_error() or ("no frames were written" if self.frames == 0 else "unknown error")
            self._remove_tmp()
            raise VideoError(f"{self.path}: ffmpeg could not write the video ({reason}); nothing was replaced")
        _publish(self.tmp, self.path)
        return self.path

    def keep_partial(self) -> Path | None:
        """Finalise what was written as `NAME.partial.mp4` (after an interrupt); None if nothing usable."""
        if self._close() != 0 or self.frames == 0:
            self._remove_tmp()
            return None
        self.partial = partial_path(self.path)
        _publish(self.tmp, self.partial)
        return self.partial

    def discard(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._close()
        self._remove_tmp()

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
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        # A second Ctrl-C while ffmpeg writes the index must not leave it half-written: wait it out.
        while True:
            try:
                return self._proc.wait()
            except KeyboardInterrupt:
                continue

    def _ffmpeg_error(self) -> str:
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else ""

    def _remove_tmp(self) -> None:
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def write_manifest(path: str | Path, data: dict) -> Path:
    """Write JSON atomically (temp file + rename), so a reader never sees half a manifest."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.json", dir=path.parent or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    _publish(Path(tmp), path)
    return path


def _publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file over `path` with ordinary permissions.

    mkstemp creates files readable by their owner only; a finished video should get the same mode as any
    file the user creates (0666 less the umask).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def probe(path: str | Path) -> dict:
    """Frame count, duration, fps and size of a video, decoded with imageio-ffmpeg's ffmpeg (it has no ffprobe)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    reader.close()
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    return {"frames": frames, "seconds": seconds, "fps": meta.get("fps"), "size": tuple(meta.get("size", ())),
            "codec": meta.get("codec")}
