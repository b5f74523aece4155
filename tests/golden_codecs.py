"""Golden runners for the codecs: umT5 text encoder (kind "text_encoder") and Wan VAE (kind "vae").

Each runner works from the case's settings alone: weights and tensor file named by the case,
tolerances from the case, models built through the normal loaders.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from golden_metric import assert_close
from golden_splits import LATENTS_PER_CHUNK, splits, wan_pixel_frames
from memflow_cli.model.t5 import load_umt5_encoder
from memflow_cli.model.vae import load_wan_vae


def zero_after_tokens(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pipeline's text wrapper: rows at or after each prompt's token count set to 0."""
    lengths = mask.sum(dim=1)
    keep = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    return out * keep[..., None].to(out.dtype)


def run_text_encoder_case(case: dict, index: dict, golden_dir: Path):
    tensors = load_file(str(golden_dir / case["file"]))
    encoder = load_umt5_encoder(golden_dir / case["weights"], dtype=torch.float32)
    with torch.no_grad():
        out = encoder(tensors["ids"], tensors["mask"])
    embeds = zero_after_tokens(out, tensors["mask"])
    if "seq_lens" in tensors:
        assert tensors["mask"].sum(1).tolist() == tensors["seq_lens"].tolist()
    assert_close(case["expected_tensor"], embeds, tensors[case["expected_tensor"]], case["tolerance"])
    # the zeroed rows must be exactly zero, not merely small
    assert (embeds[tensors["mask"] == 0] == 0).all()


def run_vae_case(case: dict, index: dict, golden_dir: Path):
    tensors = load_file(str(golden_dir / case["file"]))
    vae = load_wan_vae(golden_dir / case["weights"], dtype=torch.float32)
    latents = tensors["latents"]
    pixels = vae.decode(latents)
    assert_close("pixels", pixels, tensors["pixels"], case["decode"]["tolerance"])
    # streamed as the renderer does (a first chunk, then the streaming step): the same pixels
    stream = vae.stream_decoder()
    chunks = splits(latents.shape[1], LATENTS_PER_CHUNK, LATENTS_PER_CHUNK)
    parts = [stream.decode(latents[:, a:b]) for a, b in chunks]
    assert [p.shape[1] for p in parts] == [wan_pixel_frames(b - a, a == 0) for a, b in chunks]
    assert_close("pixels (streamed)", torch.cat(parts, 1), tensors["pixels"], case["decode"]["tolerance"])
    latents = vae.encode(tensors["encode_video_in"])
    assert_close("encode_latents", latents, tensors["encode_latents"], case["encode"]["tolerance"])
    # the streaming encoder fed frame 0, then groups of 4 frames (1 + 4 + 4 for 9 frames), carries its caches to
    # the same latents; frames past the last whole group are dropped, as in a whole encode
    stream, video = vae.stream_encoder(), tensors["encode_video_in"]
    used = 1 + 4 * ((video.shape[2] - 1) // 4)
    parts = [stream.encode(video[:, :, a:b]) for a, b in splits(used, 1, 4, multiple=4)]
    assert_close("stream_encode_latents", torch.cat(parts, 1), tensors["encode_latents"], case["encode"]["tolerance"])


RUNNERS = {"text_encoder": run_text_encoder_case, "vae": run_vae_case}
