"""SIGTERM and SIGHUP stop a render like Ctrl-C: partial file + manifest kept, temporaries removed, 128 + signal."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from memflow_cli.render.signals import Stopped, exit_code_of, stop_on_signals
from memflow_cli.render.video import probe


def test_each_signal_becomes_a_stop_with_its_exit_code():
    said = []
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        with pytest.raises(KeyboardInterrupt) as info:
            with stop_on_signals(said.append):
                signal.raise_signal(signum)
                time.sleep(1)  # the handler runs at once; never reached
        assert isinstance(info.value, Stopped) and exit_code_of(info.value) == code
    assert exit_code_of(KeyboardInterrupt()) == 130
    assert said == ["stopping (SIGINT)…", "stopping (SIGTERM)…", "stopping (SIGHUP)…"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are restored


def test_a_second_signal_while_stopping_is_only_acknowledged():
    said = []
    with pytest.raises(Stopped):
        with stop_on_signals(said.append):
            try:
                signal.raise_signal(signal.SIGTERM)
            except Stopped:
                signal.raise_signal(signal.SIGINT)  # while cleaning up: must not raise again
                raise
    assert len(said) == 2 and said[1].startswith("still stopping")


def test_ignored_signals_stay_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_on_signals(lambda text: None):
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def _some_frames_written(folder) -> bool:
    """The render's video has bytes: its hidden temporary, or the playable partial file it becomes (a temporary
    file may vanish between listing and stat)."""
    for path in [*folder.glob(".sig.*tmp.mp4"), folder / "sig.partial.mp4"]:
        try:
            if path.stat().st_size:
                return True
        except FileNotFoundError:
            pass
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum, second", [(signal.SIGTERM, signal.SIGINT)])  # SIGHUP: same path, unit-tested above
def test_signals_in_a_real_process(tiny, tmp_path, signum, second):
    out = tmp_path / "sig.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memflow_cli", "render", "--prompt", "a red dog runs", "--seconds", "3600",
         "--weights-dir", str(tiny), "--resolution", "32x32", "-o", str(out)],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1", "MEMFLOW_CACHE": str(tmp_path / "emb")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not _some_frames_written(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1].decode()
    proc.send_signal(signum)
    if second is not None:
        time.sleep(0.05)
        proc.send_signal(second)  # impatient: a second signal while the partial file is being finished
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    assert proc.returncode == 128 + signum, stderr
    assert f"{signal.Signals(signum).name}: stopping after this chunk" in " ".join(stderr.split())
    assert "Traceback" not in stderr
    partial = tmp_path / "sig.partial.mp4"
    frames = probe(partial)["frames"]
    assert frames > 0 and (frames - 9) % 12 == 0
    manifest = json.loads((tmp_path / "sig.partial.manifest.json").read_text())
    assert manifest["video"]["complete"] is False and manifest["video"]["frames"] == frames
    assert f"kept {partial} and its manifest" in " ".join(stderr.split())
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# A render whose third decode runs for ever inside torch ops (a 25 s decode at 832x480 on a CPU, made endless).
HUNG_DECODE = r"""
import sys

import torch

from memflow_cli.engine.decoders import WanVideoAutoencoder

made = WanVideoAutoencoder.stream_decoder


def stream_decoder(self, **kw):
    inner, calls = made(self, **kw), [0]
    real = inner.decode

    def decode(latents):
        calls[0] += 1
        if calls[0] == 3:
            print("decode hangs", file=sys.stderr, flush=True)
            a = torch.randn(128, 128)
            while True:
                a = torch.tanh(a @ a)
        return real(latents)

    inner.decode = decode
    return inner


WanVideoAutoencoder.stream_decoder = stream_decoder
from memflow_cli.cli.app import main

sys.argv = ["memflow", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_second_ctrl_c_stops_at_once_in_a_real_process(tiny, tmp_path):
    """The first Ctrl-C waits for what is generated to be decoded; the second does not wait for a decode under
    way: exit 130 at once (not an abort as Python shuts down around the running decode), the partial file holds
    the chunks written before it."""
    out = tmp_path / "hung.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_DECODE, "render", "--prompt", "a red dog runs", "--seconds", "5",
         "--weights-dir", str(tiny), "--resolution", "32x32", "-o", str(out)],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1", "MEMFLOW_CACHE": str(tmp_path / "emb"),
                           "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    seen = []

    def wait_for(text):
        for line in proc.stderr:
            seen.append(line)
            if text in line:
                return
        raise AssertionError("".join(seen))

    watchdog = threading.Timer(120, proc.kill)  # a hang fails the test instead of blocking it
    watchdog.start()
    try:
        wait_for("decode hangs")
        proc.send_signal(signal.SIGINT)
        wait_for("stopping after this chunk")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        seen.extend(proc.stderr)  # to the end: the process has exited
        proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()
    stderr = " ".join("".join(seen).split())
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr
    partial = tmp_path / "hung.partial.mp4"
    assert probe(partial)["frames"] == 9 + 12  # chunks 0 and 1; chunk 2's decode was abandoned
    assert json.loads((tmp_path / "hung.partial.manifest.json").read_text())["video"]["frames"] == 21
    assert "stopped after 21 of 80 frames" in stderr
