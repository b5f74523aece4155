"""Write a complete weights folder with tiny random models, in the real layout and formats.

    python -m memflow_cli.testing.tiny_weights DIR
    memflow render timelines/smoke.json --weights-dir DIR --resolution 64x64

Every file has the real name, container and key names (`base.pt` with `{"generator": {"model.…"}}`,
`lora.pt` with peft names under `generator_lora`, Wan's `config.json`, plain state dicts for the VAE and
the bf16 umT5 encoder, a `tokenizer.json`, and the three other `--vae` decoders), so a smoke render goes through exactly the loading code the
real 10 GB of weights go through, only in seconds on a CPU. The output is a deterministic function of
`seed`. A `memflow.lock.json` records sizes and sha256 like a download does.

The folder serves every model of models.py: MemFlow's `base.pt`/`lora.pt` and LongLive's
`models/longlive_base.pt`/`models/lora.pt` (other random values, same layout), with the Wan files once.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

TINY_DIT = {
    "_class_name": "WanModel",
    "model_type": "t2v",
    "patch_size": [1, 2, 2],
    "text_len": 512,
    "in_dim": 16,
    "dim": 64,
    "ffn_dim": 128,
    "freq_dim": 256,
    "text_dim": 32,  # tiny addition: the real config has no text_dim (4096 implied)
    "out_dim": 16,
    "num_heads": 2,
    "num_layers": 2,
    "eps": 1e-06,
}
TINY_T5 = dict(vocab=512, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2)
TINY_VAE_DIM = 4  # the VAE dominates CPU time at this size; 4 keeps a chunk well under a second
# The other `--vae` choices, tiny: a pruned Wan VAE with widths unlike `dim * dim_mult` (so loading must read
# them from the file), and the tiny autoencoder (real one: encoder 64, decoder 256/128/64/64, ~45 MB).
TINY_LIGHTVAE_DECODER_DIMS = (8, 8, 8, 4, 2)
TINY_LIGHTVAE_ENCODER_DIMS = (2, 2, 4, 8, 8)
TINY_TAE = dict(encoder_width=4, decoder_widths=(8, 8, 4, 4))
LORA_RANK = 4


def _fill(state: dict[str, torch.Tensor], gen: torch.Generator, dtype: torch.dtype | None = None) -> dict:
    """Deterministic random values of sensible scale for every tensor; norm gains are 1."""
    out = {}
    for name in sorted(state):
        t = state[name]
        if "norm" in name and (name.endswith(".weight") or name.endswith(".gamma")) or name.endswith("gamma"):
            v = torch.ones(t.shape)
        elif t.dim() >= 2:
            fan_in = max(1, math.prod(t.shape[1:]))
            v = torch.randn(t.shape, generator=gen) / math.sqrt(fan_in)
        else:
            v = torch.randn(t.shape, generator=gen) * 0.02
        out[name] = v.to(dtype or t.dtype).contiguous()
    return out


def _write_dit_weights(root: Path, spec, dit: torch.nn.Module, gen: torch.Generator) -> None:
    """A model's base weights (training-checkpoint layout) and built-in LoRA at its repository paths."""
    shapes = {k: torch.empty(v.shape) for k, v in dit.state_dict().items()}
    weights = _fill(shapes, gen, torch.bfloat16)
    (root / spec.base_file).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": {f"model.{k}": v for k, v in weights.items()}}, root / spec.base_file)

    # LoRA on every attention projection and FFN linear, peft naming, like the released adapters.
    lora = {}
    for name, module in dit.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and (
            ".self_attn." in name or ".cross_attn." in name or ".ffn." in name
        ):
            a = torch.randn(LORA_RANK, module.in_features, generator=gen) * 0.01
            b = torch.randn(module.out_features, LORA_RANK, generator=gen) * 0.01
            lora[f"base_model.model.{name}.lora_A.weight"] = a
            lora[f"base_model.model.{name}.lora_B.weight"] = b
    (root / spec.lora_file).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator_lora": lora, "step": 0}, root / spec.lora_file)


def tiny_decoder_state(kind: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random float32 weights for a `--vae` choice other than `wan`, with the real file's key names."""
    from memflow_cli.model.tae import TAEConfig, TinyAutoencoder
    from memflow_cli.model.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        if kind == "lightvae":
            model = WanVAE(VAEConfig(decoder_dims=TINY_LIGHTVAE_DECODER_DIMS, encoder_dims=TINY_LIGHTVAE_ENCODER_DIMS))
        elif kind in ("tae", "lighttae"):
            model = TinyAutoencoder(TAEConfig(**TINY_TAE))
        else:
            raise ValueError(f"no tiny writer for decoder {kind!r}")
    return _fill({k: torch.empty(v.shape) for k, v in model.state_dict().items()}, gen, torch.float32)


def write_tiny_decoders(root: Path, gen: torch.Generator) -> None:
    from memflow_cli.engine.decoders import DECODERS

    for kind in ("lightvae", "tae", "lighttae"):
        torch.save(tiny_decoder_state(kind, gen), root / DECODERS[kind].filename)


def write_tiny_weights(root: str | Path, seed: int = 0) -> Path:
    from memflow_cli.weights import hub
    from memflow_cli.weights.models import DEFAULT_MODEL, MODELS
    from memflow_cli.model.dit import CausalDiT, DiTConfig
    from memflow_cli.model.t5 import UMT5Config, UMT5Encoder
    from memflow_cli.model.vae import VAEConfig, WanVAE
    from memflow_cli.testing.tiny_tokenizer import build_tiny_tokenizer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    # DiT: Wan config.json + base.pt in MemFlow's training-checkpoint layout.
    (root / "config.json").write_text(json.dumps(TINY_DIT, indent=2) + "\n")
    config = DiTConfig.from_dict(TINY_DIT)
    with torch.device("meta"):
        dit = CausalDiT(config)
    _write_dit_weights(root, MODELS[DEFAULT_MODEL], dit, gen)

    # VAE: plain state dict with Wan's key names (decoder and encoder), float32.
    with torch.device("meta"):
        vae = WanVAE(VAEConfig(dim=TINY_VAE_DIM))
    torch.save(_fill({k: torch.empty(v.shape) for k, v in vae.state_dict().items()}, gen, torch.float32),
               root / "Wan2.1_VAE.pth")

    # The other decoders draw from their own generator, so the files above stay as they were.
    write_tiny_decoders(root, torch.Generator().manual_seed(seed + 1))

    # umT5 encoder, bf16 like models_t5_umt5-xxl-enc-bf16.pth; output width = the DiT's text_dim.
    with torch.device("meta"):
        t5 = UMT5Encoder(UMT5Config(**TINY_T5))
    torch.save(_fill({k: torch.empty(v.shape) for k, v in t5.state_dict().items()}, gen, torch.bfloat16),
               root / "models_t5_umt5-xxl-enc-bf16.pth")

    build_tiny_tokenizer(root / "google" / "umt5-xxl" / "tokenizer.json")

    write_tiny_vace_module(root / hub.VACE_FILE.filename, config, seed)

    # The other models: same network, their own values (one generator each, so adding a model never
    # changes the files written before it).
    for i, spec in enumerate(s for name, s in MODELS.items() if name != DEFAULT_MODEL):
        _write_dit_weights(root, spec, dit, torch.Generator().manual_seed(seed * 1000 + i + 1))

    lock = hub.new_lock()
    lock["note"] = f"tiny random weights for smoke tests (seed {seed}); not a real model"
    for f in (*hub.all_files(), hub.VACE_FILE, *hub.DECODER_FILES.values()):
        if (root / f.filename).is_file():
            hub.record(lock, f, root / f.filename, None)
    hub.write_lock(root / hub.LOCK_NAME, lock)
    return root


def write_tiny_vace_module(path: Path, config, seed: int = 0) -> Path:
    """A VACE module for `config` in the real file's layout: flat safetensors, bf16, one block per two layers.

    Its own random stream (seed + 1), so adding it leaves every other tiny file unchanged. Unlike the
    released module's zero-initialised projections before training, before/after_proj are random here, so
    the hints visibly change the frames.
    """
    from safetensors.torch import save_file

    from memflow_cli.model.vace import VaceModule, vace_main_layers

    with torch.device("meta"):
        module = VaceModule(config, len(vace_main_layers(config.num_layers)))
    shapes = {k: torch.empty(v.shape) for k, v in module.state_dict().items()}
    weights = _fill(shapes, torch.Generator().manual_seed(seed + 1), torch.bfloat16)
    save_file(weights, str(path), metadata={"format": "pt"})
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder to write (created if needed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_tiny_weights(args.dir, args.seed)
    print(f"tiny weights written to {root}")


if __name__ == "__main__":
    main()
