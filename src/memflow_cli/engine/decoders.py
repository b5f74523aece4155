"""The four video autoencoders behind `--vae`, one streaming interface over all of them.

| kind       | file               | network                                   | latents it decodes        |
|------------|--------------------|-------------------------------------------|---------------------------|
| `wan`      | Wan2.1_VAE.pth     | the full causal 3D Wan VAE (model/vae.py) | normalized (de-normalizes)|
| `lightvae` | lightvaew2_1.pth   | the same, 75 % of channels pruned         | normalized (de-normalizes)|
| `tae`      | taew2_1.pth        | tiny autoencoder (model/tae.py)           | normalized, directly      |
| `lighttae` | lighttaew2_1.pth   | the same tiny architecture                | `latents * std + mean`    |

Whatever the kind, the renderer sees the Wan VAE's contract:

* `stream_decoder().decode(latents [B, t, 16, h, w])` -> pixels `[B, n, 3, 8h, 8w]` in [-1, 1], float32,
  with n = 1 + 4(t-1) for the first chunk and 4t afterwards, so the frames line up with Wan's: same
  count, same timing. The tiny autoencoder's [0, 1] output is mapped to [-1, 1].
* `stream_encoder().encode(video [B, 3, f, H, W] in [-1, 1])` -> normalized latents `[B, t, 16, h, w]`,
  f = 1 + 4(t-1) for the first chunk (9 -> 3) and 4t afterwards (12 -> 3).

Aligning the tiny encoder with the Wan grid: it takes exactly 4 frames per latent, while Wan's first
latent stands for one frame. The tiny decoder makes 4 raw frames per latent and drops the first 3 of a
video, i.e. video frame 0 is the *last* of latent 0's four frames. The encoder mirrors that: the first
chunk gets 3 copies of frame 0 in front (a still moment before the video starts), so 9 frames become
12 -> 3 latents and latent k covers frames 4k-3 .. 4k, exactly as in the Wan VAE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from memflow_cli.errors import CheckpointError, InputError
from memflow_cli.model.vae import LATENT_MEAN, LATENT_STD

DECODER_KINDS = ("wan", "lightvae", "tae", "lighttae")
DEFAULT_DECODER = "wan"


@dataclass(frozen=True)
class DecoderSpec:
    kind: str
    filename: str
    family: str  # "wan" (model/vae.py) or "tae" (model/tae.py)
    wan_latents: bool  # tae family: decodes latents * std + mean (lighttae) rather than the normalized ones
    summary: str


DECODERS: dict[str, DecoderSpec] = {
    "wan": DecoderSpec("wan", "Wan2.1_VAE.pth", "wan", False, "full Wan2.1 causal 3D VAE"),
    "lightvae": DecoderSpec("lightvae", "lightvaew2_1.pth", "wan", False, "Wan VAE with 75% of channels pruned"),
    "tae": DecoderSpec("tae", "taew2_1.pth", "tae", False, "tiny autoencoder (TAEHV), normalized latents"),
    "lighttae": DecoderSpec("lighttae", "lighttaew2_1.pth", "tae", True, "tiny autoencoder (TAEHV), Wan latents"),
}


def decoder_spec(kind: str, source: str = "--vae") -> DecoderSpec:
    """The spec of a decoder kind; an unknown name is an input error that lists the choices."""
    spec = DECODERS.get(str(kind).strip().lower()) if kind is not None else None
    if spec is None:
        raise InputError(f"{source}: unknown decoder {kind!r}; expected one of {', '.join(DECODER_KINDS)}")
    return spec


class StreamDecoder(Protocol):
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class StreamEncoder(Protocol):
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...


class VideoAutoencoder(Protocol):
    """What `load_decoder` returns, whatever the kind (one stream object per video)."""

    kind: str
    spec: DecoderSpec
    module: torch.nn.Module  # the network itself

    @property
    def can_encode(self) -> bool: ...
    def stream_decoder(self) -> StreamDecoder: ...
    def stream_encoder(self) -> StreamEncoder: ...


# --------------------------------------------------------------------------------------------------
# Wan family: the VAE already has the contract


class WanVideoAutoencoder:
    def __init__(self, spec: DecoderSpec, vae):
        self.spec = spec
        self.kind = spec.kind
        self.module = vae

    @property
    def can_encode(self) -> bool:
        return self.module.config.has_encoder

    def stream_decoder(self, **kw):
        return self.module.stream_decoder(**kw)

    def stream_encoder(self):
        if not self.can_encode:
            raise InputError(f"--vae {self.kind}: this decoder file has no encoder weights, so it cannot encode video")
        return self.module.stream_encoder()


# --------------------------------------------------------------------------------------------------
# Tiny family: latent convention and pixel range adapted here


class TinyVideoAutoencoder:
    _transient = ("_stats_cache",)  # constants, rebuilt on use (not part of a resume checkpoint)

    def __init__(self, spec: DecoderSpec, tae):
        self.spec = spec
        self.kind = spec.kind
        self.module = tae
        self._stats_cache: dict = {}

    @property
    def can_encode(self) -> bool:
        return self.module.config.has_encoder

    def stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 on the model's device, built once (no host-to-device copy per chunk)
        if device not in self._stats_cache:
            shape = (1, 1, -1, 1, 1)
            self._stats_cache[device] = (torch.tensor(LATENT_MEAN, device=device).view(shape),
                                         torch.tensor(LATENT_STD, device=device).view(shape))
        return self._stats_cache[device]

    def stream_decoder(self, **_ignored) -> "TinyStreamDecoder":
        return TinyStreamDecoder(self)

    def stream_encoder(self) -> "TinyStreamEncoder":
        if not self.can_encode:
            raise InputError(f"--vae {self.kind}: this decoder file has no encoder weights, so it cannot encode video")
        return TinyStreamEncoder(self)


class TinyStreamDecoder:
    def __init__(self, ae: TinyVideoAutoencoder):
        self.ae = ae
        self.inner = ae.module.stream_decoder()

    @property
    def state(self):
        return self.inner.state

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B, t, 16, h, w] -> pixels [B, n, 3, 8h, 8w] in [-1, 1], float32."""
        z = latents
        if self.ae.spec.wan_latents:
            mean, std = self.ae.stats(self.ae.module.device)
            z = latents.to(self.ae.module.device, torch.float32) * std + mean
        return self.inner.decode(z).mul_(2).sub_(1)

    def state_bytes(self) -> int:
        return self.inner.state_bytes()


class TinyStreamEncoder:
    def __init__(self, ae: TinyVideoAutoencoder):
        self.ae = ae
        self.inner = ae.module.stream_encoder()
        self.frames_in = 0

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, f, H, W] in [-1, 1] -> normalized latents [B, t, 16, H/8, W/8], float32."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        first = self.frames_in == 0
        f = video.shape[2]
        if f == 0 or (f - first) % 4:
            expected = "1 + a multiple of 4 frames (the first chunk)" if first else "a multiple of 4 frames"
            raise ValueError(f"the decoder's encoder takes {expected}; got {f}")
        frames = (video.to(self.ae.module.device, torch.float32).permute(0, 2, 1, 3, 4) + 1) * 0.5
        if first:
            # latent 0 covers 3 moments before frame 0 and frame 0 itself (see the module docstring)
            frames = torch.cat([frames[:, :1].expand(-1, 3, -1, -1, -1), frames], dim=1)
        self.frames_in += f
        z = self.inner.encode(frames)
        if self.ae.spec.wan_latents:
            mean, std = self.ae.stats(z.device)
            z = (z - mean) / std
        return z


# --------------------------------------------------------------------------------------------------


class CompiledDecoderCall:
    """--compile for the Wan-family decoder: `Decoder3d(x, state)` through torch.compile, for the steady calls.

    Static shapes: the first shape it is called with (a steady chunk: the renderer's 3 latent frames) is the
    one compiled; any other shape (a shorter call) runs eager, so nothing recompiles during a render. The
    traced decoder has no graph break (model/vae.py uses its plain forms while tracing). No CUDA graphs (the
    stream state is updated in place between calls): inductor's fused kernels only. A compiler failure is
    reported once and the decoder runs eager from then on, as compiled.py does for the DiT's block (the failed
    call is run again eagerly: the state is only written at the end of each conv, so nothing was half done).
    """

    def __init__(self, decoder: torch.nn.Module, *, backend="inductor", mode: str | None = None,
                 on_fallback=None):
        from memflow_cli.engine.compiled import CompileStats

        self.decoder = decoder
        self.stats = CompileStats(mode=mode or "default", backend=backend if isinstance(backend, str) else "custom")
        self.on_fallback = on_fallback
        self.shape: tuple | None = None
        self._fn = None
        try:
            self._fn = torch.compile(decoder, backend=backend, mode=mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - e.g. a Python version dynamo does not support: run eager
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        from memflow_cli.engine.compiled import _reason

        self.stats.fallback = _reason(exc)
        if self.on_fallback is not None:
            self.on_fallback(self.stats.fallback)

    def __call__(self, x: torch.Tensor, state) -> torch.Tensor:
        import time

        from memflow_cli.engine.compiled import _is_compile_failure

        shape = (tuple(x.shape), x.dtype, x.device)
        if self.shape is None:
            self.shape = shape
        if self.stats.fallback is not None or shape != self.shape:
            return self.decoder(x, state)
        started = time.perf_counter()
        first = self.stats.compiled_calls == 0
        try:
            out = self._fn(x, state)
        except Exception as exc:  # noqa: BLE001
            if not _is_compile_failure(exc):
                raise
            self._fail(exc)
            return self.decoder(x, state)
        self.stats.compiled_calls += 1
        if first:
            self.stats.compilations += 1
            self.stats.compile_seconds += time.perf_counter() - started
        return out


def compile_decoder(ae, *, backend="inductor", mode: str | None = None, on_fallback=None):
    """--compile: compile a loaded decoder's steady calls (the Wan family; the tiny AE is left eager: its
    decode is a few ms). Returns the CompileStats, or None when there is nothing to compile. Idempotent.
    The renderer does this on CUDA only: on the CPU the decode is bound by oneDNN's convolutions, which a
    compiled graph calls just the same (and compiling the VAE there takes minutes)."""
    vae = getattr(ae, "module", ae)
    if getattr(ae, "spec", None) is not None and ae.spec.family != "wan":
        return None
    if isinstance(vae.compiled_decoder, CompiledDecoderCall):
        return vae.compiled_decoder.stats
    vae.compiled_decoder = CompiledDecoderCall(vae.decoder, backend=backend, mode=mode, on_fallback=on_fallback)
    return vae.compiled_decoder.stats


def load_decoder(kind: str, path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32) -> VideoAutoencoder:
    """Load the `--vae` choice from its weight file. A file that is not that decoder is an input error."""
    spec = decoder_spec(kind)
    path = Path(path)
    try:
        if spec.family == "wan":
            from memflow_cli.model.vae import load_wan_vae

            return WanVideoAutoencoder(spec, load_wan_vae(path, device=device, dtype=dtype))
        from memflow_cli.model.tae import load_tae

        return TinyVideoAutoencoder(spec, load_tae(path, device=device, dtype=dtype))
    except CheckpointError as exc:
        raise InputError(f"--vae {spec.kind} expects {spec.filename} ({spec.summary}); {exc}") from None
