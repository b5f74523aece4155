"""Damaged or hostile weight files, configs and lock files: a CheckpointError naming the file and field."""

import json
import os
import pickle

import pytest
import torch

from memflow_cli.weights import hub
from memflow_cli.model.weights import read_state_dict
from memflow_cli.errors import CheckpointError
from memflow_cli.model.dit import DiTConfig


class CallsAFunction:  # unpickling this would run os.getcwd (harmless here, but any function would do)
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_a_pickle_that_calls_a_function_is_refused_for_safety(tmp_path, container):
    path = tmp_path / "base.pt"
    if container == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"w": CallsAFunction()}, f)
    else:
        torch.save({"w": CallsAFunction()}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "contains code" in message and "refused for safety" in message
    assert "weights_only" not in message and "will likely succeed" not in message
    if container == "torch.save":
        assert "getcwd" in message  # names the function it would have called


@pytest.mark.parametrize(
    "content, field",
    [
        (b"[]", "expected a JSON object"),
        (b'"x"', "expected a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"num_heads": 0}', "num_heads"),
        (b'{"num_heads": 7}', "num_heads"),
        (b'{"dim": 1e400}', "dim"),
        (b'{"dim": "1536"}', "dim"),
        (b'{"num_layers": 100000000}', "num_layers"),
        (b'{"dim": 16384, "ffn_dim": 65536, "num_layers": 256, "num_heads": 128}', "billion"),
        (b'{"patch_size": [1, 2]}', "patch_size"),
        (b'{"patch_size": "ab"}', "patch_size"),
        (b'{"qk_norm": "yes"}', "qk_norm"),
        (b'{"eps": -1}', "eps"),
        (b"[" * 3000 + b"]" * 3000, "config"),
        (b"{", "config"),
    ],
)
def test_damaged_config_json(tmp_path, content, field):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        DiTConfig.from_file(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_real_wan_config_still_reads(tmp_path):
    wan = {"_class_name": "WanModel", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16,
           "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512}
    (tmp_path / "config.json").write_text(json.dumps(wan))
    assert DiTConfig.from_file(tmp_path / "config.json") == DiTConfig()


@pytest.mark.parametrize(
    "files, field",
    [
        ({"base.pt": "abc"}, "files.base.pt: expected an object"),
        ({"base.pt": {"size": "12"}}, "files.base.pt.size"),
        ({"base.pt": {"size": -1}}, "files.base.pt.size"),
        ({"base.pt": {"size": True}}, "files.base.pt.size"),
        ({"base.pt": {"sha256": 5}}, "files.base.pt.sha256"),
        ({"base.pt": {"commit": ["x"]}}, "files.base.pt.commit"),
        ({"base.pt": {"repo": None}}, "files.base.pt.repo"),
    ],
)
def test_lock_entries_of_the_wrong_type(tmp_path, files, field):
    path = tmp_path / hub.LOCK_NAME
    path.write_text(json.dumps({"format": "x", "files": files}))
    with pytest.raises(CheckpointError) as info:
        hub.read_lock(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_lock_that_is_not_utf8(tmp_path):
    path = tmp_path / hub.LOCK_NAME
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CheckpointError, match="unreadable lock file"):
        hub.read_lock(path)
