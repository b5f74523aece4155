"""`render --vae X` end to end with tiny weights: exact length, different frames, manifest, bad inputs."""

import hashlib
import json
import shutil
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from typer.testing import CliRunner

from memflow_cli.weights import hub
from memflow_cli.cli.app import app
from memflow_cli.engine.decoders import DECODER_KINDS, DECODERS
from memflow_cli.render import Renderer, RenderOptions
from memflow_cli.inputs.timeline import prompt_timeline, read_timeline
from memflow_cli.render.video import manifest_path, probe
from cli_run import cli


pytestmark = pytest.mark.usefixtures("isolated")


def _pixels(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    return np.stack([np.frombuffer(f, np.uint8) for f in reader])


def test_every_decoder_renders_the_exact_length_with_its_own_frames(tiny, tmp_path):
    timeline = prompt_timeline("a lighthouse in a storm", 1.25)  # 20 frames: 9 + 11 of a second chunk
    renderer = Renderer(RenderOptions(weights_dir=tiny, width=32, height=48))
    videos = {}
    for kind in DECODER_KINDS:
        renderer.options.output = tmp_path / f"{kind}.mp4"
        renderer.options.vae = kind
        summary = renderer.render(timeline)
        assert summary.frames == 20 and summary.vae == kind
        info = probe(tmp_path / f"{kind}.mp4")
        assert info["frames"] == 20 and info["size"] == (32, 48)
        videos[kind] = _pixels(tmp_path / f"{kind}.mp4")
        manifest = json.loads(manifest_path(tmp_path / f"{kind}.mp4").read_text())
        decoder = manifest["decoder"]
        path = tiny / DECODERS[kind].filename
        assert decoder["vae"] == kind and decoder["file"] == DECODERS[kind].filename
        assert decoder["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert manifest["settings"]["vae"] == kind
        assert manifest["weights"]["files"][DECODERS[kind].filename]["sha256"] == decoder["sha256"]
    for kind in ("lightvae", "tae", "lighttae"):
        assert np.abs(videos[kind].astype(int) - videos["wan"].astype(int)).mean() > 1, kind
    assert not np.array_equal(videos["tae"], videos["lighttae"])  # the latent conventions differ


def test_timeline_vae_type_chooses_the_decoder_and_the_command_line_wins(tiny, tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"prompts": [{"startTime": 0, "endTime": 0.5, "prompts": [{"text": "a fox", "weight": 1}]}],
                             "version": "2.1", "settings": {"schemaFieldOverrides": {"vae_type": "lighttae"}}}))
    timeline = read_timeline(f)
    renderer = Renderer(RenderOptions(weights_dir=tiny, width=32, height=32, output=tmp_path / "a.mp4"))
    assert renderer.render(timeline).vae == "lighttae"
    result = CliRunner().invoke(app, ["render", str(f), "--weights-dir", str(tiny), "--resolution", "32x32",
                                      "--vae", "tae", "-o", "b.mp4", "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["decoder"]["vae"] == "tae"


def _assert_refused(code, text, out: Path, *expected):
    assert code == 2, text
    assert "Traceback" not in text and all(e in text for e in expected), text
    assert not out.exists() and not list(out.parent.glob("*.mp4"))


def test_unknown_vae_is_refused(tiny, tmp_path):
    out = tmp_path / "x.mp4"
    code, text = cli("render", "--prompt", "a cat", "--seconds", "0.5", "--weights-dir", tiny, "--vae", "taehv", "-o", out)
    _assert_refused(code, text, out, "--vae", "unknown decoder 'taehv'", "wan, lightvae, tae, lighttae")


def test_a_file_that_is_not_that_decoder_is_refused(tiny, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny, weights)
    (weights / hub.LOCK_NAME).unlink()  # the lock would (rightly) call the swap a size mismatch first
    shutil.copy(weights / "Wan2.1_VAE.pth", weights / "taew2_1.pth")
    out = tmp_path / "x.mp4"
    code, text = cli("render", "--prompt", "a cat", "--seconds", "0.5", "--resolution", "32x32", "--weights-dir", weights,
                     "--vae", "tae", "-o", out)
    _assert_refused(code, text, out, "--vae tae expects taew2_1.pth", "taew2_1.pth")


def test_missing_decoder_is_refused(tiny, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny, weights)
    (weights / "lighttaew2_1.pth").unlink()
    out = tmp_path / "x.mp4"
    code, text = cli("render", "--prompt", "a cat", "--seconds", "0.5", "--weights-dir", weights, "--vae", "lighttae", "-o", out)
    _assert_refused(code, text, out, "lighttaew2_1.pth not found", "memflow download --vae lighttae")


def _fill_hf_cache(cache: Path, tiny: Path, files) -> None:
    """The Hugging Face cache layout (refs/main → snapshots/<commit>/<file>), as a download leaves it."""
    for f in files:
        repo = cache / f"models--{f.repo.replace('/', '--')}"
        commit = hashlib.sha1(f.repo.encode()).hexdigest()
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        target = repo / "snapshots" / commit / f.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if (tiny / f.filename).is_file():
            shutil.copy(tiny / f.filename, target)


def test_missing_decoder_offline_is_refused(tiny, tmp_path):
    _fill_hf_cache(tmp_path / "hf" / "hub", tiny, hub.FILES)
    out = tmp_path / "x.mp4"
    code, text = cli("render", "--prompt", "a cat", "--seconds", "0.5", "--resolution", "32x32", "--offline",
                     "--vae", "lightvae", "-o", out)
    _assert_refused(code, text, out, "--vae lightvae", "daydreamlive/Autoencoders/lightvaew2_1.pth", "offline")
    # with the file in the cache, the same offline render works and the lock records the decoder
    _fill_hf_cache(tmp_path / "hf" / "hub", tiny, [hub.DECODER_FILES["lightvae"]])
    code, text = cli("render", "--prompt", "a cat", "--seconds", "0.5", "--resolution", "32x32", "--offline",
                     "--vae", "lightvae", "-o", out, "-q")
    assert code == 0, text
    assert probe(out)["frames"] == 8
    assert "lightvaew2_1.pth" in hub.read_lock(hub.lock_path())["files"]


def test_interrupted_tiny_decoder_render_resumes_identically(tiny, tmp_path):
    """The tiny decoder's memory (one frame per block, and the first-chunk trim) survives a resume."""
    import signal

    from memflow_cli.render import Interrupted

    timeline = prompt_timeline("a heron over a lake", 2.0)  # 32 frames, 3 chunks
    whole = Renderer(RenderOptions(weights_dir=tiny, width=32, height=32, vae="lighttae", output=tmp_path / "a.mp4"))
    whole.render(timeline)

    def stop(chunk):
        if chunk.index == 1:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "b.mp4"
    with pytest.raises(Interrupted):
        Renderer(RenderOptions(weights_dir=tiny, width=32, height=32, vae="lighttae", output=out)).render(
            timeline, on_chunk=stop)
    resumed = Renderer(RenderOptions(weights_dir=tiny, width=32, height=32, vae="lighttae", output=out, resume=True))
    assert resumed.render(timeline).complete
    assert np.array_equal(_pixels(out), _pixels(tmp_path / "a.mp4"))
