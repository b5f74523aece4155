"""Input videos: probing, the 16 fps chunk grid, fitting, lazy reading, bad inputs, the noise controller."""

import subprocess
import tracemalloc

import numpy as np
import pytest
import torch

from memflow_cli.errors import InputError
from memflow_cli.inputs.video_source import (
    VideoSource,
    controlled_strength,
    ffmpeg_exe,
    frames_to_video_tensor,
    motion_amount,
    probe_video,
)


def write_clip(path, frames: np.ndarray, fps: float = 16, codec=("-c:v", "libx264rgb", "-qp", "0")):
    """Lossless RGB clip from uint8 frames [n, H, W, 3] (libx264rgb at qp 0 keeps every value)."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", *codec, str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def lavfi_clip(path, source: str, seconds: float, extra=()):
    cmd = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source,
           "-t", str(seconds), *extra, str(path)]
    subprocess.run(cmd, check=True)
    return path


def gray_ramp(n, h=16, w=16):
    """Frame i is flat gray 4*i (so a frame's identity can be read back from any pixel)."""
    return np.repeat((4 * np.arange(n, dtype=np.uint8))[:, None, None, None], h * w * 3, 1).reshape(n, h, w, 3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "ramp30": write_clip(d / "ramp30.mkv", gray_ramp(30)),
        "ramp25at25": write_clip(d / "ramp25.mkv", gray_ramp(25), fps=25),
        "dir": d,
    }


def frame_ids(chunk):
    return [int(f[0, 0, 0]) // 4 for f in chunk]


def test_probe_counts_frames_after_resampling_to_16_fps(clips):
    info = probe_video(clips["ramp30"])
    assert (info.frames, info.width, info.height, info.fps) == (30, 16, 16, 16.0)
    one_second = probe_video(clips["ramp25at25"])  # 25 frames at 25 fps = 1 s = 16 frames at 16 fps
    assert one_second.frames == 16 and one_second.fps == 25.0
    assert probe_video(clips["ramp30"], limit=20).frames == 20


def test_a_probe_that_stops_early_still_knows_the_clip_length(tmp_path):
    """A render of 20 frames from a 30-frame clip decodes 20 of them, but says both: "uses 20 of its 30"."""
    clip = write_clip(tmp_path / "r.mkv", gray_ramp(30))
    first = probe_video(clip, limit=20)  # not decoded past frame 20: the length comes from the container
    assert first.frames == 20 and not first.counted_all and first.clip_frames == 30
    assert first.uses(20) == "uses 20 of about 30 frames" and "about 30 frames at 16 fps" in first.describe()
    full = probe_video(clip)  # counted to the end (and remembered)
    assert full.counted_all and full.clip_frames == 30 and full.uses(30) == "uses all 30 frames"
    again = probe_video(clip, limit=20)
    assert again.frames == 20 and again.uses(20) == "uses 20 of its 30 frames" and "30 frames" in again.describe()


def test_chunks_follow_the_text_to_video_grid_and_repeat_the_last_frame(clips):
    source = VideoSource(clips["ramp30"], 16, 16)
    chunks = list(source.chunks())
    assert [len(c) for c in chunks] == [9, 12, 12]
    ids = [i for c in chunks for i in frame_ids(c)]
    assert ids == list(range(30)) + [29, 29, 29]  # lossless: every frame in order, then the last repeated
    assert source.frames_read == 30


def test_a_render_shorter_than_the_input_reads_only_its_frames(clips):
    source = VideoSource(clips["ramp30"], 16, 16, frames=20)
    chunks = list(source.chunks())
    assert [len(c) for c in chunks] == [9, 12]
    assert [i for c in chunks for i in frame_ids(c)] == list(range(20)) + [19]
    assert source.frames_read == 20


def test_resampling_keeps_time_not_frame_count(clips):
    source = VideoSource(clips["ramp25at25"], 16, 16)
    ids = [i for c in source.chunks() for i in frame_ids(c)][:16]
    # 16 of the 25 frames, evenly spread over the second
    assert len(set(ids)) == 16 and ids == sorted(ids) and ids[0] == 0 and ids[-1] >= 23


def test_an_input_shorter_than_the_render_is_an_error_naming_both_lengths(clips):
    with pytest.raises(InputError, match=r"ramp30.mkv: the input video has 30 frames .* needs 40"):
        VideoSource(clips["ramp30"], 16, 16, frames=40)


@pytest.fixture(scope="module")
def wide_clip(tmp_path_factory):
    # 64x32: left half red, right half blue.
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :32, 0] = 255
    frame[:, 32:, 2] = 255
    return write_clip(tmp_path_factory.mktemp("wide") / "wide.mkv", np.stack([frame] * 3))


def test_fit_modes(wide_clip):
    crop, pad, stretch = (next(VideoSource(wide_clip, 32, 32, fit).chunks())[0].astype(int)
                          for fit in ("crop", "pad", "stretch"))
    for img in (crop, pad, stretch):
        assert img.shape == (32, 32, 3)
    # crop: cover 32x32 (scale to 64x32), keep the centre: red then blue, no black
    assert crop[16, 4].tolist() == [255, 0, 0] and crop[16, 28].tolist() == [0, 0, 255]
    assert crop[0, 4].tolist() == [255, 0, 0]
    # pad: contain (scale to 32x16) and letterbox: black bands of 8 rows above and below
    assert pad[:8].max() == 0 and pad[-8:].max() == 0
    assert pad[16, 4].tolist() == [255, 0, 0] and pad[16, 28].tolist() == [0, 0, 255]
    # stretch: the whole picture squeezed, no black anywhere
    assert stretch[0, 4].tolist() == [255, 0, 0] and stretch[31, 28].tolist() == [0, 0, 255]
    # crop keeps the centre: a source column at x=16 lands at x=0, so crop is not stretch
    assert (np.abs(crop - stretch).max(axis=-1) == 0).mean() < 1


def test_frames_are_read_lazily_and_memory_stays_flat_on_a_long_input(tmp_path):
    # 5 minutes at 16 fps: 4800 frames.
    clip = lavfi_clip(tmp_path / "long.mp4", "testsrc=size=32x32:rate=16", 300,
                      ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])
    source = VideoSource(clip, 32, 32)
    assert source.info.frames == 4800 and source.num_chunks == 401
    chunks = source.chunks()
    next(chunks)
    assert source.frames_read == 9  # ffmpeg may be ahead in the pipe, but nothing beyond the chunk is held
    next(chunks)
    assert source.frames_read == 21
    chunks.close()  # stops ffmpeg

    tracemalloc.start()
    count = sum(len(c) for c in VideoSource(clip, 32, 32, info=source.info).chunks())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 9 + 12 * 400  # 4800 frames, the last chunk padded
    whole = 4800 * 32 * 32 * 3
    assert peak < whole / 20, peak  # a few chunks' worth, not the video


def test_image_sequences(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    write_clip(folder / "f%03d.png", gray_ramp(11), codec=())
    for path in (folder, folder / "f%03d.png"):
        source = VideoSource(path, 16, 16)
        assert source.info.frames == 11 and source.info.sequence
        assert [i for c in source.chunks() for i in frame_ids(c)] == list(range(11)) + [10] * 10


def test_bad_inputs_name_the_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    audio = lavfi_clip(tmp_path / "sound.m4a", "sine", 0.5)
    empty = tmp_path / "empty.y4m"
    empty.write_text("YUV4MPEG2 W32 H32 F16:1 Ip A1:1 C420jpeg\n")  # a video stream without a frame
    zero_bytes = tmp_path / "zero.mp4"
    zero_bytes.write_bytes(b"")
    cases = [
        (tmp_path / "missing.mp4", "missing.mp4: file not found"),
        (text, "notes.txt: not a video ffmpeg can read"),
        (zero_bytes, "zero.mp4: not a video ffmpeg can read"),
        (audio, "sound.m4a: has no video stream"),
        (empty, "empty.y4m: the video has no frames"),
        (tmp_path, "a folder without images"),
    ]
    for path, message in cases:
        with pytest.raises(InputError, match=message):
            probe_video(path)
    with pytest.raises(InputError, match="--fit: expected one of crop, pad, stretch"):
        VideoSource(text, 16, 16, fit="zoom")


def test_noise_controller_strength():
    still = torch.zeros(1, 3, 9, 8, 8)
    assert motion_amount(still) == 0.0
    assert controlled_strength(0.7, 0.0) == pytest.approx(0.9 * 0.8 + 0.07)
    flicker = torch.ones(1, 3, 9, 8, 8)
    flicker[:, :, ::2] = -1  # RMSE 2 between neighbours: far above 0.2, clamped to 1
    assert motion_amount(flicker) == 1.0
    assert controlled_strength(0.5, 1.0) == pytest.approx(0.9 * 0.6 + 0.05)
    small = torch.zeros(1, 3, 3, 8, 8)
    small[:, :, 2] = 0.05  # one step of RMSE 0.05 -> m = 0.25 (the max over frames, not the mean)
    assert motion_amount(small) == pytest.approx(0.25)
    assert motion_amount(still[:, :, :1]) == 0.0


def test_frames_to_video_tensor_range_and_layout():
    frames = np.zeros((2, 4, 6, 3), np.uint8)
    frames[1, :, :, 1] = 255
    x = frames_to_video_tensor(frames)
    assert x.shape == (1, 3, 2, 4, 6)
    assert x.min() == -1 and x.max() == 1 and x[0, 1, 1].eq(1).all() and x[0, 0, 1].eq(-1).all()
