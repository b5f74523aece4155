"""Video-to-video: streaming encoder, the generator's strength start, input checks, the chunk pipeline."""

from pathlib import Path

import numpy as np
import pytest
import torch

from golden_metric import compare
from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.errors import InputError
from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
from memflow_cli.model.vae import load_wan_vae
from memflow_cli.inputs.v2v import SourceLatents, resolve_video_input
from test_video_source import write_clip

GOLDEN = Path(__file__).parent / "golden"
H, W = 4, 6  # latent size (32x48 pixels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions: with several intra-op threads on a loaded machine, the threads' spinning costs
    # ~100x the work itself.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return load_dit(GOLDEN / "dit" / "tiny_dit_config.json", GOLDEN / "dit" / "base.pt")


@pytest.fixture(scope="module")
def vae():
    return load_wan_vae(GOLDEN / "vae" / "tiny_wan_vae.pth")


CHUNKS = 5  # enough for the bank to take its second frame (record chunks 0 and 3)


@pytest.fixture(scope="module")
def t2v(model):
    return run(model)


def text(seed, rows=20):
    return torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed))


def source_latents(chunks, seed=5):
    return torch.randn(1, 3 * chunks, 16, H, W, generator=torch.Generator().manual_seed(seed))


def run(model, chunks=CHUNKS, z=None, strength=None, settings=StreamSettings(), **kw):
    gen = StreamingGenerator(model, settings, num_latent_frames=3 * chunks, latent_height=H, latent_width=W,
                             seed=0, keep_records=True, **kw)
    gen.set_conditioning(text(1))
    out = []
    for i in range(chunks):
        if i == 2:
            gen.set_conditioning(text(2))  # a prompt switch: the re-cache must behave as in text-to-video
        if z is None:
            out.append(gen.next_chunk())
        else:
            s = strength[i] if isinstance(strength, list) else strength
            out.append(gen.next_chunk(source_latents=z[:, 3 * i: 3 * i + 3], strength=s))
    return torch.cat(out, 1), gen


# ------------------------------------------------------------------------------------------------ generator


def test_strength_one_is_text_to_video_exactly(model, t2v):
    t2v_out, a = t2v
    v2v, b = run(model, z=source_latents(CHUNKS), strength=1.0)
    assert torch.equal(t2v_out, v2v)
    assert [r.bank_frames for r in a.records] == [r.bank_frames for r in b.records]
    assert [r.recached for r in b.records] == [False, False, True, False, False]


def test_first_step_input_is_the_mix_of_input_and_the_text_to_video_noise(model, t2v):
    z = source_latents(CHUNKS)
    _, ref = t2v
    _, gen = run(model, z=z, strength=0.75)
    for c, record in enumerate(gen.records):
        eps = ref.records[c].noise  # the same draw text-to-video starts from
        assert torch.equal(record.step_inputs[0], 0.25 * z[:, 3 * c: 3 * c + 3] + 0.75 * eps)
        # the timestep whose sigma is 0.75, then the warped list's steps below it (sigma 0.625 at t=625)
        assert record.step_timesteps == pytest.approx([750.0, 625.0])
        assert record.strength == 0.75
        # the re-noise to the list's last step uses text-to-video's draw for that step
        assert torch.equal(record.renoise[0], ref.records[c].renoise[2])


def test_low_strength_runs_one_step_and_keeps_the_record_schedule(model, t2v):
    z = source_latents(CHUNKS)
    _, ref = t2v
    out, gen = run(model, z=z, strength=0.3)
    assert all(r.step_timesteps == pytest.approx([300.0]) for r in gen.records)
    assert [r.bank_frames for r in gen.records] == [r.bank_frames for r in ref.records]
    assert gen.records[-1].bank_frames[0] == [0, 9]  # the bank keeps taking frames
    # low strength stays nearer the input than a higher one
    near, _ = compare(out, z)
    far, _ = compare(run(model, z=z, strength=0.75)[0], z)
    assert near < far


def test_per_chunk_strengths_keep_the_random_stream_aligned(model, t2v):
    # After low-strength chunks (fewer steps, fewer re-noises used) the random stream is where
    # text-to-video has it: later chunks re-noise with text-to-video's draws.
    _, gen = run(model, z=source_latents(CHUNKS), strength=[0.5, 0.7, 1.0, 1.0, 1.0])
    _, ref = t2v
    for r, expected in zip(gen.records[2:], ref.records[2:]):
        assert len(r.renoise) == 3 and all(torch.equal(a, b) for a, b in zip(r.renoise, expected.renoise))


def test_strength_and_latents_are_checked(model):
    gen = StreamingGenerator(model, num_latent_frames=3, latent_height=H, latent_width=W)
    gen.set_conditioning(text(1))
    z = source_latents(1)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            gen.next_chunk(source_latents=z, strength=bad)
    with pytest.raises(ValueError, match="both"):
        gen.next_chunk(source_latents=z)
    with pytest.raises(ValueError, match="shape"):
        gen.next_chunk(source_latents=z[:, :2], strength=0.5)


# ------------------------------------------------------------------------------------------------ encoder


def test_streaming_encode_equals_whole_clip_encode(vae):
    torch.manual_seed(3)
    video = torch.rand(1, 3, 33, 16, 16) * 2 - 1
    whole = vae.encode(video)
    stream = vae.stream_encoder()
    parts = [stream.encode(video[:, :, a:b]) for a, b in ((0, 9), (9, 21), (21, 33))]
    assert [p.shape[1] for p in parts] == [3, 3, 3] and stream.calls == [9, 12, 12]
    rel, mx = compare(torch.cat(parts, 1), whole)
    assert rel < 1e-6 and mx < 1e-5, (rel, mx)
    with pytest.raises(ValueError, match="multiple of 4"):
        stream.encode(video[:, :, :5])
    with pytest.raises(ValueError, match="first chunk"):
        vae.stream_encoder().encode(video[:, :, :4])


# ------------------------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = np.random.default_rng(0).integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    return write_clip(tmp_path_factory.mktemp("v2v") / "in.mkv", frames)


def test_chunks_reach_the_encoder_as_9_12_12(clip, vae):
    request = resolve_video_input(clip, timeline_frames=30)
    latents = SourceLatents(request, 16, 16, vae.stream_encoder())
    items = list(latents)
    assert [i.frames for i in items] == [9, 12, 12]
    assert latents.encoder.calls == [9, 12, 12]
    assert all(i.latents.shape == (1, 3, 16, 2, 2) and i.strength == 0.7 for i in items)
    # the same latents as one whole-clip encode of the (lossless) input, tail padded with its last frame
    from memflow_cli.inputs.video_source import VideoSource, frames_to_video_tensor

    frames = np.concatenate(list(VideoSource(clip, 16, 16).chunks()))
    whole = vae.encode(frames_to_video_tensor(frames))
    rel, _ = compare(torch.cat([i.latents for i in items], 1), whole)
    assert rel < 1e-6


def test_noise_controller_sets_a_strength_per_chunk(tmp_path, vae):
    still = np.full((21, 16, 16, 3), 128, np.uint8)
    still[9:] = np.random.default_rng(1).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)  # motion in chunk 1
    path = write_clip(tmp_path / "still_then_noise.mkv", still)
    request = resolve_video_input(path, timeline_frames=None, file_controller=True, strength=0.5)
    assert request.noise_controller and request.frames == 21
    latents = SourceLatents(request, 16, 16, vae.stream_encoder())
    strengths = [i.strength for i in latents]
    assert strengths == pytest.approx([0.9 * 0.8 + 0.05, 0.9 * 0.6 + 0.05])
    off = resolve_video_input(path, timeline_frames=None, file_controller=True, noise_controller=False)
    assert not off.noise_controller


def test_input_checks_before_any_weights(clip, tmp_path):
    assert resolve_video_input(None, timeline_frames=20) is None
    with pytest.raises(InputError, match="t.json: made for video-to-video .* pass the input video with --video"):
        resolve_video_input(None, timeline_frames=20, input_mode="video", where="t.json")
    with pytest.raises(InputError, match="--strength: only means something with an input video"):
        resolve_video_input(None, timeline_frames=20, strength=0.5)
    for bad in (0, 1.01, -1, float("inf")):
        with pytest.raises(InputError, match=r"--strength: expected a strength in \(0, 1\]"):
            resolve_video_input(clip, timeline_frames=20, strength=bad)
    with pytest.raises(InputError, match="t.json: noise scale"):
        resolve_video_input(clip, timeline_frames=20, file_strength=3, where="t.json")
    with pytest.raises(InputError, match="in.mkv: the input video has 30 frames .* the timeline needs 31"):
        resolve_video_input(clip, timeline_frames=31)
    with pytest.raises(InputError, match="--fit"):
        resolve_video_input(clip, timeline_frames=20, fit="zoom")
    ok = resolve_video_input(clip, timeline_frames=20, file_strength=0.4, strength=None)
    assert (ok.frames, ok.strength, ok.fit, ok.noise_controller) == (20, 0.4, "crop", False)
    assert resolve_video_input(clip, timeline_frames=None).frames == 30  # --prompt: the video's length
    assert resolve_video_input(clip, timeline_frames=20, file_strength=0.4, strength=0.9).strength == 0.9
