"""`--compile`: the DiT's block through `torch.compile`, for the passes that repeat.

What is compiled. One function, `model.dit._run_block(block, x, mod, rope, keys, text_kv, frames)`, with the
block as an argument: the 30 blocks share one graph (their weights are its inputs). It runs for the steady
state's passes only — from chunk 7 on, when the key set is the whole fixed KV buffer (memory.py) — where
every shape and every Python value the block reads is the same from pass to pass: denoising passes and
context passes, staging or not, all hit the same graph, so there is one compilation and no recompilation
afterwards. The warm-up chunks (growing key sets) and the re-cache after a prompt switch are one-offs and
run eager: compiling them would cost more than it saves.

The block's forward has no graph break (`fullgraph=True` makes one an error): the key set is assembled by
index writes into fixed buffers, with index tensors planned outside the block.

On CUDA the compiled block is replayed as CUDA graphs (`mode="reduce-overhead"`): the KV buffers, the
staging buffers and the text cache are marked as static addresses (they are written in place, never
reallocated), so the in-place writes do not keep the graphs from being captured. On the CPU, inductor's C++
backend compiles it (`mode=None`).

Eager fallback. If compiling fails (no C++ compiler, no Triton, an unsupported op on some backend), the
failure is reported once and the block runs eager from then on: a block's writes depend only on its
inputs, so running the failed call again eagerly gives the same state.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch._dynamo.utils import counters  # graphs compiled so far (read around every compiled call)

from memflow_cli.model.dit import CausalDiT, _run_block

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_mode(device: torch.device | str) -> str:
    """CUDA graphs on CUDA (the steady state's launches are replayed); plain inductor elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


@dataclass
class CompileStats:
    """What compiling did: for reports (bench, render summary) and tests."""

    mode: str
    backend: str
    compiled_calls: int = 0  # block calls that ran the compiled graph
    compile_seconds: float = 0.0  # wall time of the calls that compiled (tracing + codegen + the call itself)
    compilations: int = 0  # calls during which dynamo compiled a graph
    fallback: str | None = None  # why the block runs eager, after a failure

    def to_dict(self) -> dict:
        return {"mode": self.mode, "backend": self.backend, "compiled_calls": self.compiled_calls,
                "compile_seconds": round(self.compile_seconds, 3), "compilations": self.compilations,
                "fallback": self.fallback}


def _compiles_so_far() -> int:
    return int(counters["stats"]["unique_graphs"])


class CompiledBlock:
    """The compiled `_run_block`, with the eager fallback and the compile bookkeeping."""

    def __init__(self, fn: Callable, stats: CompileStats, on_fallback: Callable[[str], None] | None):
        self._fn = fn
        self.stats = stats
        self._on_fallback = on_fallback
        self._cudagraphs = stats.mode == "reduce-overhead"

    def begin_pass(self) -> None:
        """Called once before a compiled pass: tells CUDA-graph trees that the previous pass's outputs are
        consumed (each pass is one step of the graph tree)."""
        if self._cudagraphs and self.stats.fallback is None:
            torch.compiler.cudagraph_mark_step_begin()

    def __call__(self, block, x, mod, rope, keys, text_kv, frames):
        if self.stats.fallback is not None:
            return _run_block(block, x, mod, rope, keys, text_kv, frames)
        before = _compiles_so_far()
        started = time.perf_counter()
        try:
            out = self._fn(block, x, mod, rope, keys, text_kv, frames)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back; see the module doc
            if not _is_compile_failure(exc):
                raise
            self.stats.fallback = _reason(exc)
            if self._on_fallback is not None:
                self._on_fallback(self.stats.fallback)
            return _run_block(block, x, mod, rope, keys, text_kv, frames)
        self.stats.compiled_calls += 1
        if _compiles_so_far() != before:
            self.stats.compilations += 1
            self.stats.compile_seconds += time.perf_counter() - started
        return out


def _reason(exc: BaseException) -> str:
    """The root cause of a compiler failure in one line (the wrappers' own messages say little)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _is_compile_failure(exc: Exception) -> bool:
    """Failures of the compiler stack (dynamo, inductor, the C++/Triton toolchain, graph capture)."""
    from torch._dynamo.exc import TorchDynamoException

    if isinstance(exc, TorchDynamoException):
        return True
    try:
        from torch._inductor.exc import InductorError

        if isinstance(exc, InductorError):
            return True
    except ImportError:
        pass
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}".lower()
    return any(word in text for word in ("dynamo", "inductor", "triton", "cudagraph", "cuda graph", "compile"))


def _mark_static(memory) -> None:
    """KV, staging and text buffers never move: tell dynamo, so CUDA graphs may write them in place."""
    mark = torch._dynamo.mark_static_address
    for layer in memory.layers:
        for t in (layer.k, layer.v):
            mark(t)
    for t in (memory.k, memory.v, memory.bank.staging_k, memory.bank.staging_v, memory.text.keys, memory.text.values):
        mark(t)
    for index in range(memory.text.keys.shape[0]):
        for t in memory.text.layer(index):
            mark(t)


def compile_blocks(model: CausalDiT, *, mode: str | None = None, backend: str | Callable = "inductor",
                   on_fallback: Callable[[str], None] | None = None) -> CompileStats:
    """Compile `model`'s block for the steady state's passes (idempotent: a second call keeps the first).

    `mode`: a torch.compile mode ("default" = none); None picks `default_mode` for the model's device.
    `backend`: "inductor" (the real one); "eager"/"aot_eager" trace without code generation (tests).
    """
    existing = model.compiled_block
    if isinstance(existing, CompiledBlock):
        return existing.stats
    device = next(model.parameters()).device
    mode = mode or default_mode(device)
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    # One graph per geometry and stream layout: a batch of renders at several resolutions or with and
    # without the bank needs more than dynamo's default of 8 before it would silently fall back to eager.
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 64)
    stats = CompileStats(mode=mode, backend=backend if isinstance(backend, str) else getattr(backend, "__name__", "custom"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = torch.compile(_run_block, backend=backend, mode=None if mode == "default" else mode,
                               dynamic=False, fullgraph=True)
    except Exception as exc:  # noqa: BLE001 - e.g. a Python version dynamo does not support: run eager
        stats.fallback = _reason(exc)
        if on_fallback is not None:
            on_fallback(stats.fallback)
        fn = _run_block
    model.compiled_block = CompiledBlock(fn, stats, on_fallback)
    return stats


def uncompile(model: CausalDiT) -> None:
    """Back to eager blocks."""
    model.compiled_block = None


def prepare_memory(model: CausalDiT, memory) -> None:
    """Before a stream runs a compiled model: mark its memory's buffers as static (CUDA graphs)."""
    block = model.compiled_block
    if isinstance(block, CompiledBlock) and block.stats.mode == "reduce-overhead":
        _mark_static(memory)
