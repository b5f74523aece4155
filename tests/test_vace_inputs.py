"""VACE inputs before any weights: workflow/timeline scale fields, files, lengths, images."""

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest

from memflow_cli.errors import InputError
from memflow_cli.inputs.timeline import read_timeline
from memflow_cli.inputs.vace import VaceInputs, probe_frame_count, read_reference, read_video_frames, validate_inputs

FIXTURES = Path(__file__).parent / "fixtures"


def write_video(path, frames, width=32, height=32, pattern="testsrc"):
    """A short 16 fps clip made by ffmpeg's own sources (testsrc: a moving pattern; color: flat)."""
    source = f"{pattern}=size={width}x{height}:rate=16" if pattern == "testsrc" else f"color=c={pattern}:size={width}x{height}:rate=16"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", source,
                    "-frames:v", str(frames), "-pix_fmt", "yuv444p", "-c:v", "libx264", "-qp", "0", str(path)], check=True)
    return path


def write_image(path, width, height, color="red"):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"color=c={color}:size={width}x{height}", "-frames:v", "1", str(path)], check=True)
    return path


def test_workflow_and_scope_scale_fields(tmp_path):
    doc = json.loads((FIXTURES / "workflow.json").read_text())
    doc["pipelines"][1]["params"]["vace_context_scale"] = 0.7
    path = tmp_path / "w.json"
    path.write_text(json.dumps(doc))
    assert read_timeline(path).settings.vace_scale == 0.7
    doc["pipelines"][1]["params"]["vace_context_scale"] = 2.5
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"pipelines\[1\]\.params\.vace_context_scale: expected a VACE scale from 0 to 2"):
        read_timeline(path)
    scope = json.loads((FIXTURES / "scope_v21.json").read_text())
    scope.setdefault("settings", {})["vaceContextScale"] = 1.5
    path.write_text(json.dumps(scope))
    assert read_timeline(path).settings.vace_scale == 1.5
    assert read_timeline(FIXTURES / "workflow.json").settings.vace_scale is None


def test_video_probe_and_reading(tmp_path):
    clip = write_video(tmp_path / "c.mp4", 20, 48, 32)
    assert probe_frame_count(clip, "control video") == 20
    chunks = list(read_video_frames(clip, 16, 16, chunk=8))
    assert [c.shape[0] for c in chunks] == [8, 8, 4] and chunks[0].shape[1:] == (16, 16, 3)
    with pytest.raises(InputError, match="control video not found"):
        probe_frame_count(tmp_path / "absent.mp4", "control video")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(InputError, match="bad.mp4: cannot read the mask video as a video"):
        probe_frame_count(bad, "mask video")


def test_reference_letterboxed_on_white(tmp_path):
    image = read_reference(write_image(tmp_path / "r.png", 32, 16, "black"), 32, 32)
    assert image.shape == (3, 32, 32)
    assert image[:, :6].min() == 1.0 and image[:, -6:].min() == 1.0  # white bars above and below
    assert image[:, 12:20].max() < -0.9  # the black picture in the middle
    with pytest.raises(InputError, match="cannot read the reference image"):
        (tmp_path / "x.png").write_text("nope")
        read_reference(tmp_path / "x.png", 32, 32)


def test_validate_lengths_and_scale(tmp_path):
    clip = write_video(tmp_path / "c.mp4", 21)
    validate_inputs(VaceInputs(control=str(clip)), 21)  # exactly enough
    with pytest.raises(InputError, match="control video has 21 frames at 16 fps; the timeline needs 33"):
        validate_inputs(VaceInputs(control=str(clip)), 33)
    short_mask = write_video(tmp_path / "m.mp4", 25, pattern="white")
    with pytest.raises(InputError, match="mask video has 25 frames .* control video's length \\(21 frames\\)"):
        validate_inputs(VaceInputs(control=str(clip), mask=str(short_mask)), 21)
    with pytest.raises(InputError, match="--vace-scale: 2.1 is outside 0..2"):
        validate_inputs(VaceInputs(control=str(clip), scale=2.1), 21)
    with pytest.raises(InputError, match="reference image not found"):
        validate_inputs(VaceInputs(references=(str(tmp_path / "none.png"),)), 21)
