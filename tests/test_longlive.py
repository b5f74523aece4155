"""LongLive as a second model, end to end with tiny weights: choice from the file or --model, errors, manifest,
batches that mix models."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from memflow_cli.render import Renderer, RenderOptions
from memflow_cli.inputs.timeline import read_timeline
from cli_run import cli
from video_frames import frames_digest

FIXTURES = Path(__file__).parent / "fixtures"
EXPORT = FIXTURES / "scope_longlive.json"  # pipelineId "longlive", 32x32, 2 s


pytestmark = pytest.mark.usefixtures("isolated")



def test_a_scope_longlive_export_renders_with_longlive_and_no_warning(tiny, tmp_path):
    code, text = cli("render", EXPORT, "--weights-dir", tiny, "-o", tmp_path / "ll.mp4", "--json", "-q")
    assert code == 0, text
    summary = json.loads(text[text.index("{"):])
    assert summary["video"]["complete"] and summary["video"]["frames"] == 32 and summary["model"]["name"] == "longlive"
    assert not any("pipeline" in w for w in summary["warnings"]), summary["warnings"]
    manifest = json.loads((tmp_path / "ll.manifest.json").read_text())
    assert manifest["settings"]["model"] == "longlive"
    assert (manifest["settings"]["bank_size"], manifest["settings"]["record_interval"]) == (0, None)
    model = manifest["model"]
    assert model["name"] == "longlive" and model["repository"] == "Efficient-Large-Model/LongLive-1.3B"
    assert set(model["files"]) == {"models/longlive_base.pt", "models/lora.pt"}
    assert model["files"]["models/longlive_base.pt"]["sha256"] == hashlib.sha256(
        (tiny / "models" / "longlive_base.pt").read_bytes()).hexdigest()
    assert "models/longlive_base.pt" in manifest["weights"]["files"] and "base.pt" not in manifest["weights"]["files"]

    # --model overrides the file, and says so; the frames are MemFlow's, not LongLive's
    code, text = cli("render", EXPORT, "--weights-dir", tiny, "-o", tmp_path / "mf.mp4", "--model", "memflow", "--json", "-q")
    assert code == 0, text
    summary = json.loads(text[text.index("{"):])
    assert any("'longlive' pipeline" in w and "MemFlow" in w for w in summary["warnings"])
    assert json.loads((tmp_path / "mf.manifest.json").read_text())["model"]["name"] == "memflow"
    assert frames_digest(tmp_path / "ll.mp4") != frames_digest(tmp_path / "mf.mp4")


def test_model_option_on_a_memflow_file(tiny, tmp_path):
    code, text = cli("render", FIXTURES / "scope_v1.json", "--weights-dir", tiny, "--resolution", "32x32",
                     "-o", tmp_path / "x.mp4", "--model", "longlive", "-q")
    assert code == 0, text
    assert json.loads((tmp_path / "x.manifest.json").read_text())["model"]["name"] == "longlive"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "longlive", "--sma"], r"--sma: LongLive-1.3B has no memory bank"),
        (["--sma"], r"--sma: LongLive-1.3B has no memory bank"),  # chosen by the file's pipelineId
        (["--model", "krea-realtime-video"], r"--model: unknown model 'krea-realtime-video'; expected one of memflow, longlive"),
    ],
)
def test_sma_with_longlive_and_unknown_models_are_input_errors(tiny, tmp_path, args, expected):
    code, text = cli("render", EXPORT, "--weights-dir", tiny, "-o", tmp_path / "x.mp4", *args)
    assert code == 2 and "Traceback" not in text
    assert re.search(expected, " ".join(text.split())), text
    assert not list(tmp_path.glob("*.mp4"))


def test_a_batch_mixing_models_loads_each_model_once(tiny, tmp_path, monkeypatch):
    import memflow_cli.weights.checkpoints as checkpoints

    loaded = []
    real_load = checkpoints.load_dit
    monkeypatch.setattr(checkpoints, "load_dit", lambda config, base, *a, **k: loaded.append(Path(base).name) or real_load(config, base, *a, **k))
    for name in ("first.json", "second.json"):
        shutil.copy(EXPORT, tmp_path / name)
    items = [(n, read_timeline(tmp_path / n)) for n in ("first.json",)]
    items.append(("memflow", read_timeline(FIXTURES / "scope_v1.json")))
    items.append(("second.json", read_timeline(tmp_path / "second.json")))
    renderer = Renderer(RenderOptions(weights_dir=tiny, width=32, height=32, output_dir=tmp_path / "o"))
    results = renderer.render_batch(items)
    assert [r.status for r in results] == ["done"] * 3
    assert loaded == ["longlive_base.pt", "base.pt"]  # grouped by model: LongLive for both of its items, then MemFlow
    models = [json.loads(Path(r.summary.manifest).read_text())["model"]["name"] for r in results]
    assert models == ["longlive", "memflow", "longlive"]
    assert frames_digest(tmp_path / "o" / "first.mp4") == frames_digest(tmp_path / "o" / "second.mp4")


def test_download_names_a_model_of_ours_before_any_network(tmp_path):
    code, text = cli("download", "--model", "wan2.2", "--quiet")
    assert code == 2 and "unknown model 'wan2.2'" in text


def test_resume_state_round_trip_without_a_bank():
    """--resume works for LongLive too: its streaming state (no bank, empty staging) survives snapshot → restore."""
    import torch

    from memflow_cli.engine.generator import StreamingGenerator
    from memflow_cli.model.dit import CausalDiT, DiTConfig
    from memflow_cli.weights.models import MODELS
    from memflow_cli.render.resume import restore, snapshot

    torch.manual_seed(0)
    model = CausalDiT(DiTConfig.preset("tiny")).eval()
    prompt_a, prompt_b = torch.randn(8, model.config.text_dim), torch.randn(8, model.config.text_dim)
    settings = MODELS["longlive"].stream_settings()

    def make():
        return StreamingGenerator(model, settings, num_latent_frames=21, latent_height=4, latent_width=4, seed=5)

    straight = make()
    straight.set_conditioning(prompt_a)
    expected = []
    for i in range(7):
        if i == 5:
            straight.set_conditioning(prompt_b)
        expected.append(straight.next_chunk())
    first = make()
    first.set_conditioning(prompt_a)
    for _ in range(5):
        first.next_chunk()
    second = make()
    restore(second, snapshot(first), "cpu")
    second.set_conditioning(prompt_b)
    for a in expected[5:]:
        assert torch.equal(a, second.next_chunk())
