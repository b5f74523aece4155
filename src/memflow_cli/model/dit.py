"""The causal Wan2.1 DiT that MemFlow streams with, in one file.

One call runs the transformer over a pass of latent frames (a chunk of 3 while denoising, 12 when the KV
cache is re-computed after a prompt switch). The model itself holds no streaming state: the caller hands it
 - `text`: a CrossAttentionCache (per-layer text keys/values, filled by the model on first use), and
 - `keys`: a key-set provider; `keys.layer(i)` gives block i an object whose `key_set(q, k, v)` stores this
   pass's keys/values where they belong and returns the keys/values the layer attends to (sink + memory
   bank + local window). How that key set is assembled (sink, bank, SMA routing, eviction) lives in
   memflow_cli.engine.memory, as index writes into fixed buffers: a block's forward has no Python branch on the
   chunk number, so `torch.compile` traces it whole (see memflow_cli.engine.compiled).

A block is kept lean for eager GPU execution (benchmarks/README.md, "DiT glue"; tests/test_op_count.py): it
computes with `FusedBlock` tensors derived from its parameters before a pass — one q/k/v GEMM whose weight is
the storage of the named q/k/v layers, the q/k RMSNorm gains folded into the rotation, the modulation of every
block stacked — so that the parameter names (base.pt, LoRA targets) stay those of the reference.

Shapes: latents [B, F, C, H, W]; tokens [B, F*T_f, dim] in (frame, row, column) order, T_f = (H/2)*(W/2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from memflow_cli.errors import CheckpointError

if TYPE_CHECKING:
    from memflow_cli.model.vace import VaceGuide


@dataclass(frozen=True)
class DiTConfig:
    """Constructor arguments of the causal Wan DiT. Defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def frame_tokens(self, latent_height: int, latent_width: int) -> int:
        """Tokens per latent frame for a latent grid (1560 for 60x104)."""
        _, ph, pw = self.patch_size
        return (latent_height // ph) * (latent_width // pw)

    @classmethod
    def preset(cls, name: str) -> "DiTConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise KeyError(f"unknown DiT preset {name!r}; known: {', '.join(PRESETS)}") from None

    @classmethod
    def from_dict(cls, values: dict) -> "DiTConfig":
        """Build from Wan's config.json or our own; unknown keys (_class_name, model_type, …) are ignored.

        Every known field is checked for type and a sane range (ValueError naming the field), so that a
        damaged config fails here rather than as a ZeroDivisionError or a terabyte allocation later.
        """
        if not isinstance(values, dict):
            raise ValueError(f"expected a JSON object of model settings, found {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        for key, value in kwargs.items():
            if key == "patch_size":
                if not (isinstance(value, list | tuple) and len(value) == 3 and all(_is_int(v, 1, 16) for v in value)):
                    raise ValueError(f"patch_size: expected 3 integers from 1 to 16, found {value!r}")
                kwargs[key] = tuple(value)
            elif key in _CONFIG_LIMITS and not _is_int(value, 1, _CONFIG_LIMITS[key]):
                raise ValueError(f"{key}: expected an integer from 1 to {_CONFIG_LIMITS[key]}, found {value!r}")
            elif key in ("qk_norm", "cross_attn_norm") and not isinstance(value, bool):
                raise ValueError(f"{key}: expected true or false, found {value!r}")
            elif key == "eps" and not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1):
                raise ValueError(f"eps: expected a number between 0 and 1, found {value!r}")
        config = cls(**kwargs)
        if config.dim % config.num_heads or config.head_dim % 2:
            raise ValueError(f"num_heads: dim {config.dim} must split into {config.num_heads} heads of even size")
        # self- and cross-attention (8·dim²) and the MLP (2·dim·ffn_dim) per layer dominate the size
        params = config.num_layers * (8 * config.dim**2 + 2 * config.dim * config.ffn_dim)
        if params > 50e9:
            raise ValueError(f"dim/ffn_dim/num_layers: describe a {params / 1e9:,.0f}-billion-parameter model; "
                             "expected at most 50 billion (the largest Wan DiT has 14)")
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "DiTConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{path}: cannot read the DiT config (not UTF-8 text: undecodable byte at offset {exc.start})") from None
        except (OSError, RecursionError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{path}: cannot read the DiT config ({exc or type(exc).__name__})") from None
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a valid DiT config ({exc})") from None

    def to_dict(self) -> dict:
        return asdict(self)


# Upper bounds far above any released Wan DiT (14B: dim 5120, ffn 13824, 40 layers, 40 heads): a config beyond
# them is damaged, and building it would try to allocate terabytes.
_CONFIG_LIMITS = {"dim": 16384, "ffn_dim": 65536, "freq_dim": 4096, "text_dim": 16384, "text_len": 4096,
                  "in_dim": 256, "out_dim": 256, "num_heads": 256, "num_layers": 256}


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


PRESETS = {
    "wan2.1-t2v-1.3b": DiTConfig(),
    # The golden-data model: same head size as the real one, everything else tiny.
    "tiny": DiTConfig(dim=256, ffn_dim=512, text_dim=64, num_heads=2, num_layers=2),
}


class LayerKeySet(Protocol):
    def key_set(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this pass's k/v for the layer; return the keys/values its queries attend to."""


class KeySetProvider(Protocol):
    steady: bool  # the pass has the steady state's fixed shapes (compiled blocks run only then)

    def layer(self, index: int) -> LayerKeySet: ...


class TextKeyValues(Protocol):
    ready: bool

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def fill(self, keys: torch.Tensor, values: torch.Tensor) -> None: ...


# ----------------------------------------------------------------------------------------------- attention


def _flash_attn_func():
    try:  # FlashAttention-3 (Hopper) first, then FlashAttention-2
        from flash_attn_interface import flash_attn_func  # type: ignore

        return flash_attn_func, "flash-attn-3"
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func  # type: ignore

        return flash_attn_func, "flash-attn-2"
    except ImportError:
        return None, "sdpa"


_FLASH, _FLASH_NAME = _flash_attn_func()


def attention_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """Name of the kernel `attention` uses for inputs on `device` in `dtype`."""
    if _FLASH is not None and torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return _FLASH_NAME
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention, no mask, scale 1/sqrt(d). q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    if _FLASH is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _FLASH(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------------------------- RoPE


def rope_axis_sizes(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (time, height, width): 22/21/21 for head_dim 128."""
    pairs = head_dim // 2
    spatial = pairs // 3
    return pairs - 2 * spatial, spatial, spatial


def rope_angles(head_dim: int, frame_start: int, frames: int, rows: int, cols: int, device) -> torch.Tensor:
    """Rotation angles [frames*rows*cols, head_dim/2] in float64 for absolute frame positions.

    Computed on the fly for any frame index (the reference's table stops at 1024 positions; for positions
    below that the angles are identical).
    """
    n_t, n_h, n_w = rope_axis_sizes(head_dim)

    def inverse_freq(pairs: int) -> torch.Tensor:
        exponent = torch.arange(0, 2 * pairs, 2, dtype=torch.float64, device=device) / (2 * pairs)
        return 1.0 / torch.pow(10000.0, exponent)

    t = torch.arange(frame_start, frame_start + frames, dtype=torch.float64, device=device)
    h = torch.arange(rows, dtype=torch.float64, device=device)
    w = torch.arange(cols, dtype=torch.float64, device=device)
    a_t = torch.outer(t, inverse_freq(n_t))[:, None, None, :].expand(frames, rows, cols, n_t)
    a_h = torch.outer(h, inverse_freq(n_h))[None, :, None, :].expand(frames, rows, cols, n_h)
    a_w = torch.outer(w, inverse_freq(n_w))[None, None, :, :].expand(frames, rows, cols, n_w)
    return torch.cat([a_t, a_h, a_w], dim=-1).reshape(frames * rows * cols, n_t + n_h + n_w)


class RotaryTable:
    """The RoPE rotations of the current pass as one complex table [L, 1, D/2], cached because the 5 passes of
    a chunk share them.

    Rotation runs in float64 for float32/float64 inputs (the reference's precision: complex128 table) and in
    float32 for half-precision inputs (complex64), where float64 would only cost time.
    """

    def __init__(self):
        self._key = None
        self._value = None

    def get(self, head_dim, frame_start, frames, rows, cols, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(table [L, 1, D/2] complex, the same as real (cos, sin) pairs [L, 1, D/2, 2]): eager blocks
        multiply by the first, compiled ones use the second (inductor generates no code for complex ops)."""
        work = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
        key = (head_dim, frame_start, frames, rows, cols, str(device), work)
        if key != self._key:
            angles = rope_angles(head_dim, frame_start, frames, rows, cols, device)
            cos_sin = torch.stack((angles.cos(), angles.sin()), dim=-1).to(work)[:, None]
            self._value = (torch.view_as_complex(cos_sin.clone()), cos_sin)
            self._key = key
        return self._value


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate interleaved channel pairs (2j, 2j+1) of x [B, L, H, D] by `RotaryTable.get`'s table.

    The reference's formula in its precision: x is taken to the table's precision, each pair is multiplied
    as a complex number, the result is cast back to x's dtype.
    """
    table = rope[0]
    pairs = torch.view_as_complex(x.to(table.real.dtype).unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)


def rope_normed_qk(qk: torch.Tensor, weight: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   out_dtype: torch.dtype) -> torch.Tensor:
    """q and k of a pass, normalised (qk [B, L, 2, H, D] / its RMS, already), times their gains, rotated.

    `weight` [2, H, D] is in the rotation's real dtype, so the gain multiply is also the cast up to it. In
    eager mode the rotation is one complex multiply written straight into the `out_dtype` result (no
    separate cast when the table's precision allows: float64 -> float32); compiled, it is the same formula
    in real arithmetic, which inductor fuses into one kernel.
    """
    y = qk * weight  # [B, L, 2, H, D] in the table's real dtype
    if torch.compiler.is_compiling():
        pairs = y.unflatten(-1, (-1, 2))
        cos_sin = rope[1][:, None]  # [L, 1, 1, D/2, 2]
        c, s = cos_sin[..., 0], cos_sin[..., 1]
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2).to(out_dtype)
    table = rope[0]
    pairs = torch.view_as_complex(y.unflatten(-1, (-1, 2)))
    complex_out = {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(out_dtype)
    if complex_out is not None:
        out = torch.empty(pairs.shape, dtype=complex_out, device=pairs.device)
        torch.mul(pairs, table[:, None], out=out)
        return torch.view_as_real(out).flatten(-2)
    return torch.view_as_real(pairs * table[:, None]).flatten(-2).to(out_dtype)


# ----------------------------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """RMSNorm over the full width (the q/k norms). Blocks do not call it: they fold its gain into their
    rotation (see `FusedBlock`); it holds the parameter and serves as the plain formula."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm with float32 statistics in every dtype: the kernel reads half-precision input and gains
    as they are and computes in float32 (one rounding, on the way out), so no cast surrounds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Projections(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k over the full width (before the head split).

    The parameters keep base.pt's names (`q`, `k`, `v`, `o`, `norm_q`, `norm_k`); what a block computes
    with is derived from them by `FusedBlock`.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.dim
        self.num_heads = config.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, config.eps) if config.qk_norm else nn.Identity()


def _rms_scaled(x: torch.Tensor, eps_term: torch.Tensor) -> torch.Tensor:
    """x / ||x||₂ over the last dim, with eps: x / hypot(||x||, sqrt(dim·eps)) (the RMS norm divided by
    sqrt(dim), which the gains carry). Statistics in float32 at least; returns float32 for half inputs."""
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=stats)
    return torch.div(x, torch.hypot(norm, eps_term))


class SelfAttention(Projections):
    def forward(self, x, rope: tuple[torch.Tensor, torch.Tensor], keys: LayerKeySet, fused: "FusedBlock"):
        heads = (self.num_heads, -1)
        qkv = fused.qkv(x).unflatten(-1, (3, -1))  # [B, L, 3, dim]: one GEMM
        qk, v = qkv[:, :, :2], qkv[:, :, 2].unflatten(-1, heads)
        if fused.qk_norm:
            qk = _rms_scaled(qk, fused.norm_eps)
        qk = rope_normed_qk(qk.unflatten(-1, heads), fused.qk_gain, rope, x.dtype)
        q, k = qk.unbind(2)
        all_k, all_v = keys.key_set(q, k, v)
        return self.o(attention(q, all_k, all_v).flatten(-2))


class CrossAttention(Projections):
    def text_key_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (after the k RMSNorm) and values of the text, [B, text_len, H, D]."""
        heads = (self.num_heads, -1)
        return self.norm_k(self.k(context)).unflatten(-1, heads), self.v(context).unflatten(-1, heads)

    def forward(self, x, text_k, text_v, fused: "FusedBlock"):
        q = self.q(x)
        if fused.qk_norm:
            normed = _rms_scaled(q, fused.norm_eps)
            if normed.dtype == q.dtype or torch.compiler.is_compiling():
                q = (normed * fused.q_gain).to(q.dtype)
            else:  # half precision: the gain in float32, rounded once into the result
                q = torch.mul(normed, fused.q_gain, out=torch.empty_like(q))
        return self.o(attention(q.unflatten(-1, (self.num_heads, -1)), text_k, text_v).flatten(-2))


class Block(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.dim
        self.norm1 = LayerNorm(dim, config.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(config)
        self.norm3 = LayerNorm(dim, config.eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(config)
        self.norm2 = LayerNorm(dim, config.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.fused: FusedBlock | None = None  # derived compute tensors (FusedBlock.of), not module state

    def forward(self, x, mod, rope, keys, text_kv, frames):
        """mod [B, F, 6, dim]: this block's modulation plus the pass's time projection, with 1 added to the
        two scale rows (`FusedBlocks.modulations`): one row per latent frame, broadcast over its tokens."""
        fused = self.fused
        shift1, scale1, gate1, shift2, scale2, gate2 = (t.unsqueeze(2) for t in mod.unbind(2))  # [B, F, 1, dim]

        def per_frame(t):  # tokens [B, F*T_f, dim] viewed as [B, F, T_f, dim], to meet the per-frame rows
            return t.unflatten(1, (frames, -1))

        def modulate(h, shift, scale):  # h * (1 + scale) + shift, the 1 already in `scale`
            return torch.addcmul(shift, per_frame(h), scale).flatten(1, 2)

        def gated(x, y, gate):  # x + y * gate
            return torch.addcmul(per_frame(x), per_frame(y), gate).flatten(1, 2)

        x = gated(x, self.self_attn(modulate(self.norm1(x), shift1, scale1), rope, keys, fused), gate1)
        x = x + self.cross_attn(self.norm3(x), *text_kv, fused)
        x = gated(x, self.ffn(modulate(self.norm2(x), shift2, scale2)), gate2)
        return x


class FusedBlock:
    """What a block computes with, derived once from its parameters (after loading, LoRA merges, fp8):

      - `qkv`: one Linear (or Fp8Linear) for q, k and v. Its weight/bias (and fp8 scales) are the storage
        of the three named layers, which become views into it: no second copy, and the names, the
        state dict and in-place LoRA merges keep working;
      - `qk_gain` [2, H, D]: the q/k RMSNorm gains times sqrt(dim), in the rotation's precision (float64
        for float32 activations, float32 for half), `q_gain` [dim] the cross-attention q gain likewise in
        float32 (at least); `norm_eps` = sqrt(dim·eps) (see `_rms_scaled`);
      - `modulation` [6, dim] float32: the block's modulation with 1 added to the scale rows.
    """

    def __init__(self, block: Block, dtype: torch.dtype):
        attn, cross = block.self_attn, block.cross_attn
        dim = block.modulation.shape[-1]
        heads = attn.num_heads
        device = block.modulation.device
        self.qkv = fuse_linears([attn.q, attn.k, attn.v])
        self.qk_norm = isinstance(attn.norm_q, RMSNorm)
        rotation = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
        stats = torch.float64 if dtype == torch.float64 else torch.float32
        root = math.sqrt(dim)
        if self.qk_norm:
            gains = torch.stack([attn.norm_q.weight.detach(), attn.norm_k.weight.detach()]).to(torch.float64) * root
            self.q_gain = (cross.norm_q.weight.detach().to(torch.float64) * root).to(stats)
            self.norm_eps = torch.tensor(math.sqrt(dim * attn.norm_q.eps), dtype=stats, device=device)
        else:
            gains = torch.ones(2, dim, dtype=torch.float64, device=device)
            self.q_gain = self.norm_eps = None
        self.qk_gain = gains.to(rotation).unflatten(-1, (heads, -1))
        scale_rows = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.float32, device=device)[:, None]
        self.modulation = block.modulation.detach()[0].float() + scale_rows
        # what it was derived from, to notice a change cheaply (once per pass, outside the blocks)
        self.dtype = dtype
        self.owners = _owners(block)
        self.watch = [(t, t.data_ptr(), t._version) for t in _sources(block)]

    def is_current(self, block: Block, dtype: torch.dtype) -> bool:
        """False when a tensor it derives from was modified in place, moved (`.data` replaced, e.g. by
        `model.to`) or replaced along with its layer (fp8 quantization), or the compute dtype changed."""
        if dtype != self.dtype or _owners(block) != self.owners:
            return False
        for t, ptr, version in self.watch:
            if t._version != version or t.data_ptr() != ptr:
                return False
        return True


def _owners(block: Block) -> tuple:
    """The modules and parameters whose tensors FusedBlock reads, by identity (fast: plain dict lookups)."""
    attn, cross = block._modules["self_attn"]._modules, block._modules["cross_attn"]._modules
    return (attn["q"], attn["k"], attn["v"], attn["norm_q"], attn["norm_k"], cross["norm_q"],
            block._parameters["modulation"])


def _sources(block: Block) -> list[torch.Tensor]:
    attn, cross = block.self_attn, block.cross_attn
    out = [block.modulation]
    for layer in (attn.q, attn.k, attn.v):
        out += [t for t in (getattr(layer, n, None) for n in ("weight", "weight_scale", "bias")) if t is not None]
    out += [m.weight for m in (attn.norm_q, attn.norm_k, cross.norm_q) if isinstance(m, RMSNorm)]
    return out


def fuse_linears(layers: list[nn.Module]) -> nn.Module:
    """One layer of the same type as `layers` (nn.Linear or Fp8Linear, same input) computing all their
    outputs, concatenated. The layers' tensors become views of the fused layer's storage."""
    first = layers[0]
    fused = object.__new__(type(first))
    fused.__dict__ = dict(first.__dict__)
    fused._parameters, fused._buffers, fused._modules = {}, {}, {}
    for name in ("weight", "weight_scale", "bias"):
        parts = [getattr(layer, name, None) for layer in layers]
        if parts[0] is None:
            if name in first._parameters:
                fused._parameters[name] = None
            continue
        whole = torch.cat([p.detach() for p in parts])
        offset = 0
        for layer, part in zip(layers, parts):
            view = whole[offset: offset + part.shape[0]]
            if isinstance(part, nn.Parameter):
                part.data = view
            else:
                layer._buffers[name] = view
            offset += part.shape[0]
        if name in first._parameters:
            fused._parameters[name] = nn.Parameter(whole, requires_grad=False)
        else:
            fused._buffers[name] = whole
    fused.out_features = sum(layer.out_features for layer in layers)
    return fused


class FusedBlocks:
    """The FusedBlock of every block of a ModuleList, kept current: `prepare(dtype)` (once per pass, outside
    the blocks) re-derives a block's tensors only when its parameters changed, and stacks the modulations."""

    def __init__(self):
        self._key = None
        self._modulation: torch.Tensor | None = None  # [L, 1, 1, 6, dim] float32

    def prepare(self, blocks, dtype: torch.dtype) -> None:
        changed = False
        for block in blocks:
            if block.fused is None or not block.fused.is_current(block, dtype):
                block.fused = FusedBlock(block, dtype)
                changed = True
        if changed or self._modulation is None:
            self._modulation = torch.stack([b.fused.modulation for b in blocks])[:, None, None]

    def modulations(self, e0: torch.Tensor) -> torch.Tensor:
        """[L, B, F, 6, dim] in e0's dtype: every block's modulation rows plus the pass's e0 [B, F, 6, dim],
        summed in float32 (one rounding for half precision)."""
        mods = self._modulation + e0
        return mods if mods.dtype == e0.dtype else mods.to(e0.dtype)


class Head(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        out = math.prod(config.patch_size) * config.out_dim
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x, e, frames):
        # e [B, F, dim]: the time embedding itself (not the 6-way projection).
        shift, scale = (self.modulation.unsqueeze(1) + e.unsqueeze(2)).unbind(2)
        h = self.norm(x).unflatten(1, (frames, -1)) * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)
        return self.head(h.flatten(1, 2))


def stacked_text_key_values(blocks, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block's cross-attention keys/values of the embedded text, stacked: [blocks, B, L, H, D] each."""
    pairs = [block.cross_attn.text_key_values(context) for block in blocks]
    return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


def _run_block(block: Block, x, mod, rope, keys, text_kv, frames):
    """One block over the pass's tokens (the function `--compile` compiles: its module is an argument, so
    all blocks share one compiled graph, their weights being its inputs). `mod`: the block's row of
    `FusedBlocks.modulations`."""
    return block(x, mod, rope, keys, text_kv, frames)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding in float64: [cos(t*w_i), sin(t*w_i)], w_i = 10000^(-i/half)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64).flatten(), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class CausalDiT(nn.Module):
    """Wan2.1 T2V transformer run causally over chunks of latent frames. Parameter names match base.pt."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self._rope = RotaryTable()
        self._fused = FusedBlocks()
        # set by memflow_cli.engine.compiled.compile_blocks: a compiled `_run_block` for the steady state's passes
        self.compiled_block = None

    # -- text ---------------------------------------------------------------------------------------------

    def pad_text(self, text: torch.Tensor) -> torch.Tensor:
        """[L, text_dim] or [B, L, text_dim] -> [B, text_len, text_dim], zero rows appended."""
        if text.dim() == 2:
            text = text.unsqueeze(0)
        length = text.shape[1]
        if length > self.config.text_len:
            raise ValueError(f"text embedding has {length} rows, the model takes at most {self.config.text_len}")
        if length < self.config.text_len:
            text = F.pad(text, (0, 0, 0, self.config.text_len - length))
        return text

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Padded text embedding through `text_embedding`: the context every cross-attention reads."""
        param = self.patch_embedding.weight  # never quantized: its dtype is the compute dtype
        return self.text_embedding(self.pad_text(text).to(param.device, param.dtype))

    def text_key_values(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of every layer, stacked: [num_layers, B, text_len, H, D] each."""
        return stacked_text_key_values(self.blocks, self.embed_text(text))

    # -- forward ------------------------------------------------------------------------------------------

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        frame_start: int,
        text: TextKeyValues,
        keys: KeySetProvider,
        text_embedding: torch.Tensor | None = None,
        vace: "VaceGuide | None" = None,
    ) -> torch.Tensor:
        """Flow prediction for `latents` [B, F, C, H, W] at per-frame `timesteps` [B, F].

        `frame_start` is the absolute index of the first frame (its RoPE time position). If `text` is not
        ready, its keys/values are computed from `text_embedding` first (once per prompt). With `vace`
        (model/vace.py), VACE hints are computed before the main blocks and added after main block 2n.
        """
        if not text.ready or (vace is not None and not vace.text.ready):
            if text_embedding is None:
                raise ValueError("the cross-attention cache is empty and no text embedding was given")
            if not text.ready:
                text.fill(*self.text_key_values(text_embedding))
            if vace is not None and not vace.text.ready:
                vace.text.fill(*vace.module.text_key_values(self.embed_text(text_embedding)))
        batch, frames, _, height, width = latents.shape
        _, ph, pw = self.config.patch_size
        rows, cols = height // ph, width // pw

        x = self.patch_embedding(latents.permute(0, 2, 1, 3, 4).to(self.patch_embedding.weight.dtype))
        # [B, F*rows*cols, dim], made contiguous once here: every block then sees (and returns) the same
        # layout, so a compiled block is traced for one set of strides
        x = x.flatten(2).transpose(1, 2).contiguous()

        dtype = x.dtype
        e = self.time_embedding(timestep_embedding(timesteps, self.config.freq_dim).to(dtype))
        e0 = self.time_projection(e).unflatten(1, (6, -1)).unflatten(0, (batch, frames))  # [B, F, 6, dim]
        e = e.unflatten(0, (batch, frames))

        rope = self._rope.get(self.config.head_dim, frame_start, frames, rows, cols, x.device, dtype)
        self._fused.prepare(self.blocks, dtype)
        mods = self._fused.modulations(e0)
        # --compile: the steady state's passes run the compiled block; the rest (warm-up, re-cache) eager
        run = _run_block
        if self.compiled_block is not None and keys.steady:
            run = self.compiled_block
            run.begin_pass()
        if vace is None:
            for index, block in enumerate(self.blocks):
                x = run(block, x, mods[index], rope, keys.layer(index), text.layer(index), frames)
        else:
            hints = vace.module(vace.context, x, e0, vace.text, vace.reference_frames, rows, cols)
            hint_for_layer = vace.module.hint_for_layer
            for index, block in enumerate(self.blocks):
                x = run(block, x, mods[index], rope, keys.layer(index), text.layer(index), frames)
                if index in hint_for_layer:
                    x = x + hints[hint_for_layer[index]] * vace.scale
        out = self.head(x, e, frames)
        return self.unpatchify(out, frames, rows, cols)

    def unpatchify(self, out: torch.Tensor, frames: int, rows: int, cols: int) -> torch.Tensor:
        """[B, F*rows*cols, pt*ph*pw*C] -> [B, F, C, H, W]; output channels are (q, r)-major, c-minor."""
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = out.reshape(out.shape[0], frames, rows, cols, pt, ph, pw, c)
        x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # B, F, pt, C, rows, ph, cols, pw
        return x.reshape(out.shape[0], frames * pt, c, rows * ph, cols * pw)


def build_dit(config: DiTConfig, device="cpu", dtype=torch.float32) -> CausalDiT:
    """An uninitialised model (weights are loaded afterwards); built on the meta device to skip init work."""
    with torch.device("meta"):
        model = CausalDiT(config)
    model = model.to_empty(device=device).to(dtype)
    model.eval().requires_grad_(False)
    return model
