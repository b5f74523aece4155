"""umT5-XXL text encoder (encoder half only), as used to condition Wan2.1 / MemFlow.

Written from spec §8.1; parameter names are those of `models_t5_umt5-xxl-enc-bf16.pth` (§10.5) so the
released file (or its bf16 / fp8 safetensors copies) loads strictly.

T5 specifics worth knowing: attention logits are *not* scaled by 1/sqrt(d) (the scale is folded into
the trained weights); positions enter only through a learned bias per (head, bucket of key-query
distance), and umT5 learns one such table per layer; norms are RMS norms without mean or bias.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from memflow_cli.model.weights import load_flat_module
from memflow_cli.errors import CheckpointError


@dataclass
class UMT5Config:
    vocab: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int = 32
    max_dist: int = 128
    eps: float = 1e-6

    @classmethod
    def umt5_xxl(cls) -> "UMT5Config":
        return cls(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24)

    @classmethod
    def from_state_dict(cls, sd: dict) -> "UMT5Config":
        """Every size from tensor shapes (max_dist and eps are not stored; umT5 defaults)."""
        vocab, dim = sd["token_embedding.weight"].shape
        num_buckets, num_heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        num_layers = 0
        while f"blocks.{num_layers}.norm1.weight" in sd:
            num_layers += 1
        return cls(
            vocab=vocab,
            dim=dim,
            dim_attn=sd["blocks.0.attn.q.weight"].shape[0],
            dim_ffn=sd["blocks.0.ffn.fc1.weight"].shape[0],
            num_heads=num_heads,
            num_layers=num_layers,
            num_buckets=num_buckets,
        )


class T5RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # statistics in float32 even for half-precision weights; the result is rounded to the
        # weight dtype before the gain, like the reference
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class RelativePositionBias(nn.Module):
    """Learned bias [heads, Lq, Lk] from bidirectional log-spaced buckets of (key - query)."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_dist = max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, lq: int, lk: int, device) -> torch.Tensor:
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        half = self.num_buckets // 2  # one half for keys after the query, one for the rest
        offset = (rel > 0).long() * half
        dist = rel.abs()
        exact = half // 2  # distances below this get a bucket each
        # beyond `exact`, buckets grow logarithmically up to max_dist (float32 log, truncated)
        far = exact + (
            torch.log(dist.float().clamp_min(1) / exact) / math.log(self.max_dist / exact) * (half - exact)
        ).long()
        far = far.clamp_max(half - 1)
        return offset + torch.where(dist < exact, dist, far)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        bias = self.embedding(self.buckets(lq, lk, self.embedding.weight.device))  # [Lq, Lk, H]
        return bias.permute(2, 0, 1).unsqueeze(0)


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x, bias):
        b, l, _ = x.shape
        q, k, v = (proj(x).view(b, l, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        logits = q @ k.transpose(-1, -2) + bias  # no 1/sqrt(d): T5 convention
        attn = torch.softmax(logits.float(), dim=-1).to(x.dtype)
        out = (attn @ v).transpose(1, 2).reshape(b, l, -1)
        return self.o(out)


class GatedFFN(nn.Module):
    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(x) * self.gate(x))


def _fp16_safe(x):
    # float16 activations of T5-XXL can overflow; pull infinities back into range as T5 ports do
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Block(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.norm1 = T5RMSNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5RMSNorm(cfg.dim, cfg.eps)
        self.ffn = GatedFFN(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.max_dist)

    def forward(self, x, key_mask_bias):
        l = x.shape[1]
        bias = self.pos_embedding(l, l).to(x.dtype)
        # padded keys get exactly the most negative value (not added to the position bias)
        bias = torch.where(key_mask_bias, torch.finfo(x.dtype).min, bias)
        x = _fp16_safe(x + self.attn(self.norm1(x), bias))
        return _fp16_safe(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5RMSNorm(cfg.dim, cfg.eps)

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype  # the compute dtype, also when the embedding is stored in fp8

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> raw encoder output [B, L, dim] (padding rows are *not* zeroed)."""
        ids = ids.to(self.device)
        padded_key = (mask.to(self.device) == 0)[:, None, None, :]  # [B, 1, 1, Lk]
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, padded_key)
        return self.norm(x)


def load_umt5_encoder(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32,
                      quantization: str | None = None) -> UMT5Encoder:
    """Load `models_t5_umt5-xxl-enc-bf16.pth` or a bf16 / fp8-e4m3fn safetensors copy.

    Weights are up-cast (or cast) to `dtype`, which is also the compute dtype. The module is built on
    the meta device first so the 11 GB file is never held twice in memory.

    With `quantization="fp8"` the Linears and the token embedding are stored in float8_e4m3fn with a scale
    per row (5.8 GB instead of 11 GB for umT5-XXL) and compute in `dtype`. A tensor that the file already
    holds in fp8 (Kijai's `umt5-xxl-enc-fp8_e4m3fn.safetensors`) is taken as is, with scale 1: quantizing
    it again would round twice.
    """
    if quantization is None:
        return load_flat_module(path, "umT5 encoder", UMT5Config.from_state_dict, UMT5Encoder, device, dtype)
    from memflow_cli.model.weights import assign_state_dict, read_flat_state
    from memflow_cli.model.quantization import FP8, Fp8Embedding, Fp8Linear, quantize_rows

    if quantization != "fp8":
        raise ValueError(f"unknown quantization {quantization!r}")
    state = read_flat_state(path, "umT5 encoder")
    try:
        config = UMT5Config.from_state_dict(state)
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a umT5 encoder checkpoint (no {exc.args[0]})") from None
    with torch.device("meta"):
        module = UMT5Encoder(config).to(dtype)
        stored = {}  # fp8 modules by name: the Linears and the token embedding
        for name, child in list(module.named_modules()):
            if type(child) is nn.Linear:
                stored[name] = Fp8Linear(child.in_features, child.out_features, bias=False, dtype=dtype)
        stored["token_embedding"] = Fp8Embedding(config.vocab, config.dim, dtype=dtype)
        for name, child in stored.items():
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, child)
    module = module.to_empty(device=device)
    for name in stored:
        key = name + ".weight"
        if key in state:
            weight = state.pop(key)
            if weight.dtype == FP8:
                state[key], state[name + ".weight_scale"] = weight, torch.ones(weight.shape[0])
            else:
                state[key], state[name + ".weight_scale"] = quantize_rows(weight)
    assign_state_dict(module, state, path)
    return module.eval().requires_grad_(False)
