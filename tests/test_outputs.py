"""Output safety: names checked before loading, video + manifest published as one step, no temporary left behind."""

import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from memflow_cli.render import outputs
from memflow_cli.errors import InputError
from memflow_cli.render.outputs import PublishError, check_output, manifest_path, remove_stale_temporaries, temp_name
from memflow_cli.render.video import VideoWriter, probe


def frames(n, size=32):
    return np.full((n, size, size, 3), 100, np.uint8)


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- checked before anything loads ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t.json", "base.pt", "model.safetensors", "clip.mov", "clip.mkv", "out", "x.mp4.json"])
def test_output_must_be_an_mp4(tmp_path, name):
    with pytest.raises(InputError, match="ending in .mp4") as info:
        check_output(tmp_path / name)
    assert info.value.exit_code == 2


def test_output_may_not_be_an_input_by_any_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clip = tmp_path / "in.mp4"
    clip.write_bytes(b"input video")
    (tmp_path / "sub").mkdir()
    os.symlink(clip, tmp_path / "link.mp4")
    os.link(clip, tmp_path / "hard.mp4")
    for output in ("in.mp4", "./sub/../in.mp4", str(clip), "link.mp4", "hard.mp4"):
        with pytest.raises(InputError, match="would overwrite the input"):
            check_output(output, inputs=["in.mp4"])
    # the manifest of the output is the input: `scene.manifest.json` rendered with -o scene.mp4
    scene = tmp_path / "scene.manifest.json"
    scene.write_text("{}")
    with pytest.raises(InputError, match="manifest.*would overwrite the input"):
        check_output(tmp_path / "scene.mp4", inputs=[scene])
    partial_manifest = tmp_path / "x.partial.manifest.json"
    partial_manifest.write_text("{}")
    with pytest.raises(InputError, match="would overwrite the input"):
        check_output(tmp_path / "x.mp4", inputs=[partial_manifest])
    assert check_output(tmp_path / "other.mp4", inputs=[clip, scene]) == tmp_path / "other.mp4"


def test_directory_device_and_missing_folder(tmp_path):
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path / "d.mp4")
    (tmp_path / "m.manifest.json").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path / "m.mp4")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "p.mp4")
        with pytest.raises(InputError, match="not a regular file"):
            check_output(tmp_path / "p.mp4")
    assert check_output(tmp_path / "new" / "deeper" / "v.mp4")
    assert (tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot create the folder|not a folder"):
        check_output(tmp_path / "file" / "v.mp4")


def test_names_too_long_including_temporaries(tmp_path):
    with pytest.raises(InputError, match="too long"):
        check_output(tmp_path / ("a" * 300 + ".mp4"))
    fits_alone = "b" * 245 + ".mp4"  # 249 bytes: fine by itself, but its hidden temporary would not fit
    assert len(temp_name(tmp_path / fits_alone, ".json").name) > 255
    with pytest.raises(InputError, match="too long"):
        check_output(tmp_path / fits_alone)
    assert check_output(tmp_path / ("c" * 150 + ".mp4"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_is_an_input_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="cannot write into") as info:
            check_output(folder / "v.mp4")
        assert info.value.exit_code == 2
    finally:
        folder.chmod(0o700)


def test_read_only_folder_message(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    monkeypatch.setattr(outputs, "_read_only", lambda folder: True)
    with pytest.raises(InputError, match="read-only filesystem") as info:
        check_output(tmp_path / "v.mp4")
    assert info.value.exit_code == 2


# -- temporaries ---------------------------------------------------------------------------------------------


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed_never_a_live_ones(tmp_path):
    out = tmp_path / "v.mp4"
    dead = temp_name(out, ".mp4", pid=dead_pid())
    dead_partial_manifest = temp_name(tmp_path / "v.partial.mp4", ".json", pid=dead_pid())
    live = temp_name(out, ".mp4", pid=os.getppid())
    other_host = out.with_name(f".v.memflow-{dead_pid()}@elsewhere.0badc0de.tmp.mp4")
    other_output = temp_name(tmp_path / "w.mp4", ".mp4", pid=dead_pid())
    for p in (dead, dead_partial_manifest, live, other_host, other_output):
        p.write_bytes(b"x" * 261)
    with VideoWriter(out, 32, 32) as w:
        w.write(frames(3))
    assert not dead.exists() and not dead_partial_manifest.exists()
    assert live.exists() and other_host.exists() and other_output.exists()
    assert remove_stale_temporaries(out) == []


def test_temporaries_name_their_process(tmp_path):
    w = VideoWriter(tmp_path / "v.mp4", 32, 32)
    try:
        assert f"memflow-{os.getpid()}@" in w.tmp.name and w.tmp.name.startswith(".v.")
    finally:
        w.discard()
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("where", ["create", "ffmpeg"])
def test_ctrl_c_while_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, where):
    import memflow_cli.render.video as video

    real_create, real_popen = video.create_temp, video.subprocess.Popen

    def create(*args):  # the signal arrives while the file is being created
        signal.raise_signal(signal.SIGINT)
        return real_create(*args)

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return proc

    if where == "create":
        monkeypatch.setattr(video, "create_temp", create)
    else:
        monkeypatch.setattr(video.subprocess, "Popen", popen)
    with pytest.raises(KeyboardInterrupt):
        VideoWriter(tmp_path / "v.mp4", 32, 32)
    assert list(tmp_path.iterdir()) == []


# -- the video and its manifest agree --------------------------------------------------------------------------


def manifest_of(path, complete):
    return {"video": {"path": str(path), "complete": complete}}


def test_video_and_manifest_appear_together(tmp_path):
    out = tmp_path / "v.mp4"
    with VideoWriter(out, 32, 32, manifest=manifest_of) as w:
        w.write(frames(9))
    assert probe(out)["frames"] == 9
    assert json.loads(manifest_path(out).read_text())["video"] == {"path": str(out), "complete": True}
    assert w.manifest == manifest_path(out) and hidden(tmp_path) == []
    assert manifest_path(out).stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_interrupt_publishes_partial_with_its_manifest(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    manifest_path(out).write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, 32, 32, manifest=manifest_of) as w:
            w.write(frames(9))
            raise KeyboardInterrupt
    partial = tmp_path / "v.partial.mp4"
    assert probe(partial)["frames"] == 9
    assert json.loads(manifest_path(partial).read_text())["video"]["complete"] is False
    assert out.read_bytes() == b"old video" and json.loads(manifest_path(out).read_text()) == {"old": True}
    assert hidden(tmp_path) == []


def failing_replace(fail_for, error):
    real = os.replace

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(fail_for):
            raise error
        return real(src, dst)

    return replace


@pytest.mark.parametrize("had_manifest", [True, False])
def test_permission_error_on_the_video_rename_undoes_the_manifest(tmp_path, monkeypatch, had_manifest):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    if had_manifest:
        manifest_path(out).write_text('{"old": true}')
    monkeypatch.setattr(os, "replace", failing_replace(out, PermissionError(errno.EPERM, "Operation not permitted")))
    with pytest.raises(PublishError) as info:
        with VideoWriter(out, 32, 32, manifest=manifest_of) as w:
            w.write(frames(9))
    assert info.value.exit_code == 1
    assert "cannot put the finished file in place (Operation not permitted)" in str(info.value)
    assert "existing file was left as it was" in str(info.value)
    assert out.read_bytes() == b"old video"
    if had_manifest:
        assert json.loads(manifest_path(out).read_text()) == {"old": True}
    else:
        assert not manifest_path(out).exists()
    assert hidden(tmp_path) == []


def test_full_disk_at_the_manifest_step_publishes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")

    def full(target, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_temp_json", full)
    with pytest.raises(PublishError, match="No space left"):
        with VideoWriter(out, 32, 32, manifest=manifest_of) as w:
            w.write(frames(9))
    assert out.read_bytes() == b"old video" and not manifest_path(out).exists()
    assert hidden(tmp_path) == []


def test_signal_during_publishing_waits_for_both_renames(tmp_path, monkeypatch):
    out = tmp_path / "v.mp4"
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(os.fspath(dst))
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C between the manifest's and the video's rename
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, 32, 32, manifest=manifest_of) as w:
            w.write(frames(9))
    assert calls == [os.fspath(manifest_path(out)), os.fspath(out)]
    assert probe(out)["frames"] == 9 and json.loads(manifest_path(out).read_text())["video"]["complete"] is True
