"""Tiny autoencoder for Wan latents (TAEHV architecture: `taew2_1.pth`, `lighttaew2_1.pth`).

Written from the description in golden/README.md §6 case F. Parameter names follow the released files:
the encoder and the decoder are each one `nn.Sequential`, so every key is `<part>.<index>.…`.

The network is 2D convolutions applied to each frame, plus three kinds of layers that look across time:

* MemBlock: mixes a frame with the previous frame *at its own time resolution* (the frame this block
  saw just before; zeros before the first): `relu(conv(cat(x_t, x_{t-1})) + skip(x_t))`.
* TGrow (decoder): a 1x1 conv to `stride` times the channels, then the channels become `stride`
  consecutive frames (the first C channels are the earliest frame).
* TPool (encoder): `stride` consecutive frames stacked on channels, then a 1x1 conv back to C.

The decoder turns each latent into 4 raw frames (two TGrow x2) and drops the first 3 raw frames of a
video, so T latents give 1 + 4(T-1) frames: the Wan VAE's count and timing (latent 0 -> frame 0, latent
k -> frames 4k-3 .. 4k). The encoder takes 4 frames per latent (two TPool x2) with no padding in time.

Streaming carries, for each MemBlock, the last frame it saw; a chunk is then decoded in one pass with
`past = cat(carried, x[:-1])`, which is exactly the whole-sequence computation. Nothing else has state,
so memory held between chunks is one frame per MemBlock and earlier latents are never decoded again.

Layouts: `[B, T, C, H, W]` at the public API (the pipeline's layout); layers work on `[B*T, C, H, W]`.
Pixels are in [0, 1] here; the decoder interface (decoders.py) maps them to the Wan VAE's [-1, 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from memflow_cli.model.weights import load_flat_module

# A stream state maps each MemBlock to the last frame it saw, [B, C, H, W].
StreamState = dict


@dataclass(frozen=True)
class TAEConfig:
    """Every width and stride is read from the weights, so tiny test files use the same code."""

    image_channels: int = 3
    latent_channels: int = 16
    encoder_width: int = 64
    encoder_time_pool: tuple = (2, 2, 1)  # per TPool layer, in order
    decoder_widths: tuple = (256, 128, 64, 64)
    decoder_time_grow: tuple = (1, 2, 2)  # per TGrow layer, in order
    has_encoder: bool = True

    @classmethod
    def from_state_dict(cls, sd: dict) -> "TAEConfig":
        def shape(key):
            if key not in sd:
                raise KeyError(key)
            return tuple(sd[key].shape)

        latent = shape("decoder.1.weight")[1]
        widths = (shape("decoder.1.weight")[0], shape("decoder.8.weight")[0],
                  shape("decoder.14.weight")[0], shape("decoder.20.weight")[0])
        grow = tuple(shape(f"decoder.{i}.conv.weight")[0] // shape(f"decoder.{i}.conv.weight")[1]
                     for i in (7, 13, 19))
        image = shape("decoder.22.weight")[0]
        has_encoder = "encoder.0.weight" in sd
        enc_width, pool = 64, (2, 2, 1)
        if has_encoder:
            enc_width = shape("encoder.0.weight")[0]
            pool = tuple(shape(f"encoder.{i}.conv.weight")[1] // shape(f"encoder.{i}.conv.weight")[0]
                         for i in (2, 7, 12))
        return cls(image, latent, enc_width, pool, widths, grow, has_encoder)

    @property
    def frames_per_latent(self) -> int:
        return math.prod(self.decoder_time_grow)

    @property
    def frames_to_trim(self) -> int:
        # raw frames the decoder makes before the video's first frame (3 for Wan: 1 + 4(T-1) frames)
        return self.frames_per_latent - 1


# --------------------------------------------------------------------------------------------------
# layers


def _conv(cin: int, cout: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, **kw)


class SoftClamp(nn.Module):
    """Smoothly limits the decoder's input latents to (-3, 3)."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        # indices match the checkpoint: conv.0, conv.2, conv.4
        self.conv = nn.Sequential(_conv(cin * 2, cout), nn.ReLU(), _conv(cout, cout), nn.ReLU(), _conv(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class TPool(nn.Module):
    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width * stride, width, 1, bias=False)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        t = bt // batch
        if t % self.stride:
            raise ValueError(f"temporal pooling by {self.stride} needs a multiple of {self.stride} frames, got {t}")
        return self.conv(x.reshape(batch * t // self.stride, self.stride * c, h, w))


class TGrow(nn.Module):
    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        return self.conv(x).reshape(bt * self.stride, c, h, w)


def _run(layers: nn.Sequential, x: torch.Tensor, state: StreamState) -> torch.Tensor:
    """Run a chunk [B, T, C, H, W] through `layers`, carrying each MemBlock's last frame in `state`."""
    b = x.shape[0]
    x = x.reshape(-1, *x.shape[2:])
    for layer in layers:
        if isinstance(layer, MemBlock):
            frames = x.reshape(b, -1, *x.shape[1:])
            carried = state.get(layer)
            if carried is None:
                carried = frames.new_zeros(b, 1, *frames.shape[2:])
            else:
                carried = carried[:, None]
            past = torch.cat([carried, frames[:, :-1]], dim=1)
            # clone: a view would keep the whole chunk's activations alive
            state[layer] = frames[:, -1].clone()
            x = layer(x, past.reshape(x.shape))
        elif isinstance(layer, (TPool, TGrow)):
            x = layer(x, b)
        else:
            x = layer(x)
    return x.reshape(b, -1, *x.shape[1:])


# --------------------------------------------------------------------------------------------------
# the model


class TinyAutoencoder(nn.Module):
    def __init__(self, cfg: TAEConfig):
        super().__init__()
        self.config = cfg
        if cfg.has_encoder:
            w, p = cfg.encoder_width, cfg.encoder_time_pool
            self.encoder = nn.Sequential(
                _conv(cfg.image_channels, w), nn.ReLU(),
                TPool(w, p[0]), _conv(w, w, stride=2, bias=False), MemBlock(w, w), MemBlock(w, w), MemBlock(w, w),
                TPool(w, p[1]), _conv(w, w, stride=2, bias=False), MemBlock(w, w), MemBlock(w, w), MemBlock(w, w),
                TPool(w, p[2]), _conv(w, w, stride=2, bias=False), MemBlock(w, w), MemBlock(w, w), MemBlock(w, w),
                _conv(w, cfg.latent_channels),
            )
        n, g = cfg.decoder_widths, cfg.decoder_time_grow
        self.decoder = nn.Sequential(
            SoftClamp(), _conv(cfg.latent_channels, n[0]), nn.ReLU(),
            MemBlock(n[0], n[0]), MemBlock(n[0], n[0]), MemBlock(n[0], n[0]),
            nn.Upsample(scale_factor=2), TGrow(n[0], g[0]), _conv(n[0], n[1], bias=False),
            MemBlock(n[1], n[1]), MemBlock(n[1], n[1]), MemBlock(n[1], n[1]),
            nn.Upsample(scale_factor=2), TGrow(n[1], g[1]), _conv(n[1], n[2], bias=False),
            MemBlock(n[2], n[2]), MemBlock(n[2], n[2]), MemBlock(n[2], n[2]),
            nn.Upsample(scale_factor=2), TGrow(n[2], g[2]), _conv(n[2], n[3], bias=False),
            nn.ReLU(), _conv(n[3], cfg.image_channels),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder[1].weight.device

    def stream_decoder(self, clamp: bool = True) -> "TAEStreamDecoder":
        return TAEStreamDecoder(self, clamp)

    def stream_encoder(self) -> "TAEStreamEncoder":
        return TAEStreamEncoder(self)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Whole sequence: latents [B, T, C, h, w] -> frames [B, 1+4(T-1), 3, 8h, 8w] in [0, 1]."""
        return self.stream_decoder(clamp).decode(latents)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Whole sequence: frames [B, 4T, 3, H, W] in [0, 1] -> latents [B, T, C, H/8, W/8]."""
        return self.stream_encoder().encode(frames)


class TAEStreamDecoder:
    """Decodes consecutive chunks of one video, in the network's own convention (no normalization)."""

    def __init__(self, tae: TinyAutoencoder, clamp: bool = True):
        self.tae = tae
        self.clamp = clamp
        self.state: StreamState = {}
        self.frames_in = 0
        self._to_trim = tae.config.frames_to_trim

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, t, C, h, w] -> frames [B, n, 3, 8h, 8w], float32, in [0, 1] when clamping.

        n = 1 + 4(t-1) for the first chunk of the stream, 4t afterwards.
        """
        cfg = self.tae.config
        if latents.ndim != 5 or latents.shape[2] != cfg.latent_channels:
            raise ValueError(f"expected latents [B, T, {cfg.latent_channels}, h, w], got {tuple(latents.shape)}")
        if latents.shape[1] == 0:
            raise ValueError("cannot decode an empty chunk of latents")
        x = _run(self.tae.decoder, latents.to(self.tae.device, self.tae.dtype), self.state)
        self.frames_in += latents.shape[1]
        if self._to_trim:
            # the first raw frames of a video come before its first frame; a chunk always has more
            trim, self._to_trim = self._to_trim, 0
            x = x[:, trim:]
        x = x.float()
        return x.clamp_(0, 1) if self.clamp else x

    def state_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.state.values())


class TAEStreamEncoder:
    """Encodes consecutive chunks of one video; every chunk holds a multiple of 4 frames."""

    def __init__(self, tae: TinyAutoencoder):
        if not tae.config.has_encoder:
            raise RuntimeError("this tiny autoencoder checkpoint has no encoder weights")
        self.tae = tae
        self.state: StreamState = {}

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [B, 4t, 3, H, W] in [0, 1] -> latents [B, t, C, H/8, W/8], float32, no normalization."""
        cfg = self.tae.config
        per = math.prod(cfg.encoder_time_pool)
        if frames.ndim != 5 or frames.shape[2] != cfg.image_channels:
            raise ValueError(f"expected frames [B, T, {cfg.image_channels}, H, W], got {tuple(frames.shape)}")
        if frames.shape[1] == 0 or frames.shape[1] % per:
            raise ValueError(f"the tiny autoencoder encodes {per} frames per latent; got {frames.shape[1]} frames")
        return _run(self.tae.encoder, frames.to(self.tae.device, self.tae.dtype), self.state).float()


def tae_init_recipe(shapes: list, seed_base: int, gain: float = 0.7) -> dict[str, torch.Tensor]:
    """The golden case F weight recipe, also used for tiny test files.

    For the i-th (key, shape): u = rand(shape) from a generator seeded `seed_base + i`; the value is
    (2u - 1) * gain * sqrt(6 / fan_in), fan_in from the layer's weight (a bias uses its layer's weight).
    The gain 0.7 is the one the golden README states (cases.json's one-line recipe omits it; the
    checksum confirms 0.7).
    """
    weight_shape = {k[: -len(".weight")]: s for k, s in shapes if k.endswith(".weight")}
    out = {}
    for i, (key, shape) in enumerate(shapes):
        w = weight_shape[key.rsplit(".", 1)[0]]
        fan_in = w[1] * math.prod(w[2:])
        g = torch.Generator().manual_seed(seed_base + i)
        out[key] = (torch.rand(tuple(shape), generator=g, dtype=torch.float32) * 2 - 1) * (gain * math.sqrt(6 / fan_in))
    return out


def load_tae(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32) -> TinyAutoencoder:
    """Build the tiny autoencoder from `taew2_1.pth` / `lighttaew2_1.pth`, sizes inferred from the file."""
    return load_flat_module(path, "tiny autoencoder", TAEConfig.from_state_dict, TinyAutoencoder, device, dtype)
