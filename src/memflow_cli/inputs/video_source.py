"""Read an input video as a stream of frames at 16 fps, fitted to the output size, in the chunks of the stream.

Anything ffmpeg reads works (mp4, mov, webm, mkv, gif, a single image), and so do image sequences (a
folder of images, or a printf pattern like `frames/%04d.png`; one image is one frame at 16 fps).

Two passes over the file, both through the ffmpeg binary that imageio-ffmpeg ships:
  - `probe_video` decodes the file once without keeping any frame, to learn the frame count *after*
    resampling to 16 fps (the only count that matters, and one that metadata cannot give exactly), the
    source size and frame rate. It runs before any weights load, so a bad input fails in seconds.
  - `VideoSource.chunks()` starts ffmpeg with the same resampling filter followed by scaling and fitting
    (crop, pad or stretch) and reads raw RGB frames from its pipe only as the consumer asks for them: the
    pipe's back-pressure keeps ffmpeg a few frames ahead at most, so memory does not depend on the
    video's length.

Chunks follow the text-to-video grid: 9 frames for chunk 0 (frame 0, then two groups of 4 → 3 latent
frames), 12 for every later chunk (→ 3 latent frames). Frames the last chunk needs beyond the end
repeat the last frame read.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from memflow_cli.errors import InputError
from memflow_cli.inputs.schedule import CHUNK_FRAMES, FIRST_CHUNK_FRAMES, chunk_start_frame, chunks_for_frames

FPS = 16
FIT_MODES = ("crop", "pad", "stretch")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learned: `frames` counts frames after resampling to 16 fps."""

    path: str
    frames: int
    width: int | None  # as displayed (rotation applied); None if ffmpeg did not say
    height: int | None
    fps: float | None  # the source's frame rate, if ffmpeg reports one
    sequence: bool = False  # an image sequence (each image one frame at 16 fps)
    # A probe with a limit stops counting there: then `frames` is the limit and the whole clip's length is
    # `total`, counted (`counted_all`) or estimated from the container's duration (None when it gives none).
    counted_all: bool = True
    total: int | None = None

    @property
    def seconds(self) -> float:
        return self.frames / FPS

    @property
    def clip_frames(self) -> int | None:
        """The whole clip's frames at 16 fps (exact when `counted_all`, else estimated or None)."""
        return self.frames if self.counted_all and self.total is None else self.total

    def describe(self) -> str:
        size = f"{self.width}x{self.height}" if self.width else "?x?"
        rate = f"{self.fps:g} fps" if self.fps else "? fps"
        total = self.clip_frames
        if total is None:
            length = f"at least {self.frames} frames at {FPS} fps"
        else:
            length = f"{'' if self.counted_all else 'about '}{total} frames at {FPS} fps ({total / FPS:.2f} s)"
        return f"{self.path}: {size}, {rate}, {length}"

    def uses(self, frames: int) -> str:
        """`uses 48 of its 96 frames` (or `uses all 96 frames`)."""
        total = self.clip_frames
        if total is None:
            return f"uses its first {frames} frames"
        if total <= frames:
            return f"uses all {frames} frames"
        return f"uses {frames} of its {total} frames" if self.counted_all else f"uses {frames} of about {total} frames"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _input_args(path: Path) -> tuple[list[str], bool]:
    """ffmpeg input options for `path`; a folder of images or a %d pattern is read as a sequence at 16 fps."""
    text = str(path)
    if path.is_dir():
        suffixes = sorted({p.suffix.lower() for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES})
        if not suffixes:
            raise InputError(f"{path}: a folder without images; expected a video file or a folder of "
                             f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images")
        if len(suffixes) > 1:
            raise InputError(f"{path}: a folder with images of several kinds ({', '.join(suffixes)}); expected one kind")
        pattern = str(path / f"*{suffixes[0]}").replace("[", "\\[").replace("?", "\\?")
        return ["-f", "image2", "-framerate", str(FPS), "-pattern_type", "glob", "-i", pattern], True
    if re.search(r"%0?\d*d", path.name):
        return ["-f", "image2", "-framerate", str(FPS), "-i", text], True
    return ["-i", text], False


def _check_path(path: Path) -> None:
    if re.search(r"%0?\d*d", path.name):
        if not path.parent.is_dir():
            raise InputError(f"{path}: the folder {path.parent} of this image sequence does not exist")
        return
    from memflow_cli.input_files import check_input_file

    check_input_file(path, "file", folder_ok=True)  # a folder of images is an input video too


def _resample_filter() -> str:
    return f"fps={FPS}"


def fit_filter(width: int, height: int, fit: str) -> str:
    """ffmpeg filter chain that scales and fits a picture into width x height with square pixels."""
    if fit == "crop":  # cover, then cut the overflow evenly on both sides
        chain = (f"scale={width}:{height}:force_original_aspect_ratio=increase,"
                 f"crop={width}:{height}")
    elif fit == "pad":  # contain, then letterbox in black
        chain = (f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
                 f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:black")
    elif fit == "stretch":
        chain = f"scale={width}:{height}"
    else:
        raise InputError(f"--fit: expected one of {', '.join(FIT_MODES)}, got {fit!r}")
    return chain + ",setsar=1"


def _explain_failure(path: Path, log: str) -> InputError:
    if "matches no streams" in log:
        return InputError(f"{path}: has no video stream; expected a video (or an image)")
    if "Invalid data found" in log or "could not find codec" in log.lower() or "Error opening input" in log:
        return InputError(f"{path}: not a video ffmpeg can read; expected a video file such as mp4, mov, webm, mkv or gif")
    if "Permission denied" in log:
        return InputError(f"{path}: cannot read the file (permission denied)")
    last = [line for line in log.strip().splitlines() if line.strip()][-1:] or ["ffmpeg failed"]
    return InputError(f"{path}: cannot read this video ({last[0].strip()})")


_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_SIZE = re.compile(r"\b(\d{1,5})x(\d{1,5})\b")
_RATE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _parse_header(log: str) -> tuple[int | None, int | None, float | None]:
    """Size and frame rate of the first video stream from ffmpeg's input description."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        match = _VIDEO_STREAM.search(line)
        if not match:
            continue
        desc = match.group(1)
        size = _SIZE.search(desc)
        width, height = (int(size.group(1)), int(size.group(2))) if size else (None, None)
        fps = None
        for value, kilo, _ in _RATE.findall(desc):
            fps = float(value) * (1000 if kilo else 1)
            break
        # Phone videos carry a rotation; ffmpeg applies it when decoding, so report the displayed size.
        for after in lines[i + 1: i + 6]:
            rot = _ROTATION.search(after)
            if rot and width and round(abs(float(rot.group(1)))) % 180 == 90:
                width, height = height, width
        return width, height, fps
    return None, None, None


_FULL_PROBES: dict[tuple, VideoInfo] = {}  # (path, size, mtime) -> a complete count, so a file is decoded once


def _file_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_size, st.st_mtime_ns) if path.is_file() else None


def probe_video(path: str | Path, *, limit: int | None = None) -> VideoInfo:
    """Decode the input once (no frame kept) and count its frames at 16 fps.

    With `limit`, counting stops there: enough to know whether the input covers a render of that length.
    Raises InputError naming the file for: missing, not a video, no video stream, no frame.
    """
    path = Path(path)
    _check_path(path)
    key = _file_key(path)
    if key in _FULL_PROBES:
        known = _FULL_PROBES[key]
        if limit and known.frames > limit:
            return replace(known, path=str(path), frames=limit, total=known.frames)  # (counted_all: the total is)
        return replace(known, path=str(path))
    inputs, sequence = _input_args(path)
    # Tiny frames: the count is all we need, and the scaler then costs nothing.
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *inputs, "-map", "0:v:0", "-an", "-sn", "-dn",
           "-vf", f"{_resample_filter()},scale=16:16", *(["-frames:v", str(limit)] if limit else []),
           "-f", "null", "-nostats", "-progress", "pipe:1", "-"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    log = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise _explain_failure(path, log)
    counts = re.findall(rb"^frame=(\d+)", proc.stdout, flags=re.M)
    frames = int(counts[-1]) if counts else 0
    width, height, fps = _parse_header(log)
    if frames == 0:
        raise InputError(f"{path}: the video has no frames; expected at least one")
    counted_all, total = not (limit and frames >= limit), None
    duration = _DURATION.search(log)
    if not counted_all and duration:  # the rest of the clip was not decoded: its length from the container
        seconds = int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
        total = max(frames, round(seconds * FPS))
    info = VideoInfo(str(path), frames, width, height, fps, sequence, counted_all=counted_all, total=total)
    if key is not None and (limit is None or frames < limit):
        _FULL_PROBES[key] = info
    return info


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: a batch hashes its input video once


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file's bytes, read in blocks (None for an image sequence)."""
    path = Path(path)
    key = _file_key(path)
    if key is None:
        return None
    if key not in _DIGESTS:
        from memflow_cli.weights.hub import sha256_file

        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def chunk_frame_counts(num_chunks: int) -> list[int]:
    return [FIRST_CHUNK_FRAMES if i == 0 else CHUNK_FRAMES for i in range(num_chunks)]


class VideoSource:
    """An input video, probed once, read as chunks of uint8 RGB frames `[n, height, width, 3]`.

    `frames` is how many frames of the input a render uses (default: all of them); frames past it are
    never decoded, and chunk slots past it repeat the last frame used. One pass per `chunks()` call.
    """

    def __init__(self, path: str | Path, width: int, height: int, fit: str = "crop", *,
                 frames: int | None = None, info: VideoInfo | None = None):
        if fit not in FIT_MODES:
            raise InputError(f"--fit: expected one of {', '.join(FIT_MODES)}, got {fit!r}")
        if width <= 0 or height <= 0:
            raise ValueError("width and height must be positive")
        self.path = Path(path)
        self.width, self.height, self.fit = int(width), int(height), fit
        self.info = info or probe_video(self.path, limit=frames)
        if frames is not None and frames > self.info.frames:
            raise InputError(
                f"{self.path}: the input video has {self.info.frames} frames at {FPS} fps ({self.info.seconds:.2f} s), "
                f"the render needs {frames} ({frames / FPS:.2f} s); expected an input at least as long as the timeline"
            )
        self.frames = self.info.frames if frames is None else int(frames)
        if self.frames <= 0:
            raise InputError(f"{self.path}: expected a render of at least one frame")
        self.frames_read = 0  # frames taken from ffmpeg's pipe so far in the current pass

    @property
    def num_chunks(self) -> int:
        return chunks_for_frames(self.frames)

    def chunks(self, start: int = 0) -> Iterator[np.ndarray]:
        """Yield uint8 `[n, H, W, 3]` chunks, n = 9 then 12, covering `frames` (the tail repeats the last frame).

        From chunk `start` on: the frames before it are decoded and dropped (resampling must see them).
        """
        frame_bytes = self.width * self.height * 3
        inputs, _ = _input_args(self.path)
        vf = f"{_resample_filter()},{fit_filter(self.width, self.height, self.fit)}"
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *inputs, "-map", "0:v:0",
               "-an", "-sn", "-dn", "-vf", vf, "-frames:v", str(self.frames),
               "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        self.frames_read = 0
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                    bufsize=frame_bytes)
            try:
                last = None
                skip = min(chunk_start_frame(start), self.frames - 1) if start else 0
                for _ in range(skip):
                    data = _read_exactly(proc.stdout, frame_bytes)
                    if data is None:
                        break
                    last = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3).copy()
                    self.frames_read += 1
                for index in range(start, self.num_chunks):
                    n = FIRST_CHUNK_FRAMES if index == 0 else CHUNK_FRAMES
                    chunk = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
                    wanted = max(0, min(n, self.frames - chunk_start_frame(index)))
                    got = 0
                    while got < wanted:
                        data = _read_exactly(proc.stdout, frame_bytes)
                        if data is None:
                            break  # ffmpeg gave fewer frames than probed (rare rounding): repeat the last one
                        chunk[got] = np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
                        got += 1
                        self.frames_read += 1
                    if got:
                        last = chunk[got - 1].copy()
                    if last is None:
                        proc.wait()
                        log.seek(0)
                        raise _explain_failure(self.path, log.read().decode("utf-8", "replace"))
                    chunk[got:] = last
                    yield chunk
            finally:
                proc.stdout.close()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()


def _read_exactly(stream, size: int) -> bytes | None:
    parts, remaining = [], size
    while remaining:
        data = stream.read(remaining)
        if not data:
            return None
        parts.append(data)
        remaining -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def frames_to_video_tensor(frames: np.ndarray, device=None, dtype=None):
    """uint8 `[n, H, W, 3]` → float `[1, 3, n, H, W]` in [-1, 1] (the VAE encoder's input layout)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device)
    x = x.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
    return x.to(dtype) if dtype is not None else x


def motion_amount(video) -> float:
    """The noise controller's motion measure on one chunk of frames `[1, 3, n, H, W]` in [-1, 1].

    m = clamp(max over consecutive frames of RMSE(current - previous) / 0.2, 0, 1); 0 for a single frame.
    """
    if video.shape[2] < 2:
        return 0.0
    diff = (video[:, :, 1:].double() - video[:, :, :-1].double())
    rmse = diff.pow(2).mean(dim=(0, 1, 3, 4)).sqrt()
    return float(min(max(float(rmse.max()) / 0.2, 0.0), 1.0))


def controlled_strength(user_strength: float, motion: float) -> float:
    """Scope's motion-adaptive strength: more motion → less noise, the user's strength weighs 10 %."""
    return 0.9 * (0.8 - 0.2 * motion) + 0.1 * user_strength
