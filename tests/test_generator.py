"""The streaming generator beyond the golden cases: seeds, injected noise, other sizes and dtypes."""

from pathlib import Path

import pytest
import torch

from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.engine.generator import StreamingGenerator, StreamSettings

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def model():
    return load_dit(GOLDEN / "dit" / "tiny_dit_config.json", GOLDEN / "dit" / "base.pt")


def text(seed, rows=20):
    return torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed))


def render(model, chunks=4, seed=0, h=4, w=6, dtype=torch.float32, settings=StreamSettings(), switch_at=None, **kw):
    gen = StreamingGenerator(model.to(dtype), settings, num_latent_frames=3 * chunks, latent_height=h, latent_width=w,
                             seed=seed, dtype=dtype, **kw)
    gen.set_conditioning(text(1))
    out = []
    for i in range(chunks):
        if switch_at == i:
            gen.set_conditioning(text(2))
        out.append(gen.next_chunk())
    return torch.cat(out, 1), gen


def test_same_seed_same_video_other_seed_other_video(model):
    a, _ = render(model, seed=3)
    b, _ = render(model, seed=3)
    c, _ = render(model, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (1, 12, 16, 4, 6)


def test_injected_noise_replaces_the_draws(model):
    _, drawn = render(model, seed=9, keep_records=True)
    noise = torch.cat([r.noise for r in drawn.records], 1)
    eps = {}
    torch.manual_seed(0)
    for c in range(4):
        for s in range(3):
            eps[c, s] = torch.randn(3, 16, 4, 6)
    a, _ = render(model, seed=1, noise=noise, renoise=lambda c, s: eps[c, s])
    b, _ = render(model, seed=2, noise=noise, renoise=lambda c, s: eps[c, s])
    assert torch.equal(a, b)


def test_a_prompt_switch_recaches_and_changes_what_follows(model):
    plain, _ = render(model, chunks=6)
    switched, gen = render(model, chunks=6, switch_at=5, keep_records=True)
    assert torch.equal(plain[:, :15], switched[:, :15])
    assert not torch.allclose(plain[:, 15:], switched[:, 15:])
    assert [r.recached for r in gen.records] == [False] * 5 + [True]
    assert gen.records[5].key_frames[0] == 3 + 2 + 9  # recache pass: sink, 2 bank slots, 9 recomputed frames


def test_any_resolution_multiple_of_16(model):
    out, gen = render(model, chunks=2, h=6, w=10)  # 48x80 pixels
    assert gen.frame_tokens == 15 and out.shape[-2:] == (6, 10)
    with pytest.raises(ValueError, match="multiple"):
        StreamingGenerator(model, num_latent_frames=3, latent_height=5, latent_width=6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(model, dtype):
    ref, _ = render(model, chunks=3)
    low, _ = render(model, chunks=3, dtype=dtype)
    model.float()  # the golden weights are bf16-exact, so the round trip is lossless
    assert low.dtype == dtype
    rel = ((low.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel < 0.05, rel


def test_sma_and_single_prompt_modes_run_and_differ(model):
    base, _ = render(model, chunks=12)
    sma, _ = render(model, chunks=12, settings=StreamSettings(sma=True))
    single, _ = render(model, chunks=12, settings=StreamSettings(bank_staging="every_chunk"))
    assert not torch.allclose(base, sma)
    assert not torch.allclose(base, single)


def test_bad_settings_are_rejected(model):
    with pytest.raises(ValueError):
        StreamSettings(bank_staging="sometimes")
    with pytest.raises(ValueError):
        StreamSettings(sink_size=12, local_attn_size=12)
    with pytest.raises(ValueError, match="multiple of 3"):
        StreamingGenerator(model, num_latent_frames=4, latent_height=4, latent_width=6)
    gen = StreamingGenerator(model, num_latent_frames=3, latent_height=4, latent_width=6)
    with pytest.raises(RuntimeError, match="set_conditioning"):
        gen.next_chunk()


def test_noise_drawn_chunk_by_chunk_is_the_reference_stream(model):
    """The reference draws the whole initial noise, then the re-noising draws, from one generator."""
    chunks, h, w = 4, 4, 6
    _, gen = render(model, chunks=chunks, seed=21, h=h, w=w, keep_records=True)
    rng = torch.Generator().manual_seed(21)
    whole = torch.randn(1, 3 * chunks, 16, h, w, generator=rng)
    steps = len(gen.timesteps)
    renoise = [torch.randn(3, 16, h, w, generator=rng) for _ in range(chunks * (steps - 1))]
    assert torch.equal(torch.cat([r.noise for r in gen.records], 1), whole)
    assert torch.equal(torch.stack([e for r in gen.records for e in r.renoise]).reshape(-1, 3, 16, h, w), torch.stack(renoise))


def test_memory_does_not_grow_with_the_video_length(model):
    """The generator holds the same tensors for any length: a 300-million-frame video (460 GB of initial noise
    if it were drawn up front) starts like a short one, with the same first chunks."""
    zeros = lambda c, s: torch.zeros(3, 16, 4, 6)  # noqa: E731 (skipping 10^8 chunks of the stream would take a while)

    def first_two(frames):
        gen = StreamingGenerator(model, num_latent_frames=frames, latent_height=4, latent_width=6, seed=1, renoise=zeros)
        gen.set_conditioning(text(1))
        out = torch.cat([gen.next_chunk() for _ in range(2)], 1)
        held = {k: tuple(v.shape) for k, v in vars(gen).items() if isinstance(v, torch.Tensor)}
        return out, held, [tuple(t.shape) for t in gen.latents]

    long_out, long_held, long_latents = first_two(3 * 10**8)
    short_out, short_held, short_latents = first_two(6)
    assert long_held == short_held and long_latents == short_latents
    assert torch.equal(long_out, short_out)


LONGLIVE = StreamSettings(bank_size=0, record_interval=None)


def test_without_a_bank_keys_are_sink_plus_window_and_a_late_switch_keeps_the_sink(model):
    plain, gen = render(model, chunks=7, settings=LONGLIVE, keep_records=True)
    assert [r.key_frames[0] for r in gen.records] == [3, 6, 9, 12, 12, 12, 12]
    assert all(r.bank_frames == [[], []] for r in gen.records)
    assert gen.memory.bank.staged_k.numel() == 0  # no bank: no staging buffer either
    sink_before = gen.memory.cache.sink_k.clone()
    # Same run with a switch at chunk 6 (frame 18): the re-cache covers frames 6..17 and keeps the sink.
    switched, gen2 = render(model, chunks=7, settings=LONGLIVE, switch_at=6, keep_records=True)
    assert torch.equal(plain[:, :18], switched[:, :18])
    assert not torch.allclose(plain[:, 18:], switched[:, 18:])
    assert gen2.records[6].recached and gen2.records[6].key_frames[0] == 12
    assert torch.equal(gen2.memory.cache.sink_k, sink_before)


def test_without_a_bank_an_early_switch_rewrites_the_sink(model):
    _, plain = render(model, chunks=3, settings=LONGLIVE)
    _, early = render(model, chunks=3, settings=LONGLIVE, switch_at=2)  # re-cache of frames 0..5
    assert not torch.allclose(plain.memory.cache.sink_k, early.memory.cache.sink_k)


def test_bank_settings_must_agree():
    assert not LONGLIVE.has_bank and StreamSettings().has_bank
    with pytest.raises(ValueError, match="record_interval"):
        StreamSettings(bank_size=3, record_interval=None)
    with pytest.raises(ValueError, match="bank_size"):
        StreamSettings(bank_size=-1)
