"""Video-to-video: the input video's chunks become the generator's starting latents, with a strength.

`resolve_video_input` decides everything that needs no weights (which video, how long, fit, strength,
noise controller) and fails with an InputError before anything heavy loads. `SourceLatents` then walks
the input chunk by chunk alongside the generator: frames from `VideoSource` (9, then 12 per chunk), the
chunk's strength (fixed, or motion-adaptive with the noise controller), and the streaming VAE encoder's
latents (3 per chunk), so the chunk grid and the memory bank's record schedule are text-to-video's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from memflow_cli.errors import InputError
from memflow_cli.inputs.video_source import (
    FIT_MODES,
    VideoInfo,
    VideoSource,
    controlled_strength,
    file_sha256,
    frames_to_video_tensor,
    motion_amount,
    probe_video,
)

DEFAULT_STRENGTH = 0.7  # Scope's default noise scale


def check_strength(value, where: str = "--strength") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise InputError(f"{where}: expected a strength in (0, 1] (1 = all noise, like text-to-video), got {value}")
    return float(value)


@dataclass(frozen=True)
class VideoInput:
    """A checked request for video-to-video: the probed input and how to use it."""

    info: VideoInfo
    frames: int  # frames of the input the render uses (= the render's length)
    fit: str = "crop"
    strength: float = DEFAULT_STRENGTH
    noise_controller: bool = False

    sha256: str | None = None  # of the input file (None for an image sequence)

    @property
    def path(self) -> Path:
        return Path(self.info.path)

    def settings(self) -> dict:
        """What of the input determines the frames (part of the render's fingerprint)."""
        return {"input_sha256": self.sha256, "frames": self.frames, "fit": self.fit, "strength": self.strength,
                "noise_controller": self.noise_controller}

    def manifest(self) -> dict:
        info = self.info
        return {
            "path": str(Path(info.path).resolve()),
            "sha256": self.sha256,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "frames": info.clip_frames,  # the clip's, at 16 fps (estimated from its duration past what was probed)
            "frames_used": self.frames,
            "fit": self.fit,
            "strength": self.strength,
            "noise_controller": self.noise_controller,
        }


def resolve_video_input(
    video: str | Path | None,
    *,
    timeline_frames: int | None,
    input_mode: str | None = None,
    file_strength: float | None = None,
    file_controller: bool | None = None,
    strength: float | None = None,
    fit: str | None = None,
    noise_controller: bool | None = None,
    where: str = "the timeline",
) -> VideoInput | None:
    """Check a video-to-video request before any weights load; None for text-to-video.

    `timeline_frames` is the render's length in frames (round(end·16)), or None when the length comes from
    the video (`--prompt`). The command line beats the file: --strength over noiseScale, and
    --no-noise-controller (noise_controller=False) over noiseController.
    """
    if video is None:
        if input_mode == "video":
            raise InputError(f"{where}: made for video-to-video (input mode \"video\"); pass the input video with --video PATH")
        for given, name in ((strength, "--strength"), (fit, "--fit")):
            if given is not None:
                raise InputError(f"{name}: only means something with an input video; expected --video PATH as well")
        return None
    fit = fit or "crop"
    if fit not in FIT_MODES:
        raise InputError(f"--fit: expected one of {', '.join(FIT_MODES)}, got {fit!r}")
    if strength is not None:
        value = check_strength(strength)
    elif file_strength is not None:
        value = check_strength(file_strength, f"{where}: noise scale")
    else:
        value = DEFAULT_STRENGTH
    controller = bool(file_controller) if noise_controller is None else bool(noise_controller)
    info = probe_video(video, limit=timeline_frames)
    frames = info.frames if timeline_frames is None else timeline_frames
    if info.frames < frames:
        raise InputError(
            f"{video}: the input video has {info.frames} frames at 16 fps ({info.frames / 16:.2f} s), the timeline "
            f"needs {frames} ({frames / 16:.2f} s); expected an input at least as long as the timeline"
        )
    return VideoInput(info, frames, fit, value, controller, file_sha256(info.path))


@dataclass
class ChunkInput:
    latents: torch.Tensor  # [1, 3, 16, h, w], normalized
    strength: float
    frames: int  # input frames encoded for this chunk (9, then 12)


@dataclass
class SourceLatents:
    """Iterates over the input video as (latents, strength) per generator chunk."""

    request: VideoInput
    width: int
    height: int
    encoder: object  # .encode(video [1, 3, f, H, W] in [-1, 1]) -> latents, carrying causal state
    timings: dict = field(default_factory=lambda: {"read": 0.0, "vae_encode": 0.0})
    strengths: list = field(default_factory=list)
    device: torch.device | str | None = None  # where the encoder's input goes (its own device if None)
    synchronize: Callable[[], None] = lambda: None  # honest stage timings on asynchronous devices

    def __post_init__(self):
        r = self.request
        self.source = VideoSource(r.path, self.width, self.height, r.fit, frames=r.frames, info=r.info)

    @property
    def num_chunks(self) -> int:
        return self.source.num_chunks

    def __iter__(self) -> Iterator[ChunkInput]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[ChunkInput]:
        """From chunk `start` on (a resumed render; the encoder's caches must be those after chunk start-1)."""
        chunks = self.source.chunks(start)
        try:
            while True:
                t = time.perf_counter()
                try:
                    frames = next(chunks)
                except StopIteration:
                    return
                video = frames_to_video_tensor(frames, device=self.device)
                self.synchronize()
                t2 = time.perf_counter()
                strength = self.request.strength
                if self.request.noise_controller:
                    strength = controlled_strength(strength, motion_amount(video))
                latents = self.encoder.encode(video)
                self.synchronize()
                t3 = time.perf_counter()
                self.timings["read"] += t2 - t
                self.timings["vae_encode"] += t3 - t2
                self.strengths.append(strength)
                yield ChunkInput(latents, strength, frames.shape[0])
        finally:
            chunks.close()
