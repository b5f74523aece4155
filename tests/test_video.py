"""Streaming writer: real mp4s decoded back with imageio-ffmpeg's ffmpeg; atomic replace; partial on interrupt."""

import json

import imageio_ffmpeg
import numpy as np
import pytest

from memflow_cli.errors import InputError
from memflow_cli.render.video import (
    VideoError,
    VideoWriter,
    check_output_path,
    manifest_path,
    partial_path,
    probe,
    write_manifest,
)


def _frames(n, h=64, w=96, value=None):
    rng = np.random.default_rng(n)
    if value is not None:
        return np.full((n, h, w, 3), value, np.uint8)
    return rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def test_writes_h264_16fps_in_chunks(tmp_path):
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, 96, 64) as w:
        w.write(_frames(9))
        w.write(_frames(12))
        w.write(_frames(5)[0])  # a single frame [H, W, 3]
    info = probe(out)
    assert info["frames"] == 22 and info["fps"] == 16 and info["size"] == (96, 64)
    assert "h264" in info["codec"]
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed


def test_frames_come_back(tmp_path):
    out = tmp_path / "grey.mp4"
    with VideoWriter(out, 64, 64) as w:
        w.write(_frames(3, 64, 64, value=128))
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(64, 64, 3) for f in reader]
    assert meta["size"] == (64, 64) and len(frames) == 3
    assert abs(float(frames[1].mean()) - 128) < 3


def test_failure_keeps_existing_file(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"the old good video")
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 64, 64) as w:
            w.write(_frames(4, 64, 64))
            raise RuntimeError("generation failed")
    assert out.read_bytes() == b"the old good video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_wrong_frame_shape_is_rejected(tmp_path):
    out = tmp_path / "x.mp4"
    with pytest.raises(ValueError, match="uint8 frames"):
        with VideoWriter(out, 64, 64) as w:
            w.write(np.zeros((1, 32, 32, 3), np.uint8))
    assert not out.exists()


def test_no_frames_is_an_error_and_replaces_nothing(tmp_path):
    out = tmp_path / "empty.mp4"
    w = VideoWriter(out, 64, 64)
    with pytest.raises(VideoError, match="no frames"):
        w.finish()
    assert not out.exists() and not list(tmp_path.iterdir())


def test_interrupt_keeps_playable_partial(tmp_path):
    out = tmp_path / "long.mp4"
    out.write_bytes(b"previous render")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, 64, 64) as w:
            w.write(_frames(9, 64, 64))
            w.write(_frames(12, 64, 64))
            raise KeyboardInterrupt
    assert w.partial == partial_path(out) == tmp_path / "long.partial.mp4"
    assert probe(w.partial)["frames"] == 21
    assert out.read_bytes() == b"previous render"


def test_paths_and_manifest(tmp_path):
    assert manifest_path(tmp_path / "a.mp4") == tmp_path / "a.manifest.json"
    m = write_manifest(tmp_path / "a.manifest.json", {"seed": 1, "path": tmp_path})
    assert json.loads(m.read_text())["seed"] == 1
    assert check_output_path(tmp_path / "missing" / "a.mp4") == tmp_path / "missing" / "a.mp4"
    assert (tmp_path / "missing").is_dir()  # a missing output folder is created, as most tools do
    with pytest.raises(InputError, match="directory"):
        check_output_path(tmp_path / "missing.mp4" if (tmp_path / "missing.mp4").mkdir() is None else tmp_path)


def test_finished_files_get_ordinary_permissions(tmp_path):
    import os

    from memflow_cli.render.video import VideoWriter, write_manifest

    old = os.umask(0o022)
    try:
        with VideoWriter(tmp_path / "v.mp4", 32, 32) as writer:
            writer.write(np.zeros((3, 32, 32, 3), np.uint8))
        manifest = write_manifest(tmp_path / "v.manifest.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "v.mp4").stat().st_mode & 0o777 == 0o644
    assert manifest.stat().st_mode & 0o777 == 0o644


def _raw_yuv420(path, w, h):
    """Decode to planar YUV without any colour conversion: the values the encoder stored."""
    import subprocess

    data = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                           "-pix_fmt", "yuv420p", "-"], capture_output=True, check=True).stdout
    frame = np.frombuffer(data, np.uint8)[: w * h * 3 // 2]
    return frame[: w * h], frame[w * h: w * h + w * h // 4], frame[w * h + w * h // 4:]


def test_bt709_limited_range_tags_and_matrix(tmp_path):
    from memflow_cli.render.video import colour_tags

    out = tmp_path / "red.mp4"
    with VideoWriter(out, 32, 32) as w:
        w.write(np.tile(np.array([255, 0, 0], np.uint8), (3, 32, 32, 1)))
    assert colour_tags(out) == {"pix_fmt": "yuv420p", "color_range": "tv", "colorspace": "bt709",
                                "color_primaries": "bt709", "color_trc": "bt709"}
    y, u, v = _raw_yuv420(out, 32, 32)
    # pure red in limited range: BT.709 gives Y = 16 + 219·0.2126 ≈ 63 (BT.601 would give ≈ 82), V = 240
    assert abs(float(y.mean()) - 62.6) < 2 and abs(float(v.mean()) - 240) < 2
    # a player that honours the tags gets red back
    reader = imageio_ffmpeg.read_frames(str(out))
    next(reader)
    rgb = np.frombuffer(next(reader), np.uint8).reshape(32, 32, 3).astype(int)
    assert rgb[..., 0].mean() > 240 and rgb[..., 1].mean() < 15 and rgb[..., 2].mean() < 15


def test_colour_tags_of_an_untagged_file(tmp_path):
    import subprocess

    from memflow_cli.render.video import colour_tags

    out = tmp_path / "plain.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=c=blue:s=32x32:d=0.2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)], check=True)
    tags = colour_tags(out)
    assert tags["pix_fmt"] == "yuv420p" and tags["color_primaries"] != "bt709"
