"""Wan2.1 causal 3D VAE: streaming decoder (latents -> pixels) and encoder (pixels -> latents).

Written from the behaviour described in spec §7 and §10.4; parameter names follow `Wan2.1_VAE.pth`
so the file loads strictly.

Time is causal everywhere. Every 3D conv with a temporal kernel of 3 sees its input with two frames
of history in front: zeros at the start of a video, afterwards the last two input frames of the
previous call. Keeping exactly those two frames per conv (a *stream state*) lets us decode a long
video chunk by chunk with results identical to one whole-sequence pass and with memory that does not
grow with the video length. A chunk of t frames is one conv call over `[history, chunk]`.

Speed without changing the maths (benchmarks/decode.py measures it):
- no `cat` per conv: the layer before a causal conv (norm + SiLU in the residual blocks and the head) writes
  its output by index into the conv's input buffer behind the history frames, and the history is kept in a
  fixed buffer per conv, overwritten in place every call (no new tensor per chunk);
- RMSNorm + SiLU in one pass over the buffer (divide, gain, SiLU in place) instead of four new tensors;
- the nearest x2 upsampling and the 3x3 conv after it are one 2x2 conv at low resolution (the four output
  phases of a nearest-upsampled 3x3 conv are 2x2 convs of the input with summed taps): 16 instead of 36
  multiply-adds per low-resolution pixel, and the 4x larger upsampled tensor never exists;
- convolution weights and activation buffers in channels-last(-3d) layout (cuDNN's fast path on CUDA; on
  the CPU it measured as fast or faster, see `_layout`).

Layouts: the VAE core works on `[B, C, T, H, W]`; the public decode/encode API takes the pipeline's
`[B, T, C, H, W]` latents (encode takes channel-first video `[B, 3, T, H, W]`, as the reference does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from memflow_cli.model.weights import load_flat_module

# Per-channel latent statistics of Wan2.1 (spec §7.1). Latents in the pipeline are (z - mean) / std.
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

HISTORY = 2  # frames of input history a temporal kernel-3 conv needs

# A stream state maps each stateful module to what it carries between calls.
StreamState = dict


@dataclass
class VAEConfig:
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple = (False, True, True)  # encoder; the decoder mirrors it
    has_encoder: bool = True
    # Widths of each level, when they are not `dim * dim_mult` (a channel-pruned VAE such as
    # `lightvaew2_1.pth`). Decoder: conv1 then each up level, e.g. 384,384,384,192,96; encoder: conv1
    # then each down level, e.g. 96,96,192,384,384. None means `dim * dim_mult`.
    decoder_dims: Optional[tuple] = None
    encoder_dims: Optional[tuple] = None

    @classmethod
    def wan21(cls) -> "VAEConfig":
        return cls()

    def decoder_widths(self) -> tuple:
        mult = self.dim_mult
        return self.decoder_dims or tuple(self.dim * m for m in (mult[-1],) + tuple(reversed(mult)))

    def encoder_widths(self) -> tuple:
        return self.encoder_dims or tuple(self.dim * m for m in (1,) + tuple(self.dim_mult))

    @classmethod
    def from_state_dict(cls, sd: dict) -> "VAEConfig":
        """Read every level's width from tensor shapes; the layout (levels, blocks) is Wan2.1's.

        Nothing is assumed about how the widths relate, so the full VAE (96 base channels) and a pruned
        one (lightvae: a quarter of the channels) load through the same code.
        """

        def out_channels(key):
            if key not in sd:
                raise KeyError(key)
            return sd[key].shape[0]

        base = cls()
        levels = len(base.dim_mult)
        per_up = base.num_res_blocks + 2  # res blocks + the upsampler
        decoder = (out_channels("decoder.conv1.weight"),) + tuple(
            out_channels(f"decoder.upsamples.{per_up * i}.residual.2.weight") for i in range(levels))
        z_dim = out_channels("conv2.weight")
        has_encoder = "encoder.conv1.weight" in sd
        encoder = None
        if has_encoder:
            per_down = base.num_res_blocks + 1
            encoder = (out_channels("encoder.conv1.weight"),) + tuple(
                out_channels(f"encoder.downsamples.{per_down * i}.residual.2.weight") for i in range(levels))
        return cls(dim=decoder[-1], z_dim=z_dim, has_encoder=has_encoder, decoder_dims=decoder, encoder_dims=encoder)


# --------------------------------------------------------------------------------------------------
# building blocks


def _layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last for 4D/5D activations and conv weights, on every device: cuDNN's fast path on CUDA; on the
    CPU oneDNN's convolutions are as fast or faster, and the RMSNorm's channel reduction is ~20x faster
    (benchmarks/decode.py; one layout also means the CPU tests run the code the GPU runs)."""
    if x.dim() == 5:
        return torch.channels_last_3d
    return torch.channels_last if x.dim() == 4 else torch.contiguous_format


class CausalConv3d(nn.Conv3d):
    """Conv3d whose temporal padding is all in front (history or zeros), spatial padding symmetric.

    `input_buffer(like, t)` gives an empty `[B, C, history + t, H, W]` tensor for a producer to write its output
    into (`buffer[:, :, history:]`); `run(buffer, state)` puts the history in front and convolves. `forward(x)`
    does both for an input that already exists (one copy, as a `cat` would).
    """

    def __init__(self, cin, cout, kernel, padding=0, **kw):
        p = padding if isinstance(padding, tuple) else (padding,) * 3
        # spatial padding stays inside the conv (no extra padded copy); temporal padding is ours
        super().__init__(cin, cout, kernel, padding=(0, p[1], p[2]), **kw)
        self.history = 2 * p[0]

    def input_buffer(self, like: torch.Tensor, frames: int) -> torch.Tensor:
        b, c, _, h, w = like.shape
        return torch.empty(b, c, self.history + frames, h, w, device=like.device, dtype=like.dtype,
                           memory_format=_layout(like))

    def run(self, buffer: torch.Tensor, state: Optional[StreamState] = None) -> torch.Tensor:
        """Convolve `buffer`, whose frames after the first `history` are this call's input (see the class)."""
        n = self.history
        if n:
            past = state.get(self) if state is not None else None
            if past is None:
                buffer[:, :, :n].zero_()
            else:
                buffer[:, :, :n].copy_(past)
            if state is not None:
                last = buffer[:, :, -n:]
                if past is not None and past.shape == last.shape and past.dtype == last.dtype:
                    past.copy_(last)  # the fixed history buffer, overwritten in place (read above first)
                else:
                    state[self] = last.clone(memory_format=_layout(last))  # a slice would keep the buffer alive
        return super().forward(buffer)

    def forward(self, x: torch.Tensor, state: Optional[StreamState] = None) -> torch.Tensor:
        if not self.history:
            return super().forward(x)
        buffer = self.input_buffer(x, x.shape[2])
        buffer[:, :, self.history:].copy_(x)
        return self.run(buffer, state)


def _norm_silu_conv(norm: "RMSNorm", x: torch.Tensor, conv: CausalConv3d, state) -> torch.Tensor:
    """conv(silu(norm(x))) with the activation written straight into the conv's input buffer (no cat, no
    intermediate tensors): x / max(|x|, eps) into the buffer, times sqrt(C) * gamma, SiLU, all in place."""
    if torch.compiler.is_compiling():  # traced: the plain form (the compiler fuses it and plans the buffers itself)
        return conv(F.silu(norm(x)), state)
    buffer = conv.input_buffer(x, x.shape[2])
    out = buffer[:, :, conv.history:]
    norm.into(x, out)
    F.silu(out, inplace=True)
    return conv.run(buffer, state)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a per-channel gain `gamma` (no bias)."""

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma

    def into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`forward(x)` written into `out` (same shape): one division and one in-place gain, no temporaries.

        The gain sqrt(C) * gamma is one factor (one rounding instead of two): equal to float rounding."""
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)  # F.normalize's eps
        torch.div(x, norm, out=out)
        return out.mul_(self.gamma * self.scale)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        # indices match the checkpoint: 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 dropout, 6 conv
        self.residual = nn.Sequential(
            RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
            RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1),
        )
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x, state):
        r = self.residual  # norm, SiLU, conv, norm, SiLU, (dropout: identity), conv
        h = _norm_silu_conv(r[0], x, r[2], state)
        h = _norm_silu_conv(r[3], h, r[6], state)
        return h.add_(self.shortcut(x) if self.shortcut is not None else x)


def _frames_to_batch(x):
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), (b, t)


def _batch_to_frames(x, bt):
    b, t = bt
    return x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h*w positions of each frame (no temporal state)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x, state=None):
        frames, bt = _frames_to_batch(x)
        n, c, h, w = frames.shape
        qkv = self.to_qkv(self.norm(frames)).reshape(n, 3, 1, c, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each [n, 1 head, hw, c]; q = channels [0,C), k = [C,2C), v = [2C,3C)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(C)
        out = self.proj(out[:, 0].transpose(-1, -2).reshape(n, c, h, w))
        return x + _batch_to_frames(out, bt)


class _Nearest2x(nn.Module):
    def forward(self, x):
        # nearest copies values, so this is exact in any dtype: no float32 round trip (it would make this
        # the largest tensor of a decode: 192 channels at full resolution in 4 bytes)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


# Nearest x2 then a 3x3 conv (padding 1), per output row parity a: row 2i+a reads input rows i-1, i (a = 0: taps
# 0 | 1+2) or i, i+1 (a = 1: taps 0+1 | 2). The same holds for columns, so each of the four output phases is a
# 2x2 conv of the input; with padding 1 one 2x2 conv gives all of them, phase (a, b) at offset (a, b).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # [a, 2, 3]


def _upsample_conv(x: torch.Tensor, conv: nn.Conv2d, cache: dict) -> torch.Tensor:
    """`conv(nearest_x2(x))` for a 3x3, padding-1 conv, as one 2x2 conv at the input's resolution (see above)."""
    weight = conv.weight
    compiling = torch.compiler.is_compiling()  # traced: the kernel is part of the graph (no cache, no data_ptr)
    key = None if compiling else (weight.device, weight.dtype, weight.data_ptr(), weight._version)
    if compiling or cache.get("key") != key:
        taps = _PHASE_TAPS.to(weight.device)
        # [a, b, out, in, 2, 2], summed in float32 and rounded once to the weight's dtype
        k = torch.einsum("apy,bqx,oiyx->aboipq", taps, taps, weight.float())
        cout = weight.shape[0]
        fused = dict(key=key, weight=k.reshape(4 * cout, *weight.shape[1:2], 2, 2).to(weight.dtype).contiguous(
            memory_format=_layout(weight)), bias=None if conv.bias is None else conv.bias.repeat(4))
        if not compiling:
            cache.update(fused)
    else:
        fused = cache
    n, _, h, w = x.shape
    y = F.conv2d(x, fused["weight"], fused["bias"], padding=1)  # [n, 4 * out, h + 1, w + 1]
    cout = y.shape[1] // 4
    # [n, out, h, 2, w, 2] laid out as [n, h, 2, w, 2, out]: the view below is channels-last, no copy
    out = torch.empty(n, h, 2, w, 2, cout, device=x.device, dtype=y.dtype).permute(0, 5, 1, 2, 3, 4)
    for a in (0, 1):
        for b in (0, 1):
            k = 2 * a + b
            out[:, :, :, a, :, b] = y[:, k * cout:(k + 1) * cout, a:a + h, b:b + w]
    return out.reshape(n, cout, 2 * h, 2 * w)


class Upsample(nn.Module):
    """Spatial x2 (nearest + 3x3 conv halving the channels); with `temporal`, also time x2 first.

    The temporal doubling follows the reference's first-call rule: the first frame of a video is
    passed through undoubled; every later frame becomes two, produced by a causal (3,1,1) conv that
    starts from zeros at frame 1 (frame 0 never enters it). Hence 1 + 2*(T-1) output frames.
    The spatial step runs as one fused conv at low resolution (`_upsample_conv`).
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(_Nearest2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None
        self._fused: dict = {}  # the phase kernel, rebuilt when the weight changes (not a parameter)

    def forward(self, x, state):
        if self.time_conv is not None:
            x = self._double_time(x, state)
        frames, bt = _frames_to_batch(x)
        return _batch_to_frames(_upsample_conv(frames, self.resample[1], self._fused), bt)

    def _double_time(self, x, state):
        head = None
        if not state.get(("started", self), False):
            state[("started", self)] = True
            head, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2]:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state).reshape(b, 2, c, t, h, w)
            # channels [0,C) are the earlier, [C,2C) the later frame of each pair
            x = torch.stack([y[:, 0], y[:, 1]], dim=3).reshape(b, c, 2 * t, h, w)
        return x if head is None else torch.cat([head, x], dim=2)


class Downsample(nn.Module):
    """Spatial /2 (pad right/bottom by one, 3x3 stride-2 conv); with `temporal`, then time /2.

    The temporal step keeps the first frame of a video as is; afterwards each pair of new frames is
    mixed with the frame before it by a stride-2 (3,1,1) conv without padding, so it carries one frame
    of history. Chunks must therefore hold 1 frame (the first) and then even numbers of frames.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x, state):
        frames, bt = _frames_to_batch(x)
        x = _batch_to_frames(self.resample(frames), bt)
        if self.time_conv is None:
            return x
        last = state.get(self)
        head = None
        if last is None:
            head, x = x[:, :, :1], x[:, :, 1:]
            last = head
        out = x
        if x.shape[2]:
            if x.shape[2] % 2:
                raise ValueError("temporal downsampling needs an even number of frames after the first")
            out = self.time_conv(torch.cat([last, x], dim=2))
            last = x
        state[self] = last[:, :, -1:].clone()
        return out if head is None else torch.cat([head, out], dim=2)


def _run(layers, x, state):
    for layer in layers:
        x = layer(x, state)
    return x


class Head(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1))

    def forward(self, x, state):
        return _norm_silu_conv(self[0], x, self[2], state)


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = cfg.decoder_widths()  # e.g. 384,384,384,192,96
        upsample_time = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        layers = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous upsampler's conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i < len(mult) - 1:
                layers.append(Upsample(cout, temporal=upsample_time[i]))
        self.upsamples = nn.ModuleList(layers)
        self.head = Head(dims[-1], 3)

    def forward(self, z, state):
        x = self.conv1(z, state)
        x = _run(self.middle, x, state)
        x = _run(self.upsamples, x, state)
        return self.head(x, state)


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = cfg.encoder_widths()  # e.g. 96,96,192,384,384
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i < len(cfg.dim_mult) - 1:
                layers.append(Downsample(cout, temporal=cfg.temporal_downsample[i]))
        self.downsamples = nn.ModuleList(layers)
        self.middle = nn.ModuleList([ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                     ResidualBlock(dims[-1], dims[-1])])
        self.head = Head(dims[-1], cfg.z_dim * 2)

    def forward(self, x, state):
        x = self.conv1(x, state)
        x = _run(self.downsamples, x, state)
        x = _run(self.middle, x, state)
        return self.head(x, state)


# --------------------------------------------------------------------------------------------------
# the model


class WanVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        if cfg.has_encoder:
            self.encoder = Encoder3d(cfg)
            self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        self.compiled_decoder = None  # --compile: decoders.compile_decoder sets a compiled call for steady chunks

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def use_device_layout(self) -> "WanVAE":
        """Convolution weights in the activations' layout (`_layout`: channels-last). Values are unchanged."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                    w = module.weight
                    module.weight.data = w.data.contiguous(memory_format=_layout(w.data))
        return self

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    def _stats(self, dtype):
        # Reference arithmetic (spec §7.1/§7.4a): mean and std rounded to the compute dtype, and the
        # reciprocal of std computed and rounded in that dtype too. Built once per device and dtype:
        # a fresh host-to-device copy per chunk would block the stream.
        key = (self.device, dtype)
        cached = self.__dict__.setdefault("_stats_cache", {})
        if key not in cached:
            shape = (1, -1, 1, 1, 1)
            mean = torch.tensor(LATENT_MEAN, device=self.device).to(dtype).view(shape)
            inv_std = 1.0 / torch.tensor(LATENT_STD, device=self.device).to(dtype).view(shape)
            cached[key] = (mean, inv_std)
        return cached[key]

    def stream_decoder(self, max_frames_per_call: int | None = None) -> "StreamDecoder":
        return StreamDecoder(self, max_frames_per_call)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, max_frames_per_call: int | None = None) -> torch.Tensor:
        """Whole sequence: normalized latents [B, T, 16, h, w] -> pixels [B, 1+4(T-1), 3, 8h, 8w]."""
        return self.stream_decoder(max_frames_per_call).decode(latents)

    def stream_encoder(self, frames_per_call: int = 4) -> "StreamEncoder":
        return StreamEncoder(self, frames_per_call)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, frames_per_call: int = 4) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalized posterior mean [B, 1+(T-1)//4, 16, H/8, W/8].

        Frame 0 is encoded alone, then groups of `frames_per_call` (a multiple of 4; the reference
        uses 4, larger is the same maths with more memory). Trailing frames beyond 1+4k are dropped.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        t = video.shape[2]
        if t == 0:
            raise ValueError("cannot encode an empty video")
        return self.stream_encoder(frames_per_call).encode(video[:, :, : 1 + 4 * ((t - 1) // 4)])


class StreamEncoder:
    """Encodes consecutive chunks of one video, carrying the causal caches from chunk to chunk.

    The first chunk holds 1 + 4k frames (frame 0 is encoded alone, as in a whole-clip encode), every
    later chunk 4k frames; k latent frames come out per 4 input frames. Inside a chunk the encoder runs
    on groups of 4 frames exactly like `WanVAE.encode`, so streaming and whole-clip encodes agree.
    """

    def __init__(self, vae: WanVAE, frames_per_call: int = 4):
        if not vae.config.has_encoder:
            raise RuntimeError("this VAE checkpoint has no encoder weights")
        if frames_per_call < 4 or frames_per_call % 4:
            raise ValueError("frames_per_call must be a positive multiple of 4")
        self.vae = vae
        self.frames_per_call = frames_per_call
        self.state: StreamState = {}
        self.frames_in = 0
        self.calls: list[int] = []  # input frames per encode() call, in order

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, f, H, W] (or [3, f, H, W]) in [-1, 1] -> normalized latents [B, f', 16, H/8, W/8]."""
        if video.ndim == 4:
            video = video.unsqueeze(0)
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        t = video.shape[2]
        first = self.frames_in == 0
        if t == 0 or (first and (t - 1) % 4) or (not first and t % 4):
            rule = "1 + a multiple of 4 frames for the first chunk" if first else "a multiple of 4 frames"
            raise ValueError(f"expected {rule}, got {t}")
        vae = self.vae
        x = video.to(vae.device, vae.dtype)
        outs = []
        start = 0
        if first:
            outs.append(vae.encoder(x[:, :, :1], self.state))
            start = 1
        step = self.frames_per_call
        for s in range(start, t, step):
            outs.append(vae.encoder(x[:, :, s:s + step], self.state))
        self.frames_in += t
        self.calls.append(t)
        moments = vae.conv1(torch.cat(outs, dim=2) if len(outs) > 1 else outs[0])
        mu = moments[:, : vae.config.z_dim]
        mean, inv_std = vae._stats(mu.dtype)
        return ((mu - mean) * inv_std).float().permute(0, 2, 1, 3, 4)

    def state_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.state.values() if isinstance(v, torch.Tensor))


class StreamDecoder:
    """Decodes consecutive chunks of one video; state is a fixed-size set of frame caches."""

    def __init__(self, vae: WanVAE, max_frames_per_call: int | None = None):
        self.vae = vae
        self.max_frames_per_call = max_frames_per_call
        self.state: StreamState = {}
        self.frames_in = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B, t, 16, h, w] -> pixels [B, n, 3, 8h, 8w] in [-1, 1], float32.

        n = 1 + 4(t-1) for the first chunk of the stream, 4t afterwards.
        """
        if latents.ndim != 5 or latents.shape[2] != self.vae.config.z_dim:
            raise ValueError(f"expected latents [B, T, {self.vae.config.z_dim}, h, w], got {tuple(latents.shape)}")
        if latents.shape[1] == 0:
            raise ValueError("cannot decode an empty chunk of latents")
        vae = self.vae
        z = latents.to(vae.device, vae.dtype).permute(0, 2, 1, 3, 4)
        mean, inv_std = vae._stats(z.dtype)
        z = vae.conv2(z / inv_std + mean)
        step = self.max_frames_per_call or z.shape[2]
        outs = []
        for start in range(0, z.shape[2], step):
            # --compile: the steady calls (not the first: its caches start empty) through the compiled decoder
            call = vae.decoder if self.frames_in == 0 and start == 0 else (vae.compiled_decoder or vae.decoder)
            out = call(z[:, :, start:start + step], self.state)
            outs.append(out.float().clamp_(-1, 1))
        self.frames_in += z.shape[2]
        pixels = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return pixels.permute(0, 2, 1, 3, 4)

    def state_bytes(self) -> int:
        """Bytes held between calls (constant after the first chunk; useful to check memory)."""
        return sum(v.numel() * v.element_size() for v in self.state.values() if isinstance(v, torch.Tensor))


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[n, 3, H, W] or [1, n, 3, H, W] in [-1, 1] -> uint8 [n, H, W, 3] (truncating, spec §7.5)."""
    if pixels.ndim == 5:
        if pixels.shape[0] != 1:
            raise ValueError("pixels_to_uint8 takes one video; got a batch of %d" % pixels.shape[0])
        pixels = pixels[0]
    v = (pixels.float() * 0.5 + 0.5).clamp(0, 1)
    return (v * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def load_wan_vae(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    """Build the VAE from `Wan2.1_VAE.pth` (or a safetensors copy), sizes inferred from the file."""
    return load_flat_module(path, "Wan VAE", VAEConfig.from_state_dict, WanVAE, device, dtype).use_device_layout()
