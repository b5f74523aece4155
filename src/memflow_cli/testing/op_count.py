"""Count the aten ops one DiT block runs per pass (the eager "glue" that costs launches on a GPU).

    python benchmarks/op_count.py            # the per-block table, float32 and bf16

A block of a steady denoising pass (the key set is the whole KV buffer: memory.py's steady state) runs under
a TorchDispatchMode that records every aten op reaching the dispatcher, except views and aliases (`view`,
`unflatten`, `transpose`, `unbind`, …: metadata only, no kernel). Each counted op is at least one kernel launch
on a GPU, so the count per block × layers × passes bounds the launches of a chunk from below.

The stream is the real one: a tiny-preset DiT with random weights, the streaming generator and its key-set
provider (memory.py), run past the warm-up until the passes are steady; only then is a block counted.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import memflow_cli.model.dit as dit

# ops that launch no kernel although the schema does not call them views: aliases, and allocations (the
# caching allocator hands out memory without a kernel; they are counted apart, as ALLOCATIONS)
_FREE = {"aten.detach", "aten.lift_fresh", "aten.alias", "aten._unsafe_view"}
_ALLOCATIONS = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided"}
ALLOCATIONS = "(allocations: no kernel, not in the total)"


class _Counting(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.allocations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in _ALLOCATIONS:
            self.allocations += 1
        elif not func.is_view and name not in _FREE:
            self.ops[name.removeprefix("aten.")] += 1
        return func(*args, **(kwargs or {}))


def steady_block_ops(dtype: torch.dtype = torch.float32, *, preset: str = "tiny", chunks: int = 9,
                     latent_size: int = 4, sma: bool = False, model=None, fp8: str | None = None) -> Counter:
    """Non-view aten ops of block 0 during the first steady denoising pass of a tiny stream, by op name
    (allocations apart: `ops[ALLOCATIONS]`; `total(ops)` leaves them out)."""
    from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
    from memflow_cli.model.dit import DiTConfig, build_dit

    if model is None:
        torch.manual_seed(0)
        model = build_dit(DiTConfig.preset(preset), dtype=dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.05)
        if fp8 is not None:  # "scaled_mm" or "dequantize" (quantization.py): the block's Linears in fp8
            from memflow_cli.model.quantization import quantize_dit

            quantize_dit(model, compute=fp8)
    settings = StreamSettings(sma=sma)
    gen = StreamingGenerator(model, settings, num_latent_frames=3 * chunks, latent_height=latent_size,
                             latent_width=latent_size, seed=0, dtype=dtype)
    text = torch.randn(8, model.config.text_dim, generator=torch.Generator().manual_seed(1))
    gen.set_conditioning(text)
    counted: list[Counter] = []
    original = dit._run_block

    def run(block, x, e0, rope, keys, text_kv, frames):
        memory = gen.memory
        denoising = memory._pass is not None and not memory._pass[2]  # not a committing (context) pass
        if not counted and memory.steady and denoising and block is model.blocks[0]:
            with _Counting() as mode:
                out = original(block, x, e0, rope, keys, text_kv, frames)
            counted.append(mode.ops)
            if mode.allocations:
                mode.ops[ALLOCATIONS] = mode.allocations
            return out
        return original(block, x, e0, rope, keys, text_kv, frames)

    dit._run_block = run
    try:
        for _ in range(chunks):
            gen.next_chunk()
            if counted:
                break
    finally:
        dit._run_block = original
    if not counted:
        raise RuntimeError(f"no steady denoising pass in {chunks} chunks")
    return counted[0]


def total(ops: Counter) -> int:
    """Ops that launch kernels: all but the allocations."""
    return sum(n for op, n in ops.items() if op != ALLOCATIONS)


def table(counts: dict[str, Counter]) -> str:
    """A markdown table: one row per op, one column per run (e.g. float32, bf16), totals last."""
    names = sorted({op for c in counts.values() for op in c} - {ALLOCATIONS},
                   key=lambda op: (-sum(c[op] for c in counts.values()), op))
    if any(c[ALLOCATIONS] for c in counts.values()):
        names.append(ALLOCATIONS)
    cols = list(counts)
    lines = ["| op | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {op} | " + " | ".join(str(counts[c][op]) for c in cols) + " |" for op in names]
    lines.append("| **total** | " + " | ".join(f"**{total(counts[c])}**" for c in cols) + " |")
    return "\n".join(lines)
