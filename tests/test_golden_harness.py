"""The golden harnesses stream with splits derived from a case's shapes: cases of other lengths run too.

Each test builds a case the public data does not have (Wan VAE: 4 latents -> 13 frames, 13 frames -> 4 latents;
tiny AE: 5 latents -> 17 frames, 20 frames -> 5 latents) from the public case's own weights, its expected
tensors from the whole-sequence paths, and runs the harness on it (which streams it in the renderer's chunks).
"""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import golden_codecs
import golden_tae
from golden_splits import splits
from memflow_cli.engine.decoders import load_decoder
from memflow_cli.model.tae import load_tae
from memflow_cli.model.vae import load_wan_vae


def _case(golden_dir: Path, kind: str) -> dict:
    cases = json.loads((golden_dir / "cases.json").read_text())["cases"]
    return next(c for c in cases if c["kind"] == kind)


def test_splits_follow_the_shapes():
    assert splits(9, 1, 4, multiple=4) == [(0, 1), (1, 5), (5, 9)]
    assert splits(13, 1, 4, multiple=4) == [(0, 1), (1, 5), (5, 9), (9, 13)]
    assert splits(7, 3, 3) == [(0, 3), (3, 6), (6, 7)]
    assert splits(4, 3, 3) == [(0, 3), (3, 4)]
    assert splits(2, 3, 3) == [(0, 2)]
    assert splits(22, 12, 12, multiple=4) == [(0, 12), (12, 20)]  # a tail short of a latent's 4 frames is dropped
    with pytest.raises(ValueError):
        splits(0, 3, 3)


def test_wan_vae_harness_runs_a_13_frame_case(golden_dir, tmp_path):
    case = dict(_case(golden_dir, "vae"), file="E13.safetensors", weights="tiny_wan_vae.pth")
    shutil.copy(golden_dir / _case(golden_dir, "vae")["weights"], tmp_path / case["weights"])
    vae = load_wan_vae(tmp_path / case["weights"])
    gen = torch.Generator().manual_seed(13)
    latents = torch.randn(1, 4, 16, 4, 6, generator=gen)
    video = torch.rand(1, 3, 13, 32, 48, generator=gen) * 2 - 1
    tensors = {"latents": latents, "pixels": vae.decode(latents), "encode_video_in": video,
               "encode_latents": vae.encode(video)}
    assert tensors["pixels"].shape[1] == 13 and tensors["encode_latents"].shape[1] == 4
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / case["file"]))
    golden_codecs.run_vae_case(case, {}, tmp_path)  # streams 3 + 1 latents and 1 + 4 + 4 + 4 frames


def test_tiny_ae_harness_runs_a_5_latent_case(golden_dir, tmp_path):
    case = dict(_case(golden_dir, "tae"), file="F5.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "taew2_1.pth"
        torch.save(golden_tae.build_case_weights(case), path)
        tae, light = load_tae(path), load_decoder("lighttae", path)
    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 5, 16, 4, 6, generator=gen)
    frames = torch.rand(1, 20, 3, 32, 48, generator=gen)
    tensors = {"latents": latents, "pixels_tae_unclamped": tae.decode(latents, clamp=False),
               "pixels_tae": tae.decode(latents), "pixels_lighttae": light.stream_decoder().decode(latents) * 0.5 + 0.5,
               "encode_frames_in": frames, "encode_latents": tae.encode(frames)}
    assert tensors["pixels_tae"].shape[1] == 17 and tensors["encode_latents"].shape[1] == 5
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / case["file"]))
    golden_tae.run_tae_case(case, {}, tmp_path)  # streams 3 + 2 latents and 12 + 8 frames
