"""Video-to-video end to end with tiny weights: `memflow render --video`, lengths, manifest, bad inputs."""

import json
import re

import numpy as np
import pytest
import torch

from memflow_cli.render.video import probe
from memflow_cli.inputs.video_source import VideoSource
from cli_run import cli

pytestmark = pytest.mark.usefixtures("isolated")
from test_video_source import lavfi_clip, write_clip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: extra threads only spin on a loaded machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """30 frames at 16 fps, 48x32, moving noise (lossless)."""
    frames = np.random.default_rng(0).integers(0, 255, (30, 32, 48, 3), dtype=np.uint8)
    return write_clip(tmp_path_factory.mktemp("input") / "walk.mkv", frames)


def decoded(path, width=32, height=32):
    source = VideoSource(path, width, height, "stretch")
    return np.concatenate(list(source.chunks()))[: source.frames]


def timeline(tmp_path, end=1.5, name="v2v.json", **settings):
    doc = {"version": "2.1", "prompts": [{"startTime": 0, "endTime": end, "prompts": [{"text": "a watercolor city", "weight": 1}]}],
           "settings": {"resolution": {"width": 32, "height": 32}, "seed": 3, **settings}}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_strength_one_renders_the_text_to_video_frames(tiny, tmp_path, clip):
    t = timeline(tmp_path)
    code, text = cli("render", t, "--weights-dir", tiny, "-o", tmp_path / "t2v.mp4", "--quiet")
    assert code == 0, text
    code, text = cli("render", t, "--weights-dir", tiny, "-o", tmp_path / "v2v.mp4", "--quiet",
                     "--video", clip, "--strength", "1")
    assert code == 0, text
    a, b = decoded(tmp_path / "t2v.mp4"), decoded(tmp_path / "v2v.mp4")
    assert a.shape == b.shape == (24, 32, 32, 3) and np.array_equal(a, b)
    code, text = cli("render", t, "--weights-dir", tiny, "-o", tmp_path / "half.mp4", "--quiet",
                     "--video", clip, "--strength", "0.5")
    assert code == 0, text
    assert not np.array_equal(decoded(tmp_path / "half.mp4"), a)


def test_prompt_with_video_takes_the_videos_length_and_the_manifest_records_the_input(tiny, tmp_path, clip):
    out = tmp_path / "restyled.mp4"
    code, text = cli("render", "--prompt", "a watercolor city at night", "--video", clip, "--weights-dir", tiny,
                     "--resolution", "32x32", "--fit", "pad", "--strength", "0.6", "-o", out, "--quiet")
    assert code == 0, text
    assert probe(out)["frames"] == 30
    m = json.loads((tmp_path / "restyled.manifest.json").read_text())
    v = m["input"]["video"]
    assert v["path"] == str(clip.resolve()) and len(v["sha256"]) == 64
    assert (v["width"], v["height"], v["fps"], v["frames"], v["frames_used"]) == (48, 32, 16.0, 30, 30)
    assert (v["fit"], v["strength"], v["noise_controller"]) == ("pad", 0.6, False)
    assert v["chunk_strengths"] == [0.6, 0.6, 0.6]
    assert m["settings"]["video_to_video"]["strength"] == 0.6
    assert {"read", "vae_encode"} <= set(m["timings_s"])


def test_timeline_settings_strength_controller_and_exact_length(tiny, tmp_path, clip):
    t = timeline(tmp_path, end=1.25, inputMode="video", noiseScale=0.4, noiseController=True)
    out = tmp_path / "ctl.mp4"
    code, text = cli("render", t, "--video", clip, "--weights-dir", tiny, "-o", out)
    assert code == 0, text
    assert probe(out)["frames"] == 20  # round(1.25 * 16), from a 30-frame input
    assert re.search(r"30 frames at 16 fps .*; uses 20 of (its|about) 30 frames", text), text  # both lengths said
    v = json.loads((tmp_path / "ctl.manifest.json").read_text())["input"]["video"]
    assert v["strength"] == 0.4 and v["noise_controller"] is True and v["frames_used"] == 20 and v["frames"] == 30
    # random frames move a lot: m = 1, so every chunk gets 0.9 * 0.6 + 0.1 * 0.4
    assert v["chunk_strengths"] == pytest.approx([0.58, 0.58])


def test_bad_video_inputs_exit_2_before_any_weights_and_write_nothing(tmp_path, clip):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a video")
    audio = lavfi_clip(tmp_path / "sound.m4a", "sine", 0.5)
    t = timeline(tmp_path)  # 24 frames
    long_t = timeline(tmp_path, end=2.5, name="long.json")
    needs_video = timeline(tmp_path, name="needs-video.json", inputMode="video")
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an older render")
    nowhere = tmp_path / "no-weights"  # weights are never looked at: the inputs fail first
    cases = [
        ([needs_video], "made for video-to-video .*pass the input video with --video"),
        ([t, "--video", tmp_path / "missing.mp4"], "missing.mp4: file not found"),
        ([t, "--video", text_file], "notes.txt: not a video ffmpeg can read"),
        ([t, "--video", audio], "sound.m4a: has no video stream"),
        ([long_t, "--video", clip], "walk.mkv: the input video has 30 frames .*the timeline needs 40"),
        ([t, "--video", clip, "--strength", "0"], r"--strength: expected a strength in \(0, 1\]"),
        ([t, "--video", clip, "--strength", "1.5"], r"--strength: expected a strength in \(0, 1\]"),
        ([t, "--video", clip, "--fit", "zoom"], "--fit: expected one of crop, pad, stretch"),
        ([t, "--strength", "0.5"], "--strength: only means something with an input video"),
        (["--prompt", "a city", "--video", text_file], "notes.txt: not a video ffmpeg can read"),
    ]
    for args, message in cases:
        code, text = cli("render", *args, "--weights-dir", nowhere, "--offline", "-o", out, "-y", "--quiet")
        assert code == 2, (args, text)
        assert re.search(message, " ".join(text.split())), (message, text)
        assert "Traceback" not in text
    assert out.read_bytes() == b"an older render"
    assert [p.name for p in tmp_path.glob("*.mp4")] == ["out.mp4"]
    assert not list(tmp_path.glob("*manifest*")) and not list(tmp_path.glob(".*"))


def test_an_interrupted_video_to_video_render_resumes_to_the_same_frames(tiny, tmp_path, clip):
    import signal

    from memflow_cli.render import Interrupted, RenderOptions, render
    from memflow_cli.inputs.timeline import read_timeline

    t = read_timeline(timeline(tmp_path, end=1.875, noiseController=True))  # 30 frames: chunks of 9, 12, 12

    def opts(out, **kw):
        return RenderOptions(output=out, weights_dir=tiny, video=clip, strength=0.6, **kw)

    render(t, opts(tmp_path / "ref.mp4"))

    def stop(chunk):
        if chunk.index == 1:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "v.mp4"
    with pytest.raises(Interrupted):
        render(t, opts(out), on_chunk=stop)
    summary = render(t, opts(out, resume=True))  # the input restarts at chunk 2, the encoder's caches restored
    assert summary.complete and summary.frames == 30
    assert np.array_equal(decoded(out), decoded(tmp_path / "ref.mp4"))


def test_video_source_starts_at_a_chunk(tmp_path):
    from test_video_source import frame_ids, gray_ramp

    path = write_clip(tmp_path / "ramp.mkv", gray_ramp(30))
    source = VideoSource(path, 16, 16)
    assert [frame_ids(c) for c in source.chunks(2)] == [list(range(21, 30)) + [29, 29, 29]]
    assert [len(c) for c in source.chunks(1)] == [12, 12]


def test_the_readme_video_example_needs_no_system_ffmpeg(tmp_path):
    """The README's video-to-video example makes its clip with the bundled ffmpeg; run its lines (shorter clip)."""
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Video-to-video"):]
    block = section[section.index("```bash") + 7: section.index("```", section.index("```bash") + 7)]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert not any(line.startswith("ffmpeg ") for line in lines), "a system ffmpeg may not be installed"
    setup = [line for line in lines if "FFMPEG" in line]
    assert len(setup) == 2, block
    script = "\n".join(setup).replace(".venv/bin/python", sys.executable).replace("-t 6", "-t 0.5")
    import shutil

    subprocess.run([shutil.which("bash"), "-ec", script], cwd=tmp_path, check=True, capture_output=True,
                   env={"PATH": "/nonexistent"})  # nothing from the system: not even an ffmpeg on PATH
    assert probe(tmp_path / "walk.mp4")["frames"] >= 8
