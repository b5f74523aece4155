"""Absurd numbers, shapes and files: refused early with a message, never a traceback, a hang or a huge allocation."""

import json
import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memflow_cli.errors import InputError
from memflow_cli.limits import MAX_SEED, check_length, check_seed, check_steps, is_blank_prompt
from memflow_cli.inputs.schedule import chunk_start_frame, first_chunk_at_or_after, plan
from memflow_cli.inputs.timeline import Timeline, prompt_timeline, read_timelines, segment_times


def scope(blocks, settings=None):
    doc = {"version": "2.1", "prompts": blocks}
    if settings is not None:
        doc["settings"] = settings
    return doc


def block(start=0, end=1, text="a cat", weight=100):
    return {"startTime": start, "endTime": end, "prompts": [{"text": text, "weight": weight}]}


def write(tmp_path, text, name="t.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path, *fragments, **options):
    with pytest.raises(InputError) as info:
        read_timelines(path, **options)
    for fragment in fragments:
        assert fragment in str(info.value)
    return str(info.value)


# -- numbers -----------------------------------------------------------------------------------------------


def test_nan_and_infinity_say_finite(tmp_path):
    for raw, found in (("NaN", "found NaN"), ("Infinity", "found an infinite number"), ("1e400", "found an infinite number")):
        path = write(tmp_path, '{"prompts": [{"startTime": 0, "endTime": %s, "prompts": [{"text": "a", "weight": 1}]}]}' % raw)
        refused(path, "prompts[0].endTime", "expected a finite number", found)


def test_integers_too_large_for_a_float(tmp_path):
    huge = 10**400
    path = write(tmp_path, json.dumps(scope([block(end=huge)])))
    refused(path, "prompts[0].endTime", "too large for a float (401 digits)")
    path = write(tmp_path, json.dumps(scope([block(weight=huge)])))
    refused(path, "prompts[0].prompts[0].weight", "too large for a float")
    path = write(tmp_path, '{"prompts": [{"startTime": 0, "endTime": ' + "9" * 5000 + "}]}")
    refused(path, "not valid JSON")  # beyond Python's 4300-digit conversion limit


def test_weights_whose_sum_overflows_still_blend(tmp_path):
    doc = scope([{"startTime": 0, "endTime": 1, "prompts": [{"text": "a", "weight": 1e308}, {"text": "b", "weight": 1e308}]}])
    (t,) = read_timelines(write(tmp_path, json.dumps(doc)))
    assert t.blocks[0].weights == (0.5, 0.5)
    assert plan(t).chunks[0].conditioning.weights == (0.5, 0.5)


def test_seeds_are_refused_beyond_64_bits_not_reduced(tmp_path):
    assert check_seed(MAX_SEED, "x") == MAX_SEED
    for bad in (2**64, -1, 1.5, 10**400, float("nan"), True):
        with pytest.raises(InputError, match="2\\^64"):
            check_seed(bad, "--seed")
    path = write(tmp_path, json.dumps(scope([block()], {"seed": 2**64})))
    refused(path, "settings.seed", "2^64")


def test_steps_rule_is_the_same_everywhere(tmp_path):
    assert check_steps([1000, 750, 500, 250], "--steps") == (1000, 750, 500, 250)
    for bad, fragment in (([1001], "1..1000"), ([-5], "1..1000"), ([250, 500], "decreasing"), ([], "at least one"),
                          ([500, 500], "decreasing"), ([float("nan")], "NaN")):
        with pytest.raises(InputError, match=fragment):
            check_steps(bad, "--steps")
        path = write(tmp_path, json.dumps(scope([block()], {"pipelineId": "memflow", "denoisingSteps": bad})))
        refused(path, "settings.denoisingSteps", fragment.split("[")[0])


# -- lengths: refused before any plan of that length exists ------------------------------------------------


def test_a_day_of_video_is_the_default_limit():
    check_length(24 * 3600, "x")
    with pytest.raises(InputError, match="--max-hours"):
        check_length(24 * 3600 + 1, "x")
    check_length(48 * 3600, "x", max_hours=48)
    for bad in (0, -1, float("nan")):
        with pytest.raises(InputError, match="--max-hours"):
            check_length(1, "x", max_hours=bad)


@pytest.mark.parametrize("end", [1e20, 1e308, 10 * 24 * 3600])
def test_absurd_end_times_are_refused_before_planning(tmp_path, end):
    (t,) = read_timelines(write(tmp_path, json.dumps(scope([block(0, 1), block(1, end, text="a dog")]))))
    started = time.process_time()
    with pytest.raises(InputError, match="limit is 24 hours"):
        plan(t)
    assert time.process_time() - started < 5  # generous: planning 1e20 s chunk by chunk would never end


def test_prompt_seconds_absurd():
    with pytest.raises(InputError, match="limit is 24 hours"):
        plan(prompt_timeline("a cat", 1e308))
    for bad, found in ((float("nan"), "NaN"), (float("inf"), "infinite"), (-1, "-1"), (0, "0")):
        with pytest.raises(InputError, match=f"--seconds: expected a finite duration.*{found}"):
            prompt_timeline("a cat", bad)


def test_chunk_of_a_frame_is_arithmetic():
    for frame in range(0, 200):
        c = first_chunk_at_or_after(frame)
        assert chunk_start_frame(c) >= frame and (c == 0 or chunk_start_frame(c - 1) < frame)


def test_jsonl_segments_of_no_frames(tmp_path):
    path = write(tmp_path, '{"prompts": ["a", "b"]}\n', "p.jsonl")
    refused(path, "--segment-seconds", "at least one frame", segment_seconds=1e-9)
    refused(path, "--segment-seconds", "NaN", segment_seconds=float("nan"))
    refused(path, "--segment-seconds", "overflow", segment_seconds=1.7e308)
    with pytest.raises(InputError, match="--latent-frames"):
        segment_times(2, None, [4], 10**400, "x")


# -- shapes and files --------------------------------------------------------------------------------------


def test_deep_nesting_is_an_input_error(tmp_path):
    depth = 3000
    refused(write(tmp_path, "[" * depth + "]" * depth), "nested too deeply")
    line = '{"prompts": ' + "[" * depth + "]" * depth + "}"
    refused(write(tmp_path, '{"prompts": ["a"]}\n' + line + "\n", "p.jsonl"), "nested too deeply", "line 2")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_and_devices_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "timeline.json"
    os.mkfifo(fifo)
    refused(fifo, "expected a regular timeline file")  # reading would block forever
    if os.path.exists("/dev/zero"):
        refused("/dev/zero", "expected a regular timeline file")  # reading would never end


def test_huge_timeline_file_is_refused(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: costs no disk
    refused(path, "at most 64 MiB")


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d\u2060\ufeff", "&nbsp;", " &nbsp; &amp;nbsp; ", "\xa0\u3000", "\x00"])
def test_effectively_empty_prompts(tmp_path, text):
    assert is_blank_prompt(text)
    refused(write(tmp_path, json.dumps(scope([block(text=text)]))), "prompts[0].prompts[0].text", "non-empty")
    refused(write(tmp_path, json.dumps({"prompts": ["a", text]}) + "\n", "p.jsonl"), "prompts[1]", "non-empty")
    with pytest.raises(InputError, match="--prompt"):
        prompt_timeline(text)


def test_visible_prompts_are_not_blank():
    for text in ("a", "猫", "🐈", "a\u200bb", "&amp;"):
        assert not is_blank_prompt(text)


@pytest.mark.parametrize("name", ["~nosuchuser_memflow/style.safetensors", "a" * 5000 + ".safetensors",
                                  ("d" * 200 + "/") * 30 + "x.safetensors", "bad\x00name.safetensors"])
def test_unfindable_lora_paths_are_input_errors(tmp_path, name):
    doc = scope([block()], {"loras": [{"path": name, "scale": 1}]})
    refused(write(tmp_path, json.dumps(doc)), "settings.loras[0].path", "expected an existing LoRA file")


def test_tilde_lora_of_an_unknown_user_is_still_found_in_a_lora_folder(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"x")
    doc = scope([block()], {"loras": [{"path": "~nosuchuser_memflow/style.safetensors", "scale": 1}]})
    (t,) = read_timelines(write(tmp_path, json.dumps(doc)), lora_dirs=[tmp_path / "loras"])
    assert t.settings.loras[0].path == tmp_path / "loras" / "style.safetensors"


# -- any document: a Timeline or a clean InputError ---------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["linear", "slerp", "memflow", "2.1", "1.0", "scope-workflow", "text", "video", "main", "&nbsp;", "\u200b"]),
)
keys = st.sampled_from(["prompts", "startTime", "endTime", "text", "weight", "transitionSteps", "temporalInterpolationMethod",
                        "settings", "seed", "resolution", "height", "width", "denoisingSteps", "pipelineId", "loras", "path",
                        "scale", "format", "timeline", "entries", "start_time", "end_time", "pipelines", "params",
                        "base_seed", "role", "version", "inputMode", "quantization", "schemaFieldOverrides", "x"])
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=6)), max_leaves=30)


def plausible_block():
    return st.fixed_dictionaries({
        "startTime": st.one_of(st.floats(min_value=-1, max_value=1e30), st.integers(0, 10**20), st.just(float("nan"))),
        "endTime": st.one_of(st.floats(min_value=-1, max_value=1e30), st.integers(0, 10**20), st.sampled_from([10**400, 1e308])),
        "prompts": st.lists(st.fixed_dictionaries({"text": st.text(max_size=4), "weight": scalars}), max_size=3),
        "transitionSteps": st.one_of(st.none(), st.integers(-2, 10**30)),
    })


plausible = st.fixed_dictionaries({"version": st.just("2.1"), "prompts": st.lists(plausible_block(), min_size=1, max_size=4)},
                                  optional={"settings": st.dictionaries(keys, scalars, max_size=4)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=st.one_of(documents, plausible))
def test_any_document_gives_a_timeline_or_an_input_error(tmp_path, doc):
    path = tmp_path / "any.json"
    path.write_text(json.dumps(doc))
    try:
        timelines = read_timelines(path, segment_seconds=0.5)
    except InputError as exc:
        assert str(path) in str(exc) or str(exc).startswith("--")
        return
    for t in timelines:
        assert isinstance(t, Timeline)
        assert all(math.isfinite(b.start) and math.isfinite(b.end) for b in t.blocks)
        try:
            schedule = plan(t, max_hours=0.01)
        except InputError:
            continue
        assert schedule.total_frames >= 1
        assert all(math.isclose(sum(c.conditioning.weights), 1) for c in schedule.chunks if hasattr(c.conditioning, "weights"))
