"""VACE end to end through the CLI with tiny weights (the tiny-weights writer includes a VACE module)."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from memflow_cli.cli.app import app
from memflow_cli.weights.hub import VACE_FILE
from test_vace_inputs import write_image, write_video
from video_frames import decoded_frames as frames

BASE = ["--prompt", "a lantern over a river", "--seconds", "1", "--resolution", "32x32", "--quiet"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("vace-media")
    return {
        "control": write_video(root / "control.mp4", 16),
        "other": write_video(root / "other.mp4", 16, pattern="blue"),
        "mask": write_video(root / "mask.mp4", 16, pattern="black"),  # keep everything of the control
        "long_mask": write_video(root / "long_mask.mp4", 20, pattern="white"),
        "short": write_video(root / "short.mp4", 12),
        "face": write_image(root / "face.png", 48, 32, "green"),
        "face2": write_image(root / "face2.png", 32, 32, "yellow"),
    }


pytestmark = pytest.mark.usefixtures("isolated")


def render(tiny, out, *extra):
    result = CliRunner().invoke(app, ["render", *BASE, "--weights-dir", str(tiny), "-o", str(out), *map(str, extra)])
    return result.exit_code, result.output



def test_control_steers_and_scale_zero_is_plain(tiny, media, tmp_path):
    code, text = render(tiny, tmp_path / "plain.mp4")
    assert code == 0, text
    plain = frames(tmp_path / "plain.mp4")
    code, text = render(tiny, tmp_path / "zero.mp4", "--control", media["control"], "--vace-scale", "0")
    assert code == 0, text
    assert np.array_equal(frames(tmp_path / "zero.mp4"), plain)
    code, text = render(tiny, tmp_path / "a.mp4", "--control", media["control"])
    assert code == 0, text
    code, text = render(tiny, tmp_path / "b.mp4", "--control", media["other"])
    assert code == 0, text
    a, b = frames(tmp_path / "a.mp4"), frames(tmp_path / "b.mp4")
    assert a.shape == plain.shape == (16, 32, 32, 3)
    diff = lambda x, y: np.abs(x.astype(int) - y.astype(int)).mean()  # noqa: E731
    assert diff(a, plain) > 2 and diff(b, plain) > 2 and diff(a, b) > 2

    manifest = json.loads((tmp_path / "a.manifest.json").read_text())["vace"]
    assert manifest["control"]["sha256"] == hashlib.sha256(media["control"].read_bytes()).hexdigest()
    assert manifest["scale"] == 1.0 and manifest["mask"] is None and manifest["references"] == []
    module = tiny / VACE_FILE.filename
    assert manifest["module"]["sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "zero.manifest.json").read_text())["vace"]["scale"] == 0.0


def test_mask_and_reference_paths_run(tiny, media, tmp_path):
    code, text = render(tiny, tmp_path / "m.mp4", "--control", media["control"], "--mask", media["mask"],
                        "--vace-scale", "0.7")
    assert code == 0, text
    code, text = render(tiny, tmp_path / "c.mp4", "--control", media["control"], "--vace-scale", "0.7")
    assert code == 0, text
    # a black mask moves the control from the reactive to the inactive channels: other frames
    assert np.abs(frames(tmp_path / "m.mp4").astype(int) - frames(tmp_path / "c.mp4").astype(int)).mean() > 2
    code, text = render(tiny, tmp_path / "r.mp4", "--reference", media["face"], "--reference", media["face2"])
    assert code == 0, text
    assert frames(tmp_path / "m.mp4").shape == frames(tmp_path / "r.mp4").shape == (16, 32, 32, 3)
    vace = json.loads((tmp_path / "r.manifest.json").read_text())["vace"]
    assert [r["path"] for r in vace["references"]] == [str(media["face"]), str(media["face2"])]
    assert json.loads((tmp_path / "m.manifest.json").read_text())["vace"]["scale"] == 0.7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--control", "missing.mp4"], "missing.mp4: control video not found"),
        (["--control", "{short}"], "control video has 12 frames at 16 fps; the timeline needs 16"),
        (["--control", "{control}", "--mask", "{long_mask}"], "mask video has 20 frames"),
        (["--mask", "{short}"], "mask video has 12 frames"),
        (["--reference", "nowhere.png"], "nowhere.png: reference image not found"),
        (["--control", "{face}.txt"], "control video not found"),
        (["--control", "{control}", "--vace-scale", "2.5"], "--vace-scale: 2.5 is outside 0..2"),
        (["--vace-scale", "-1"], "--vace-scale: -1.0 is outside 0..2"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tiny, media, tmp_path, args, message):
    args = [a.format(**{k: str(v) for k, v in media.items()}) for a in args]
    code, text = render(tiny, tmp_path / "out.mp4", *args)
    assert code == 2, text
    assert message in " ".join(text.split())
    assert not list(tmp_path.glob("out*"))


def test_not_a_video_and_no_module_offline(tiny, media, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    code, text = render(tiny, tmp_path / "out.mp4", "--control", bad)
    assert code == 2 and "cannot read the control video" in text
    without = tmp_path / "weights"
    shutil.copytree(tiny, without)
    (without / VACE_FILE.filename).unlink()
    code, text = render(without, tmp_path / "out.mp4", "--reference", media["face"], "--offline")
    assert code == 2 and "weights folder has no Wan2_1-VACE_module_1_3B_bf16.safetensors" in " ".join(text.split())
    assert not list(tmp_path.glob("out*"))


def test_vace_inputs_are_part_of_the_render_identity(tiny, media, tmp_path):
    out = tmp_path / "v.mp4"
    assert render(tiny, out, "--control", media["control"])[0] == 0
    before = out.stat().st_mtime_ns
    code, text = render(tiny, out, "--control", media["control"])
    assert code == 0 and out.stat().st_mtime_ns == before  # the same render: skipped
    code, text = render(tiny, out, "--control", media["other"])
    assert code == 2 and "already exists" in text  # another control is another render
    code, text = render(tiny, out, "--control", media["control"], "--vace-scale", "0.5")
    assert code == 2 and "already exists" in text


def test_interrupted_vace_render_resumes_identically(tiny, tmp_path):
    """The VACE context stream (two encoder caches, the input buffers) is part of a resume checkpoint."""
    import signal

    from memflow_cli.render import Interrupted, RenderOptions, render as render_api
    from memflow_cli.inputs.timeline import prompt_timeline

    control = write_video(tmp_path / "control.mp4", 32)
    mask = write_video(tmp_path / "mask.mp4", 32)  # the test pattern's red channel: a mixed mask
    face = write_image(tmp_path / "face.png", 32, 32, "green")
    timeline = prompt_timeline("a lantern over a river", 2.0)  # 3 chunks
    options = dict(weights_dir=tiny, width=32, height=32, control=control, mask=mask, references=(face,))

    render_api(timeline, RenderOptions(output=tmp_path / "ref.mp4", **options))

    def stop_after_first(chunk):
        if chunk.index == 0:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "v.mp4"
    with pytest.raises(Interrupted):
        render_api(timeline, RenderOptions(output=out, **options), on_chunk=stop_after_first)
    assert render_api(timeline, RenderOptions(output=out, resume=True, **options)).complete
    assert np.array_equal(frames(out), frames(tmp_path / "ref.mp4"))


def test_output_never_replaces_a_vace_input(tiny, tmp_path):
    control = write_video(tmp_path / "control.mp4", 16)
    before = control.read_bytes()
    result = CliRunner().invoke(app, ["render", *BASE, "--weights-dir", str(tiny), "-o", str(control), "-y",
                                      "--control", str(control)])
    assert result.exit_code == 2, result.output
    assert control.read_bytes() == before
