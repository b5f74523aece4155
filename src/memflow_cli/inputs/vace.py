"""The VACE context of a video, chunk by chunk: 96 channels built from a control video, a mask and references.

Per latent frame (official Wan2.1 `wan/vace.py`):
  - channels 0–15: the normalized VAE latent of `frames·(1−m)` (inactive: what is kept),
  - channels 16–31: the latent of `frames·m` (reactive: what is regenerated), m = mask > 0.5,
  - channels 32–95: the mask itself, space-to-depth 8×8 (channel dy·8+dx holds pixel (8y+dy, 8x+dx)),
    resampled in time from pixel frames to latent frames by nearest-exact over the whole video.
No mask means mask = 1 (the frames go to the reactive slot); no control video means frames = 0.
Each reference image is one latent frame `[latent, zeros(16), zeros(64)]`, prepended to every chunk.

Streaming: the inactive and reactive videos go through two streaming VAE encoders, each with its own
causal cache (sharing one cache would mix the two streams). The time index map of the mask is computed
once from the video's total length; a chunk's mask channels may pick a pixel frame up to one past the
chunk's own pixel frames, so the mask is read with a small look-ahead buffer.

`VaceContextStream` works on tensors (frames in [-1, 1], masks in [0, 1]); reading files lives at the end
of this module behind `open_control`, `open_mask` and `read_reference`.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from memflow_cli.errors import InputError
from memflow_cli.weights.hub import sha256_file

MASK_STRIDE = 8  # the VAE's spatial stride: one latent pixel per 8x8 mask block
LATENT_CHANNELS = 16
FPS = 16


# ----------------------------------------------------------------------------------------------- geometry


def pixel_frame_count(latent_frames: int) -> int:
    """Pixel frames of a video of `latent_frames` latents (the causal VAE: 1 + 4(T−1))."""
    return 1 + 4 * (latent_frames - 1)


def chunk_pixel_range(chunk: int, frames_per_chunk: int) -> tuple[int, int]:
    """Pixel frames [start, stop) behind a chunk's latents: 9 for chunk 0, 12 afterwards (for 3 latents)."""
    stop = 4 * frames_per_chunk * (chunk + 1) - 3
    start = 0 if chunk == 0 else stop - 4 * frames_per_chunk
    return start, stop


def nearest_exact_indices(source: int, target: int) -> list[int]:
    """Source index picked for each of `target` outputs by `F.interpolate(mode="nearest-exact")`.

    floor((i + 0.5) · source / target), in exact integer arithmetic: 81→21 picks 1, 5, 9, …; 9→3 picks
    1, 4, 7; 12→3 picks 2, 6, 10.
    """
    if source <= 0 or target <= 0:
        raise ValueError("lengths must be positive")
    return [min(source - 1, ((2 * i + 1) * source) // (2 * target)) for i in range(target)]


def mask_time_indices(latent_frames: int) -> list[int]:
    """For each latent frame of the video, the pixel frame whose mask fills its mask channels.

    The official code resamples F_pix mask frames to (F_pix + 3) // 4 latent frames; for our videos
    F_pix = 1 + 4(T−1), so that is T.
    """
    pixels = pixel_frame_count(latent_frames)
    return nearest_exact_indices(pixels, (pixels + 3) // 4)


def space_to_depth(mask: torch.Tensor, stride: int = MASK_STRIDE) -> torch.Tensor:
    """[F, H, W] -> [F, stride², H/stride, W/stride]; channel dy·stride+dx holds pixel (stride·y+dy, stride·x+dx)."""
    frames, height, width = mask.shape
    if height % stride or width % stride:
        raise ValueError(f"mask size {height}x{width} is not a multiple of {stride}")
    blocks = mask.reshape(frames, height // stride, stride, width // stride, stride)
    return blocks.permute(0, 2, 4, 1, 3).reshape(frames, stride * stride, height // stride, width // stride)


def split_by_mask(frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames [F, 3, H, W], mask [F, H, W] in [0, 1] -> (inactive, reactive) = (frames·(1−m), frames·m), m = mask > 0.5."""
    m = (mask > 0.5).to(frames.dtype).unsqueeze(1)
    return frames * (1 - m), frames * m


# ----------------------------------------------------------------------------------------------- streams


class FrameBuffer:
    """Random access by increasing frame index over a stream of frame chunks; old frames are dropped.

    With `covers`, a stream that ended after at least that many frames continues with its last frame
    (the chunk grid may reach past the timeline's last frame, as in video-to-video).

    Resume: a checkpoint carries the buffer and `_pulled`; the stream itself is reopened from the start,
    so the frames it already gave are skipped on the first read after a restore.
    """

    _transient = ("_chunks", "_position")  # the open stream: rebuilt, then fast-forwarded to `_pulled`

    def __init__(self, chunks: Iterable[torch.Tensor], name: str, covers: int | None = None):
        self._chunks: Iterator[torch.Tensor] = iter(chunks)
        self._position = 0  # frames read from this stream object
        self._pulled = 0  # frames read from the input in all (across a resume)
        self._frames: torch.Tensor | None = None
        self._first = 0  # absolute index of self._frames[0]
        self._last: torch.Tensor | None = None
        self.name = name
        self.covers = covers

    @property
    def _end(self) -> int:
        return self._first + (0 if self._frames is None else self._frames.shape[0])

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop); `start` must not be below what was released."""
        if start < self._first:
            raise ValueError(f"{self.name}: frame {start} was already released")
        while self._end < stop:
            try:
                chunk = self._read()
            except StopIteration:
                if self.covers is None or self._last is None or self._end < self.covers:
                    raise InputError(f"{self.name}: ends after {self._end} frames; frame {stop - 1} is needed") from None
                chunk = self._last.expand(stop - self._end, *self._last.shape[1:])
            if chunk.shape[0] == 0:
                continue
            self._last = chunk[-1:]
            self._frames = chunk if self._frames is None else torch.cat([self._frames, chunk])
        return self._frames[start - self._first : stop - self._first]

    def _read(self) -> torch.Tensor:
        """The input's next frames; after a resume, first skips what the checkpoint already holds."""
        while True:
            chunk = next(self._chunks)
            skip = self._pulled - self._position
            self._position += chunk.shape[0]
            if chunk.shape[0] > skip:
                chunk = chunk[max(skip, 0):]
                self._pulled = self._position
                return chunk

    def release(self, before: int) -> None:
        """Forget frames below `before` (they will not be asked for again)."""
        if self._frames is not None and before > self._first:
            drop = min(before - self._first, self._frames.shape[0])
            self._frames = self._frames[drop:]
            self._first += drop


class WanStreamEncoder:
    """Streaming Wan VAE encoder: consecutive pixel chunks of one video -> normalized latents.

    The first chunk's frame 0 is encoded alone, then groups of 4 frames, with the causal caches carried
    across chunks: the same numbers as encoding the whole video at once.
    """

    def __init__(self, vae):
        self.vae = vae
        self.state: dict = {}
        self.started = False

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [1, 3, f, H, W] in [-1, 1] (f = 1 + 4k first, then 4k) -> latents [1, n, 16, H/8, W/8]."""
        vae = self.vae
        x = frames.to(vae.device, vae.dtype)
        parts = []
        if not self.started:
            parts.append(vae.encoder(x[:, :, :1], self.state))
            x = x[:, :, 1:]
            self.started = True
        if x.shape[2] % 4:
            raise ValueError(f"after the first frame, chunks must hold a multiple of 4 frames, got {x.shape[2]}")
        for start in range(0, x.shape[2], 4):
            parts.append(vae.encoder(x[:, :, start : start + 4], self.state))
        moments = vae.conv1(torch.cat(parts, dim=2))
        mean, inv_std = vae._stats(moments.dtype)
        z = (moments[:, : vae.config.z_dim] - mean) * inv_std
        return z.permute(0, 2, 1, 3, 4)


def stream_encoder(vae):
    """The VAE's own streaming encoder when it has one, else ours (same contract)."""
    make = getattr(vae, "stream_encoder", None)
    return make() if callable(make) else WanStreamEncoder(vae)


class VaceContextStream:
    """The VACE context of one video, one chunk at a time. Owns the two encoder streams and the buffers.

    control: chunks of frames [f, 3, H, W] in [-1, 1] in pixel-frame order (any chunking), or None.
    mask: chunks of masks [f, H, W] in [0, 1], or None. references: images [3, H, W] in [-1, 1].
    """

    def __init__(
        self,
        vae,
        *,
        num_latent_frames: int,
        height: int,
        width: int,
        frames_per_chunk: int = 3,
        control: Iterable[torch.Tensor] | None = None,
        mask: Iterable[torch.Tensor] | None = None,
        references: list[torch.Tensor] = (),
        covers: int | None = None,
    ):
        """`covers`: frames of the timeline the control and mask must provide; past them, the chunk grid
        repeats their last frame. None: they must provide every frame of the chunk grid."""
        if height % MASK_STRIDE or width % MASK_STRIDE:
            raise ValueError(f"video size {width}x{height} is not a multiple of {MASK_STRIDE}")
        self.vae = vae
        self.num_latent_frames = num_latent_frames
        self.frames_per_chunk = frames_per_chunk
        self.size = (height, width)
        self.control = FrameBuffer(control, "control video", covers) if control is not None else None
        self.mask = FrameBuffer(mask, "mask video", covers) if mask is not None else None
        self.mask_index = mask_time_indices(num_latent_frames)
        self.inactive = stream_encoder(vae)
        self.reactive = stream_encoder(vae)
        self.references = self._encode_references(list(references))
        self.chunk = 0

    @property
    def reference_frames(self) -> int:
        return 0 if self.references is None else self.references.shape[1]

    def _encode_references(self, images: list[torch.Tensor]) -> torch.Tensor | None:
        """Each image alone through a fresh encoder: [1, R, 96, h, w] with zero reactive and mask channels."""
        if not images:
            return None
        frames = []
        for image in images:
            latent = stream_encoder(self.vae).encode(image[None, :, None])  # [1, 1, 16, h, w]
            rest = torch.zeros(1, 1, 96 - LATENT_CHANNELS, *latent.shape[-2:], dtype=latent.dtype, device=latent.device)
            frames.append(torch.cat([latent, rest], dim=2))
        return torch.cat(frames, dim=1)

    @torch.no_grad()
    def next_chunk(self) -> torch.Tensor:
        """The next chunk's context [1, R + frames_per_chunk, 96, h, w] (references first)."""
        n = self.frames_per_chunk
        first = self.chunk * n
        if first + n > self.num_latent_frames:
            raise IndexError("the VACE context of every chunk has been built")
        start, stop = chunk_pixel_range(self.chunk, n)
        height, width = self.size
        device, dtype = self.vae.device, self.vae.dtype

        if self.control is not None:
            frames = self.control.get(start, stop).to(device, dtype)
        else:
            frames = torch.zeros(stop - start, 3, height, width, device=device, dtype=dtype)
        picks = self.mask_index[first : first + n]
        if self.mask is not None:
            lo, hi = min(start, picks[0]), max(stop, picks[-1] + 1)
            window = self.mask.get(lo, hi).to(device, dtype)
            pixel_mask = window[start - lo : stop - lo]
            latent_mask = window[[p - lo for p in picks]]
        else:
            pixel_mask = torch.ones(stop - start, height, width, device=device, dtype=dtype)
            latent_mask = torch.ones(n, height, width, device=device, dtype=dtype)

        inactive, reactive = split_by_mask(frames, pixel_mask)
        z_inactive = self.inactive.encode(inactive.permute(1, 0, 2, 3).unsqueeze(0))
        z_reactive = self.reactive.encode(reactive.permute(1, 0, 2, 3).unsqueeze(0))
        mask_channels = space_to_depth(latent_mask).unsqueeze(0).to(z_inactive.dtype)
        context = torch.cat([z_inactive, z_reactive, mask_channels], dim=2)
        if self.references is not None:
            context = torch.cat([self.references.to(context.dtype), context], dim=1)

        self.chunk += 1
        next_start = chunk_pixel_range(self.chunk, n)[0]
        if self.control is not None:
            self.control.release(next_start)
        if self.mask is not None and first + n < self.num_latent_frames:
            self.mask.release(min(next_start, self.mask_index[first + n]))
        return context


# ----------------------------------------------------------------------------------------------- files
# A minimal ffmpeg reader (16 fps, fitted to the output size by scale + centre crop). The video-to-video
# source (`video_source.VideoSource`) replaces it once available; only these functions read files.


@dataclass(frozen=True)
class VaceInputs:
    """What the user gave for VACE (paths as given) and the guidance scale."""

    control: str | None = None
    mask: str | None = None
    references: tuple[str, ...] = ()
    scale: float = 1.0

    @property
    def active(self) -> bool:
        return bool(self.control or self.mask or self.references)

    def manifest(self) -> dict:
        def entry(path):
            return {"path": str(path), "sha256": file_sha256(path)}

        return {
            "control": entry(self.control) if self.control else None,
            "mask": entry(self.mask) if self.mask else None,
            "references": [entry(p) for p in self.references],
            "scale": self.scale,
        }


file_sha256 = sha256_file  # the project's one streaming sha256 (hub.py)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_readable(path: str | os.PathLike, what: str) -> Path:
    from memflow_cli.input_files import check_input_file

    return check_input_file(path, what)


def _fit_filter(width: int, height: int) -> str:
    return f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height}"


def probe_frame_count(path: str | os.PathLike, what: str) -> int:
    """Frames of a video after resampling to 16 fps (decodes it once; no weights are loaded yet)."""
    path = _check_readable(path, what)
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-vf", f"fps={FPS}",
           "-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    counts = re.findall(r"frame=\s*(\d+)", result.stderr)
    if result.returncode != 0 or not counts:
        reason = next((line for line in reversed(result.stderr.strip().splitlines()) if line.strip()), "no video stream")
        raise InputError(f"{path}: cannot read the {what} as a video ({reason.strip()})")
    frames = int(counts[-1])
    if frames == 0:
        raise InputError(f"{path}: the {what} has no frames")
    return frames


def read_video_frames(path: str | os.PathLike, width: int, height: int, chunk: int = 12) -> Iterator[torch.Tensor]:
    """uint8 frames [n, H, W, 3] of a video at 16 fps, fitted to WxH, `chunk` frames at a time."""
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
           "-vf", f"fps={FPS},{_fit_filter(width, height)}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frame_bytes = width * height * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        while True:
            data = proc.stdout.read(frame_bytes * chunk)
            n = len(data) // frame_bytes
            if n:
                array = np.frombuffer(data[: n * frame_bytes], dtype=np.uint8).reshape(n, height, width, 3)
                yield torch.from_numpy(array.copy())
            if len(data) < frame_bytes * chunk:
                break
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def open_control(path, width: int, height: int) -> Iterator[torch.Tensor]:
    """Control frames [n, 3, H, W] in [-1, 1]."""
    for frames in read_video_frames(path, width, height):
        yield frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def open_mask(path, width: int, height: int) -> Iterator[torch.Tensor]:
    """Mask frames [n, H, W] in [0, 1]: the first (red) channel, like the official code; white = regenerate."""
    for frames in read_video_frames(path, width, height):
        yield frames[..., 0].float() / 255.0


def read_reference(path: str | os.PathLike, width: int, height: int) -> torch.Tensor:
    """A reference image [3, H, W] in [-1, 1], letterboxed onto a white WxH canvas (aspect kept)."""
    path = _check_readable(path, "reference image")
    fit = (f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
           f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=white")
    cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-frames:v", "1",
           "-vf", fit, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0 or len(result.stdout) < width * height * 3:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(f"{path}: cannot read the reference image ({reason[-1] if reason else 'no picture'})")
    array = np.frombuffer(result.stdout[: width * height * 3], dtype=np.uint8).reshape(height, width, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def validate_inputs(inputs: VaceInputs, needed: int) -> dict:
    """Check VACE inputs before any weights load: files readable, videos covering the timeline's `needed`
    frames. Returns the frame counts."""
    if not 0.0 <= inputs.scale <= 2.0:
        raise InputError(f"--vace-scale: {inputs.scale} is outside 0..2")
    counts = {}
    if inputs.control:
        counts["control"] = probe_frame_count(inputs.control, "control video")
        if counts["control"] < needed:
            raise InputError(
                f"{inputs.control}: the control video has {counts['control']} frames at {FPS} fps; the timeline "
                f"needs {needed} ({needed / FPS:.2f} s)"
            )
    if inputs.mask:
        counts["mask"] = probe_frame_count(inputs.mask, "mask video")
        if inputs.control and counts["mask"] != counts["control"]:
            raise InputError(
                f"{inputs.mask}: the mask video has {counts['mask']} frames at {FPS} fps; it must have the control "
                f"video's length ({counts['control']} frames)"
            )
        if counts["mask"] < needed:
            raise InputError(f"{inputs.mask}: the mask video has {counts['mask']} frames at {FPS} fps; the timeline needs {needed}")
    for ref in inputs.references:
        _check_readable(ref, "reference image")
    return counts


def open_context_stream(inputs: VaceInputs, vae, *, num_latent_frames: int, width: int, height: int,
                        covers: int, frames_per_chunk: int = 3) -> VaceContextStream:
    """One render's VACE context stream from the user's files (validated before: `validate_inputs`)."""
    control = open_control(inputs.control, width, height) if inputs.control else None
    mask = open_mask(inputs.mask, width, height) if inputs.mask else None
    references = [read_reference(path, width, height) for path in inputs.references]
    return VaceContextStream(vae, num_latent_frames=num_latent_frames, height=height, width=width,
                             frames_per_chunk=frames_per_chunk, control=control, mask=mask, references=references,
                             covers=covers)


class VaceRender:
    """VACE for one render: the inputs (checked before any weights), the module, the per-chunk context.

    The renderer's only contact points: `VaceRender.prepare` (no weights), `load_module`, `open` (per render,
    given the Wan VAE) and `manifest`.
    """

    def __init__(self, inputs: VaceInputs, frame_counts: dict, needed_frames: int):
        self.inputs = inputs
        self.frame_counts = frame_counts
        self.needed_frames = needed_frames
        self.described = inputs.manifest()  # paths, sha256 and scale: part of the render's fingerprint
        self.module_path: Path | None = None
        self.module_sha256: str | None = None

    @classmethod
    def prepare(cls, inputs: VaceInputs, needed_frames: int) -> "VaceRender | None":
        """None when no VACE input was given; InputError (exit 2) for any bad input."""
        if not 0.0 <= inputs.scale <= 2.0:
            raise InputError(f"--vace-scale: {inputs.scale} is outside 0..2")
        if not inputs.active:
            return None
        return cls(inputs, validate_inputs(inputs, needed_frames), needed_frames)

    @property
    def needed_for(self) -> str:
        given = [name for name, value in (("--control", self.inputs.control), ("--mask", self.inputs.mask),
                                          ("--reference", self.inputs.references)) if value]
        return " and ".join(given)

    @property
    def runs(self) -> bool:
        """Whether the VACE blocks run at all: at scale 0 they would add exact zeros, so they are skipped."""
        return self.inputs.scale != 0.0

    def locate_module(self, *, weights_dir=None, offline=False, verify_hashes=False, downloader=None) -> Path | None:
        """Find (or download) the module file before any weights load; an offline miss is exit 2."""
        from memflow_cli.weights import hub
        if self.runs:
            self.module_path = hub.resolve_optional(hub.VACE_FILE, self.needed_for, weights_dir, offline=offline,
                                                    downloader=downloader, verify_hashes=verify_hashes)
        return self.module_path

    def load_module(self, dit_config, *, device="cpu", dtype=torch.float32):
        """The VACE blocks for this DiT (None at scale 0)."""
        from memflow_cli.model.vace import load_vace_module

        if self.module_path is None:
            return None
        module = load_vace_module(self.module_path, dit_config, device=device, dtype=dtype)
        self.module_sha256 = file_sha256(self.module_path)
        return module

    def open(self, vae, *, num_latent_frames: int, width: int, height: int, frames_per_chunk: int = 3) -> VaceContextStream | None:
        if not self.runs:
            return None
        return open_context_stream(self.inputs, vae, num_latent_frames=num_latent_frames, width=width, height=height,
                                   covers=self.needed_frames, frames_per_chunk=frames_per_chunk)

    def manifest(self) -> dict:
        return {**self.described, "frames": self.frame_counts,
                "module": {"path": str(self.module_path) if self.module_path else None, "sha256": self.module_sha256}}
