"""Reading weight files safely and fitting them to our modules.

Every container the real releases use goes through `read_state_dict`: torch pickles are opened with
`weights_only=True` (a checkpoint from the internet must never run code), safetensors through the
safetensors library. `assign_state_dict` is a strict load that explains itself: missing, unexpected
and mis-shaped tensors are listed by name instead of producing a silently half-initialised model.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch

from memflow_cli.errors import CheckpointError

# Prefixes that training wrappers put in front of parameter names (FSDP, the diffusion wrapper, peft).
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "base_model.model.", "model.")


def read_state_dict(path: str | os.PathLike) -> dict:
    """Load a `.pt`/`.pth` pickle (weights only) or a `.safetensors` file onto the CPU.

    Returns the raw top-level object for pickles (usually a dict, possibly nested) and a flat
    dict of tensors for safetensors. Raises CheckpointError naming the file on any problem.
    """
    from memflow_cli.input_files import check_input_file

    path = check_input_file(path, "weight file", error=CheckpointError)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():  # torch's "please file an issue" about pickle protocols means nothing to a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{path}: cannot read this weight file ({_first_line(exc)}). It may be truncated or "
                                  "not a checkpoint; delete it and download it again.") from None
        raise CheckpointError(_refused_pickle(path, str(exc))) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read this weight file ({reason}). It may be truncated or not a "
            "checkpoint; delete it and download it again."
        ) from exc
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read this weight file ({type(exc).__name__}: {exc})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refused_pickle(path: Path, message: str) -> str:
    """Why torch's weights-only unpickler refused a file, without torch's advice to turn the protection off."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    if match:
        return (f"{path}: contains code (a call to {match.group(1)}) and was refused for safety; a weight file must "
                "hold only tensors. Use the official weights or a .safetensors file.")
    return (f"{path}: contains code or objects other than tensors and was refused for safety; a weight file must "
            "hold only tensors. Use the official weights or a .safetensors file.")


def _can_mmap(path: Path) -> bool:
    # mmap avoids a second in-memory copy of multi-GB files; only the zip format supports it.
    return zipfile.is_zipfile(path)


def strip_prefixes(state: Mapping[str, torch.Tensor], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict:
    """Remove known wrapper prefixes from every key (each prefix wherever it leads a key)."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key.replace("._fsdp_wrapped_module", "")] = value
    return out


def _few(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def assign_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Strictly copy `state` into `module`'s parameters and buffers (casting to their dtype).

    Any missing, unexpected or mis-shaped tensor is an error that names a few of them and the file.
    """
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    misshaped = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own.keys() & state.keys()
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_few(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors: {_few(misshaped, 3)}")
    if problems:
        raise CheckpointError(f"{source}: does not fit the model — " + "; ".join(problems))
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key].to(target.dtype))


def read_flat_state(path, what: str) -> dict:
    """A plain state-dict file (T5, VAE) as {name: tensor}, FSDP prefixes removed."""
    state = read_state_dict(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors for the {what}")
    return strip_prefixes(state, ("_fsdp_wrapped_module.",))


def load_flat_module(path, what: str, config_from_state, build, device="cpu", dtype=torch.float32):
    """Load a plain state-dict file (T5, VAE) into a module whose sizes are inferred from the tensors.

    `config_from_state(state)` raises KeyError naming a tensor it needs; `build(config)` makes the module,
    which is created on the meta device so a multi-GB file is never held twice in memory.
    """
    state = read_flat_state(path, what)
    try:
        config = config_from_state(state)
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a {what} checkpoint (no {exc.args[0]})") from None
    with torch.device("meta"):
        module = build(config)
    module = module.to(dtype).to_empty(device=device)
    assign_state_dict(module, state, path)
    return module.eval().requires_grad_(False)


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
