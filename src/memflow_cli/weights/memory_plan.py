"""How much device memory a render will need, planned from configs before any weight is loaded.

A render has two phases that never share the device: first the text encoder turns the prompts into
embeddings (then it is freed), then the DiT generates while the decoder turns latents into pixels. The
planned peak is the larger phase. Parts:

  - text encoder: umT5-XXL weights (bf16, or fp8 with a scale per row) + its activations; 0 on the device
    with --low-vram (it runs on the CPU, once per distinct prompt: embeddings are cached on disk);
  - DiT weights: counted from the DiT config, Linears of the blocks in fp8 when quantized;
  - KV cache + memory bank: (sink + bank + local window) frames × frame tokens × layers × 2 (K, V) × dim,
    plus the staged bank frame and the cross-attention text keys/values;
  - activations of the largest pass: the re-cache after a prompt switch runs `local_attn_size` frames at once;
  - decoder: weights + stream state + the working set of one decode call.

With --compile on CUDA (CUDA graphs), the graphs' private memory pool holds a steady pass's working set for
good (`cuda_graphs=True`): a part of its own, beside the eager passes' activations.

Decoding one chunk in the loop (--no-overlap, --low-vram), a DiT pass and a decode call never run at the same
time: the generate phase holds weights, caches and decoder state plus the larger of the two working sets. With
overlap (render's default: the next chunk generates while this one decodes, `overlap=True` here) both
working sets are held at once.

Weights and caches are exact byte counts (a test checks them against the real-size model and caches
built on the meta device). The decoder's state and working set are counted too: its real-size network runs
on the meta device while `LiveBytes` adds up the tensors alive. DiT activations are estimates from the
largest tensors alive at once; after a CUDA render the summary shows planned against measured peak.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from memflow_cli.errors import InputError
from memflow_cli.engine.generator import StreamSettings
from memflow_cli.model.dit import DiTConfig
from memflow_cli.model.t5 import UMT5Config

DECODER_KINDS = ("wan", "lightvae", "tae", "lighttae")
LEVERS = "--low-vram, --quantization fp8, --vae lighttae, or a smaller --resolution (e.g. 640x368)"
GiB = 2**30


@dataclass(frozen=True)
class PlanPart:
    name: str
    phase: str  # "encode" (text encoder, freed before generation) or "generate"
    bytes: int
    exact: bool  # counted (True) or estimated (False)
    note: str = ""
    transient: bool = False  # alive only during its own step (a DiT pass, a decode call): these never overlap


@dataclass
class MemoryPlan:
    width: int
    height: int
    dtype: str
    quantization: str | None
    low_vram: bool
    decoder: str
    parts: list[PlanPart] = field(default_factory=list)

    def phase_bytes(self, phase: str) -> int:
        """What stays (weights, caches, state) plus the largest transient working set of the phase."""
        parts = [p for p in self.parts if p.phase == phase]
        return sum(p.bytes for p in parts if not p.transient) + max([p.bytes for p in parts if p.transient], default=0)

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_bytes("encode"), self.phase_bytes("generate"))

    def part(self, name: str) -> PlanPart:
        return next(p for p in self.parts if p.name == name)

    def to_dict(self) -> dict:
        return {
            "resolution": f"{self.width}x{self.height}", "dtype": self.dtype, "quantization": self.quantization,
            "low_vram": self.low_vram, "decoder": self.decoder, "peak_bytes": self.peak_bytes,
            "parts": [{"name": p.name, "phase": p.phase, "bytes": p.bytes, "exact": p.exact, "note": p.note,
                       "transient": p.transient}
                      for p in self.parts],
        }


# ------------------------------------------------------------------------------------------- counting


def _linear(inp: int, out: int, bias: bool, b: int, fp8: bool) -> int:
    """Bytes of one Linear: fp8 weight + a float32 scale per output row, or the weight in b bytes."""
    weight = inp * out + 4 * out if fp8 else inp * out * b
    return weight + (out * b if bias else 0)


def dit_weight_bytes(config: DiTConfig, dtype: torch.dtype, quantization: str | None = None) -> int:
    """Parameters of the causal DiT, counted from its config (Linears of the blocks in fp8 if quantized)."""
    b = torch.empty(0, dtype=dtype).element_size()
    fp8 = quantization == "fp8"
    d, f = config.dim, config.ffn_dim
    patch = math.prod(config.patch_size)
    total = (config.in_dim * patch * d + d) * b  # patch embedding (a Conv3d, never quantized)
    total += _linear(config.text_dim, d, True, b, False) + _linear(d, d, True, b, False)  # text embedding
    total += _linear(config.freq_dim, d, True, b, False) + _linear(d, d, True, b, False)  # time embedding
    total += _linear(d, 6 * d, True, b, False)  # time projection
    per_block = 8 * _linear(d, d, True, b, fp8)  # q k v o of self- and cross-attention
    per_block += _linear(d, f, True, b, fp8) + _linear(f, d, True, b, fp8)  # FFN
    per_block += (4 * d if config.qk_norm else 0) * b  # RMSNorm gains on q and k, twice
    per_block += (2 * d if config.cross_attn_norm else 0) * b  # norm3: LayerNorm weight + bias
    per_block += 6 * d * b  # modulation
    total += config.num_layers * per_block
    total += _linear(d, patch * config.out_dim, True, b, False) + 2 * d * b  # head + its modulation
    return total


def cache_bytes(config: DiTConfig, settings: StreamSettings, frame_tokens: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes of what the stream remembers: KV cache + bank, the staged bank frame, the text keys/values."""
    b = torch.empty(0, dtype=dtype).element_size()
    row = config.num_layers * 2 * config.dim * b  # one token's K and V in every layer
    frames = settings.local_attn_size + settings.bank_size  # sink + window = local_attn_size, plus bank slots
    return {
        "kv": frames * frame_tokens * row,
        "staged": frame_tokens * row,
        "text": config.text_len * row,
    }


def umt5_weight_bytes(config: UMT5Config, dtype: torch.dtype, quantization: str | None = None) -> int:
    b = torch.empty(0, dtype=dtype).element_size()
    fp8 = quantization == "fp8"
    total = (config.vocab * config.dim + 4 * config.vocab) if fp8 else config.vocab * config.dim * b
    per_block = 3 * _linear(config.dim, config.dim_attn, False, b, fp8) + _linear(config.dim_attn, config.dim, False, b, fp8)
    per_block += 2 * _linear(config.dim, config.dim_ffn, False, b, fp8) + _linear(config.dim_ffn, config.dim, False, b, fp8)
    per_block += 2 * config.dim * b + config.num_buckets * config.num_heads * b
    return total + config.num_layers * per_block + config.dim * b


def umt5_activation_bytes(config: UMT5Config, dtype: torch.dtype, quantization: str | None, tokens: int = 512) -> int:
    b = torch.empty(0, dtype=dtype).element_size()
    hidden = tokens * config.dim * b * 6  # residual, norm, q, k, v, attention output
    logits = config.num_heads * tokens * tokens * (4 + 2 * b)  # bias + logits, float32 softmax, cast back
    ffn = tokens * config.dim_ffn * b * 3
    dequant = 2 * config.dim * config.dim_ffn * b if quantization == "fp8" else 0  # one layer's weight, expanded
    return hidden + max(logits, ffn) + dequant


def pass_activation_bytes(config: DiTConfig, settings: StreamSettings, frame_tokens: int, dtype: torch.dtype,
                          quantization: str | None, frames: int | None = None) -> int:
    """Largest tensors alive in one block during the re-cache pass (`local_attn_size` frames at once).

    Residual stream and its update; attention phase: modulated input, q/k/v, the float32 RoPE copies of
    q and k, the attention output and the assembled key set (up to sink + bank + window frames); FFN
    phase: modulated input, the hidden layer before and after GELU, the output. fp8 adds one layer's
    de-quantized weight (or, for fp8 matmuls, the activations rounded to fp8).
    """
    b = torch.empty(0, dtype=dtype).element_size()
    n = (frames or settings.local_attn_size) * frame_tokens  # frames: a steady pass's chunk instead of a re-cache
    d, f = config.dim, config.ffn_dim
    keys = (settings.local_attn_size + settings.bank_size) * frame_tokens
    residual = 2 * n * d * b
    attention = 6 * n * d * b + 2 * n * d * 4 + 2 * keys * d * b
    ffn = 2 * n * d * b + 2 * n * f * b
    # fp8: one layer's weight expanded to b bytes, or (fp8 matmuls) the FFN hidden layer rounded to fp8
    dequant = max(2 * d * f * b, n * f * b) if quantization == "fp8" else 0
    return residual + max(attention, ffn) + dequant


def decoder_bytes(kind: str, width: int, height: int, dtype: torch.dtype, frames_per_call: int = 3) -> tuple[int, int, int]:
    """(weights, stream state, working set of one call of `frames_per_call` latent frames) of the decoder.

    Counted, not estimated: the decoder of the kind's real size runs a first and a steady chunk on the meta
    device (shapes only, no arithmetic) under `LiveBytes`, which adds up the tensors alive at each moment. The
    working set is the peak during the steady call (the decode, then the uint8 conversion the decode stage
    does on the device) above what was alive before it; the state is what the stream keeps between calls.
    What this cannot see: the convolution library's own workspaces (cuDNN), outside torch's tensors.
    lightvae is the Wan VAE at half width; tae and lighttae are the same TAEHV network.
    """
    if kind not in DECODER_KINDS:
        raise InputError(f"--vae: expected one of {', '.join(DECODER_KINDS)}, got {kind!r}")
    weights, state, work = _counted_decoder("wan" if kind in ("wan", "lightvae") else "tae",
                                            96 if kind == "wan" else 48, width, height, dtype, frames_per_call)
    return weights, state, work


class LiveBytes(TorchDispatchMode):
    """A dispatch mode that counts the bytes of tensor storages made inside it and still referenced (`live`),
    and the most at any moment (`peak`). Works on the meta device (what a real device would hold, without
    allocating it) as on the CPU. Views share their base's storage and count once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage → [tensors referring to it, bytes]

    def _drop(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or id(t) in inputs:
                continue  # in-place ops return their input
            key = t.untyped_storage()._cdata
            entry = self._storages.get(key)
            if entry is None:
                entry = self._storages[key] = [0, t.untyped_storage().nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(t, self._drop, key)
        return out


def counted_decode(stream, latents: torch.Tensor, frames_per_call: int) -> tuple[int, int]:
    """(state bytes, working set bytes) of `stream` decoding a steady chunk of `frames_per_call` latent frames
    of `latents` after a first chunk (see `decoder_bytes`); `stream` is any `--vae` stream decoder."""
    from memflow_cli.model.vae import pixels_to_uint8

    with torch.no_grad():
        stream.decode(latents[:, :frames_per_call])
        steady = latents[:, frames_per_call:2 * frames_per_call]
        with LiveBytes() as counter:
            before = counter.live
            pixels_to_uint8(stream.decode(steady))
        state = getattr(stream, "state", {})
        held = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return held, counter.peak - before


@functools.lru_cache(maxsize=32)
def _counted_decoder(family: str, dim: int, width: int, height: int, dtype: torch.dtype,
                     frames_per_call: int) -> tuple[int, int, int]:
    from memflow_cli.model.tae import TAEConfig, TinyAutoencoder
    from memflow_cli.model.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        model = (WanVAE(VAEConfig(dim=dim)) if family == "wan" else TinyAutoencoder(TAEConfig())).to(dtype)
        latents = torch.empty(1, 2 * frames_per_call, 16, height // 8, width // 8)
        state, work = counted_decode(model.stream_decoder(), latents, frames_per_call)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights, state, work


# ------------------------------------------------------------------------------------------- the plan


def plan_memory(
    width: int,
    height: int,
    *,
    dtype: torch.dtype = torch.bfloat16,
    quantization: str | None = None,
    low_vram: bool = False,
    decoder: str = "wan",
    dit: DiTConfig | None = None,
    text_encoder: UMT5Config | None = None,
    settings: StreamSettings | None = None,
    decoder_frames_per_call: int | None = None,
    overlap: bool = False,
    cuda_graphs: bool = False,
) -> MemoryPlan:
    """Planned device memory of a render at width x height (defaults: the real MemFlow model)."""
    dit = dit or DiTConfig()
    text_encoder = text_encoder or UMT5Config.umt5_xxl()
    settings = settings or StreamSettings()
    if low_vram:
        quantization = "fp8"
    tokens = dit.frame_tokens(height // 8, width // 8)
    name = str(dtype).replace("torch.", "")
    plan = MemoryPlan(width, height, name, quantization, low_vram, decoder)
    weights = "fp8 blocks" if quantization == "fp8" else name
    if low_vram:
        plan.parts.append(PlanPart("text encoder", "encode", 0, True, "on the CPU (--low-vram)"))
    else:
        plan.parts.append(PlanPart("text encoder", "encode", umt5_weight_bytes(text_encoder, dtype, quantization), True,
                                   f"umT5-XXL, {'fp8' if quantization == 'fp8' else name}"))
        plan.parts.append(PlanPart("text encoder activations", "encode",
                                   umt5_activation_bytes(text_encoder, dtype, quantization), False, "512 tokens",
                                   transient=True))
    plan.parts.append(PlanPart("DiT weights", "generate", dit_weight_bytes(dit, dtype, quantization), True, weights))
    caches = cache_bytes(dit, settings, tokens, dtype)
    frames = settings.local_attn_size + settings.bank_size
    plan.parts.append(PlanPart("KV cache + memory bank", "generate", caches["kv"] + caches["staged"], True,
                               f"{frames} frames x {tokens} tokens x {dit.num_layers} layers"))
    plan.parts.append(PlanPart("text keys/values", "generate", caches["text"], True, f"{dit.text_len} tokens"))
    plan.parts.append(PlanPart("DiT activations", "generate", pass_activation_bytes(dit, settings, tokens, dtype, quantization),
                               False, f"re-cache pass of {settings.local_attn_size} frames", transient=True))
    if cuda_graphs:
        # --compile with CUDA graphs: the graphs' private pool keeps a steady pass's working set (and every
        # block's output of the pass) reserved for replays, beside whatever the eager passes (the re-cache after
        # a switch, the warm-up chunks) and the decoder use
        steady = settings.frames_per_chunk
        pool = pass_activation_bytes(dit, settings, tokens, dtype, quantization, frames=steady)
        pool += dit.num_layers * steady * tokens * dit.dim * torch.empty(0, dtype=dtype).element_size()
        plan.parts.append(PlanPart("CUDA-graph pool (--compile)", "generate", pool, False,
                                   f"a steady pass of {steady} frames + {dit.num_layers} block outputs, kept"))
    per_call = decoder_frames_per_call or (1 if low_vram else settings.frames_per_chunk)
    dec_weights, dec_state, dec_work = decoder_bytes(decoder, width, height, dtype, per_call)
    plan.parts.append(PlanPart("decoder weights + state", "generate", dec_weights + dec_state, False, decoder))
    beside = overlap and not low_vram  # decoding while the next chunk generates (decode_stage.py)
    plan.parts.append(PlanPart("decoder working set", "generate", dec_work, False,
                               f"{per_call} latent frame{'s' if per_call > 1 else ''} per call"
                               + (", beside the DiT pass (overlap)" if beside else ""), transient=not beside))
    return plan


def free_device_memory(device: torch.device | str) -> int | None:
    """Free bytes on a CUDA device (None elsewhere: nothing to check)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def check_fits(plan: MemoryPlan, free_bytes: int | None, device: str = "cuda") -> None:
    """Stop before anything loads when the planned peak exceeds the free memory (with 5 % slack for the
    allocator's fragmentation), naming the levers that would make it fit."""
    if free_bytes is None:
        return
    need = int(plan.peak_bytes * 1.05)
    if need > free_bytes:
        tried = []
        if not plan.low_vram:
            tried.append("--low-vram")
        if plan.quantization != "fp8":
            tried.append("--quantization fp8")
        if plan.decoder != "lighttae":
            tried.append("--vae lighttae")
        tried.append(f"a smaller --resolution than {plan.width}x{plan.height}")
        raise InputError(
            f"not enough GPU memory on {device}: this render plans a peak of {plan.peak_bytes / GiB:.1f} GiB "
            f"(+5 % slack), {free_bytes / GiB:.1f} GiB is free. Try {', '.join(tried)} "
            f"(`memflow info --resolution {plan.width}x{plan.height} ...` shows the plan of each)."
        )


def plan_table(plan: MemoryPlan, measured_peak: int | None = None):
    from rich.table import Table

    t = Table(title=f"memory plan {plan.width}x{plan.height}, {plan.dtype}"
                    + (", fp8" if plan.quantization == "fp8" else "") + (", low VRAM" if plan.low_vram else "")
                    + f", decoder {plan.decoder}")
    for col in ("part", "phase", "GiB", "how"):
        t.add_column(col, justify="right" if col == "GiB" else "left")
    for p in plan.parts:
        t.add_row(p.name, p.phase, f"{'' if p.exact else '≈'}{p.bytes / GiB:.2f}",
                  p.note + (" (one at a time)" if p.transient else ""))
    t.add_row("[bold]planned peak[/bold]", "", f"[bold]{plan.peak_bytes / GiB:.2f}[/bold]",
              f"encode {plan.phase_bytes('encode') / GiB:.2f}, generate {plan.phase_bytes('generate') / GiB:.2f}")
    if measured_peak is not None:
        t.add_row("measured peak", "", f"{measured_peak / GiB:.2f}", "torch.cuda.max_memory_allocated")
    return t
