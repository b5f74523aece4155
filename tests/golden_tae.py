"""Golden runner for the tiny autoencoder (kind "tae", case F: TAEHV architecture of taew2_1/lighttaew2_1).

The case ships no weights, only a recipe: they are rebuilt here, checked against the case's checksum,
written to a `.pth` with the real key names and loaded through the normal loader. Decoding is checked in
both latent conventions through the decoder interface the renderer uses (tae: latents as they are;
lighttae: latents * std + mean), the unclamped decode as a diagnostic, the encoder, and a chunked
stream (the renderer's chunks of 3 latents, the last one what is left) against the whole-sequence golden.
"""

import math
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from golden_metric import assert_close
from golden_splits import LATENTS_PER_CHUNK, splits, wan_pixel_frames
from memflow_cli.engine.decoders import load_decoder
from memflow_cli.model.tae import load_tae, tae_init_recipe


def build_case_weights(case: dict) -> dict[str, torch.Tensor]:
    recipe = case["weights"]
    weights = tae_init_recipe(recipe["keys"], recipe["seed_base"])
    checksum = sum(v.double().sum().item() for v in weights.values())
    expected = recipe["checksum_float64_sum"]
    assert abs(checksum - expected) <= 1e-9 * max(1.0, abs(expected)), f"recipe checksum {checksum} != {expected}"
    return weights


def run_tae_case(case: dict, index: dict, golden_dir: Path):
    tensors = load_file(str(golden_dir / case["file"]))
    tol = case["tolerance"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "taew2_1.pth"
        torch.save(build_case_weights(case), path)
        tae = load_tae(path)
        tae_decoder = load_decoder("tae", path)
        light_decoder = load_decoder("lighttae", path)
    latents = tensors["latents"]

    # the network in its own convention, before the final clamp (diagnostic: most clamped values sit at 0 or 1)
    assert_close("pixels_tae_unclamped", tae.decode(latents, clamp=False), tensors["pixels_tae_unclamped"], tol)

    # through the renderer's interface (normalized DiT latents in, [-1, 1] frames out), streamed in the
    # renderer's chunks (for 7 latents: 3, 3, 1 -> 9, 12, 4 frames): must equal the golden whole-sequence decode
    to_unit = lambda pixels: pixels * 0.5 + 0.5  # noqa: E731
    stream = tae_decoder.stream_decoder()
    chunks = splits(latents.shape[1], LATENTS_PER_CHUNK, LATENTS_PER_CHUNK)
    parts = [stream.decode(latents[:, s:e]) for s, e in chunks]
    assert [p.shape[1] for p in parts] == [wan_pixel_frames(e - s, s == 0) for s, e in chunks]
    assert_close(f"pixels_tae (streamed {'+'.join(str(e - s) for s, e in chunks)})", to_unit(torch.cat(parts, dim=1)),
                 tensors["pixels_tae"], tol)
    assert_close("pixels_lighttae", to_unit(light_decoder.stream_decoder().decode(latents)),
                 tensors["pixels_lighttae"], tol)

    frames = tensors["encode_frames_in"]
    assert_close("encode_latents", tae.encode(frames), tensors["encode_latents"], tol)
    # streamed in the renderer's chunks of frames (4 per latent), the last one what is left
    per_latent = math.prod(tae.config.encoder_time_pool)
    chunks = splits(frames.shape[1], per_latent * LATENTS_PER_CHUNK, per_latent * LATENTS_PER_CHUNK, multiple=per_latent)
    stream_enc = tae.stream_encoder()
    streamed = torch.cat([stream_enc.encode(frames[:, s:e]) for s, e in chunks], dim=1)
    assert_close(f"encode_latents (streamed {'+'.join(str(e - s) for s, e in chunks)})", streamed,
                 tensors["encode_latents"], tol)


RUNNERS = {"tae": run_tae_case}
