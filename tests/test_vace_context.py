"""The 96-channel VACE context, checked against hand-built inputs and against whole-video encoding."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from memflow_cli.errors import InputError
from memflow_cli.model.vae import VAEConfig, WanVAE
from memflow_cli.inputs.vace import (
    FrameBuffer,
    VaceContextStream,
    WanStreamEncoder,
    chunk_pixel_range,
    mask_time_indices,
    nearest_exact_indices,
    pixel_frame_count,
    space_to_depth,
    split_by_mask,
)

H, W = 16, 24  # latent 2x3


@pytest.fixture(scope="module")
def vae():
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = WanVAE(VAEConfig(dim=4))
    return model.eval().requires_grad_(False)


def _video(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, 3, H, W, generator=g) * 2 - 1


def _chunks(tensor, size):
    return [tensor[i : i + size] for i in range(0, tensor.shape[0], size)]


# -- time ---------------------------------------------------------------------------------------------------


def test_time_index_examples_from_the_official_resampling():
    assert nearest_exact_indices(81, 21)[:4] == [1, 5, 9, 13]
    assert nearest_exact_indices(9, 3) == [1, 4, 7]
    assert nearest_exact_indices(12, 3) == [2, 6, 10]
    assert mask_time_indices(21) == nearest_exact_indices(81, 21)
    assert pixel_frame_count(21) == 81


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 120))
def test_time_index_map_equals_interpolate_nearest_exact(source, target):
    ramp = torch.arange(source, dtype=torch.float64).view(1, 1, source)
    picked = F.interpolate(ramp, size=target, mode="nearest-exact").flatten().long().tolist()
    assert nearest_exact_indices(source, target) == picked


def test_chunk_pixel_ranges():
    assert [chunk_pixel_range(k, 3) for k in range(3)] == [(0, 9), (9, 21), (21, 33)]
    # The mask of a chunk's latents lies at most one pixel frame past the chunk's own frames.
    for latents in range(3, 300, 3):
        index = mask_time_indices(latents)
        for chunk in range(latents // 3):
            start, stop = chunk_pixel_range(chunk, 3)
            picks = index[3 * chunk : 3 * chunk + 3]
            assert start - 2 <= min(picks) and max(picks) <= stop
            assert max(picks) < pixel_frame_count(latents)


# -- space ---------------------------------------------------------------------------------------------------


def test_space_to_depth_channel_order():
    mask = torch.zeros(2, 16, 24)
    mask[1, 8 + 3, 16 + 5] = 1.0  # latent pixel (1, 2), dy=3, dx=5
    mask[0, 7, 0] = 0.25  # latent pixel (0, 0), dy=7, dx=0
    out = space_to_depth(mask)
    assert out.shape == (2, 64, 2, 3)
    assert out[1, 3 * 8 + 5, 1, 2] == 1.0 and out[0, 7 * 8 + 0, 0, 0] == 0.25
    assert out.sum() == 1.25
    # every pixel lands exactly once
    ramp = torch.arange(2 * 16 * 24, dtype=torch.float32).view(2, 16, 24)
    assert torch.equal(space_to_depth(ramp).flatten().sort().values, ramp.flatten())


def test_inactive_reactive_split_binarises_at_one_half():
    frames = torch.tensor([0.4, -0.8, 0.6, 1.0]).view(4, 1, 1, 1).expand(4, 3, 1, 2).clone()
    mask = torch.tensor([0.0, 0.5, 0.51, 1.0]).view(4, 1, 1).expand(4, 1, 2)
    inactive, reactive = split_by_mask(frames, mask)
    assert inactive[:, 0, 0, 0].tolist() == pytest.approx([0.4, -0.8, 0.0, 0.0])
    assert reactive[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.6, 1.0])
    assert torch.equal(inactive + reactive, frames)


# -- streams -------------------------------------------------------------------------------------------------


def test_stream_encoder_equals_whole_video_encoding(vae):
    video = _video(21)
    enc = WanStreamEncoder(vae)
    streamed = torch.cat([enc.encode(video[a:b].permute(1, 0, 2, 3)[None]) for a, b in [(0, 9), (9, 21)]], dim=1)
    whole = vae.encode(video.permute(1, 0, 2, 3)[None])
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)


def test_frame_buffer_lookahead_and_release():
    buffer = FrameBuffer(_chunks(torch.arange(10.0), 4), "test video")
    assert buffer.get(0, 5).tolist() == [0, 1, 2, 3, 4]
    buffer.release(3)
    assert buffer.get(3, 9).tolist() == [3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="released"):
        buffer.get(2, 4)
    with pytest.raises(InputError, match="test video: ends after 10 frames; frame 11 is needed"):
        buffer.get(9, 12)


def _encode_whole(vae, video):
    return vae.encode(video.permute(1, 0, 2, 3)[None])


def test_context_with_control_and_mask(vae):
    latents = 6
    pixels = pixel_frame_count(latents)  # 21
    control = _video(pixels, seed=1)
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(pixels, H, W, generator=g)
    # the control arrives in odd-sized pieces, the mask in others: chunking must not matter
    stream = VaceContextStream(vae, num_latent_frames=latents, height=H, width=W,
                               control=_chunks(control, 5), mask=_chunks(mask, 7))
    chunks = [stream.next_chunk() for _ in range(latents // 3)]
    assert all(c.shape == (1, 3, 96, H // 8, W // 8) for c in chunks)
    context = torch.cat(chunks, dim=1)

    m = (mask > 0.5).float()[:, None]
    torch.testing.assert_close(context[:, :, :16], _encode_whole(vae, control * (1 - m)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(context[:, :, 16:32], _encode_whole(vae, control * m), rtol=1e-5, atol=1e-5)
    picks = nearest_exact_indices(pixels, latents)  # [1, 5, 8, 12, 15, 19]
    assert picks == [1, 5, 8, 12, 15, 19]
    for j, p in enumerate(picks):
        y, x, dy, dx = 1, 2, 6, 1
        assert context[0, j, 32 + dy * 8 + dx, y, x] == mask[p, 8 * y + dy, 8 * x + dx]  # not binarised
        assert torch.equal(context[0, j, 32:], space_to_depth(mask[p : p + 1])[0])
    with pytest.raises(IndexError):
        stream.next_chunk()


def test_no_mask_means_all_reactive_and_mask_ones(vae):
    control = _video(9, seed=3)
    stream = VaceContextStream(vae, num_latent_frames=3, height=H, width=W, control=[control])
    context = stream.next_chunk()
    torch.testing.assert_close(context[:, :, 16:32], _encode_whole(vae, control), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(context[:, :, :16], _encode_whole(vae, torch.zeros_like(control)), rtol=1e-5, atol=1e-5)
    assert torch.equal(context[:, :, 32:], torch.ones_like(context[:, :, 32:]))


def test_references_prepended_to_every_chunk(vae):
    refs = [_video(1, seed=4)[0], _video(1, seed=5)[0]]
    stream = VaceContextStream(vae, num_latent_frames=6, height=H, width=W, references=refs)
    first, second = stream.next_chunk(), stream.next_chunk()
    assert stream.reference_frames == 2 and first.shape == (1, 5, 96, 2, 3)
    assert torch.equal(first[:, :2], second[:, :2])
    for i, ref in enumerate(refs):
        torch.testing.assert_close(first[:, i : i + 1, :16], _encode_whole(vae, ref[None]), rtol=1e-5, atol=1e-5)
    assert not first[:, :2, 16:].any()  # zero reactive latent and zero mask for references
    # no control video: frames are zero, mask is one -> both latent streams see zeros
    torch.testing.assert_close(first[:, 2:, :16], first[:, 2:, 16:32])
    assert torch.equal(first[:, 2:, 32:], torch.ones_like(first[:, 2:, 32:]))


def test_short_control_is_reported_by_name(vae):
    stream = VaceContextStream(vae, num_latent_frames=6, height=H, width=W, control=[_video(15)])
    stream.next_chunk()
    with pytest.raises(InputError, match="control video: ends after 15 frames"):
        stream.next_chunk()


def test_frames_past_the_timeline_repeat_the_last_one(vae):
    control = _video(16, seed=6)  # a 1 s timeline: 16 frames, the chunk grid has 21
    padded = torch.cat([control, control[-1:].expand(5, -1, -1, -1)])
    a = VaceContextStream(vae, num_latent_frames=6, height=H, width=W, control=_chunks(control, 12), covers=16)
    b = VaceContextStream(vae, num_latent_frames=6, height=H, width=W, control=[padded])
    for _ in range(2):
        assert torch.equal(a.next_chunk(), b.next_chunk())
    short = VaceContextStream(vae, num_latent_frames=6, height=H, width=W, control=[control[:15]], covers=16)
    short.next_chunk()
    with pytest.raises(InputError, match="ends after 15 frames"):
        short.next_chunk()
