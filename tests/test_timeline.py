"""Reading every timeline format, and the validation errors of timelines.md §4."""

import json
from pathlib import Path

import pytest

from memflow_cli.errors import InputError
from memflow_cli.inputs.timeline import prompt_timeline, read_timeline, read_timelines, segment_times

FIXTURES = Path(__file__).parent / "fixtures"


def test_scope_v1_blocks_with_text():
    t = read_timeline(FIXTURES / "scope_v1.json")
    assert t.format == "scope-timeline 1.0"
    assert [b.prompts[0].text for b in t.blocks] == [
        "A red kite over a green hill, wide shot",
        "A red kite over a green hill at dusk, wide shot",
    ]
    assert t.end == 1.5 and t.total_frames == 24
    assert t.settings.seed is None and t.warnings == ()


def test_scope_v20_sorted_and_other_pipeline_warns():
    t = read_timeline(FIXTURES / "scope_v20.json")
    assert t.format == "scope-timeline 2.0"
    assert [b.start for b in t.blocks] == [0, 1.2]  # sorted although the file is not
    assert t.blocks[0].where == "prompts[1]"
    s = t.settings
    assert (s.seed, s.width, s.height, s.pipeline_id) == (7, 96, 64, "streamdiffusionv2")
    assert s.denoising_steps is None  # another pipeline's steps are not MemFlow's
    assert any("streamdiffusionv2" in w and "MemFlow" in w for w in t.warnings)
    ignored = [w for w in t.warnings if w.startswith("ignored")]
    assert len(ignored) == 1 and "settings.manageCache" in ignored[0]
    assert "noiseScale" not in ignored[0]  # video-to-video settings are read, not ignored
    assert (s.input_mode, s.noise_scale, s.noise_controller) == (None, 0.8, False)


def test_scope_v21_blend_and_transition():
    t = read_timeline(FIXTURES / "scope_v21.json")
    assert t.format == "scope-timeline 2.1"
    b = t.blocks[1]
    assert b.transition_steps == 2 and b.interpolation == "slerp"
    assert b.weights == pytest.approx((0.3, 0.7))
    assert t.settings.denoising_steps == (1000, 750, 500, 250)
    assert t.settings.seed == 3 and (t.settings.width, t.settings.height) == (64, 64)
    assert len(t.texts) == 2  # the shared prompt is encoded once
    assert t.sha256 and len(t.sha256) == 64


def test_scope_workflow_main_pipeline():
    t = read_timeline(FIXTURES / "workflow.json")
    assert t.format == "scope-workflow 1.0"
    assert t.settings.seed == 11 and t.settings.pipeline_id == "memflow"
    assert t.blocks[0].prompts[0].weight == 1.0  # default weight
    assert t.blocks[1].transition_steps == 1 and t.blocks[1].interpolation == "linear"
    assert t.settings.vae == "wan" and not any("vae_type" in w for w in t.warnings)  # a setting we honour


def test_memflow_jsonl_one_timeline_per_line():
    ts = read_timelines(FIXTURES / "prompts.jsonl", segment_seconds=2.0)
    assert len(ts) == 2
    assert [(b.start, b.end) for b in ts[0].blocks] == [(0, 2), (2, 4), (4, 6)]
    assert ts[1].source.endswith("line 2")
    assert read_timeline(FIXTURES / "prompts.jsonl", line=2, segment_seconds=2.0).blocks[0].prompts[0].text.startswith("A tram")
    with pytest.raises(InputError, match="choose one"):
        read_timeline(FIXTURES / "prompts.jsonl")
    with pytest.raises(InputError, match="line 5 does not exist"):
        read_timeline(FIXTURES / "prompts.jsonl", line=5)


def test_line_reads_only_that_line(tmp_path):
    """--line N checks line N alone: a broken line elsewhere (bad JSON, a blank prompt) does not stop it."""
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"prompts": ["a cat", "a dog"]}\n\n{"prompts": ["a hare"]}\n{"prompts": [""]}\n{not json\n')
    (t,) = read_timelines(f, line=2, segment_seconds=1.0)  # the 2nd prompt list (blank lines do not count)
    assert t.blocks[0].prompts[0].text == "a hare" and t.source.endswith("line 3")
    with pytest.raises(InputError, match="line 4: prompts\\[0\\]"):  # the chosen line is still checked
        read_timelines(f, line=3)
    with pytest.raises(InputError, match="not valid JSON at line 5"):
        read_timelines(f, line=4)
    with pytest.raises(InputError, match=r"line 9 does not exist; the file holds 4 prompt lists, expected 1 to 4"):
        read_timelines(f, line=9)
    with pytest.raises(InputError, match=r"line 0 does not exist"):
        read_timelines(f, line=0)
    with pytest.raises(InputError, match="not valid JSON at line 5"):  # without --line every line is checked
        read_timelines(f)
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompts": ["a cat"]}\n')
    with pytest.raises(InputError, match=r"the file holds 1 prompt list, expected 1 to 1"):
        read_timelines(one, line=2)


def test_cli_line_renders_despite_other_bad_lines(tmp_path):
    from cli_run import cli

    f = tmp_path / "mixed.jsonl"
    f.write_text('{"prompts": ["a cat"]}\n{"prompts": [""]}\n')
    code, text = cli("render", f, "--line", "1", "--weights-dir", tmp_path / "nowhere", "-o", tmp_path / "x.mp4")
    assert "prompts[0]" not in text and "nowhere" in text  # got past reading, stopped at the missing weights
    code, text = cli("render", f, "--line", "3", "--weights-dir", tmp_path / "nowhere", "-o", tmp_path / "x.mp4")
    assert code == 2 and "line 3 does not exist" in text


def test_counts_in_messages_are_singular_or_plural():
    from memflow_cli.errors import counted

    assert [counted(n, "switch frame") for n in (0, 1, 2)] == ["0 switch frames", "1 switch frame", "2 switch frames"]
    assert counted(1, "LoRA") == "1 LoRA" and counted(3, "child", "children") == "3 children"
    with pytest.raises(InputError, match="expected 1 switch frame for 2 prompts .*found 2"):
        segment_times(2, None, [40, 80], 240, "x")
    with pytest.raises(InputError, match="expected 0 switch frames for 1 prompt "):
        segment_times(1, None, [40], 240, "x")


def test_default_segment_is_ten_seconds(tmp_path):
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps({"prompts": ["a cat", "a dog"]}) + "\n")
    (t,) = read_timelines(f)  # a single line that is also valid JSON is still a prompt list
    assert t.format == "memflow-jsonl" and t.end == 20.0


def test_switch_frames_in_latent_frames():
    # The reference's default: 240 latent frames, switches at 40, 80, ...: 957 video frames.
    times = segment_times(6, None, [40, 80, 120, 160, 200], 240, "x")
    assert times[-1][1] * 16 == 957
    assert round(times[1][0] * 16) == 4 * 40 - 3
    with pytest.raises(InputError, match="expected 5 switch frames"):
        segment_times(6, None, [40, 80], 240, "x")
    with pytest.raises(InputError, match="increasing"):
        segment_times(3, None, [80, 40], 240, "x")


def test_prompt_timeline():
    t = prompt_timeline("  a koi pond in autumn ", 3)
    assert t.blocks[0].prompts[0].text == "a koi pond in autumn" and t.total_frames == 48
    with pytest.raises(InputError, match="--prompt"):
        prompt_timeline("  ", 3)


def _scope(blocks, settings=None, version="2.1"):
    doc = {"prompts": blocks, "version": version}
    if settings is not None:
        doc["settings"] = settings
    return doc


def _block(start=0, end=1, text="a cat", weight=100, **extra):
    return {"startTime": start, "endTime": end, "prompts": [{"text": text, "weight": weight}], **extra}


BAD = {
    "missing prompts": ({"version": "2.1", "settings": {}}, "$", "without `prompts`"),
    "prompts not array": (_scope({"a": 1}), "prompts", "expected an array"),
    "empty prompts": (_scope([]), "prompts", "at least one"),
    "end before start": (_scope([_block(2, 1)]), "prompts[0].endTime", "expected an end time after"),
    "end equals start": (_scope([_block(1, 1)]), "prompts[0].endTime", "expected an end time after"),
    "negative time": (_scope([_block(-1, 1)]), "prompts[0].startTime", "≥ 0"),
    "missing endTime": (_scope([{"startTime": 0, "prompts": [{"text": "a", "weight": 1}]}]), "prompts[0].endTime", "missing"),
    "empty text": (_scope([_block(text="  ")]), "prompts[0].prompts[0].text", "non-empty"),
    "text wrong type": (_scope([_block(text=5)]), "prompts[0].prompts[0].text", "string"),
    "weights sum zero": (_scope([_block(weight=0)]), "prompts[0].prompts", "positive sum"),
    "negative weight": (_scope([_block(weight=-5)]), "prompts[0].prompts[0].weight", "≥ 0"),
    "time wrong type": (_scope([_block(start="0")]), "prompts[0].startTime", "a finite number"),
    "resolution": (_scope([_block()], {"resolution": {"height": 480, "width": 830}}), "settings.resolution.width", "multiple of 16"),
    "interpolation": (_scope([_block(temporalInterpolationMethod="cubic")]), "prompts[0].temporalInterpolationMethod", '"linear" or "slerp"'),
    "transition steps": (_scope([_block(transitionSteps=-2)]), "prompts[0].transitionSteps", "integer"),
    "overlap": (_scope([_block(0, 2), _block(1, 3, text="a dog")]), "prompts[1]", "overlap"),
    "seed type": (_scope([_block()], {"seed": "x"}), "settings.seed", "seed"),
    "steps": (_scope([_block()], {"pipelineId": "memflow", "denoisingSteps": [250, 500]}), "settings.denoisingSteps", "decreasing"),
    "quantization": (_scope([_block()], {"quantization": "int4"}), "settings.quantization", "fp8_e4m3fn"),
    "input mode": (_scope([_block()], {"inputMode": "camera"}), "settings.inputMode", '"text" or "video"'),
    "noise scale": (_scope([_block()], {"noiseScale": "high"}), "settings.noiseScale", "video-to-video strength"),
    "noise controller": (_scope([_block()], {"noiseController": 1}), "settings.noiseController", "true or false"),
    "lora missing": (_scope([_block()], {"loras": [{"id": "x", "path": "/nowhere/style.safetensors", "scale": 1}]}), "settings.loras[0].path", "LoRA file"),
    "block not object": (_scope(["a cat"]), "prompts[0]", "an object"),
    "workflow entries": ({"format": "scope-workflow", "timeline": {}}, "timeline.entries", "an array"),
    "jsonl empty prompt": (None, "line 2: prompts[1]", "non-empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_path_and_expectation(tmp_path, case):
    doc, path, expected = BAD[case]
    f = tmp_path / "bad.json"
    if doc is None:
        f.write_text('{"prompts": ["a", "b"]}\n{"prompts": ["c", ""]}\n')
    else:
        f.write_text(json.dumps(doc))
    with pytest.raises(InputError) as info:
        read_timelines(f)
    message = str(info.value)
    assert str(f) in message and path in message and expected in message
    assert info.value.exit_code == 2


def test_unreadable_json_gives_line_and_column(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{\n  "prompts": [\n    {"startTime": 0,, "endTime": 1}\n  ]\n}\n')
    with pytest.raises(InputError, match=r"line 3, column 21"):
        read_timelines(f)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_timelines(tmp_path / "nope.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(InputError, match="empty"):
        read_timelines(tmp_path / "empty.json")


def test_lora_resolved_by_file_name_in_lora_dir(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"x")
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_scope([_block()], {"loras": [{"path": "C:\\Users\\me\\style.safetensors", "scale": 0.5}]})))
    t = read_timeline(f, lora_dirs=[tmp_path / "loras"])
    assert t.settings.loras[0].path == tmp_path / "loras" / "style.safetensors"
    assert t.settings.loras[0].scale == 0.5


def test_new_seed_location_wins(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_scope([_block()], {"seed": 1, "schemaFieldOverrides": {"base_seed": 99, "noise_scale": 0.7}})))
    t = read_timeline(f)
    assert t.settings.seed == 99
    assert any("schemaFieldOverrides.noise_scale" in w for w in t.warnings)


def test_video_to_video_settings_are_read_from_both_scope_formats(tmp_path):
    scope = tmp_path / "v2v.json"
    scope.write_text(json.dumps(_scope([_block()], {"inputMode": "video", "noiseScale": 0.5, "noiseController": True})))
    s = read_timeline(scope).settings
    assert (s.input_mode, s.noise_scale, s.noise_controller) == ("video", 0.5, True)
    workflow = json.loads((FIXTURES / "workflow.json").read_text())
    workflow["pipelines"][1]["params"].update(input_mode="video", noise_scale=0.6, noise_controller=False)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    s = read_timeline(path).settings
    assert (s.input_mode, s.noise_scale, s.noise_controller) == ("video", 0.6, False)
    assert read_timeline(FIXTURES / "workflow.json").settings.input_mode == "text"


def test_a_longlive_export_is_ours_no_warning_and_keeps_its_steps():
    t = read_timeline(FIXTURES / "scope_longlive.json")
    assert t.settings.pipeline_id == "longlive" and t.settings.denoising_steps == (1000, 750, 500, 250)
    assert not any("pipeline" in w for w in t.warnings)
    assert [w for w in t.warnings if not w.startswith("ignored")] == []


def test_a_gap_between_blocks_is_warned_once_saying_what_fills_it(tmp_path):
    f = tmp_path / "gappy.json"
    f.write_text(json.dumps(_scope([_block(0, 1, "a cat"), _block(2, 3, "a dog"), _block(4.5, 5, "a hare")])))
    (t,) = read_timelines(f)
    gaps = [w for w in t.warnings if "gap" in w]
    assert gaps == ["2 gaps between blocks (1–2 s, 3–4.5 s): the blend before each gap continues through it until "
                    "the next block starts"]
    late = tmp_path / "late.json"
    late.write_text(json.dumps(_scope([_block(1, 2, "a cat")])))
    (t,) = read_timelines(late)
    assert any("nothing before 1 s: the first block (prompts[0]) starts the video" in w for w in t.warnings)
    joined = tmp_path / "joined.json"  # touching blocks, and a sliver under a frame: no warning
    joined.write_text(json.dumps(_scope([_block(0, 1, "a cat"), _block(1.01, 2, "a dog")])))
    assert read_timelines(joined)[0].warnings == ()
