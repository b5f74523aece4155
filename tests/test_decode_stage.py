"""Decode and write while the next chunk generates (decode_stage.py): same frames, same errors, bounded, drained.

No timings are asserted here: what the overlap gains is measured by benchmarks/overlap.py.
"""

import functools
import json
import signal
import threading

import numpy as np
import pytest
import torch

from memflow_cli.engine.decode_stage import DecodeStage
from memflow_cli.render import Interrupted, RenderOptions, Renderer, render
from memflow_cli.inputs.timeline import prompt_timeline
from memflow_cli.render.video import VideoError, probe
from video_frames import decoded_frames

pytestmark = pytest.mark.usefixtures("isolated")


def stage_threads():
    return [t for t in threading.enumerate() if t.name == "memflow-decode"]



def options(tiny, out, **kw):
    return RenderOptions(output=out, weights_dir=tiny, width=32, height=32, **kw)


class Doubler:
    """A stand-in streaming decoder with state: each call's pixels depend on every earlier call (order matters)."""

    def __init__(self, fail_at=None, gate=None):
        self.calls, self.total, self.fail_at, self.gate = 0, 0.0, fail_at, gate

    def decode(self, latents):
        if self.gate is not None:
            self.gate.wait()
        if self.calls == self.fail_at:
            raise RuntimeError(f"decoder broke at call {self.calls}")
        self.calls += 1
        self.total += float(latents.sum())
        pixels = torch.tanh(latents[0] + self.total / 100)  # [n, 3, H, W]
        return pixels


def chunks(n, frames=3):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, frames, 3, 8, 8, generator=g) for _ in range(n)]


# ------------------------------------------------------------------------------------------------
# The stage alone


def test_stage_writes_in_order_the_serial_bytes():
    from memflow_cli.model.vae import pixels_to_uint8

    inputs = chunks(6)
    serial_decoder = Doubler()
    expected = [pixels_to_uint8(serial_decoder.decode(x))[:2].numpy() for x in inputs]
    got, reported = [], []
    with DecodeStage(Doubler(), [got.append], "cpu", depth=2, on_written=reported.append) as stage:
        for i, x in enumerate(inputs):
            stage.put(x, keep=2, tag=i)
        stage.drain()
        assert [w.tag for w in reported] == list(range(6)) and all(w.frames == 2 for w in reported)
    assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert not stage_threads()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA: the decode on a second stream"))])
def test_the_stage_owns_its_latents(device):
    """The generator may overwrite its buffers right after handing them in (CUDA graphs do): same frames."""
    from memflow_cli.model.vae import pixels_to_uint8

    inputs = [x.to(device) for x in chunks(5)]
    serial_decoder = Doubler()
    expected = [pixels_to_uint8(serial_decoder.decode(x)).cpu().numpy() for x in inputs]
    got = []
    buffer = torch.empty_like(inputs[0])
    with DecodeStage(Doubler(), [got.append], device) as stage:
        for x in inputs:
            buffer.copy_(x)
            stage.put(buffer)
            buffer.fill_(float("nan"))  # the next chunk's work reuses the buffer at once
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert not stage_threads()


def test_a_worker_error_is_raised_in_the_loop_and_the_thread_ends():
    got = []
    with pytest.raises(RuntimeError, match="decoder broke at call 2"):
        with DecodeStage(Doubler(fail_at=2), [got.append], "cpu") as stage:
            for x in chunks(8):
                stage.put(x)
            stage.drain()
    assert len(got) == 2  # the chunks before the failure were written, nothing after it
    assert not stage_threads()


def test_the_loop_runs_at_most_depth_chunks_ahead():
    gate = threading.Event()
    handed = []
    stage = DecodeStage(Doubler(gate=gate), [], "cpu", depth=2)

    def loop():
        for i, x in enumerate(chunks(6)):
            stage.put(x)
            handed.append(i)

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join(timeout=2)  # not a timing assertion: the loop must be blocked however long we wait
    assert thread.is_alive() and handed == [0, 1]  # chunk 2 waits until chunk 0 is written
    gate.set()
    thread.join()
    stage.close()
    assert handed == list(range(6)) and stage.written == 6 and not stage_threads()


# ------------------------------------------------------------------------------------------------
# Renders


def test_overlapped_render_equals_the_serial_render(tiny, tmp_path):
    timeline = prompt_timeline("a kite over the dunes", 3.0)  # 48 frames, 4 chunks
    serial = render(timeline, options(tiny, tmp_path / "serial.mp4", overlap=False))
    overlapped = render(timeline, options(tiny, tmp_path / "overlap.mp4"))
    assert serial.frames == overlapped.frames == 48
    assert np.array_equal(decoded_frames(tmp_path / "serial.mp4"), decoded_frames(tmp_path / "overlap.mp4"))
    assert (tmp_path / "serial.mp4").read_bytes() == (tmp_path / "overlap.mp4").read_bytes()
    assert "queue_wait" in overlapped.timings and "queue_wait" not in serial.timings
    assert all(overlapped.timings[k] > 0 for k in ("generate", "decode", "write"))
    manifest = json.loads((tmp_path / "overlap.manifest.json").read_text())
    assert "queue_wait" in manifest["timings_s"]
    assert not stage_threads()


def broken_decoder(monkeypatch, fail_at):
    """Every stream decoder made from now on raises on its `fail_at`-th call (counted from 0)."""
    from memflow_cli.engine.decoders import WanVideoAutoencoder

    made = WanVideoAutoencoder.stream_decoder

    def stream_decoder(self, **kw):
        inner = made(self, **kw)
        calls = [0]
        real = inner.decode

        def decode(latents):
            calls[0] += 1
            if calls[0] - 1 == fail_at:
                raise RuntimeError("the decoder ran out of memory")
            return real(latents)

        inner.decode = decode
        return inner

    monkeypatch.setattr(WanVideoAutoencoder, "stream_decoder", stream_decoder)


@pytest.mark.parametrize("overlap", [True, False])
def test_a_decoder_error_fails_the_render_like_the_serial_loop(tiny, tmp_path, monkeypatch, overlap):
    broken_decoder(monkeypatch, fail_at=2)
    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="the decoder ran out of memory"):
        render(prompt_timeline("a kite over the dunes", 4.0), options(tiny, out, overlap=overlap))
    assert not stage_threads()
    assert not out.exists() and not list(tmp_path.glob(".v.*"))  # the temporary file was discarded


@pytest.mark.parametrize("overlap", [True, False])
def test_a_writer_error_fails_the_render_like_the_serial_loop(tiny, tmp_path, monkeypatch, overlap):
    from memflow_cli.render.video import VideoWriter

    real = VideoWriter.write
    calls = [0]

    def write(self, frames):
        calls[0] += 1
        if calls[0] == 2:
            raise VideoError(f"{self.path}: ffmpeg stopped while writing (No space left on device)")
        return real(self, frames)

    monkeypatch.setattr(VideoWriter, "write", write)
    out = tmp_path / "v.mp4"
    with pytest.raises(VideoError, match="No space left on device"):
        render(prompt_timeline("a kite over the dunes", 4.0), options(tiny, out, overlap=overlap))
    assert not stage_threads() and not out.exists()


def test_the_render_loop_is_bounded_by_the_stage(tiny, tmp_path, monkeypatch):
    """A decoder that blocks: the generator gets at most depth + 1 chunks ahead of what is written."""
    from memflow_cli.engine import decode_stage
    from memflow_cli.engine.decoders import WanVideoAutoencoder
    from memflow_cli.engine.generator import StreamingGenerator

    gate, blocked = threading.Event(), threading.Event()
    generated, seen = [0], []
    made, next_chunk, wait = WanVideoAutoencoder.stream_decoder, StreamingGenerator.next_chunk, DecodeStage._wait

    def stream_decoder(self, **kw):
        inner = made(self, **kw)
        real = inner.decode
        inner.decode = lambda latents: (gate.wait(), real(latents))[1]
        return inner

    def counting(self, *a, **kw):
        generated[0] += 1
        return next_chunk(self, *a, **kw)

    def watched(self, ready, raise_failure=True):
        if not ready() and not gate.is_set():  # the loop is about to block on a full stage
            seen.append(generated[0])
            blocked.set()
        return wait(self, ready, raise_failure)

    def release():
        blocked.wait(timeout=120)
        gate.set()

    monkeypatch.setattr(WanVideoAutoencoder, "stream_decoder", stream_decoder)
    monkeypatch.setattr(StreamingGenerator, "next_chunk", counting)
    monkeypatch.setattr(DecodeStage, "_wait", watched)
    threading.Thread(target=release, daemon=True).start()
    summary = render(prompt_timeline("a kite over the dunes", 4.0), options(tiny, tmp_path / "v.mp4"))
    assert seen[0] == decode_stage.DEFAULT_DEPTH + 1  # chunk 0 decoding, chunk 1 queued, chunk 2 waits
    assert summary.complete and summary.frames == 64 and generated[0] == 6


def test_the_stage_is_drained_before_each_checkpoint(tiny, tmp_path, monkeypatch):
    from memflow_cli.render.resume import CheckpointRecorder
    from memflow_cli.render.video import VideoWriter

    saves, written = [], [0]
    save, write = CheckpointRecorder.save, VideoWriter.write

    def counting(self, frames):
        write(self, frames)
        written[0] = self.frames

    def checked(self, owners, next_chunk, frames, timings):
        saves.append((next_chunk, frames, written[0]))
        return save(self, owners, next_chunk, frames, timings)

    monkeypatch.setattr(VideoWriter, "write", counting)
    monkeypatch.setattr(CheckpointRecorder, "save", checked)
    def stop_at_3(chunk):  # a stop requested at chunk 3; a checkpoint after every chunk
        if chunk.index == 3:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted):
        render(prompt_timeline("a kite over the dunes", 6.0), options(tiny, tmp_path / "v.mp4", checkpoint_every=1e-9),
               on_chunk=stop_at_3)
    assert [s[0] for s in saves] == [1, 2, 3, 4]
    for next_chunk, frames, in_file in saves:
        assert frames == in_file == 9 + 12 * (next_chunk - 1)  # the file holds exactly the frames recorded
    assert probe(tmp_path / "v.partial.mp4")["frames"] == 9 + 12 * 3
    assert not stage_threads()


def test_ctrl_c_keeps_every_generated_chunk_and_ends_the_thread(tiny, tmp_path):
    def interrupt(chunk):
        if chunk.index == 2:
            raise KeyboardInterrupt

    out = tmp_path / "v.mp4"
    with pytest.raises(Interrupted) as info:
        render(prompt_timeline("a kite over the dunes", 6.0), options(tiny, out), on_chunk=interrupt)
    assert info.value.summary.frames == probe(tmp_path / "v.partial.mp4")["frames"] == 9 + 12 * 2
    assert not stage_threads()


def test_no_overlap_flag(tiny, tmp_path):
    from cli_run import cli

    out = tmp_path / "v.mp4"
    code, text = cli("render", "--prompt", "a kite over the dunes", "--seconds", "1", "--weights-dir", tiny,
                     "--resolution", "32x32", "-o", out, "--no-overlap", "--json")
    assert code == 0, text
    assert "queue_wait" not in json.JSONDecoder().raw_decode(text, text.index("{"))[0]["timings_s"]
    assert Renderer(RenderOptions(low_vram=True)).overlap is False  # --low-vram: one working set at a time


def test_auto_render_measures_and_keeps_the_bytes(tiny, tmp_path, monkeypatch):
    """The render's own loop with the probe (on the CPU for the test): serial measured faster → the rest serial,
    the video the same bytes as --overlap off, the choice in the summary and manifest, not in the identity."""
    from memflow_cli.engine import decode_stage
    from memflow_cli.render import stream as render_module
    from memflow_cli.engine.decode_stage import ScheduleProbe

    clock = iter([0.0, 30.0, 30.0, 33.0])  # chunk 1 overlapped: 30 s; chunk 2 serial: 3 s
    monkeypatch.setattr(render_module, "PROBE_SCHEDULE_ON_CPU", True)
    monkeypatch.setattr(decode_stage, "ScheduleProbe",
                        functools.partial(ScheduleProbe, warmup=1, window=1, clock=lambda: next(clock)))
    timeline = prompt_timeline("a kite over the dunes", 3.0)  # 4 chunks
    import weakref

    from memflow_cli.engine import generator as generator_module
    made, init = [], generator_module.StreamingGenerator.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(generator_module.StreamingGenerator, "__init__", tracked)

    auto = render(timeline, options(tiny, tmp_path / "auto.mp4"))
    # a finished render holds nothing of its stream (KV cache, bank): the next job's cannot sit beside it
    assert len(made) == 1 and made[0]() is None
    off = render(timeline, options(tiny, tmp_path / "off.mp4", overlap="off"))
    assert auto.schedule == {"overlap": "auto", "chosen": "serial", "measured": True,
                             "overlapped_s_per_chunk": 30.0, "serial_s_per_chunk": 3.0}
    assert off.schedule == {"overlap": "off", "chosen": "serial", "measured": False}
    assert (tmp_path / "auto.mp4").read_bytes() == (tmp_path / "off.mp4").read_bytes()
    auto_manifest = json.loads((tmp_path / "auto.manifest.json").read_text())
    off_manifest = json.loads((tmp_path / "off.manifest.json").read_text())
    assert auto_manifest["schedule"]["chosen"] == "serial"
    assert auto_manifest["fingerprint"] == off_manifest["fingerprint"]  # the schedule is not the render's identity
    for summary in (auto, off):  # time to first frame: after the models loaded, before the end
        assert 0 < summary.timings["first_frame"] < summary.timings["total"] - summary.timings["load"]
    assert auto_manifest["timings_s"]["first_frame"] > 0
    assert np.isfinite(auto.fps_end_to_end)
