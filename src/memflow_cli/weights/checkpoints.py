"""The DiT's checkpoints and LoRA pairs: MemFlow's base.pt layout, LoRA merging, and `load_dit`.

The safe reading itself (weights-only pickles, safetensors, strict assignment) is model/weights.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from memflow_cli.errors import CheckpointError
from memflow_cli.model.weights import read_state_dict, strip_prefixes, _few, assign_state_dict


# ------------------------------------------------------------------------------------------- the DiT


def generator_state_dict(raw: object, source: str | os.PathLike, use_ema: bool = False) -> dict:
    """The DiT parameters inside a MemFlow `base.pt` (or a flat state dict), wrapper prefixes removed."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(raw).__name__}")
    entry = "generator_ema" if use_ema else "generator"
    if entry in raw:
        raw = raw[entry]
    elif use_ema:
        raise CheckpointError(f"{source}: has no 'generator_ema' entry (keys: {_few(map(str, raw))})")
    elif "model" in raw and isinstance(raw["model"], Mapping):
        raw = raw["model"]
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: contains no tensors under a generator entry (keys: {_few(map(str, raw))})")
    return strip_prefixes(tensors)


LORA_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_A.default.weight": "A", ".lora_B.default.weight": "B"}


def lora_pairs(raw: object, source: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"A": [r, in], "B": [out, r]}} from a `lora.pt` (`generator_lora` or raw peft dict)."""
    if isinstance(raw, Mapping) and "generator_lora" in raw:
        raw = raw["generator_lora"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: expected a dict of LoRA tensors, found {type(raw).__name__}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    stray = []
    for key, value in strip_prefixes({k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}).items():
        for suffix, part in LORA_SUFFIXES.items():
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            stray.append(key)
    if stray:
        raise CheckpointError(f"{source}: tensors that are not LoRA A/B weights: {_few(stray)}")
    incomplete = [name for name, p in pairs.items() if set(p) != {"A", "B"}]
    if incomplete:
        raise CheckpointError(f"{source}: LoRA modules missing their A or B half: {_few(incomplete)}")
    if not pairs:
        raise CheckpointError(f"{source}: contains no LoRA weights")
    return pairs


def merge_lora(model: torch.nn.Module, pairs: Mapping[str, Mapping[str, torch.Tensor]], source, alpha: float | None = None) -> int:
    """W += (alpha / rank) · B @ A for every pair, computed in float32. Every pair must find its Linear.

    `alpha=None` means alpha = rank (scale 1), the released MemFlow adapter (r = alpha = 256).
    Returns the number of merged layers.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in pairs if not isinstance(modules.get(name), torch.nn.Linear)]
    if unknown:
        raise CheckpointError(f"{source}: LoRA weights for layers the model does not have: {_few(unknown)}")
    misfit = []
    for name, p in pairs.items():
        linear = modules[name]
        a, b = p["A"], p["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != linear.in_features or b.shape[0] != linear.out_features or a.shape[0] != b.shape[1]:
            misfit.append(f"{name} (A {tuple(a.shape)}, B {tuple(b.shape)}, layer {linear.out_features}x{linear.in_features})")
    if misfit:
        raise CheckpointError(f"{source}: mis-shaped LoRA weights: {_few(misfit, 3)}")
    with torch.no_grad():
        for name, p in pairs.items():
            linear = modules[name]
            a, b = p["A"].to(linear.weight.device, torch.float32), p["B"].to(linear.weight.device, torch.float32)
            rank = a.shape[0]
            scale = (rank if alpha is None else alpha) / rank
            merged = linear.weight.float() + scale * (b @ a)
            linear.weight.copy_(merged.to(linear.weight.dtype))
            if not bool(torch.isfinite(linear.weight).all()):  # one check per merged layer, at load only
                raise CheckpointError(f"{source}: merging this LoRA makes {name}.weight non-finite (NaN or infinite "
                                      f"values in the file, or values too large for {str(linear.weight.dtype)[6:]}); "
                                      "the render would be black. Delete the file and download it again.")
    return len(pairs)


def non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity (one `isfinite().all()` each)."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_dit(
    config,
    base_path: str | os.PathLike,
    lora_path: str | os.PathLike | None = None,
    *,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    lora_alpha: float | None = None,
    use_ema: bool = False,
):
    """Build the causal DiT from a config (DiTConfig, preset name or config file) and load its weights.

    The model is built directly in `dtype` on `device` (no float32 copy of the full model). The base weights
    load strictly; the LoRA (if any) is merged layer by layer in float32 into the already-rounded weights,
    W = round(round(W) + scale·B@A), which is what the reference's un-merged bf16 adapters compute most
    closely. Inference then runs plain Linear layers.
    """
    from memflow_cli.model.dit import DiTConfig, build_dit

    if isinstance(config, (str, os.PathLike)) and Path(config).suffix == ".json":
        config = DiTConfig.from_file(config)
    elif isinstance(config, str):
        config = DiTConfig.preset(config)
    model = build_dit(config, device=device, dtype=dtype)
    state = generator_state_dict(read_state_dict(base_path), base_path, use_ema=use_ema)
    assign_state_dict(model, state, base_path)
    del state
    bad = non_finite(model.named_parameters())  # NaN weights render a black video without any error
    if bad:
        raise CheckpointError(f"{base_path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({_few(bad)}) "
                              f"once loaded in {str(dtype)[6:]}; the render would be black. The file is damaged: "
                              "delete it and download it again.")
    if lora_path is not None:
        merge_lora(model, lora_pairs(read_state_dict(lora_path), lora_path), lora_path, alpha=lora_alpha)
    return model
