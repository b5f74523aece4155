"""User LoRAs: where they come from (--lora FILE[:SCALE], --lora-dir, MEMFLOW_LORA_DIR, timelines), their
checks before any weights load, and the merge into the DiT.

`merge_loras(model, [(lora_file, strength), ...])` adds `strength · scale · up @ down` (and the full `.diff` /
`.diff_b` deltas times strength) to the weights, in float32 on the model's device, each parameter read and
written once for all LoRAs together, then cast back to the model's dtype. Reading and checking a file is
lora_files.py (`inspect_lora`), whose names are re-exported here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from memflow_cli.errors import InputError
from memflow_cli.weights.hub import sha256_file
from memflow_cli.weights.lora_files import LORA_DIR_ENV, LoraError, LoraFile, Target, TensorFile, inspect_lora


# ------------------------------------------------------------------------------------------------
# Merging


def merge_loras(model: torch.nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> int:
    """Add every LoRA's delta, times its strength, to `model`'s weights; returns the parameters changed.

    Each parameter is read once, all contributions are added in float32 on its device (the low-rank ones
    of all files in a single matmul: [out, Σr] @ [Σr, in]), and it is written back once in its dtype. A
    strength of 0 contributes nothing, so the weights stay bit-identical.
    """
    params = dict(model.named_parameters())
    contributions: dict[str, list[tuple[Target, TensorFile, float]]] = {}
    sources = []
    for lora, strength in loras:
        lora.check()
        if strength == 0:
            continue
        source = TensorFile(lora.path)
        sources.append(source)
        for target in lora.targets:
            if target.param not in params:
                raise LoraError(f"{lora.path}: the model has no parameter {target.param}")
            contributions.setdefault(target.param, []).append((target, source, float(strength)))
    try:
        with torch.no_grad():
            _Workspace(params, contributions).merge_all()
    finally:
        for source in sources:
            source.close()
    return len(contributions)


class _Workspace:
    """Float32 buffers sized once for the largest parameter and the largest stacked rank, then reused.

    Reuse matters: a fresh buffer per layer means fresh pages from the OS for every one of the ~300 layers
    (on some VMs each first touch is slow enough to turn seconds into minutes), and on a GPU it keeps the
    allocator from fragmenting while the model is already resident.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], contributions: dict):
        self.params, self.contributions = params, contributions
        rows = cols = rank = scratch = 0
        device = None
        for name, items in contributions.items():
            p = params[name]
            device = p.device
            ranks = sum(t.rank for t, _, _ in items if t.kind == "lora")
            if ranks:
                rows, cols, rank = max(rows, p.shape[0]), max(cols, p[0].numel()), max(rank, ranks)
            if p.dtype != torch.float32:
                scratch = max(scratch, p.numel())
        self.ups = torch.empty(rows, rank, device=device) if rank else None
        self.downs = torch.empty(rank, cols, device=device) if rank else None
        self.scratch = torch.empty(scratch, device=device) if scratch else None

    def merge_all(self) -> None:
        for name, items in self.contributions.items():
            self.merge(self.params[name], items)

    def merge(self, param: torch.Tensor, items: list[tuple[Target, TensorFile, float]]) -> None:
        if param.dtype == torch.float32:
            work = param.data
        else:
            work = self.scratch[: param.numel()].view(param.shape)
            work.copy_(param.data)
        rows, cols, used = work.shape[0], work[0].numel(), 0
        for target, source, strength in items:
            if target.kind == "lora":
                down, up = (source.get(k) for k in target.keys)
                r = down.shape[0]
                self.downs[used: used + r, :cols].copy_(down.reshape(r, cols))
                ups = self.ups[:rows, used: used + r]
                ups.copy_(up.reshape(rows, r))
                ups.mul_(strength * target.scale)
                used += r
            else:
                work.add_(source.get(target.keys[0]).to(work.device, torch.float32), alpha=strength)
        if used:
            work.view(rows, cols).addmm_(self.ups[:rows, :used], self.downs[:used, :cols])
        if work is not param.data:
            param.data.copy_(work)
        if not bool(torch.isfinite(param.data).all()):  # one check per merged tensor, at load: never per step
            raise LoraError(self._non_finite(param, items))

    @staticmethod
    def _non_finite(param: torch.Tensor, items: list[tuple[Target, TensorFile, float]]) -> str:
        """Which file made a merged weight NaN or infinite: one whose tensors are, else the scales' overflow."""
        name = items[0][0].param
        files = []
        for target, source, strength in items:
            if any(not bool(torch.isfinite(source.get(k).float()).all()) for k in target.keys):
                return (f"{source.path}: holds NaN or infinite values (in {', '.join(target.keys)}); merging it "
                        f"would make {name} non-finite and the render black")
            files.append(f"{source.path} at scale {strength:g}")
        return (f"{'; '.join(files)}: merging makes {name} non-finite (values too large for "
                f"{str(param.dtype)[6:]}, or NaN in the base weights); lower the scale, or check the files")


# ------------------------------------------------------------------------------------------------
# Where user LoRAs come from: --lora FILE[:SCALE], --lora-dir, MEMFLOW_LORA_DIR


def parse_lora_option(text: str) -> tuple[Path, float]:
    """`FILE` or `FILE:SCALE` (scale 1 when omitted). A Windows drive colon is not mistaken for a scale."""
    name, scale = text, 1.0
    if ":" in text:
        head, tail = text.rsplit(":", 1)
        try:
            scale = float(tail)
            name = head
        except ValueError:
            pass
    if not name:
        raise LoraError(f"--lora {text!r}: expected FILE or FILE:SCALE")
    from memflow_cli.limits import check_lora_scale

    try:
        scale = check_lora_scale(scale, f"--lora {text!r}")
    except InputError as exc:
        raise LoraError(str(exc)) from None
    from memflow_cli.input_files import check_input_file

    path = check_input_file(Path(name).expanduser(), "LoRA file", error=LoraError, shown=f"--lora {text!r}: {name}")
    return path, scale


def lora_search_dirs(cli_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Folders to resolve a timeline's LoRA file names in: --lora-dir (in order), then $MEMFLOW_LORA_DIR."""
    dirs = [Path(d).expanduser() for d in cli_dirs]
    env = os.environ.get(LORA_DIR_ENV, "")
    dirs += [Path(d).expanduser() for d in env.split(os.pathsep) if d]
    return dirs


def check_sha256(lora: LoraFile, expected: str | None, where: str) -> None:
    if expected is None:
        return
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", expected.strip()):
        raise LoraError(f"{where}.sha256: expected 64 hex digits, got {expected!r}")
    actual = lora.sha256 or sha256_file(lora.path)
    if actual.lower() != expected.strip().lower():
        raise LoraError(f"{where}: {lora.path} has sha256 {actual}, the timeline expects {expected.strip().lower()}; "
                        "it is another file (or another version) of that name")


# ------------------------------------------------------------------------------------------------
# A render's LoRAs: checked before any weights load, listed in the manifest


@dataclass(frozen=True)
class UserLora:
    """A LoRA file a render will merge, with its strength and where it was asked for."""

    file: LoraFile
    scale: float
    merge_mode: str | None = None
    where: str = ""

    @property
    def key(self) -> tuple:
        return (str(self.file.path), self.file.sha256, self.scale)

    def manifest(self) -> dict:
        f = self.file
        return {"path": str(f.path), "sha256": f.sha256, "scale": self.scale, "format": f.format,
                "ranks": f.ranks, "alphas": f.alphas, "modules": f.modules, "merge_mode": self.merge_mode,
                "from": self.where}


def prepare_loras(specs: Sequence, config) -> tuple[list[UserLora], list[str]]:
    """Inspect and check every requested LoRA (timeline.LoraSpec-like: path, scale, merge_mode, sha256, where);
    returns the LoRAs in merge order and the warnings to show.

    `config` is the DiT config or a function returning it: what needs no model (a readable file with LoRA
    names, not for another network, the right sha256) is checked for every file before it is called, so a
    bad file is refused before the weights are even looked up (or downloaded).
    """
    first = []
    for spec in specs:
        where = getattr(spec, "where", "") or "--lora"
        lora = inspect_lora(spec.path, None)
        if lora.problem and not lora.for_other_size:
            raise LoraError(f"{where}: {lora.error()}")
        check_sha256(lora, getattr(spec, "sha256", None), where)
        first.append((spec, where, lora.sha256))
    config = config() if callable(config) else config
    loras, warnings = [], []
    for spec, where, sha256 in first:
        lora = inspect_lora(spec.path, config, sha256=sha256)
        message = lora.error()
        if message:
            raise LoraError(f"{where}: {message}")
        mode = getattr(spec, "merge_mode", None)
        if mode == "runtime_peft":
            warnings.append(f"{where}: merge mode runtime_peft is merged into the weights at load "
                            "(offline there is no live strength change)")
        elif mode not in (None, "permanent_merge"):
            warnings.append(f"{where}: unknown merge mode {mode!r}; merged into the weights at load")
        warnings.extend(lora.warnings)
        from memflow_cli.limits import check_lora_scale

        try:
            scale = check_lora_scale(spec.scale, f"{where}: scale")
        except InputError as exc:
            raise LoraError(str(exc)) from None
        loras.append(UserLora(lora, scale, mode, where))
    return loras, warnings
