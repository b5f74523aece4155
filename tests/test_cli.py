"""End to end through the CLI with tiny random weights: real mp4s, decoded back with imageio-ffmpeg's ffmpeg."""

import hashlib
import json
import os
import shutil
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from memflow_cli.cli.app import app
from memflow_cli.render import Interrupted, RenderOptions, render
from memflow_cli.testing.tiny_weights import write_tiny_weights
from memflow_cli.inputs.timeline import read_timeline
from memflow_cli.render.video import probe
from test_timeline import BAD
from cli_run import cli

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.mark.parametrize(
    "source, extra, frames, size",
    [
        ("scope_v1.json", ["--resolution", "32x32"], 24, (32, 32)),
        ("scope_v20.json", [], 32, (96, 64)),  # resolution and seed from the file
        ("scope_v21.json", ["--resolution", "32x48", "--seed", "5"], 40, (32, 48)),
        ("workflow.json", ["--resolution", "32x32", "--sma"], 28, (32, 32)),
        ("prompts.jsonl", ["--line", "2", "--segment-seconds", "0.5", "--resolution", "32x32"], 24, (32, 32)),
    ],
)
def test_render_formats(tiny, tmp_path, source, extra, frames, size):
    out = tmp_path / "video.mp4"
    code, text = cli("render", FIXTURES / source, "--weights-dir", tiny, "-o", out, "--quiet", *extra)
    assert code == 0, text
    info = probe(out)
    assert info["frames"] == frames and info["fps"] == 16 and info["size"] == size
    manifest = json.loads((tmp_path / "video.manifest.json").read_text())
    assert manifest["input"]["sha256"] == hashlib.sha256((FIXTURES / source).read_bytes()).hexdigest()
    assert manifest["video"]["frames"] == frames and manifest["video"]["complete"] is True
    assert manifest["settings"]["resolution"] == f"{size[0]}x{size[1]}"
    assert set(manifest["weights"]["files"]) >= {"base.pt", "lora.pt", "Wan2.1_VAE.pth"}
    assert manifest["weights"]["files"]["base.pt"]["sha256"]
    if "--seed" in extra:
        assert manifest["settings"]["seed"] == 5  # the command line overrides the file's 3
    if source == "scope_v20.json":
        assert manifest["settings"]["seed"] == 7
    if "--sma" in extra:
        assert manifest["settings"]["sma"] is True
    assert not list(tmp_path.glob(".*tmp*"))


def test_prompt_names_json_summary_and_manifest(tiny, tmp_path, monkeypatch):
    argv = ["memflow", "render", "--prompt", "a cat walks in the city at night", "--seconds", "1",
            "--weights-dir", str(tiny), "--resolution", "32x32", "--json", "-q"]
    monkeypatch.setattr(sys, "argv", argv)
    taken = tmp_path / "a-cat-walks-in-the-city-at-night-1.mp4"  # <prompt words>-<seed>.mp4 exists already
    taken.write_bytes(b"an earlier try")
    code, text = cli(*argv[1:])
    assert code == 0, text
    out = tmp_path / "a-cat-walks-in-the-city-at-night-1-2.mp4"  # so ours is made unique
    assert taken.read_bytes() == b"an earlier try" and probe(out)["frames"] == 16
    summary = json.loads(text[text.index("{"):])
    manifest = json.loads((tmp_path / "a-cat-walks-in-the-city-at-night-1-2.manifest.json").read_text())
    assert summary == {**manifest, "manifest": summary["manifest"], "skipped": False}  # the manifest's keys
    assert Path(summary["manifest"]).name == "a-cat-walks-in-the-city-at-night-1-2.manifest.json"
    assert manifest["video"]["frames"] == 16 and manifest["video"]["complete"] and manifest["fps"]["generation"] > 0
    assert set(manifest["timings_s"]) >= {"load", "encode", "generate", "decode", "write", "total"}
    assert manifest["command"] == shlex.join(argv)
    assert manifest["input"]["path"] is None and manifest["prompt_cache"]["computed"] == 1


def test_an_already_rendered_output_is_reported_as_skipped(tiny, tmp_path):
    """Rendering the same thing again skips it and says so: no `0.00 FPS`, `"skipped": true` in --json."""
    args = ("render", "--prompt", "a koi pond", "--seconds", "1", "--weights-dir", tiny, "--resolution", "32x32",
            "-o", tmp_path / "koi.mp4")
    code, text = cli(*args, "--json", "-q")
    assert code == 0 and json.loads(text[text.index("{"):])["skipped"] is False
    code, text = cli(*args, "--json", "-q")
    data = json.loads(text[text.index("{"):])
    assert code == 0 and data["skipped"] is True and data["video"]["complete"]
    code, text = cli(*args)
    assert code == 0 and "skipped (already rendered" in text and "FPS" not in text, text


def test_manifest_records_how_the_render_was_asked(tiny, tmp_path, monkeypatch):
    out = tmp_path / "v20.mp4"
    argv = ["memflow", "render", str(FIXTURES / "scope_v20.json"), "--resolution", "32x48", "--sma",
            "--weights-dir", str(tiny), "-o", str(out), "-q"]
    monkeypatch.setattr(sys, "argv", argv)
    code, text = cli(*argv[1:])
    assert code == 0, text
    m = json.loads((tmp_path / "v20.manifest.json").read_text())
    assert m["command"] == shlex.join(argv)
    assert m["input"]["path"] == str((FIXTURES / "scope_v20.json").resolve())
    sources = m["settings_sources"]
    assert sources["from"]["resolution"] == "command line" and sources["from"]["seed"] == "file"
    assert sources["from"]["sma"] == "command line" and sources["from"]["blend"] == "default"
    assert sources["from"]["dtype"] == "default"
    assert sources["file_values_overridden"] == {"resolution": "96x64"}  # the file asked for 96x64
    assert m["settings"]["resolution"] == "32x48" and m["settings"]["seed"] == 7
    assert m["video"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert m["video"]["encoder"] == {"codec": "h264", "encoder": "libx264", "preset": "medium", "crf": 18,
                                     "pix_fmt": "yuv420p", "colorspace": "bt709", "color_primaries": "bt709",
                                     "color_trc": "bt709", "color_range": "tv"}
    assert m["prompt_cache"]["path"] == str(tmp_path / "embeddings")


def test_plain_progress_lines_and_table_when_stderr_is_not_a_terminal(tiny, tmp_path):
    result = CliRunner().invoke(app, ["render", str(FIXTURES / "scope_v1.json"), "--weights-dir", str(tiny),
                                      "--resolution", "32x32"])
    assert result.exit_code == 0, result.output
    log = result.stderr  # CliRunner's stderr is not a terminal, like `2> log` or nohup
    assert "\x1b[" not in log and "━" not in log  # no live bar, no terminal codes
    lines = log.splitlines()
    assert "resolving weights" in lines and "rendering 24 frames (0:00:02 at 16 fps) in 3 chunks" in lines
    assert any(l.startswith("chunk 1: block 1/") for l in lines)
    assert any(l.startswith("chunk 1/3  9/24 frames  37.5% · ") and " fps · ETA " in l for l in lines)
    assert any(l.startswith("chunk 3/3  24/24 frames  100.0% · ") and l.endswith("ETA 0:00:00") for l in lines)
    table = result.stdout
    for word in ("FPS end-to-end", "FPS generation", "time prompt encoding", "time generation", "time decoding",
                 "time video encoding", "prompt cache", "peak RSS"):
        assert word in table
    assert "time encode" not in table and "time write" not in table
    assert (tmp_path / "scope_v1.mp4").exists()  # default name: the timeline's


def test_same_seed_same_video(tiny, tmp_path):
    t = read_timeline(FIXTURES / "scope_v1.json")
    import imageio_ffmpeg
    import numpy as np

    frames = []
    for name in ("a.mp4", "b.mp4"):
        render(t, RenderOptions(output=tmp_path / name, weights_dir=tiny, width=32, height=32))
        reader = imageio_ffmpeg.read_frames(str(tmp_path / name))
        next(reader)
        frames.append(np.concatenate([np.frombuffer(f, np.uint8) for f in reader]))
    assert np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2_and_nothing_written(tiny, tmp_path, case):
    doc, path, expected = BAD[case]
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompts": ["a", "b"]}\n{"prompts": ["c", ""]}\n' if doc is None else json.dumps(doc))
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an older good video")
    code, text = cli("render", bad, "--weights-dir", tiny, "-o", out)
    assert code == 2, text
    assert str(bad) in text and path in text and expected in text
    assert "Traceback" not in text
    assert out.read_bytes() == b"an older good video"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".mp4", ".json") and p.name != "bad.json") == ["out.mp4"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--resolution", "100x64"], "--resolution"),
        (["--resolution", "big"], "WIDTHxHEIGHT"),
        (["--blend", "cubic"], "--blend"),
        (["--dtype", "int8"], "--dtype"),
        (["--line", "3"], "line 3"),
    ],
)
def test_bad_options_exit_2(tiny, tmp_path, args, expected):
    code, text = cli("render", FIXTURES / "prompts.jsonl", "--weights-dir", tiny, *args)
    assert code == 2 and expected in text and "Traceback" not in text
    assert not list(tmp_path.glob("*.mp4"))


def test_neither_file_nor_prompt(tmp_path):
    code, text = cli("render")
    assert code == 2 and "--prompt" in text


def test_missing_weights_offline_is_clear(tmp_path):
    code, text = cli("render", FIXTURES / "scope_v1.json", "--offline", "-o", tmp_path / "x.mp4")
    assert code == 1 and "memflow download" in text and "Traceback" not in text
    assert not (tmp_path / "x.mp4").exists()
    # …and how to try it without the weights: the README's smoke run, whose commands exist
    assert "python -m memflow_cli.testing.tiny_weights /tmp/tiny" in text
    assert "memflow render timelines/smoke.json --weights-dir /tmp/tiny" in text
    readme = (REPO / "README.md").read_text()
    assert "memflow_cli.testing.tiny_weights /tmp/tiny" in readme and "timelines/smoke.json --weights-dir /tmp/tiny" in readme


def test_corrupt_weights_caught_by_lock(tiny, tmp_path):
    broken = tmp_path / "weights"
    shutil.copytree(tiny, broken)
    data = (broken / "base.pt").read_bytes()
    (broken / "base.pt").write_bytes(data[: len(data) // 2])
    code, text = cli("render", FIXTURES / "scope_v1.json", "--weights-dir", broken, "-o", tmp_path / "x.mp4")
    assert code == 1 and "base.pt" in text and "truncated" in text
    assert not (tmp_path / "x.mp4").exists()


def test_interrupt_keeps_partial_and_old_output(tiny, tmp_path):
    out = tmp_path / "long.mp4"
    out.write_bytes(b"yesterday's render")

    def stop_after_second_chunk(chunk):
        if chunk.index == 1:
            raise KeyboardInterrupt

    t = read_timeline(FIXTURES / "scope_v21.json")
    with pytest.raises(Interrupted) as info:
        render(t, RenderOptions(output=out, weights_dir=tiny, width=32, height=32, overwrite=True), on_chunk=stop_after_second_chunk)
    assert info.value.exit_code == 130
    partial = tmp_path / "long.partial.mp4"
    assert probe(partial)["frames"] == 9 + 12
    assert out.read_bytes() == b"yesterday's render"
    manifest = json.loads((tmp_path / "long.partial.manifest.json").read_text())
    assert manifest["video"]["complete"] is False and manifest["video"]["frames"] == 21
    # a later complete render supersedes the partial file
    render(t, RenderOptions(output=out, weights_dir=tiny, width=32, height=32, overwrite=True))
    assert probe(out)["frames"] == 40 and not partial.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery")
def test_ctrl_c_in_a_real_process(tiny, tmp_path):
    out = tmp_path / "ctrlc.mp4"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        # an hour of video: far more than any machine renders before the interrupt below
        [sys.executable, "-m", "memflow_cli", "render", "--prompt", "a red dog runs", "--seconds", "3600",
         "--weights-dir", str(tiny), "--resolution", "32x32", "-o", str(out), "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    # interrupt once encoded frames are reaching the file (whatever the machine's speed): the hidden temporary,
    # or the playable partial file it becomes once ffmpeg has opened it
    deadline = time.time() + 120

    def encoded_bytes():
        total = 0
        for p in [*tmp_path.glob(".ctrlc.*tmp.mp4"), tmp_path / "ctrlc.partial.mp4"]:
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # renamed between listing and stat, or not there yet
                pass
        return total

    while encoded_bytes() == 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1].decode()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "error" not in stderr
    assert "stopped after" in stderr and "ctrlc.partial.mp4" in stderr
    frames = probe(tmp_path / "ctrlc.partial.mp4")["frames"]
    assert frames > 0 and (frames - 9) % 12 == 0  # whole chunks
    assert not out.exists() and not list(tmp_path.glob(".ctrlc.*"))


def test_info_lists_weight_files(tiny, tmp_path):
    code, text = cli("info", "--weights-dir", tiny, "--json")
    assert code == 0, text
    data = json.loads(text)
    assert data["device"] in ("cpu", "cuda") and data["attention"]
    present = {f["file"]: f["present"] for f in data["files"]}
    assert present["base.pt"] and present["google/umt5-xxl/tokenizer.json"] and not present["google/umt5-xxl/spiece.model"]
    code, text = cli("info")  # empty HF cache: everything missing, still exit 0
    assert code == 0 and "missing" in text


def test_download_refuses_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = cli("download", "--quiet")
    assert code == 1 and "HF_HUB_OFFLINE" in text


def test_tiny_weights_are_deterministic(tmp_path):
    a = write_tiny_weights(tmp_path / "a", seed=3)
    b = write_tiny_weights(tmp_path / "b", seed=3)
    for name in ("base.pt", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"):
        sa, sb = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        sa, sb = sa.get("generator", sa), sb.get("generator", sb)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    lora = torch.load(a / "lora.pt", weights_only=True)["generator_lora"]
    assert all(k.startswith("base_model.model.blocks.") for k in lora)
    assert json.loads((a / "config.json").read_text())["text_dim"] == 32


def test_example_timelines_are_valid():
    files = sorted((REPO / "timelines").glob("*.json"))
    assert any(f.name == "lighthouse.json" for f in files) and any(f.name == "smoke.json" for f in files)
    for f in files:
        t = read_timeline(f)
        assert t.format == "scope-timeline 2.1" and t.warnings == ()


def test_no_network_fails_fast_naming_every_file(tmp_path, monkeypatch):
    import socket

    import huggingface_hub

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def refuse(*args, **kwargs):
        raise AssertionError("no request may be attempted (it would retry for ~23 s)")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    for args in (["download", "--quiet"], ["render", FIXTURES / "scope_v1.json", "-o", tmp_path / "x.mp4", "-q"],
                 ["download", "--quiet", "--vae", "lighttae"]):
        code, text = cli(*args)
        assert code == 1 and "Traceback" not in text
        assert "cannot resolve the host name huggingface.co" in text
        assert "base.pt" in text and "Wan2.1_VAE.pth" in text and "google/umt5-xxl/tokenizer.json" in text
        assert ("--weights-dir" in text.split("without the real weights")[0]) == (args[0] == "render")  # download has none
        assert ("lighttaew2_1.pth" in text) == ("lighttae" in args)  # the decoder asked for is among the missing
        assert "timelines/smoke.json --weights-dir /tmp/tiny" in text
    assert not (tmp_path / "x.mp4").exists()


def test_tiny_weights_write_the_longlive_layout_too(tiny):
    from memflow_cli.weights import hub
    paths = hub.weights_from_dir(tiny, verify_hashes=True, model="longlive")
    assert paths.base == tiny / "models" / "longlive_base.pt" and paths.lora == tiny / "models" / "lora.pt"
    memflow = torch.load(tiny / "base.pt", weights_only=True)["generator"]
    longlive = torch.load(paths.base, weights_only=True)["generator"]
    assert memflow.keys() == longlive.keys() and all(k.startswith("model.") for k in longlive)
    assert not torch.equal(memflow["model.head.head.weight"], longlive["model.head.head.weight"])
    lora = torch.load(paths.lora, weights_only=True)["generator_lora"]
    assert all(k.startswith("base_model.model.blocks.") for k in lora)
    code, text = cli("info", "--weights-dir", tiny, "--json")
    rows = {(f["model"], f["file"]): f["present"] for f in json.loads(text)["files"]}
    assert rows[("longlive", "models/longlive_base.pt")] and rows[("memflow", "base.pt")] and rows[("shared", "config.json")]


def test_folders_that_do_not_exist_are_usage_errors(tmp_path):
    """--weights-dir and --lora-dir naming no folder: exit 2 naming the option and the path, nothing written."""
    missing = tmp_path / "nonexistent"
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    timeline = FIXTURES / "scope_v1.json"
    code, text = cli("render", timeline, "--weights-dir", missing, "-o", tmp_path / "x.mp4", "-q")
    assert code == 2 and f"--weights-dir {missing}: no such folder" in text and "smoke.json" in text, text
    code, text = cli("info", "--weights-dir", missing)
    assert code == 2 and f"--weights-dir {missing}: no such folder" in text
    for folder, why in ((missing, "no such folder"), (a_file, "is not a folder")):
        code, text = cli("render", timeline, "--lora-dir", folder, "-o", tmp_path / "x.mp4", "-q")
        assert code == 2 and f"--lora-dir {folder}: {why}" in text and "Traceback" not in text, text
    assert not list(tmp_path.glob("*.mp4"))
