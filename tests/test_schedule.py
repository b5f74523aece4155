"""Seconds → chunks: frame counts, switch points, gaps, transitions (timelines.md §2–3)."""

from pathlib import Path

import pytest

from memflow_cli.inputs.schedule import Blend, Transition, chunk_start_frame, chunks_for_frames, plan
from memflow_cli.inputs.timeline import Block, Timeline, WeightedPrompt, read_timeline, segment_times

FIXTURES = Path(__file__).parent / "fixtures"


def _timeline(*blocks):
    return Timeline(tuple(blocks))


def _b(start, end, *texts, steps=0, method="linear", weights=None):
    weights = weights or [1.0] * len(texts)
    return Block(float(start), float(end), tuple(WeightedPrompt(t, w) for t, w in zip(texts, weights)), steps, method)


def test_chunk_frames():
    assert [chunk_start_frame(c) for c in range(4)] == [0, 9, 21, 33]
    assert chunks_for_frames(1) == 1 and chunks_for_frames(9) == 1 and chunks_for_frames(10) == 2
    assert chunks_for_frames(21) == 2 and chunks_for_frames(22) == 3


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.5, 10.0, 59.8125, 60.0])
def test_exact_frame_count(seconds):
    s = plan(_timeline(_b(0, seconds, "a")))
    assert s.total_frames == round(seconds * 16)
    assert sum(c.frames for c in s.chunks) == s.total_frames
    assert all(c.frames > 0 for c in s.chunks)
    assert s.num_latent_frames == 3 * s.num_chunks
    # whole chunks: the last one is needed, one fewer would not be enough
    assert chunk_start_frame(s.num_chunks - 1) < s.total_frames


def test_reference_default_switch_points():
    # 240 latent frames, switches at latent 40/80/120/160/200 → chunks 14, 27, 40, 54, 67 (inference spec §6).
    times = segment_times(6, None, [40, 80, 120, 160, 200], 240, "x")
    t = _timeline(*[_b(a, b, f"p{i}") for i, (a, b) in enumerate(times)])
    s = plan(t)
    assert s.total_frames == 957 and s.num_chunks == 80 and s.num_latent_frames == 240
    assert s.switches == [14, 27, 40, 54, 67]
    assert [chunk_start_frame(c) for c in s.switches] == [165, 321, 477, 645, 801]


def test_switch_at_first_chunk_at_or_after_start():
    # block 2 starts at 1.0 s = frame 16: chunk 1 starts at 9 (<16), chunk 2 at 21 → switch at chunk 2.
    s = plan(_timeline(_b(0, 1, "a"), _b(1, 3, "b")))
    assert s.switches == [2]
    assert s.chunks[1].conditioning == Blend(("a",), (1.0,)) and s.chunks[2].conditioning == Blend(("b",), (1.0,))
    # exactly on a chunk start (frame 21 = 1.3125 s) switches at that chunk
    assert plan(_timeline(_b(0, 1.3125, "a"), _b(1.3125, 3, "b"))).switches == [2]


def test_gap_keeps_previous_blend_and_first_chunk_marks_change():
    s = plan(_timeline(_b(0, 1, "a"), _b(2.5, 4, "b")))
    assert s.chunks[0].changed
    gap = [c for c in s.chunks if 16 <= c.first_frame < 40]
    assert gap and all(c.conditioning == Blend(("a",), (1.0,)) and not c.changed for c in gap)
    assert s.total_frames == 64


def test_short_block_inside_one_chunk_is_overridden():
    # blocks b and c both land on chunk 2: the later one wins
    s = plan(_timeline(_b(0, 1, "a"), _b(1, 1.1, "b"), _b(1.1, 3, "c")))
    assert s.chunks[2].conditioning == Blend(("c",), (1.0,))
    assert all(c.conditioning != Blend(("b",), (1.0,)) for c in s.chunks)


def test_transition_reaches_target_on_nth_chunk():
    s = plan(_timeline(_b(0, 1, "a"), _b(1, 4, "b", steps=3, method="slerp")))
    a, b = Blend(("a",), (1.0,)), Blend(("b",), (1.0,))
    c = s.chunks
    assert c[2].conditioning == Transition(a, b, 1 / 3, "slerp")
    assert c[3].conditioning == Transition(a, b, 2 / 3, "slerp")
    assert c[4].conditioning == b
    assert [x.changed for x in c[:6]] == [True, False, True, True, True, False]


def test_interrupted_transition_starts_from_blend_in_use():
    s = plan(_timeline(_b(0, 1, "a"), _b(1, 1.5, "b", steps=4), _b(1.5, 4, "c", steps=2)))
    a, b, c = (Blend((x,), (1.0,)) for x in "abc")
    # b (frame 16) starts at chunk 2 (first start ≥ 16 is 21); c (frame 24) at chunk 3 (starts at 33)
    mid = s.chunks[2].conditioning
    assert mid == Transition(a, b, 0.25, "linear")
    assert s.chunks[3].conditioning == Transition(mid, c, 0.5, "linear")
    assert s.chunks[4].conditioning == c


def test_transition_on_first_block_is_immediate():
    s = plan(_timeline(_b(0, 2, "a", steps=3)))
    assert s.chunks[0].conditioning == Blend(("a",), (1.0,))


def test_blend_normalised_and_merged():
    s = plan(_timeline(_b(0, 1, "a", "b", "a", weights=[20, 60, 20])), blend_method="slerp")
    blend = s.chunks[0].conditioning
    assert blend.texts == ("a", "b") and blend.weights == pytest.approx((0.4, 0.6)) and blend.method == "slerp"
    three = plan(_timeline(_b(0, 1, "a", "b", "c")), blend_method="slerp").chunks[0].conditioning
    assert three.method == "linear"  # slerp is for two prompts only


def test_fixture_v21_schedule():
    s = plan(read_timeline(FIXTURES / "scope_v21.json"))
    assert s.total_frames == 40 and s.num_chunks == 4
    assert s.switches == [2, 3]  # transition over 2 chunks starting at chunk 2 (frame 16 → 21)
    assert isinstance(s.chunks[2].conditioning, Transition) and s.chunks[2].conditioning.t == 0.5
