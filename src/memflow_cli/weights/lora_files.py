"""LoRA files for the Wan2.1 DiT: read any common layout, map its keys to our parameters, check the shapes.

`inspect_lora(path, config)` reads only the file's key names and shapes (a safetensors header; a weights-only
pickle), detects the format from the keys, maps every key to one of our parameter names and checks the shapes.
The result (`LoraFile`) knows its targets, ranks, alphas and every key that would not be used;
`LoraFile.check()` turns the problems into one `LoraError` (exit code 2). Merging is loras.py.

Formats (the file name means nothing; see the README's "LoRAs" section):
  kohya / musubi-tuner    lora_unet_blocks_0_self_attn_q.lora_down.weight / .lora_up.weight / .alpha
  ComfyUI lora_A/B        diffusion_model.blocks.0.self_attn.q.lora_A.weight / .lora_B.weight (+ .alpha)
  ComfyUI lora_down/up    diffusion_model.blocks.0.self_attn.q.lora_down.weight (+ .alpha, .diff, .diff_b)
  DiffSynth / PEFT        blocks.0.self_attn.q.lora_A[.default].weight (also under base_model.model.)
  diffusers / PEFT        transformer.blocks.0.attn1.to_q.lora_A.weight (names mapped to Wan's)
Scale: alpha / rank when the file has an `.alpha` for the module, else 1 (kohya's own convention: a
missing or zero alpha means alpha = rank). Rank is `down.shape[0]`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from memflow_cli.errors import CheckpointError, InputError, counted
from memflow_cli.weights.hub import sha256_file

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
LORA_DIR_ENV = "MEMFLOW_LORA_DIR"
MERGE_MODES = ("permanent_merge", "runtime_peft")


class LoraError(InputError):
    """A user LoRA cannot be used as given (unreadable, another model, keys that match nothing)."""


# ------------------------------------------------------------------------------------------------
# Key grammar

# Suffix -> role. Order matters only where one suffix ends another (none do today).
ROLE_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
)
# Adapters of another kind: named, so the error says what the file is instead of "unmatched".
UNSUPPORTED_SUFFIXES = {
    ".hada_w1_a": "LyCORIS LoHa", ".hada_w1_b": "LyCORIS LoHa", ".hada_w2_a": "LyCORIS LoHa", ".hada_w2_b": "LyCORIS LoHa",
    ".hada_t1": "LyCORIS LoHa", ".hada_t2": "LyCORIS LoHa",
    ".lokr_w1": "LyCORIS LoKr", ".lokr_w2": "LyCORIS LoKr", ".lokr_w1_a": "LyCORIS LoKr", ".lokr_w1_b": "LyCORIS LoKr",
    ".lokr_w2_a": "LyCORIS LoKr", ".lokr_w2_b": "LyCORIS LoKr", ".lokr_t2": "LyCORIS LoKr",
    ".lora_mid.weight": "LoCon with a Tucker middle", ".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA",
    ".lora_B.bias": "PEFT lora_bias", ".lora_B.default.bias": "PEFT lora_bias",
}
# Leading wrappers -> the naming family they reveal. Longest first.
PREFIXES = (
    ("model.diffusion_model.", "comfyui"),
    ("diffusion_model.", "comfyui"),
    ("base_model.model.", "peft"),
    ("transformer.", "diffusers"),
    ("lora_unet_", "kohya"),
    ("model.", "peft"),
)
# diffusers' Wan names -> ours (applied to the dotted module path of a diffusers-named key).
DIFFUSERS_NAMES = (
    (r"\.attn1\.to_out\.0(?=\.|$)", ".self_attn.o"),
    (r"\.attn2\.to_out\.0(?=\.|$)", ".cross_attn.o"),
    (r"\.attn1\.to_([qkv])(?=\.|$)", r".self_attn.\1"),
    (r"\.attn2\.to_([qkv])(?=\.|$)", r".cross_attn.\1"),
    (r"\.attn1\.norm_([qk])(?=\.|$)", r".self_attn.norm_\1"),
    (r"\.attn2\.norm_([qk])(?=\.|$)", r".cross_attn.norm_\1"),
    (r"\.attn2\.add_k_proj(?=\.|$)", ".cross_attn.k_img"),
    (r"\.attn2\.add_v_proj(?=\.|$)", ".cross_attn.v_img"),
    (r"\.attn2\.norm_added_k(?=\.|$)", ".cross_attn.norm_k_img"),
    (r"\.ffn\.net\.0\.proj(?=\.|$)", ".ffn.0"),
    (r"\.ffn\.net\.2(?=\.|$)", ".ffn.2"),
    (r"^condition_embedder\.text_embedder\.linear_1(?=\.|$)", "text_embedding.0"),
    (r"^condition_embedder\.text_embedder\.linear_2(?=\.|$)", "text_embedding.2"),
    (r"^condition_embedder\.time_embedder\.linear_1(?=\.|$)", "time_embedding.0"),
    (r"^condition_embedder\.time_embedder\.linear_2(?=\.|$)", "time_embedding.2"),
    (r"^condition_embedder\.time_proj(?=\.|$)", "time_projection.1"),
    (r"^condition_embedder\.image_embedder(?=\.|$)", "img_emb"),
    (r"^proj_out(?=\.|$)", "head.head"),
    (r"^(blocks\.\d+)\.norm2(?=\.|$)", r"\1.NORM3"),  # diffusers swaps norm2 and norm3 (the affine one)
    (r"^(blocks\.\d+)\.norm3(?=\.|$)", r"\1.norm2"),
    (r"^(blocks\.\d+)\.NORM3", r"\1.norm3"),
    (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"^scale_shift_table$", "head.modulation"),
)
DIFFUSERS_TOKENS = re.compile(r"(^|\.)(attn1|attn2|ffn\.net|condition_embedder|proj_out|scale_shift_table)(\.|$)")
# Parts of Wan's image-to-video model; a text-to-video model has nothing to merge them into.
IMAGE_PARTS = re.compile(r"(^|\.)(k_img|v_img|norm_k_img|img_emb)(\.|$)")
BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")

FORMAT_NAMES = {
    "kohya": "kohya / musubi-tuner (lora_unet_…, lora_down/lora_up + alpha)",
    "comfyui-lora_A": "ComfyUI (diffusion_model.…, lora_A/lora_B)",
    "comfyui-lora_down": "ComfyUI (diffusion_model.…, lora_down/lora_up)",
    "comfyui-diff": "ComfyUI full deltas (diffusion_model.….diff / .diff_b)",
    "peft": "DiffSynth / PEFT (blocks.…, lora_A/lora_B)",
    "diffusers": "diffusers / PEFT (transformer.…attn1.to_q…, lora_A/lora_B)",
}
# Wan transformer widths, to say which model a LoRA of another size was trained for.
WAN_WIDTHS = {1536: "Wan2.1 / Wan2.2 1.3B", 3072: "Wan2.2 TI2V-5B", 5120: "Wan2.1 / Wan2.2 14B"}
# Key shapes of other networks: (pattern, what it is).
OTHER_NETWORKS = (
    (re.compile(r"^(lora_te\d?_|text_encoder(_\d)?\.|te\d?\.|text_model\.|lora_te_text_model)"),
     "a Stable Diffusion text encoder (CLIP); Wan LoRAs change only the video transformer"),
    (re.compile(r"(^|\.|_)(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)(\.|_)"),
     "a Stable Diffusion / SDXL UNet"),
    (re.compile(r"(^|\.|_)(double_blocks|single_blocks|single_transformer_blocks|transformer_blocks)(\.|_)"),
     "a Flux / HunyuanVideo / SD3-style transformer"),
)


@dataclass(frozen=True)
class Target:
    """One parameter a LoRA file changes, and the file keys that make its delta."""

    param: str  # our parameter name, e.g. blocks.0.self_attn.q.weight
    kind: str  # "lora" (up @ down), "diff" (a full delta)
    keys: tuple[str, ...]  # lora: (down, up); diff: (delta,)
    rank: int | None = None
    alpha: float | None = None  # as written in the file; None when absent

    @property
    def scale(self) -> float:
        """alpha / rank for a LoRA pair (1 without alpha, or with kohya's "0 = rank"); 1 for full deltas."""
        if self.kind != "lora" or self.alpha is None or self.alpha == 0:
            return 1.0
        return self.alpha / self.rank

    @property
    def module(self) -> str:
        return self.param.rsplit(".", 1)[0] if self.param.endswith((".weight", ".bias")) else self.param


@dataclass
class LoraFile:
    """What a LoRA file would do to the model, read from names and shapes (and the one-number alphas)."""

    path: Path
    format: str  # key of FORMAT_NAMES ("" when nothing was recognised)
    tensor_count: int
    targets: list[Target] = field(default_factory=list)
    ignored_image_keys: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # "key (why)"
    problem: str | None = None  # a reason the whole file is unusable (garbage, other model or network)
    sha256: str | None = None
    for_other_size: bool = False  # the problem is the model size (depends on the config, not on the file alone)
    alpha_source: str | None = None  # PEFT's adapter_config.json when the alpha came from there
    # read from the file's own names and shapes, whether or not they fit the model: shown for a refused file too
    file_ranks: list[int] = field(default_factory=list)
    file_alphas: list[float] = field(default_factory=list)

    # -- summaries ---------------------------------------------------------------------------------

    @property
    def ranks(self) -> list[int]:
        """Of the layers it changes; for a file that fits nothing (refused), what its own tensors say."""
        merged = sorted({t.rank for t in self.targets if t.rank is not None})
        return merged if self.targets else list(self.file_ranks)

    @property
    def alphas(self) -> list[float]:
        merged = sorted({t.alpha for t in self.targets if t.alpha is not None})
        return merged if self.targets else list(self.file_alphas)

    @property
    def scales(self) -> list[float]:
        return sorted({round(t.scale, 6) for t in self.targets if t.kind == "lora"})

    @property
    def modules(self) -> int:
        """Distinct layers (or parameters without a layer, like a modulation) this file changes."""
        return len({t.module for t in self.targets})

    def target_groups(self) -> dict[str, int]:
        """Targets with the block index folded: {"blocks.*.self_attn.q.weight (lora)": 30, ...}."""
        counts = Counter(f"{BLOCK_INDEX.sub('blocks.*.', t.param)} ({t.kind})" for t in self.targets)
        return dict(sorted(counts.items()))

    @property
    def warnings(self) -> list[str]:
        if not self.ignored_image_keys:
            return []
        return [f"{self.path}: {len(self.ignored_image_keys)} image-conditioning tensors of an image-to-video LoRA "
                f"are ignored for this text-to-video model ({_few(self.ignored_image_keys, 3)})"]

    def error(self) -> str | None:
        """Why render would refuse this file (None when it can be merged)."""
        if self.problem:
            return f"{self.path}: {self.problem}"
        if self.unmatched:
            looks = FORMAT_NAMES.get(self.format, "an unrecognised layout")
            return (f"{self.path}: {counted(len(self.unmatched), 'key')} fit{'s' if len(self.unmatched) == 1 else ''} nothing in the Wan2.1 DiT and would be lost (the file "
                    f"looks like {looks}): {_few(self.unmatched, 4)}")
        if not self.targets:
            return f"{self.path}: contains no LoRA weights for the video transformer"
        return None

    def check(self) -> "LoraFile":
        message = self.error()
        if message:
            raise LoraError(message)
        return self

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "format": self.format,
            "format_name": FORMAT_NAMES.get(self.format, self.format),
            "tensors": self.tensor_count,
            "ranks": self.ranks,
            "alphas": self.alphas,
            "alpha_source": self.alpha_source,
            "scales": self.scales,
            "modules": self.modules,
            "targets": self.target_groups(),
            "ignored_image_keys": len(self.ignored_image_keys),
            "unmatched": self.unmatched,
            "error": self.error(),
        }


def _few(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------
# Reading files: names and shapes first, data on demand


class TensorFile:
    """Key names and shapes of a weight file, with tensors read on demand (safetensors) or held (pickles)."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None
        self._tensors: dict[str, torch.Tensor] | None = None
        suffix = path.suffix.lower()
        from memflow_cli.input_files import check_input_file

        check_input_file(path, "LoRA file", error=LoraError)
        if suffix == ".safetensors":
            self.shapes = self._safetensors_header()
        elif suffix in PICKLE_SUFFIXES:
            self._tensors = self._pickle()
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        else:
            raise LoraError(f"{path}: expected a .safetensors LoRA (or .pt/.pth/.ckpt/.bin), found a {suffix or 'suffix-less'} file")

    def _safetensors_header(self) -> dict[str, tuple[int, ...]]:
        from safetensors import safe_open

        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            return {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
        except Exception as exc:  # safetensors raises its own error types for a bad header
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LoraError(f"{self.path}: not a readable safetensors file ({reason}); expected a LoRA file") from None

    def _pickle(self) -> dict[str, torch.Tensor]:
        from memflow_cli.model.weights import read_state_dict

        try:
            raw = read_state_dict(self.path)  # torch.load(weights_only=True): never runs code from the file
        except CheckpointError as exc:
            raise LoraError(str(exc)) from None
        return _flat_tensors(raw, self.path)

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        return self._handle.get_tensor(key)

    def close(self) -> None:
        self._handle = None
        self._tensors = None


def _flat_tensors(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a pickled LoRA: a flat dict, or one nested under a known training-checkpoint entry."""
    if not isinstance(raw, Mapping):
        raise LoraError(f"{path}: expected a dict of LoRA tensors, found {type(raw).__name__}")
    for entry in ("generator_lora", "state_dict", "lora", "module"):
        if isinstance(raw.get(entry), Mapping):
            raw = raw[entry]
            break
    tensors = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        nested = [str(k) for k, v in raw.items() if isinstance(v, Mapping)]
        hint = f" (nested entries: {_few(nested, 4)})" if nested else ""
        raise LoraError(f"{path}: contains no tensors at the top level{hint}; expected a LoRA state dict")
    return tensors


file_sha256 = sha256_file  # the project's one streaming sha256 (hub.py)


# ------------------------------------------------------------------------------------------------
# The model's side: which parameters exist, with which shapes


@dataclass(frozen=True)
class ModelTargets:
    """Parameter shapes of a DiT config, and the kohya spelling (dots → underscores) of its layers."""

    dim: int
    num_layers: int
    params: dict[str, tuple[int, ...]]
    layers: frozenset[str]  # Linear (and the patch Conv3d) modules: what a low-rank pair may target
    kohya: dict[str, str]

    @classmethod
    def of(cls, config) -> "ModelTargets":
        from memflow_cli.model.dit import CausalDiT, DiTConfig

        config = config or DiTConfig()
        key = (config,)
        if key not in _TARGETS_CACHE:
            with torch.device("meta"):
                model = CausalDiT(config)
            params = {k: tuple(v.shape) for k, v in model.named_parameters()}
            layers = frozenset(n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d)))
            _TARGETS_CACHE[key] = cls(config.dim, config.num_layers, params, layers,
                                      {n.replace(".", "_"): n for n in layers})
        return _TARGETS_CACHE[key]


_TARGETS_CACHE: dict = {}


# ------------------------------------------------------------------------------------------------
# Inspection: format, mapping and checks from names and shapes


@dataclass
class _Parsed:
    key: str
    module: str  # our module name after prefix strip and renaming (may not exist)
    role: str
    family: str  # kohya / comfyui / peft / diffusers


def _split_role(key: str) -> tuple[str, str] | None:
    for suffix, role in ROLE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _parse(key: str, model: ModelTargets) -> _Parsed | None:
    split = _split_role(key)
    if split is None:
        return None
    module, role = split
    family = "peft"
    for prefix, fam in PREFIXES:
        if module.startswith(prefix):
            module, family = module[len(prefix):], fam
            break
    if family == "kohya":
        module = model.kohya.get(module, _kohya_guess(module))
    elif DIFFUSERS_TOKENS.search(module):
        family = "diffusers"
    if family == "diffusers":
        for pattern, replacement in DIFFUSERS_NAMES:
            module = re.sub(pattern, replacement, module)
    return _Parsed(key, module, role, family)


def _kohya_guess(name: str) -> str:
    """A dotted reading of an unknown kohya name, good enough to spot image parts and block indices."""
    name = re.sub(r"^blocks_(\d+)_", r"blocks.\1.", name)
    for part in ("self_attn", "cross_attn", "ffn", "img_emb", "text_embedding", "time_embedding", "time_projection", "head"):
        name = name.replace(f"{part}_", f"{part}.")
    return name


def _format_of(parsed: list[_Parsed]) -> str:
    if not parsed:
        return ""
    families = Counter(p.family for p in parsed)
    family = families.most_common(1)[0][0]
    roles = Counter(p.role for p in parsed if p.family == family)
    if family == "comfyui":
        lora_keys = [p.key for p in parsed if p.role in ("down", "up")]
        if not lora_keys:
            return "comfyui-diff"
        return "comfyui-lora_down" if any(".lora_down." in k for k in lora_keys) else "comfyui-lora_A"
    if family == "peft" and roles.get("down", 0) == 0 and roles.get("diff", 0) + roles.get("diff_b", 0):
        return "comfyui-diff"
    return family


def inspect_lora(path: str | os.PathLike, config=None, *, hash_file: bool = True, sha256: str | None = None) -> LoraFile:
    """Read a LoRA file's names and shapes and work out what it would change in a DiT of `config`.

    Raises LoraError only when the file cannot be read at all; every other problem is recorded in the
    result (`.error()`, `.check()`), so that `memflow lora inspect` can show it in full.
    """
    path = Path(path).expanduser()
    model = ModelTargets.of(config)
    source = TensorFile(path)
    try:
        result = _inspect(path, source, model)
    finally:
        source.close()
    if sha256 is not None:
        result.sha256 = sha256
    elif hash_file:
        result.sha256 = file_sha256(path)
    return result


def _inspect(path: Path, source: TensorFile, model: ModelTargets) -> LoraFile:
    shapes = source.shapes
    result = LoraFile(path, "", len(shapes))
    if not shapes:
        result.problem = "contains no tensors; expected a LoRA file"
        return result
    result.file_ranks, result.file_alphas = _readable_ranks(shapes, source)
    parsed, unsupported, plain = [], Counter(), []
    for key in shapes:
        kind = next((what for suffix, what in UNSUPPORTED_SUFFIXES.items() if key.endswith(suffix)), None)
        if kind:
            unsupported[kind] += 1
            continue
        p = _parse(key, model)
        (parsed.append(p) if p else plain.append(key))
    result.format = _format_of(parsed)

    if unsupported:
        kinds = ", ".join(f"{k} ({counted(n, 'tensor')})" for k, n in unsupported.items())
        result.problem = f"uses {kinds}, an adapter type memflow does not merge; expected a plain LoRA (lora_down/lora_up or lora_A/lora_B)"
        return result
    if not parsed:
        network = _other_network(plain)
        if network:
            result.problem = f"looks like a file for {network}, not for Wan2.1 (no LoRA keys for it)"
        elif any(k.endswith((".weight", ".bias")) for k in plain):
            result.problem = (f"is a full model checkpoint ({len(plain)} tensors such as {_few(sorted(plain), 2)}), "
                              "not a LoRA: no key ends in lora_A/lora_B, lora_down/lora_up, alpha or diff")
        else:
            result.problem = f"is not a LoRA: none of its {len(plain)} tensors has a LoRA name ({_few(sorted(plain), 3)})"
        return result

    network = _other_network([p.key for p in parsed])
    if network and not any(p.module in model.layers or p.module + ".weight" in model.params for p in parsed):
        result.problem = f"looks like a LoRA for {network}, not for the Wan2.1 video transformer"
        return result
    size = _other_size(parsed, shapes, model)
    if size:
        result.problem, result.for_other_size = size, True
        return result

    result.unmatched.extend(f"{k} (not a LoRA tensor)" for k in plain)
    groups: dict[str, dict[str, str]] = {}
    for p in parsed:
        if IMAGE_PARTS.search(p.module):
            result.ignored_image_keys.append(p.key)
            continue
        slot = groups.setdefault(p.module, {})
        if p.role in slot:
            result.unmatched.append(f"{p.key} (a second {p.role} for {p.module}, also {slot[p.role]})")
            continue
        slot[p.role] = p.key
    for module, slot in groups.items():
        result.targets.extend(_targets(module, slot, shapes, source, model, result.unmatched))
    peft_alpha = _peft_config_alpha(path, result)
    if peft_alpha is not None:
        result.targets = [t if t.kind != "lora" or t.alpha is not None else replace(t, alpha=peft_alpha)
                          for t in result.targets]
    return result


def _readable_ranks(shapes: dict, source: TensorFile) -> tuple[list[int], list[float]]:
    """Ranks (a down matrix's first side) and alphas (one-number tensors) by key name alone, for any model."""
    ranks, alphas = set(), set()
    for key, shape in shapes.items():
        role = (_split_role(key) or ("", ""))[1]
        if role == "down" and len(shape) >= 2:
            ranks.add(int(shape[0]))
        elif role == "alpha" and math.prod(shape) == 1:
            try:
                value = float(source.get(key).float().reshape(-1)[0])
            except Exception:  # noqa: BLE001 — an unreadable alpha is shown as absent, never a traceback
                continue
            if math.isfinite(value):
                alphas.add(value)
    return sorted(ranks), sorted(alphas)


def _peft_config_alpha(path: Path, result: LoraFile) -> float | None:
    """`lora_alpha` of PEFT's `adapter_config.json` saved next to `adapter_model.*` (the weights then carry no
    alpha; without it the scale alpha / r would be lost)."""
    config = path.with_name("adapter_config.json")
    if not path.stem == "adapter_model" or not config.is_file():
        return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        result.problem = f"has a PEFT adapter_config.json next to it that cannot be read ({exc})"
        return None
    if not isinstance(values, dict) or not isinstance(values.get("lora_alpha"), (int, float)):
        return None
    if values.get("use_rslora") or values.get("alpha_pattern") or values.get("rank_pattern"):
        result.problem = (f"{config.name} asks for rsLoRA scaling or per-layer alpha/rank patterns, which memflow does "
                          "not apply; expected a plain lora_alpha")
        return None
    result.alpha_source = str(config)
    return float(values["lora_alpha"])


def _targets(module: str, slot: dict[str, str], shapes, source: TensorFile, model: ModelTargets, unmatched: list[str]) -> list[Target]:
    out = []
    if "down" in slot or "up" in slot or "alpha" in slot:
        keys = [slot[r] for r in ("down", "up", "alpha") if r in slot]
        weight = module + ".weight"
        if "down" not in slot or "up" not in slot:
            missing = "up" if "down" in slot else "down" if "up" in slot else "down and up"
            unmatched.extend(f"{k} (its {missing} half is missing)" for k in keys)
        elif module not in model.layers:
            unmatched.extend(f"{k} (no layer {module})" for k in keys)
        else:
            down, up, target = shapes[slot["down"]], shapes[slot["up"]], model.params[weight]
            rank = down[0] if down else 0
            # Linear: down [r, in], up [out, r]; the patch Conv3d: down [r, in, kt, kh, kw], up [out, r, 1, 1, 1].
            fits = (len(down) >= 2 and len(up) >= 2 and (up[0], math.prod(up[1:])) == (target[0], rank)
                    and (down[0], math.prod(down[1:])) == (rank, math.prod(target[1:])))
            if not fits:
                unmatched.extend(f"{k} (shapes down {down}, up {up} do not fit {module}: {target})" for k in keys[:2])
            else:
                alpha = None
                if "alpha" in slot:
                    if math.prod(shapes[slot["alpha"]]) != 1:
                        unmatched.append(f"{slot['alpha']} (alpha of shape {shapes[slot['alpha']]}; expected one number)")
                        return out
                    alpha = float(source.get(slot["alpha"]).float().reshape(-1)[0])
                out.append(Target(weight, "lora", (slot["down"], slot["up"]), rank, alpha))
    for role, param_names in (("diff", (module + ".weight", module)), ("diff_b", (module + ".bias",))):
        if role not in slot:
            continue
        key = slot[role]
        param = next((n for n in param_names if n in model.params), None)
        if param is None:
            unmatched.append(f"{key} (no parameter {param_names[0]})")
        elif shapes[key] != model.params[param]:
            unmatched.append(f"{key} (shape {shapes[key]} does not fit {param}: {model.params[param]})")
        else:
            out.append(Target(param, "diff", (key,)))
    return out


def _other_network(keys: Iterable[str]) -> str | None:
    """What the keys were made for, when at least half of them have another network's names."""
    keys = list(keys)
    found, hits = [], set()
    for pattern, what in OTHER_NETWORKS:
        mine = {k for k in keys if pattern.search(k)}
        if mine:
            found.append(what)
            hits |= mine
    if hits and len(hits) * 2 >= len(keys):
        return " and ".join(found)
    return None


def _other_size(parsed: list[_Parsed], shapes, model: ModelTargets) -> str | None:
    """A message when the LoRA was made for another Wan size (its attention width or block count differ)."""
    widths = Counter()
    deepest = -1
    for p in parsed:
        m = BLOCK_INDEX.match(p.module)
        if m:
            deepest = max(deepest, int(m.group(1)))
        if re.search(r"\.(self_attn|cross_attn)\.[qkvo]$", p.module) and p.role in ("down", "up"):
            shape = shapes[p.key]
            if len(shape) == 2:
                widths[shape[1] if p.role == "down" else shape[0]] += 1
    width = widths.most_common(1)[0][0] if widths else None
    if width is not None and width != model.dim:
        seems = WAN_WIDTHS.get(width, "another model")
        return (f"is a LoRA for a model of width {width} (looks like {seems}); this model has width {model.dim} "
                f"({WAN_WIDTHS.get(model.dim, 'a test-size DiT')}). Use a LoRA trained for Wan2.1-T2V-1.3B")
    if deepest >= model.num_layers:
        return (f"has weights for block {deepest}, but this model has {model.num_layers} blocks (a 14B LoRA has 40); "
                "use a LoRA trained for Wan2.1-T2V-1.3B")
    return None
