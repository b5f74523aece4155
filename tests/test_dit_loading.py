"""Loading the DiT from every container the releases use, and refusing what does not fit."""

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from memflow_cli.model.weights import read_state_dict
from memflow_cli.weights.checkpoints import load_dit, lora_pairs
from memflow_cli.errors import CheckpointError
from memflow_cli.model.dit import DiTConfig, rope_angles

GOLDEN = Path(__file__).parent / "golden"
CONFIG = GOLDEN / "dit" / "tiny_dit_config.json"
BASE = GOLDEN / "dit" / "base.pt"
FLAT = GOLDEN / "dit" / "tiny_dit.safetensors"
LORA = GOLDEN / "dit" / "lora.pt"


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def base_params():
    return params(load_dit(CONFIG, BASE))


def test_config_file_and_preset_agree():
    assert DiTConfig.from_file(CONFIG) == DiTConfig.preset("tiny")
    real = DiTConfig.preset("wan2.1-t2v-1.3b")
    assert (real.dim, real.num_layers, real.num_heads, real.head_dim) == (1536, 30, 12, 128)
    assert real.frame_tokens(60, 104) == 1560
    assert real.frame_tokens(90, 160) == 3600  # 720x1280: tokens per frame follow the resolution


def test_wan_config_json_builds_the_real_model(tmp_path):
    wan = {"_class_name": "WanModel", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16,
           "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512}
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(wan))
    assert DiTConfig.from_file(path) == DiTConfig.preset("wan2.1-t2v-1.3b")


def test_flat_safetensors_equals_base_pt(base_params):
    flat = params(load_dit(CONFIG, FLAT))
    assert flat.keys() == base_params.keys()
    assert all(torch.equal(flat[k], base_params[k]) for k in flat)


def test_ema_entry_and_fsdp_prefixes(tmp_path, base_params):
    raw = torch.load(BASE, weights_only=True)["generator"]
    wrapped = {k.replace("model.", "model._fsdp_wrapped_module.", 1): v for k, v in raw.items()}
    path = tmp_path / "ema.pt"
    torch.save({"generator_ema": wrapped, "generator": {}, "step": 3}, path)
    loaded = params(load_dit(CONFIG, path, use_ema=True))
    assert all(torch.equal(loaded[k], base_params[k]) for k in loaded)


def test_lora_is_merged_with_alpha_over_rank(base_params):
    merged = params(load_dit(CONFIG, BASE, LORA, lora_alpha=8))
    pairs = lora_pairs(read_state_dict(LORA), LORA)
    assert len(pairs) == 2 * 10  # every Linear of both blocks
    a, b = pairs["blocks.0.self_attn.q"]["A"], pairs["blocks.0.self_attn.q"]["B"]
    expected = base_params["blocks.0.self_attn.q.weight"] + (8 / a.shape[0]) * (b @ a)
    torch.testing.assert_close(merged["blocks.0.self_attn.q.weight"], expected)
    assert torch.equal(merged["patch_embedding.weight"], base_params["patch_embedding.weight"])


def test_raw_peft_lora_file_loads(tmp_path):
    raw = torch.load(LORA, weights_only=True)["generator_lora"]
    path = tmp_path / "peft.safetensors"
    save_file({k: v.contiguous() for k, v in raw.items()}, str(path))
    a = params(load_dit(CONFIG, BASE, LORA, lora_alpha=8))
    b = params(load_dit(CONFIG, BASE, path, lora_alpha=8))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    raw = dict(torch.load(BASE, weights_only=True)["generator"])
    del raw["model.head.head.bias"]
    raw["model.extra.weight"] = torch.zeros(2)
    raw["model.blocks.0.ffn.0.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"generator": raw}, path)
    with pytest.raises(CheckpointError) as err:
        load_dit(CONFIG, path)
    text = str(err.value)
    assert "bad.pt" in text and "head.head.bias" in text and "extra.weight" in text and "blocks.0.ffn.0.bias" in text


def test_unconsumed_or_broken_lora_is_an_error(tmp_path):
    raw = dict(torch.load(LORA, weights_only=True)["generator_lora"])
    orphan = dict(raw)
    del orphan["base_model.model.blocks.1.ffn.2.lora_B.weight"]
    torch.save({"generator_lora": orphan}, tmp_path / "orphan.pt")
    with pytest.raises(CheckpointError, match="blocks.1.ffn.2"):
        load_dit(CONFIG, BASE, tmp_path / "orphan.pt")
    foreign = dict(raw)
    foreign["base_model.model.blocks.7.self_attn.q.lora_A.weight"] = raw["base_model.model.blocks.0.self_attn.q.lora_A.weight"]
    foreign["base_model.model.blocks.7.self_attn.q.lora_B.weight"] = raw["base_model.model.blocks.0.self_attn.q.lora_B.weight"]
    torch.save({"generator_lora": foreign}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="blocks.7.self_attn.q"):
        load_dit(CONFIG, BASE, tmp_path / "foreign.pt")


def test_truncated_and_unsafe_files_are_refused(tmp_path):
    truncated = tmp_path / "base.pt"
    truncated.write_bytes(BASE.read_bytes()[: 100_000])
    with pytest.raises(CheckpointError, match="base.pt"):
        load_dit(CONFIG, truncated)

    class Payload:  # an object whose unpickling would run code: weights_only must refuse it
        def __reduce__(self):
            return (print, ("pwned",))

    unsafe = tmp_path / "unsafe.pt"
    with open(unsafe, "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        read_state_dict(unsafe)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")


def test_rope_positions_have_no_upper_limit():
    angles = rope_angles(128, 1500, 1, 1, 1, "cpu")
    base = rope_angles(128, 1, 1, 1, 1, "cpu")
    torch.testing.assert_close(angles[0, :22], 1500 * base[0, :22], rtol=1e-12, atol=0)
