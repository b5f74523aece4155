"""The command line refuses absurd options and dangerous outputs before anything loads: exit 2, nothing touched."""

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memflow_cli.cli.app import app

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFLOW_CACHE", str(tmp_path / "embeddings"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no weights exist: reaching them would be exit 1, not 2
    monkeypatch.chdir(tmp_path)


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + (result.stderr if result.stderr_bytes is not None else "")


def refused(*args, expected):
    started = time.process_time()
    code, text = cli("render", *args)
    assert code == 2, text
    assert expected in " ".join(text.split()) and "Traceback" not in text
    assert time.process_time() - started < 10  # refused before planning or loading anything
    return text


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--steps", "1001"], "--steps[0]: expected a timestep in 1..1000"),
        (["--steps", "-5"], "--steps[0]: expected a timestep in 1..1000"),
        (["--steps", "250,500"], "strictly decreasing"),
        (["--seed", str(2**64)], "--seed: expected a seed"),
        (["--seed", "-1"], "--seed: expected a seed"),
        (["--device", "meta"], "--device: expected cpu, cuda or cuda:N"),
        (["--resolution", "163840x160"], "up to 8192"),
        (["--max-hours", "0"], "--max-hours"),
    ],
)
def test_absurd_options(tmp_path, args, expected):
    refused("--prompt", "a cat", *args, expected=expected)
    assert list(tmp_path.glob("*.mp4")) == []


@pytest.mark.parametrize("seconds, expected", [("1e308", "limit is 24 hours"), ("nan", "found NaN"), ("1e400", "infinite")])
def test_absurd_seconds(seconds, expected):
    refused("--prompt", "a cat", "--seconds", seconds, expected=expected)


def test_longer_than_a_day_needs_max_hours(tmp_path):
    refused("--prompt", "a cat", "--seconds", str(25 * 3600), expected="raise it with --max-hours")


def test_timeline_end_1e20_is_refused_at_once(tmp_path):
    doc = {"prompts": [{"startTime": 0, "endTime": 1e20, "prompts": [{"text": "a", "weight": 1}]}]}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    refused("t.json", expected="limit is 24 hours")


def test_jsonl_segments_of_no_frames(tmp_path):
    refused(FIXTURES / "prompts.jsonl", "--segment-seconds", "1e-9", expected="at least one frame")


def test_effectively_empty_prompt():
    refused("--prompt", "\u200b\u2060 &nbsp;", expected="--prompt: expected a non-empty prompt text")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_input(tmp_path):
    os.mkfifo(tmp_path / "t.json")
    refused("t.json", expected="expected a regular timeline file")


@pytest.mark.parametrize("output", ["t.json", "./t.json", "sub/../t.json", "t.mp4.json", "base.pt"])
def test_output_onto_the_input_or_not_a_video(tmp_path, output):
    (tmp_path / "sub").mkdir()
    original = (FIXTURES / "scope_v1.json").read_bytes()
    (tmp_path / "t.json").write_bytes(original)
    refused("t.json", "-o", output, expected="ending in .mp4")
    assert (tmp_path / "t.json").read_bytes() == original


def test_manifest_that_would_overwrite_the_input(tmp_path):
    original = (FIXTURES / "scope_v1.json").read_bytes()
    (tmp_path / "scene.manifest.json").write_bytes(original)
    refused("scene.manifest.json", "-o", "scene.mp4", expected="would overwrite the input")
    assert (tmp_path / "scene.manifest.json").read_bytes() == original


def test_jsonl_input_is_protected_too(tmp_path):
    (tmp_path / "p.manifest.json").write_text('{"prompts": ["a cat"]}\n')
    refused("p.manifest.json", "-o", "p.mp4", "--segment-seconds", "1", expected="would overwrite the input")


def test_output_problems_exit_2(tmp_path):
    (tmp_path / "d.mp4").mkdir()
    refused("--prompt", "a cat", "-o", "d.mp4", expected="is a directory")
    refused("--prompt", "a cat", "-o", "x" * 240 + ".mp4", expected="too long")
    (tmp_path / "afile").write_text("x")
    refused("--prompt", "a cat", "-o", "afile/v.mp4", expected="not a folder")


def test_missing_output_folder_is_created(tmp_path):
    code, text = cli("render", "--prompt", "a cat", "-o", "new/folder/v.mp4", "--offline")
    assert (tmp_path / "new" / "folder").is_dir()  # then the render goes on (here: no weights offline, exit 1)
    assert code == 1 and "Traceback" not in text


def test_a_timeline_whose_name_contains_line_is_protected(tmp_path):
    original = (FIXTURES / "scope_v1.json").read_bytes()
    (tmp_path / "take line 2.manifest.json").write_bytes(original)
    refused("take line 2.manifest.json", "-o", "take line 2.mp4", expected="would overwrite the input")
    assert (tmp_path / "take line 2.manifest.json").read_bytes() == original
