"""The KV cache and memory bank on their own: which frames a pass sees, and how the bank evolves.

Keys are filled with their frame index, so a key set can be read back as a list of frames.
"""

import pytest
import torch

from memflow_cli.engine.generator import switch_chunks
from memflow_cli.engine.memory import MemoryBank, MemoryLayout, StreamMemory, route_sparse


def make_memory(sink=3, slots=3, window=9, layers=1, tokens=2, heads=1, dim=4, sma=None):
    layout = MemoryLayout(layers=layers, heads=heads, head_dim=dim, frame_tokens=tokens,
                          sink_frames=sink, bank_slots=slots, window_frames=window)
    return StreamMemory(layout, text_len=4, device="cpu", dtype=torch.float32, sma_top_k=sma)


def frame_keys(first, count, tokens=2, dim=4):
    ids = torch.arange(first, first + count, dtype=torch.float32).repeat_interleave(tokens)
    return ids[None, :, None, None].expand(1, count * tokens, 1, dim).clone()


def run_pass(mem, first, count, commit, stage, refresh=False, advance=True):
    if refresh:
        mem.refresh_bank()
    mem.begin_pass(first, count, commit=commit, stage=stage)
    kv = frame_keys(first, count)
    keys, _ = mem.key_set(0, kv, kv, kv)
    mem.end_pass(staging_advances=advance)
    return sorted({int(f) for f in keys[0, :, 0, 0].tolist()}), keys.shape[1] // 2


def run_chunk(mem, chunk, steps=4, record_interval=3):
    first = 3 * chunk
    seen = [run_pass(mem, first, 3, commit=False, stage=False, refresh=(i == 0)) for i in range(steps)]
    record = first % (3 * record_interval) == 0
    seen.append(run_pass(mem, first, 3, commit=True, stage=record))
    return seen


def test_key_set_sizes_follow_the_reference_trace():
    # spec §4.3: key tokens per chunk for 1560-token frames = 4680, 10920, 15600, 20280, 21840 x3, then 23400.
    expected_frames = [3, 7, 10, 13, 14, 14, 14, 15, 15, 15, 15]
    mem = make_memory()
    for chunk, frames in enumerate(expected_frames):
        seen = run_chunk(mem, chunk)
        assert {count for _, count in seen} == {frames}, f"chunk {chunk}"


def test_steady_state_key_set_is_sink_bank_and_last_nine_frames():
    mem = make_memory()
    for chunk in range(12):
        seen = run_chunk(mem, chunk)
    frames, count = seen[0]  # chunk 11, first denoising pass
    assert count == 15
    assert set(frames) == {0, 1, 2} | set(mem.bank.frame_ids[0]) | set(range(27, 36))


def test_bank_fills_one_slot_per_record_chunk_then_compresses():
    mem = make_memory()
    history = []
    for chunk in range(10):
        run_chunk(mem, chunk)
        history.append(list(mem.bank.frame_ids[0]))
    assert history[0] == []
    assert history[1] == history[3] == [0]
    assert history[4] == history[6] == [0, 9]
    assert history[7] == history[9] == [0, 9, 18]
    # chunk 10: full bank + staged frame 27 -> compression keeps two slots and appends 27
    run_chunk(mem, 10)
    assert mem.bank.frame_ids[0][-1] == 27 and len(mem.bank.frame_ids[0]) == 3


def test_zero_text_keys_keep_the_lowest_slots_in_order():
    mem = make_memory()
    for chunk in range(10):
        run_chunk(mem, chunk)
    mem.text.reset()  # a prompt switch zeroes the text keys: every score is exactly 0
    keep = mem.bank.keep_order(mem.text.keys)
    assert keep[0, 0].tolist() == [0, 1]


def test_compression_keeps_best_scoring_slots_first():
    layout = MemoryLayout(layers=1, heads=1, head_dim=2, frame_tokens=1, sink_frames=0, bank_slots=3, window_frames=3)
    k = torch.zeros(1, 1, 3, 1, 2)
    bank = MemoryBank(k, torch.zeros_like(k), layout)
    bank.slots_k[0, 0, :, 0, 0] = torch.tensor([1.0, 3.0, 2.0])
    text = torch.ones(1, 1, 4, 1, 2)
    assert bank.keep_order(text)[0, 0].tolist() == [1, 2]


def test_recache_rewrites_window_but_not_sink():
    mem = make_memory()
    for chunk in range(5):
        run_chunk(mem, chunk)
    sink_before = mem.cache.sink_k.clone()
    mem.begin_pass(3, 12, commit=True, stage=False)
    new = frame_keys(3, 12) + 100.0
    keys, _ = mem.key_set(0, new, new, new)
    mem.end_pass()
    assert torch.equal(mem.cache.sink_k, sink_before), "a recompute must not touch the sink"
    window = sorted({int(f) for f in mem.cache.window_k[0, 0, :, 0, 0].tolist()})
    assert window == [106 + i for i in range(9)]  # frames 6..14, recomputed
    assert mem.cache.committed_frames == 15, "a recompute does not move the counters"
    seen = {int(f) for f in keys[0, :, 0, 0].tolist()}
    assert {103, 104, 105}.isdisjoint(seen), "the first recached frames are queries only"


def test_early_switch_rewrites_the_sink():
    mem = make_memory()
    for chunk in range(2):
        run_chunk(mem, chunk)
    mem.begin_pass(0, 6, commit=True, stage=False)
    new = frame_keys(0, 6) + 100.0
    mem.key_set(0, new, new, new)
    mem.end_pass()
    assert sorted({int(f) for f in mem.cache.sink_k[0, 0, :, 0, 0].tolist()}) == [100, 101, 102]


def test_without_sink_the_bank_is_ignored():
    mem = make_memory(sink=0, window=12)
    for chunk in range(8):
        seen = run_chunk(mem, chunk)
    assert all(count == 12 for _, count in seen)


def test_sparse_routing_picks_most_relevant_frames_per_head():
    frames, tokens = 4, 2
    k = torch.zeros(1, frames * tokens, 2, 3)
    k[0, :, 0, 0] = torch.tensor([1, 1, 5, 5, 2, 2, 9, 9], dtype=torch.float32)  # head 0 likes frames 3, 1, 2
    k[0, :, 1, 0] = torch.tensor([9, 9, 1, 1, 8, 8, 7, 7], dtype=torch.float32)  # head 1 likes frames 0, 2, 3
    q = torch.zeros(1, 5, 2, 3)
    q[..., 0] = 1.0
    routed, _ = route_sparse(q, k, k, tokens, top_k=3)
    assert routed[0, ::tokens, 0, 0].tolist() == [5, 2, 9]  # kept in candidate order
    assert routed[0, ::tokens, 1, 0].tolist() == [9, 8, 7]


def test_switch_chunks_follow_chunk_granularity():
    assert switch_chunks([40, 80, 120, 160, 200], 80) == [14, 27, 40, 54, 67]
    assert switch_chunks([15, 30], 14) == [5, 10]
    assert switch_chunks([4, 5], 10) == [2, 3]  # at most one advance per chunk
    assert switch_chunks([0], 3) == [0]


@pytest.mark.parametrize("sink,window", [(3, 9), (3, 7), (6, 6)])
def test_window_always_holds_the_most_recent_frames(sink, window):
    mem = make_memory(sink=sink, window=window)
    for chunk in range(9):
        run_chunk(mem, chunk)
    held = sorted({int(f) for f in mem.cache.window_k[0, 0, :, 0, 0].tolist()})
    assert held == list(range(27 - window, 27))


def test_without_bank_slots_the_key_set_is_sink_and_window_and_steady_state_is_the_buffer():
    mem = make_memory(slots=0)
    sizes = []
    for chunk in range(6):
        seen = run_chunk(mem, chunk, record_interval=1)  # staging is asked for, but there is nowhere to put it
        sizes.append({count for _, count in seen})
    assert sizes == [{3}, {6}, {9}, {12}, {12}, {12}]
    frames, _ = seen[0]
    assert frames == [0, 1, 2] + list(range(9, 18))
    assert mem.k.shape[2] == 12 * 2 and mem.bank.frame_ids == [[]]


def test_steady_state_passes_reuse_their_index_tensors_and_share_one_shape():
    """The plan of a pass is index tensors built once per pattern: after the warm-up, chunks add none, and
    every pass of the steady state has the same Python values (what a compiled block is guarded on)."""
    mem = make_memory()
    for chunk in range(8):
        run_chunk(mem, chunk)
    patterns = len(mem._indices)
    plans = []
    for chunk in range(8, 40):
        first = 3 * chunk
        for stage in (False, True):
            mem.begin_pass(first, 3, commit=stage, stage=stage)
            plans.append(mem.plan)
            assert mem.steady
            kv = frame_keys(first, 3)
            mem.key_set(0, kv, kv, kv)
            mem.end_pass()
    assert len(mem._indices) <= patterns + 3  # at most the ring's other write positions
    assert {(p.whole, p.write_src, p.memory_index, p.window_index, p.key_index, p.memory_tokens, p.frames) for p in plans} == {
        (True, None, None, None, None, (3 + 3) * 2, 3)}
    assert len({id(p.write_dst) for p in plans}) == 3  # the window ring has 9 / 3 write positions
