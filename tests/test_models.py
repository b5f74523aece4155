"""The model registry: names, choice from --model and a file's pipelineId, bank options, stream settings."""

import pytest

from memflow_cli.weights import hub
from memflow_cli.errors import InputError
from memflow_cli.engine.generator import StreamSettings
from memflow_cli.weights.models import MODELS, ModelSpec, check_bank_options, choose_model, get_model, manifest_entry


def test_registry_entries_stream_as_their_authors_configured():
    memflow, longlive = MODELS["memflow"], MODELS["longlive"]
    assert memflow.stream_settings() == StreamSettings()
    s = longlive.stream_settings(denoising_steps=(1000, 500))
    assert (s.bank_size, s.record_interval, s.sink_size, s.local_attn_size) == (0, None, 3, 12)
    assert s.denoising_steps == (1000, 500) and not s.has_bank
    assert memflow.has_bank and not longlive.has_bank


@pytest.mark.parametrize(
    "requested, pipeline, expected",
    [
        (None, None, "memflow"),
        (None, "memflow", "memflow"),
        (None, "longlive", "longlive"),
        (None, "streamdiffusionv2", "memflow"),
        ("memflow", "longlive", "memflow"),
        ("LongLive", None, "longlive"),
    ],
)
def test_choice_from_option_then_file(requested, pipeline, expected):
    assert choose_model(requested, pipeline).name == expected


def test_unknown_model_and_sma_without_bank_are_input_errors():
    with pytest.raises(InputError, match=r"--model: unknown model 'wan14b'; expected one of memflow, longlive"):
        get_model("wan14b")
    with pytest.raises(InputError, match=r"--sma: LongLive-1\.3B has no memory bank"):
        check_bank_options(MODELS["longlive"], sma=True)
    check_bank_options(MODELS["longlive"], sma=False)
    check_bank_options(MODELS["memflow"], sma=True)


def test_a_new_model_is_one_entry(monkeypatch):
    spec = ModelSpec("nextcausal", "Next", "someone/Next-1.3B", "next.pt", "next_lora.pt")
    monkeypatch.setitem(MODELS, spec.name, spec)
    files = hub.files_for("nextcausal")
    assert [f.filename for f in files[:2]] == ["next.pt", "next_lora.pt"] and files[2:] == hub.WAN_FILES
    assert choose_model(None, "nextcausal") is spec and spec.stream_settings() == StreamSettings()


def test_manifest_entry_names_repository_commit_and_hashes(tmp_path):
    root = tmp_path / "w"
    for f in hub.files_for("longlive"):
        if f.required:
            (root / f.filename).parent.mkdir(parents=True, exist_ok=True)
            (root / f.filename).write_bytes(f.filename.encode())
    lock = hub.new_lock()
    for f in hub.files_for("longlive"):
        if f.required:
            hub.record(lock, f, root / f.filename, "d" * 40)
    hub.write_lock(root / hub.LOCK_NAME, lock)
    entry = manifest_entry(MODELS["longlive"], hub.weights_from_dir(root, model="longlive"))
    assert entry["name"] == "longlive" and entry["memory_bank"] is False
    assert entry["repository"] == "Efficient-Large-Model/LongLive-1.3B" and entry["commit"] == "d" * 40
    assert set(entry["files"]) == {"models/longlive_base.pt", "models/lora.pt"}
    assert len(entry["files"]["models/lora.pt"]["sha256"]) == 64


def test_revision_per_model():
    from memflow_cli.weights.models import revision_for

    assert revision_for(None, "longlive") is None and revision_for("abc", "longlive") == "abc"
    assert revision_for("memflow=aaa, longlive=bbb", "longlive") == "bbb"
    assert revision_for("longlive=bbb", "memflow") is None
    with pytest.raises(InputError, match="--revision: unknown model 'wan'"):
        revision_for("wan=1", "memflow")
    with pytest.raises(InputError, match="MODEL=REV"):
        revision_for("memflow=", "memflow")
