"""fp8 weight storage: float8_e4m3fn weights with one float32 scale per output row.

A built model is quantized in place, after every LoRA has been merged (a LoRA delta is far below fp8's
resolution of a weight row: merged afterwards it would mostly round away). Each `nn.Linear` becomes an
`Fp8Linear` holding

    weight        float8_e4m3fn [out, in]   round(W / scale[:, None])
    weight_scale  float32       [out]       max|W[row]| / 448 (448 = the largest e4m3 value)
    bias          compute dtype [out]       unchanged

so a weight row uses the whole e4m3 range whatever its magnitude. Storage is 1 byte per weight plus
4 bytes per row, everywhere. How the layer computes depends on the device (`fp8_compute_path`):

  - "scaled_mm": CUDA with compute capability >= 8.9 (Ada, Hopper, Blackwell) multiplies in fp8 with
    `torch._scaled_mm`: activations are quantized per token (row) on the fly, the weight per output row,
    and the product is rescaled by both in the kernel's epilogue.
  - "dequantize": everything else (older GPUs, CPU): the weight is expanded to the compute dtype inside
    the layer, one layer at a time, so the memory saving holds and CI exercises the same storage path.

The path is a Python string fixed when the layer is built, so `torch.compile` sees a static branch.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
COMPUTE_PATHS = ("scaled_mm", "dequantize")
QUANTIZATIONS = ("fp8",)
# Spellings of fp8 accepted from files (Scope's `quantization`, workflow `params.quantization`) and flags.
FP8_ALIASES = {"fp8", "fp8_e4m3fn", "float8_e4m3fn", "e4m3", "fp8-e4m3fn"}

# The DiT's Linears outside the transformer blocks: text/time embeddings, time projection, output head. They
# stay in the compute dtype, by measurement on the golden pipeline cases (benchmarks/fp8_quality.py): with
# them in fp8 too, latents rel-L2 against float32 is 3.05-3.20e-2, kept it is 1.04-1.05e-2 (bf16: 5.5e-3),
# and they hold under 2 % of the weights (25.7 M of 1.42 G parameters in Wan2.1-1.3B). The time embedding
# feeds every block's modulation, so its rounding reaches every token.
DIT_KEEP = ("text_embedding", "time_embedding", "time_projection", "head")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight [out, in], float32 scale [out]) with weight ≈ fp8 * scale[:, None]. Rows of zeros get scale 1."""
    q = torch.empty(weight.shape, dtype=FP8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    step = max(1, (1 << 24) // max(1, weight.shape[1]))  # rows per block: float32 temporaries of 64 MB at most
    for start in range(0, weight.shape[0], step):
        w = weight[start:start + step].detach().float()
        amax = w.abs().amax(dim=1)
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        q[start:start + step] = (w / s[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        scale[start:start + step] = s
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # fp8 -> bf16/fp16/fp32 is exact; the single rounding is the multiply by the row scale.
    return q.to(dtype) * scale.to(dtype)[:, None]


_SCALED_MM_OK: dict[str, bool] = {}
_SCALED_MM_BIAS_OK: dict[str, bool] = {}
# smallest activation scale: a row of zeros gets it (and codes 0) instead of a division by zero
_MIN_SCALE = float(torch.finfo(torch.float32).tiny)


def fp8_compute_path(device: torch.device | str) -> str:
    """How an Fp8Linear on `device` multiplies: "scaled_mm" (real fp8 matmuls) or "dequantize"."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "dequantize"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "dequantize"
    key = str(device)
    if key not in _SCALED_MM_OK:  # a torch build without row-wise fp8 kernels for this GPU falls back
        _SCALED_MM_OK[key] = _scaled_mm_works(device)
    return "scaled_mm" if _SCALED_MM_OK[key] else "dequantize"


def scaled_mm_takes_bias(device: torch.device | str) -> bool:
    """Whether `torch._scaled_mm` with row-wise scales adds a bias in its epilogue on `device` (probed once):
    then the bias costs no separate kernel."""
    device = torch.device(device)
    key = str(device)
    if key not in _SCALED_MM_BIAS_OK:
        _SCALED_MM_BIAS_OK[key] = _scaled_mm_works(device, bias=True)
    return _SCALED_MM_BIAS_OK[key]


def _scaled_mm_works(device: torch.device, bias: bool = False) -> bool:
    try:
        a = torch.ones(16, 32, device=device).to(FP8)
        b = torch.ones(16, 32, device=device).to(FP8)
        scale_a = torch.ones(16, 1, device=device)
        scale_b = torch.full((1, 16), 2.0, device=device)
        extra = {"bias": torch.ones(16, device=device, dtype=torch.bfloat16)} if bias else {}
        out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, **extra)
        return bool((out.float() == (65.0 if bias else 64.0)).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def describe_fp8_path(device: torch.device | str) -> str:
    """One line for `memflow info`."""
    path = fp8_compute_path(device)
    if path == "scaled_mm":
        return "fp8 weights: real fp8 matmuls (torch._scaled_mm, per-row scales)"
    return "fp8 weights: stored in fp8, de-quantized per layer to the compute dtype"


class Fp8Linear(nn.Module):
    """A Linear whose weight is stored as float8_e4m3fn with a float32 scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, compute: str = "dequantize",
                 device=None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if compute not in COMPUTE_PATHS:
            raise ValueError(f"compute must be one of {COMPUTE_PATHS}, got {compute!r}")
        self.in_features, self.out_features = in_features, out_features
        # _scaled_mm needs both matrix sizes to be multiples of 16 and a half-precision output.
        fits = in_features % 16 == 0 and out_features % 16 == 0 and dtype in (torch.bfloat16, torch.float16)
        self.compute = compute if fits else "dequantize"
        # the bias in _scaled_mm's epilogue (same dtype as the output), where this device's kernel takes it
        self.bias_in_mm = bool(bias and self.compute == "scaled_mm" and device is not None
                               and scaled_mm_takes_bias(device))
        self.register_buffer("weight", torch.empty(out_features, in_features, device=device, dtype=FP8))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute: str = "dequantize") -> "Fp8Linear":
        dtype = linear.bias.dtype if linear.bias is not None else linear.weight.dtype
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, compute=compute,
                    device=linear.weight.device, dtype=dtype)
        q, scale = quantize_rows(linear.weight)
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.weight_scale.copy_(scale)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_rows(self.weight, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute == "scaled_mm":
            return self._fp8_matmul(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if torch.compiler.is_compiling() or x.dtype == torch.float32:
            weight = self.dequantized(x.dtype)
        else:  # half precision: the row scale applied in float32, rounded once into the weight (2 kernels)
            weight = torch.mul(self.weight.to(x.dtype), self.weight_scale[:, None],
                               out=torch.empty(self.weight.shape, dtype=x.dtype, device=x.device))
        return F.linear(x, weight, bias)

    def _fp8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Dynamic per-token activation quantization and one fp8 GEMM, in few kernels: the row maxima in
        float32 straight from the input (one reduction), the scale (two tiny ops), the quantized input
        written straight as fp8 (one kernel; |x / scale| <= 448 by construction, so no clamp), the GEMM
        with both scales and, where the kernel takes it, the bias in its epilogue."""
        rows = x.reshape(-1, self.in_features)
        amax = torch.linalg.vector_norm(rows, float("inf"), dim=1, keepdim=True, dtype=torch.float32)
        x_scale = (amax * (1.0 / FP8_MAX)).clamp_min_(_MIN_SCALE)
        if torch.compiler.is_compiling():
            xq = (rows / x_scale).to(FP8)  # inductor fuses this with the reduction
        else:
            xq = torch.div(rows, x_scale, out=torch.empty(rows.shape, dtype=FP8, device=rows.device))
        fused_bias = self.bias is not None and self.bias_in_mm and self.bias.dtype == x.dtype
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale[None, :],
                               bias=self.bias if fused_bias else None, out_dtype=x.dtype)
        if self.bias is not None and not fused_bias:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8, {self.compute}"


class Fp8Embedding(nn.Module):
    """An embedding table in fp8 with a scale per row (token); only looked-up rows are expanded."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, device=None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, device=device, dtype=FP8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, device=device, dtype=torch.float32))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight.view(torch.uint8)).view(FP8)  # gather bytes: fp8 gather is not everywhere
        return rows.to(self.dtype) * self.weight_scale[ids].to(self.dtype)[..., None]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def quantize_linears(model: nn.Module, *, compute: str = "dequantize", keep: Iterable[str] = ()) -> int:
    """Replace every nn.Linear of `model` (except those under a `keep` prefix) by an Fp8Linear, in place.

    The float weight of each layer is freed as soon as its fp8 copy exists, so the peak is one layer.
    Returns the number of layers replaced.
    """
    keep = tuple(keep)
    names = [name for name, module in model.named_modules() if type(module) is nn.Linear
             and not any(name == k or name.startswith(k + ".") for k in keep)]
    for name in names:
        parent, child = _parent(model, name)
        setattr(parent, child, Fp8Linear.from_linear(getattr(parent, child), compute=compute))
    return len(names)


def quantize_dit(model: nn.Module, *, compute: str | None = None, keep: Iterable[str] = DIT_KEEP) -> nn.Module:
    """Store the DiT's Linears in fp8 (call after all LoRAs are merged). `compute` defaults to the path
    of the device the model is on (`fp8_compute_path`). Returns the same model."""
    if compute is None:
        compute = fp8_compute_path(next(model.parameters()).device)
    quantize_linears(model, compute=compute, keep=keep)
    model.quantization = "fp8"
    return model


def module_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def parse_quantization(value, source: str) -> str | None:
    """None / "none" / fp8 spellings -> None or "fp8"; anything else is a ValueError naming `source`."""
    if value is None or value is False:
        return None
    if value is True:
        return "fp8"
    text = str(value).strip().lower()
    if text in ("", "none", "null", "bf16", "off"):
        return None
    if text in FP8_ALIASES:
        return "fp8"
    raise ValueError(f"{source}: expected fp8_e4m3fn (or none), got {value!r}")
