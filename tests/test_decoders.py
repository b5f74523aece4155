"""The `--vae` choices: tiny autoencoder streaming, widths read from a pruned Wan VAE, one interface."""

import pytest
import torch

from golden_metric import compare
from memflow_cli.engine.decoders import DECODER_KINDS, DECODERS, decoder_spec, load_decoder
from memflow_cli.errors import InputError
from memflow_cli.model.tae import TAEConfig, load_tae
from memflow_cli.model.vae import VAEConfig, load_wan_vae
from memflow_cli.testing.tiny_weights import (
    TINY_LIGHTVAE_DECODER_DIMS,
    TINY_LIGHTVAE_ENCODER_DIMS,
    TINY_TAE,
    tiny_decoder_state,
)


@pytest.fixture(scope="module")
def decoder_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    gen = torch.Generator().manual_seed(3)
    for kind in ("lightvae", "tae"):
        torch.save(tiny_decoder_state(kind, gen), root / DECODERS[kind].filename)
    return root


def _latents(t, seed=0, h=4, w=6):
    return torch.randn(1, t, 16, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- tiny autoencoder


def test_tae_config_read_from_the_file(decoder_files):
    tae = load_tae(decoder_files / "taew2_1.pth")
    cfg = tae.config
    assert (cfg.encoder_width, cfg.decoder_widths) == (TINY_TAE["encoder_width"], TINY_TAE["decoder_widths"])
    assert (cfg.decoder_time_grow, cfg.encoder_time_pool, cfg.frames_to_trim) == ((1, 2, 2), (2, 2, 1), 3)
    assert cfg == TAEConfig(**TINY_TAE)


@pytest.mark.parametrize("splits", [(3, 3, 3, 1), (1, 1, 1, 1, 1, 1, 1, 1, 1, 1), (2, 5, 3)])
def test_tae_streaming_equals_whole_decoding(decoder_files, splits):
    tae = load_tae(decoder_files / "taew2_1.pth")
    latents = _latents(sum(splits))
    whole = tae.decode(latents, clamp=False)
    stream = tae.stream_decoder(clamp=False)
    parts, start = [], 0
    for n in splits:
        parts.append(stream.decode(latents[:, start:start + n]))
        start += n
    # the first chunk loses the 3 raw frames before frame 0; every later latent gives 4 frames
    assert [p.shape[1] for p in parts] == [1 + 4 * (splits[0] - 1)] + [4 * n for n in splits[1:]]
    rel, _ = compare(torch.cat(parts, dim=1), whole)
    assert rel < 1e-6
    # the carried state is one frame per memory block, whatever the video length
    assert len(stream.state) == 9 and all(v.shape[0] == 1 and v.dim() == 4 for v in stream.state.values())


def test_tae_memory_reaches_across_chunks(decoder_files):
    """A later chunk's frames depend on earlier latents (carried memory), not only on its own."""
    tae = load_tae(decoder_files / "taew2_1.pth")
    latents = _latents(6)
    other = latents.clone()
    other[:, :3] = _latents(3, seed=9)
    a = tae.decode(latents, clamp=False)[:, 9:]
    b = tae.decode(other, clamp=False)[:, 9:]
    assert not torch.allclose(a, b)


def test_tae_encoder_streams_in_groups_of_four(decoder_files):
    tae = load_tae(decoder_files / "taew2_1.pth")
    frames = torch.rand(1, 16, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    whole = tae.encode(frames)
    assert whole.shape == (1, 4, 16, 4, 6)
    stream = tae.stream_encoder()
    rel, _ = compare(torch.cat([stream.encode(frames[:, :4]), stream.encode(frames[:, 4:])], dim=1), whole)
    assert rel < 1e-6
    with pytest.raises(ValueError, match="4 frames per latent"):
        tae.stream_encoder().encode(frames[:, :5])


# ------------------------------------------------------------------------------- pruned Wan VAE


def test_lightvae_widths_come_from_the_checkpoint(decoder_files):
    vae = load_wan_vae(decoder_files / "lightvaew2_1.pth")
    assert vae.config.decoder_widths() == TINY_LIGHTVAE_DECODER_DIMS
    assert vae.config.encoder_widths() == TINY_LIGHTVAE_ENCODER_DIMS
    pixels = vae.decode(_latents(2))
    assert pixels.shape == (1, 5, 3, 32, 48) and pixels.abs().max() <= 1


def test_full_wan_vae_widths_unchanged():
    # the real file's layout: 96 base channels; from_state_dict must give the same module shapes
    cfg = VAEConfig()
    assert cfg.decoder_widths() == (384, 384, 384, 192, 96) and cfg.encoder_widths() == (96, 96, 192, 384, 384)


# ------------------------------------------------------------------------------- one interface


def _decoder(kind, decoder_files, golden_dir):
    path = golden_dir / "vae" / "tiny_wan_vae.pth" if kind == "wan" else decoder_files / DECODERS[kind].filename
    if kind == "lighttae":
        path = decoder_files / "taew2_1.pth"  # same architecture; only the latent convention differs
    return load_decoder(kind, path)


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_every_decoder_has_the_wan_stream_contract(kind, decoder_files, golden_dir):
    ae = _decoder(kind, decoder_files, golden_dir)
    stream = ae.stream_decoder()
    first, second = stream.decode(_latents(3, 1)), stream.decode(_latents(3, 2))
    assert first.shape == (1, 9, 3, 32, 48) and second.shape == (1, 12, 3, 32, 48)
    assert first.dtype == torch.float32 and first.min() >= -1 and first.max() <= 1

    enc = ae.stream_encoder()
    video = torch.rand(1, 3, 21, 32, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    z0, z1 = enc.encode(video[:, :, :9]), enc.encode(video[:, :, 9:])
    assert z0.shape == (1, 3, 16, 4, 6) and z1.shape == (1, 3, 16, 4, 6)
    with pytest.raises(ValueError):
        ae.stream_encoder().encode(video[:, :, :8])  # a first chunk is 1 + 4k frames


def test_tiny_encoder_first_chunk_is_aligned_with_the_wan_grid(decoder_files):
    """9 frames -> 3 latents: frame 0 is repeated 3 times in front, mirroring the decoder's trim."""
    ae = load_decoder("tae", decoder_files / "taew2_1.pth")
    video = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = ae.stream_encoder().encode(video)
    frames = (video.permute(0, 2, 1, 3, 4) + 1) / 2
    padded = torch.cat([frames[:, :1]] * 3 + [frames], dim=1)
    assert torch.allclose(z, ae.module.encode(padded), atol=1e-6)


def test_lighttae_converts_between_normalized_and_wan_latents(decoder_files):
    tae = load_decoder("tae", decoder_files / "taew2_1.pth")
    light = load_decoder("lighttae", decoder_files / "taew2_1.pth")
    latents = _latents(2)
    mean, std = light.stats(torch.device("cpu"))
    rel, _ = compare(light.stream_decoder().decode(latents), tae.stream_decoder().decode(latents * std + mean))
    assert rel < 1e-6
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(6)) * 2 - 1
    rel, _ = compare(light.stream_encoder().encode(video), (tae.stream_encoder().encode(video) - mean) / std)
    assert rel < 1e-5


def test_bad_decoder_choices_are_input_errors(decoder_files, golden_dir):
    with pytest.raises(InputError, match="expected one of wan, lightvae, tae, lighttae"):
        decoder_spec("taehv")
    assert decoder_spec(" LightTAE ").kind == "lighttae"
    with pytest.raises(InputError, match=r"--vae wan expects Wan2.1_VAE.pth.*taew2_1.pth"):
        load_decoder("wan", decoder_files / "taew2_1.pth")
    with pytest.raises(InputError, match=r"--vae tae expects taew2_1.pth.*tiny_wan_vae.pth"):
        load_decoder("tae", golden_dir / "vae" / "tiny_wan_vae.pth")
    with pytest.raises(InputError, match="not found"):
        load_decoder("lighttae", decoder_files / "missing.pth")
    assert InputError.exit_code == 2
