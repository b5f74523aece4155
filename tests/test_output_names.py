"""Output names and the overwrite rule; options that cannot apply or that get adjusted; the help text.

Everything here fails or succeeds before any weight is loaded, so no render runs (except where noted).
"""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from memflow_cli.cli.app import app
from memflow_cli.errors import InputError
from memflow_cli.inputs.option_checks import chunk_start, switch_frame_warnings
from memflow_cli.render.output_names import OutputExists, choose_output, prompt_output, slug, unique
from memflow_cli.inputs.schedule import plan
from memflow_cli.inputs.timeline import read_timeline

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MEMFLOW_CACHE", str(tmp_path / "embeddings"))
    monkeypatch.chdir(tmp_path)


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + (result.stderr if result.stderr_bytes is not None else "")


# -- names -----------------------------------------------------------------------------------------


def test_slug():
    assert slug("A cat walks in the city, at night!") == "a-cat-walks-in-the-city-at-night"
    assert slug("Crème brûlée on a café table") == "creme-brulee-on-a-cafe-table"
    assert len(slug("word " * 40)) <= 40 and not slug("word " * 40).endswith("-")
    assert slug("!!! ???") == "memflow" and slug("x" * 80) == "x" * 40


def test_prompt_names_are_made_unique(tmp_path):
    first = prompt_output("A red dog runs", 7, tmp_path)
    assert first == tmp_path / "a-red-dog-runs-7.mp4"
    assert choose_output(None, first, overwrite=False, make_unique=True) == first
    first.write_bytes(b"x")
    assert unique(first) == tmp_path / "a-red-dog-runs-7-2.mp4"
    (tmp_path / "a-red-dog-runs-7-2.mp4").write_bytes(b"x")
    assert choose_output(None, first, overwrite=False, make_unique=True) == tmp_path / "a-red-dog-runs-7-3.mp4"
    # a partial file from an interrupted attempt does not count: the complete render supersedes it
    other = tmp_path / "b-1.mp4"
    (tmp_path / "b-1.partial.mp4").write_bytes(b"x")
    assert unique(other) == other


def test_an_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExists, match=r"mine\.mp4: the file already exists; pass -y/--overwrite .* -o"):
        choose_output(out, tmp_path / "ignored.mp4", overwrite=False)
    assert choose_output(out, tmp_path / "ignored.mp4", overwrite=True) == out
    with pytest.raises(OutputExists):  # a name derived from the user's file is not ours to change
        choose_output(None, out, overwrite=False)
    assert issubclass(OutputExists, InputError)  # exit code 2
    # one of our renders (manifest next to it) may be exactly this render: the renderer decides, with weights
    (tmp_path / "mine.manifest.json").write_text("{}")
    assert choose_output(out, tmp_path / "ignored.mp4", overwrite=False) == out


def test_cli_refuses_before_loading_anything(tmp_path):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"keep me")
    # no weights anywhere: the refusal must come first, not a weights error
    code, text = cli("render", FIXTURES / "scope_v1.json", "-o", out, "--offline")
    assert code == 2 and "already exists" in text and "-y/--overwrite" in text and "Traceback" not in text
    assert out.read_bytes() == b"keep me"
    for flag in ("-y", "--overwrite", "--force"):  # one option, three spellings: the weights error comes next
        code, text = cli("render", FIXTURES / "scope_v1.json", "-o", out, "--offline", flag)
        assert code == 1 and "already exists" not in text and "weights missing" in text
    assert out.read_bytes() == b"keep me"


# -- options that cannot apply, and adjusted ones --------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        ([FIXTURES / "scope_v1.json", "--seconds", "5"], "--seconds: sets the length of a --prompt video"),
        ([FIXTURES / "scope_v21.json", "--segment-seconds", "2"], "--segment-seconds: applies to MemFlow prompt-list"),
        ([FIXTURES / "workflow.json", "--switch-frames", "40"], "--switch-frames: applies to MemFlow prompt-list"),
        ([FIXTURES / "scope_v1.json", "--line", "1"], "--line: applies to MemFlow prompt-list"),
        (["--prompt", "a dog", "--segment-seconds", "2"], "--segment-seconds: applies to MemFlow prompt-list JSONL files, not to --prompt"),
        ([FIXTURES / "prompts.jsonl", "--line", "1", "--latent-frames", "120"], "without --switch-frames it has no effect"),
        ([FIXTURES / "prompts.jsonl", "--line", "1", "--segment-seconds", "2", "--switch-frames", "40,80"], "choose one"),
    ],
)
def test_options_that_cannot_apply_are_errors(tmp_path, args, expected):
    code, text = cli("render", *args, "--offline", "-o", tmp_path / "x.mp4")
    assert code == 2 and expected in text and "Traceback" not in text, text
    assert not (tmp_path / "x.mp4").exists()


def test_switch_frames_moved_to_chunk_starts_are_announced():
    assert [chunk_start(s) for s in (1, 3, 40, 42, 80)] == [3, 3, 42, 42, 81]
    assert switch_frame_warnings([42, 81]) == []
    (warning,) = switch_frame_warnings([40, 42, 80])
    assert "chunk starts (every 3 latent frames)" in warning and "40 → 42" in warning and "80 → 81" in warning
    assert "42 → 42" not in warning
    # the warning says what the schedule does: the switch to prompt 2 happens at the chunk starting at frame 42
    t = read_timeline(FIXTURES / "prompts.jsonl", line=1, switch_frames=[40, 81], num_latent_frames=120)
    changes = [c.index for c in plan(t).chunks if c.changed]
    assert [3 * c for c in changes] == [0, chunk_start(40), chunk_start(81)]


def test_switch_frames_warning_is_printed(tmp_path):
    code, text = cli("render", FIXTURES / "prompts.jsonl", "--line", "1", "--switch-frames", "40,81",
                     "--latent-frames", "120", "--weights-dir", tmp_path / "nowhere", "-o", tmp_path / "x.mp4")
    assert code == 2 and "warning" in text and "40 → 42" in text  # warned, then the missing weights folder stops it


# -- help ------------------------------------------------------------------------------------------


def _commands(group, path=()):
    """Every command and subcommand group, as argument paths: ("render",), ("lora",), ("lora", "inspect"), …"""
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def test_help_is_clean_and_complete():
    found = dict(_commands(typer.main.get_command(app)))
    assert {("render",), ("lora",), ("lora", "inspect")} <= set(found)
    for path, command in found.items():
        code, text = cli(*path, "-h")
        assert code == 0 and "Usage" in text, path
        # flags show no value, lists no Python type, required arguments no braces (`{file}`)
        assert "<bool>" not in text and "list[" not in text and "{" not in text, (path, text)
        _, long_text = cli(*path, "--help")
        assert long_text == text
        for param in command.params:
            if isinstance(param, typer.core.TyperOption):
                assert param.help, f"memflow {' '.join(path)} {param.opts[0]} has no description"
    assert "lora inspect [OPTIONS] FILE " in cli("lora", "inspect", "-h")[1]


def test_one_spelling_set_for_dtype(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # wide enough that rich does not wrap an option's help text
    _, render_help = cli("render", "-h")
    _, bench_help = cli("bench", "-h")
    for text in (render_help, bench_help):
        assert "bf16, fp16 or fp32" in text and "bfloat16" not in text
    code, text = cli("bench", "--dtype", "int8")
    assert code == 2 and "expected one of bf16, fp16, fp32" in text


def test_what_a_render_leaves_next_to_its_video_is_ignored_by_git():
    """Outputs, manifests, partial files, sheets, locks and resume checkpoints (a 260 MB folder) never show up in
    `git status`: every name the render's naming rule gives (render/outputs.py), beside the video or in a folder."""
    import shutil
    import subprocess
    from pathlib import Path

    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    repo = Path(__file__).parent.parent
    from memflow_cli.render.outputs import lock_path, manifest_path, partial_path, resume_dir, sheet_path

    names = ["out/x.resume/seg-0000.mkv"]
    for video in (Path("x.mp4"), Path("out/x.mp4")):
        written = [video, manifest_path(video), partial_path(video), manifest_path(partial_path(video)),
                   sheet_path(video), sheet_path(partial_path(video)), lock_path(video), resume_dir(video) / "meta.json"]
        names += [str(p) for p in written]
    found = subprocess.run([git, "check-ignore", "--no-index", *names], cwd=repo, capture_output=True, text=True)
    assert sorted(found.stdout.split()) == sorted(names), found
