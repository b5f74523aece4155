"""Golden runner for the tiny autoencoder (kind "tae", case F: TAEHV architecture of taew2_1/lighttaew2_1).

The case ships no weights, only a recipe: they are rebuilt here, checked against the case's checksum,
written to a `.pth` with the real key names and loaded through the normal loader. Decoding is checked in
both latent conventions through the decoder interface the renderer uses (tae: latents as they are;
lighttae: latents * std + mean), the unclamped decode as a diagnostic, the encoder, and a chunked
stream (3 latents, then 3, then 1) against the whole-sequence golden.
"""

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from golden_metric import assert_close
from memflow_cli.decoders import load_decoder
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

    # through the renderer's interface (normalized DiT latents in, [-1, 1] frames out), streamed in
    # chunks of 3, 3, 1 latents -> 9, 12, 4 frames: must equal the golden whole-sequence decode
    to_unit = lambda pixels: pixels * 0.5 + 0.5  # noqa: E731
    stream = tae_decoder.stream_decoder()
    parts = [stream.decode(latents[:, s:e]) for s, e in ((0, 3), (3, 6), (6, 7))]
    assert [p.shape[1] for p in parts] == [9, 12, 4]
    assert_close("pixels_tae (streamed 3+3+1)", to_unit(torch.cat(parts, dim=1)), tensors["pixels_tae"], tol)
    assert_close("pixels_lighttae", to_unit(light_decoder.stream_decoder().decode(latents)),
                 tensors["pixels_lighttae"], tol)

    assert_close("encode_latents", tae.encode(tensors["encode_frames_in"]), tensors["encode_latents"], tol)
    stream_enc = tae.stream_encoder()
    frames = tensors["encode_frames_in"]
    streamed = torch.cat([stream_enc.encode(frames[:, s:s + 12]) for s in (0, 12)], dim=1)
    assert_close("encode_latents (streamed 12+12)", streamed, tensors["encode_latents"], tol)


RUNNERS = {"tae": run_tae_case}
