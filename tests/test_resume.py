"""Exact resume: an interrupted render continued with --resume gives the uninterrupted render's frames."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch

from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
from memflow_cli.model.dit import CausalDiT, DiTConfig
from memflow_cli.render import Interrupted, RenderOptions, render
from memflow_cli.render.progress import PlainReporter
from memflow_cli.render.resume import ResumeError, resume_dir, restore, snapshot
from memflow_cli.inputs.timeline import read_timeline
from memflow_cli.render.video import probe

FIXTURES = Path(__file__).parent / "fixtures"
# 6.5 s, 9 chunks: three prompts, a switch at chunk 3 (re-cache), a transition over two chunks, and more
# chunks than the local window, so the memory bank records and compresses before and after a resume
SCENE = {
    "version": "2.1",
    "prompts": [
        {"startTime": 0, "endTime": 2.0, "prompts": [{"text": "A fox walks through snow", "weight": 1}]},
        {"startTime": 2.0, "endTime": 4.0, "transitionSteps": 2,
         "prompts": [{"text": "A fox walks through snow", "weight": 1}, {"text": "A fox runs over grass", "weight": 3}]},
        {"startTime": 4.0, "endTime": 6.5, "prompts": [{"text": "A fox sleeps under a tree", "weight": 1}]},
    ],
    "settings": {"seed": 4},
}


def scene(tmp_path):
    path = tmp_path / "scene.json"
    path.write_text(json.dumps(SCENE))
    return read_timeline(path)


pytestmark = pytest.mark.usefixtures("isolated")


def frames(path: Path) -> list[bytes]:
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    return [bytes(f) for f in reader]


def options(tiny, out, **kw):
    return RenderOptions(output=out, weights_dir=tiny, width=32, height=32, **kw)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The uninterrupted render of a timeline with prompt switches and a transition (re-cache, bank)."""
    folder = tmp_path_factory.mktemp("reference")
    out = folder / "ref.mp4"
    render(scene(folder), options(tiny, out, overlap=False))  # serial: the renders below overlap (the default)
    return frames(out)


def stop_at(k, signum=signal.SIGINT):
    def hook(chunk):
        if chunk.index == k:
            signal.raise_signal(signum)  # a real signal, delivered to this (main) thread
    return hook


@pytest.mark.parametrize("k, signum", [(0, signal.SIGINT), (3, signal.SIGTERM), (6, signal.SIGHUP)])
def test_interrupt_then_resume_is_identical(tiny, tmp_path, reference, k, signum):
    timeline = scene(tmp_path)
    out = tmp_path / "v.mp4"
    with pytest.raises(Interrupted) as info:
        render(timeline, options(tiny, out), on_chunk=stop_at(k, signum))
    assert info.value.exit_code == 128 + signum
    assert "--resume" in str(info.value)
    assert probe(tmp_path / "v.partial.mp4")["frames"] == 9 + 12 * k  # the stop waits for the chunk's end
    meta = json.loads((resume_dir(out) / "meta.json").read_text())
    assert meta["next_chunk"] == k + 1 and meta["frames"] == 9 + 12 * k

    # the same render again without --resume refuses to throw the checkpoint away
    with pytest.raises(Exception) as refused:
        render(timeline, options(tiny, out))
    assert "--resume" in str(refused.value)

    log = io.StringIO()
    summary = render(timeline, options(tiny, out, resume=True), reporter=PlainReporter(log))
    assert summary.complete and summary.frames == len(reference)
    # progress goes on from the resumed chunk (1-based, as the stage line says), not from chunk 1
    assert f"continuing with chunk {k + 2} of 9" in log.getvalue() and f"in 9 chunks, from chunk {k + 2} on" in log.getvalue()
    assert f"chunk {k + 2}/9  {9 + 12 * (k + 1)}/{len(reference)} frames" in log.getvalue(), log.getvalue()
    assert frames(out) == reference
    assert not resume_dir(out).exists() and not (tmp_path / "v.partial.mp4").exists()


def test_serial_and_overlapped_renders_resume_each_other(tiny, tmp_path, reference):
    """A checkpoint does not depend on whether decode overlapped generation: either continues the other."""
    for first, then in ((False, True), (True, False)):
        out = tmp_path / f"v-{first}.mp4"
        with pytest.raises(Interrupted):
            render(scene(tmp_path), options(tiny, out, overlap=first), on_chunk=stop_at(4))
        assert render(scene(tmp_path), options(tiny, out, overlap=then, resume=True)).complete
        assert frames(out) == reference


def test_resume_after_periodic_checkpoint_and_crash(tiny, tmp_path, reference):
    """A crash (any exception) after the last checkpoint: --resume continues from that checkpoint."""
    timeline = scene(tmp_path)
    out = tmp_path / "v.mp4"

    def crash(chunk):
        if chunk.index == 5:
            raise RuntimeError("the machine fell over")

    # checkpoint_every=1e-9: a checkpoint after every chunk; the crash comes before chunk 5's is taken
    with pytest.raises(RuntimeError):
        render(timeline, options(tiny, out, checkpoint_every=1e-9), on_chunk=crash)
    assert json.loads((resume_dir(out) / "meta.json").read_text())["next_chunk"] == 5
    render(timeline, options(tiny, out, resume=True))
    assert frames(out) == reference


def test_mismatched_or_damaged_checkpoint_is_refused(tiny, tmp_path):
    timeline = scene(tmp_path)
    out = tmp_path / "v.mp4"
    with pytest.raises(Interrupted):
        render(timeline, options(tiny, out), on_chunk=stop_at(1))
    with pytest.raises(ResumeError) as info:
        render(timeline, RenderOptions(output=out, weights_dir=tiny, width=32, height=32, seed=99, resume=True))
    assert "seed" in str(info.value) and "99" in str(info.value)
    # only what differs: the steps read back from meta.json as a list are not "[1000, …] then, (1000, …) now"
    assert str(info.value).count(" then, ") == 1 and "steps" not in str(info.value)
    state = next(resume_dir(out).glob("state-*.pt"))
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ResumeError) as info:
        render(timeline, options(tiny, out, resume=True))
    assert "damaged" in str(info.value)
    assert not out.exists()
    # -y starts over and completes
    assert render(timeline, options(tiny, out, overwrite=True)).complete


def test_snapshot_restore_round_trip_continues_identically():
    """The generator's whole streaming state survives snapshot → restore into a fresh generator."""
    torch.manual_seed(0)
    model = CausalDiT(DiTConfig.preset("tiny")).eval()
    prompt_a, prompt_b = torch.randn(8, model.config.text_dim), torch.randn(8, model.config.text_dim)

    def make():
        return StreamingGenerator(model, StreamSettings(), num_latent_frames=27, latent_height=4, latent_width=4, seed=5)

    straight = make()
    straight.set_conditioning(prompt_a)
    expected = [straight.next_chunk() if i != 4 else (straight.set_conditioning(prompt_b), straight.next_chunk())[1]
                for i in range(9)]

    first = make()
    first.set_conditioning(prompt_a)
    for _ in range(4):
        first.next_chunk()
    state = snapshot(first)
    second = make()
    restore(second, state, "cpu")
    second.set_conditioning(prompt_b)
    rest = [second.next_chunk() for _ in range(5)]
    for a, b in zip(expected[4:], rest):
        assert torch.equal(a, b)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_to_a_process_then_resume(tiny, tmp_path, signum):
    out = tmp_path / "sig.mp4"
    cmd = [sys.executable, "-m", "memflow_cli", "render", "--prompt", "a red dog runs", "--seconds", "12",
           "--weights-dir", str(tiny), "--resolution", "32x32", "-o", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not list(tmp_path.glob(".sig.resume.*.work/seg-*.part")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1].decode()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=180)
    stderr = stderr.decode()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    kept = probe(tmp_path / "sig.partial.mp4")["frames"]
    assert 0 < kept < 192 and (kept - 9) % 12 == 0
    assert not list(tmp_path.glob(".sig.*"))  # no temporaries left behind

    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    plain = tmp_path / "plain.mp4"
    subprocess.run([*cmd[:-3], "-o", str(plain), "--quiet"], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    assert frames(out) == frames(plain)


def test_a_second_ctrl_c_stops_at_once_keeping_what_is_written(tiny, tmp_path, reference, monkeypatch):
    """First Ctrl-C: generation stops after the chunk, what is generated is still decoded. A second one while that
    decode hangs (a 25 s decode at 832x480 on a CPU) stops at once: the chunk being decoded is dropped, the
    partial file is a valid video of what was written, the checkpoint matches it, and --resume completes."""
    import threading

    from memflow_cli.engine.decoders import WanVideoAutoencoder

    gate, stuck, calls = threading.Event(), threading.Event(), [0]
    made = WanVideoAutoencoder.stream_decoder

    def stream_decoder(self, **kw):
        inner = made(self, **kw)
        real = inner.decode

        def decode(latents):
            calls[0] += 1
            if calls[0] == 5:  # chunk 4's decode never ends by itself
                stuck.set()
                gate.wait(120)
            return real(latents)

        inner.decode = decode
        return inner

    def second_ctrl_c():
        stuck.wait(60)
        time.sleep(0.3)  # the loop is waiting for that decode
        os.kill(os.getpid(), signal.SIGINT)

    def first_ctrl_c(chunk):
        if chunk.index == 4:
            threading.Thread(target=second_ctrl_c, daemon=True).start()
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(WanVideoAutoencoder, "stream_decoder", stream_decoder)
    out = tmp_path / "v.mp4"
    try:
        with pytest.raises(Interrupted) as info:  # a checkpoint after every chunk: the last is after chunk 3
            render(scene(tmp_path), options(tiny, out, checkpoint_every=1e-9), on_chunk=first_ctrl_c)
        assert not gate.is_set()  # it did not wait for the hung decode
    finally:
        gate.set()
    partial = tmp_path / "v.partial.mp4"
    kept = 9 + 12 * 3  # chunks 0-3; chunk 4 was being decoded
    assert info.value.exit_code == 130 and info.value.summary.frames == kept
    for t in [t for t in threading.enumerate() if t.name == "memflow-decode"]:
        t.join(30)  # the abandoned decode ends on its own and writes nothing
    assert probe(partial)["frames"] == kept and frames(partial) == reference[:kept]
    manifest = json.loads((tmp_path / "v.partial.manifest.json").read_text())
    assert manifest["video"]["frames"] == kept and not manifest["video"]["complete"]
    meta = json.loads((resume_dir(out) / "meta.json").read_text())
    assert (meta["next_chunk"], meta["frames"]) == (4, kept)
    assert render(scene(tmp_path), options(tiny, out, resume=True)).complete
    assert frames(out) == reference
