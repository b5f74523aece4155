"""Reading weight files safely and fitting them to our modules (the part every model loader shares).

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
