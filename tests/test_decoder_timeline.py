"""A timeline's decoder choice: Scope's `schemaFieldOverrides.vae_type` and workflow `params.vae_type`."""

import json

import pytest

from memflow_cli.errors import InputError
from memflow_cli.inputs.timeline import read_timeline

BLOCK = {"startTime": 0, "endTime": 1, "prompts": [{"text": "a cat", "weight": 100}]}


def _workflow(params):
    return {"format": "scope-workflow", "format_version": "1.0",
            "pipelines": [{"role": "main", "pipeline_id": "memflow", "params": params}],
            "timeline": {"entries": [{"start_time": 0, "end_time": 1, "prompts": [{"text": "a cat"}]}]}}


@pytest.mark.parametrize("value, expected", [("lighttae", "lighttae"), ("TAE", "tae"), (None, None)])
def test_scope_timeline_vae_type(tmp_path, value, expected):
    f = tmp_path / "t.json"
    overrides = {} if value is None else {"vae_type": value}
    f.write_text(json.dumps({"prompts": [BLOCK], "version": "2.1", "settings": {"schemaFieldOverrides": overrides}}))
    assert read_timeline(f).settings.vae == expected


def test_workflow_vae_type(tmp_path):
    f = tmp_path / "w.json"
    f.write_text(json.dumps(_workflow({"vae_type": "lightvae"})))
    assert read_timeline(f).settings.vae == "lightvae"


@pytest.mark.parametrize("doc, field", [
    ({"prompts": [BLOCK], "version": "2.1", "settings": {"schemaFieldOverrides": {"vae_type": "sdxl"}}},
     "settings.schemaFieldOverrides.vae_type"),
    (_workflow({"vae_type": 3}), "pipelines[0].params.vae_type"),
])
def test_unknown_vae_type_names_file_and_field(tmp_path, doc, field):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(InputError) as exc:
        read_timeline(f)
    message = str(exc.value)
    assert "bad.json" in message and field in message and "wan, lightvae, tae, lighttae" in message
