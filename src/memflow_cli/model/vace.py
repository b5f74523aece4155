"""VACE: extra Wan blocks that turn a 96-channel context (control video, mask, references) into hints.

The module file (Kijai's `Wan2_1-VACE_module_1_3B_bf16.safetensors`) holds flat keys
`vace_patch_embedding.*` (a Conv3d from 96 channels with the DiT's patch size) and `vace_blocks.{n}.*`:
a normal Wan block plus `after_proj`, and `before_proj` in block 0. VACE block n sits beside main block
2n (15 blocks for 30 layers).

Per DiT pass (official Wan2.1 `VaceWanModel`): c = patch_embed(context); block 0 adds before_proj(c) to
the patch-embedded latent tokens x taken before any main block; every VACE block is a normal Wan block on
c with the pass's time modulation, the text, and RoPE, and emits hint_n = after_proj(c). All hints are
computed before the main blocks run; after main block 2n, x = x + hint_n * scale.

Streaming (our choice): the VACE blocks see the chunk's own context tokens only — no KV cache of their
own. Their RoPE frame positions run over the VACE context itself (reference frames first, then the
chunk's frames), so every chunk sees the same geometry. Reference frames have no latent in the chunk:
block 0 adds nothing to their tokens, and hints are kept for the chunk's own tokens only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from memflow_cli.model.weights import _few, assign_state_dict, read_state_dict, strip_prefixes
from memflow_cli.errors import CheckpointError
from memflow_cli.model.dit import Block, DiTConfig, FusedBlocks, RotaryTable, stacked_text_key_values

VACE_IN_DIM = 96  # 16 inactive + 16 reactive latent channels + 64 mask channels (8x8 space-to-depth)
VACE_LAYER_STRIDE = 2  # VACE block n sits beside main block 2n
_BLOCK_KEY = re.compile(r"^vace_blocks\.(\d+)\.")


def vace_main_layers(num_layers: int) -> tuple[int, ...]:
    """Main blocks that receive a hint, in VACE block order: range(0, num_layers, 2)."""
    return tuple(range(0, num_layers, VACE_LAYER_STRIDE))


class OwnTokens:
    """Key-set provider for VACE blocks: each token attends to the pass's own context tokens only."""

    steady = False  # (as a provider for a whole DiT pass, e.g. in tests: never the compiled path)

    def layer(self, index):
        return self

    def key_set(self, q, k, v):
        return k, v


_OWN_TOKENS = OwnTokens()


class VaceBlock(Block):
    """A normal Wan block on the VACE stream, with the projections that feed it in and hint out."""

    def __init__(self, config: DiTConfig, first: bool):
        super().__init__(config)
        self.before_proj = nn.Linear(config.dim, config.dim) if first else None
        self.after_proj = nn.Linear(config.dim, config.dim)


class VaceTextCache:
    """Cross-attention keys/values of the VACE blocks for the current prompt (the blocks have their own
    text projections). Filled by the DiT on first use, reset with the main text cache at a prompt switch."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self.keys is not None

    def fill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def reset(self) -> None:
        self.keys = self.values = None

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]


class VaceModule(nn.Module):
    """The VACE blocks. Parameter names match the module file (flat, no prefix)."""

    def __init__(self, config: DiTConfig, num_blocks: int, in_dim: int = VACE_IN_DIM):
        super().__init__()
        self.config = config
        self.main_layers = vace_main_layers(config.num_layers)
        if num_blocks != len(self.main_layers):
            raise ValueError(f"a DiT with {config.num_layers} layers takes {len(self.main_layers)} VACE blocks, not {num_blocks}")
        # Main block index -> VACE block index, read by the DiT after each main block.
        self.hint_for_layer = {layer: n for n, layer in enumerate(self.main_layers)}
        self.vace_patch_embedding = nn.Conv3d(in_dim, config.dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.vace_blocks = nn.ModuleList(VaceBlock(config, first=(n == 0)) for n in range(num_blocks))
        self._rope = RotaryTable()  # VACE positions are the same every chunk: cached apart from the main one
        self._fused = FusedBlocks()  # the blocks' fused projections and modulation rows (model/dit.py)

    def embed_context(self, context: torch.Tensor) -> torch.Tensor:
        """[B, F, 96, H, W] -> tokens [B, F*rows*cols, dim] in (frame, row, column) order."""
        weight = self.vace_patch_embedding.weight
        c = self.vace_patch_embedding(context.permute(0, 2, 1, 3, 4).to(weight.device, weight.dtype))
        return c.flatten(2).transpose(1, 2)

    def text_key_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of every VACE block for the embedded text, stacked [n, B, L, H, D]."""
        return stacked_text_key_values(self.vace_blocks, context)

    def forward(
        self,
        context: torch.Tensor,
        x: torch.Tensor,
        e0: torch.Tensor,
        text: VaceTextCache,
        reference_frames: int,
        rows: int,
        cols: int,
    ) -> list[torch.Tensor]:
        """Hints, one [B, L_chunk, dim] per VACE block, for the chunk's own tokens.

        context [B, R+F, 96, H, W] (R reference frames first); x [B, F*rows*cols, dim], the patch-embedded
        latent tokens before any main block; e0 [B, F, 6, dim], the pass's per-frame time modulation.
        """
        frames = context.shape[1]
        ref_tokens = reference_frames * rows * cols
        c = self.embed_context(context)
        if reference_frames:
            # Reference frames take the modulation of the chunk's first frame (a pass has one timestep).
            e0 = torch.cat([e0[:, :1].expand(-1, reference_frames, -1, -1), e0], dim=1)
            x = F.pad(x, (0, 0, ref_tokens, 0))  # reference tokens have no latent to add
        rope = self._rope.get(self.config.head_dim, 0, frames, rows, cols, c.device, c.dtype)
        self._fused.prepare(self.vace_blocks, c.dtype)
        mods = self._fused.modulations(e0)
        hints = []
        for n, block in enumerate(self.vace_blocks):
            if block.before_proj is not None:
                c = block.before_proj(c) + x
            c = block(c, mods[n], rope, _OWN_TOKENS, text.layer(n), frames)
            hints.append(block.after_proj(c[:, ref_tokens:]))
        return hints


@dataclass
class VaceGuide:
    """Everything one DiT pass needs to add VACE hints; built per chunk by the generator.

    `context` is the chunk's VACE context [B, R+F, 96, H, W]; `text` is owned by the generator (one per
    video) and shared by the chunk's passes.
    """

    module: VaceModule
    context: torch.Tensor
    scale: float
    text: VaceTextCache
    reference_frames: int = 0


# ----------------------------------------------------------------------------------------------- loading


def vace_state_dict(raw: object, source) -> dict[str, torch.Tensor]:
    """The VACE tensors of a module file (or of a full VACE model file: other tensors are ignored)."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: expected a flat dict of tensors, found {type(raw).__name__}")
    tensors = strip_prefixes({k: v for k, v in raw.items() if isinstance(v, torch.Tensor)},
                             ("_fsdp_wrapped_module.", "model.", "diffusion_model."))
    state = {k: v for k, v in tensors.items() if k.startswith(("vace_blocks.", "vace_patch_embedding."))}
    if not state:
        raise CheckpointError(
            f"{source}: not a VACE module (no vace_blocks.* or vace_patch_embedding.* tensors; "
            f"found {_few(tensors) if tensors else 'no tensors'})"
        )
    return state


def vace_block_count(state: Mapping[str, torch.Tensor], source) -> int:
    indices = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))}
    if not indices:
        raise CheckpointError(f"{source}: VACE module without vace_blocks.* tensors")
    count = max(indices) + 1
    gaps = sorted(set(range(count)) - indices)
    if gaps:
        raise CheckpointError(f"{source}: VACE blocks {gaps} are missing (the file has blocks up to {count - 1})")
    return count


def load_vace_module(path: str | os.PathLike, dit_config: DiTConfig, device="cpu", dtype=torch.float32) -> VaceModule:
    """Build the VACE blocks for `dit_config` and load them from the module file (stored bf16).

    The file must fit the DiT: same width and patch size, one VACE block per two main layers, 96 context
    channels. Anything else is a CheckpointError naming the file and what did not fit.
    """
    state = vace_state_dict(read_state_dict(path), path)
    patch = state.get("vace_patch_embedding.weight")
    if patch is None or patch.dim() != 5:
        raise CheckpointError(f"{path}: VACE module without a 5-d vace_patch_embedding.weight")
    dim, in_dim = patch.shape[0], patch.shape[1]
    if dim != dit_config.dim:
        raise CheckpointError(f"{path}: VACE module of width {dim}, but the DiT has width {dit_config.dim} (wrong model size?)")
    if tuple(patch.shape[2:]) != tuple(dit_config.patch_size):
        raise CheckpointError(f"{path}: VACE patch size {tuple(patch.shape[2:])}, the DiT's is {tuple(dit_config.patch_size)}")
    if in_dim != VACE_IN_DIM:
        raise CheckpointError(f"{path}: VACE context of {in_dim} channels, expected {VACE_IN_DIM}")
    blocks = vace_block_count(state, path)
    expected = len(vace_main_layers(dit_config.num_layers))
    if blocks != expected:
        raise CheckpointError(f"{path}: {blocks} VACE blocks, but a DiT with {dit_config.num_layers} layers takes {expected}")
    ffn = state.get("vace_blocks.0.ffn.0.weight")
    config = replace(dit_config, ffn_dim=ffn.shape[0]) if ffn is not None and ffn.dim() == 2 else dit_config
    with torch.device("meta"):
        module = VaceModule(config, blocks, in_dim)
    module = module.to_empty(device=device).to(dtype)
    assign_state_dict(module, state, path)
    return module.eval().requires_grad_(False)
