"""Decoder weight files: `download --vae X` fetches only X's file, records and verifies it; folders; info."""

import pytest

from memflow_cli.weights import hub
from memflow_cli.errors import CheckpointError, InputError
from memflow_cli.weights.hub import FILES
from test_hub import FakeHub

COMMITS = {hub.MEMFLOW_REPO: "a" * 40, hub.WAN_REPO: "b" * 40, hub.DECODER_REPO: "d" * 40}


def test_decoder_files_are_not_in_the_default_set(env):
    fake = FakeHub(env / "cache", commits=COMMITS)
    _, lock = hub.download(fake, cache_dir=env / "cache")
    assert hub.DECODER_REPO not in {f.repo for f in FILES}
    assert not any(name in lock["files"] for name in ("taew2_1.pth", "lighttaew2_1.pth", "lightvaew2_1.pth"))


def test_download_vae_fetches_only_that_file_and_records_it(env):
    fake = FakeHub(env / "cache", commits=COMMITS)
    hub.download(fake, cache_dir=env / "cache")
    fake.fetched.clear()
    paths, lock = hub.download(fake, cache_dir=env / "cache", vae="lighttae")
    assert fake.fetched == ["lighttaew2_1.pth"]
    entry = lock["files"]["lighttaew2_1.pth"]
    assert entry["repo"] == "daydreamlive/Autoencoders" and entry["commit"] == "d" * 40 and entry["sha256"]
    assert paths.decoder("lighttae").read_bytes() == fake.content(hub.DECODER_FILES["lighttae"])
    assert paths.decoder("wan") == paths.vae
    assert "lighttaew2_1.pth" in paths.describe()
    # the lock written to disk keeps the other files and names the decoder repository
    on_disk = hub.read_lock(hub.lock_path())
    assert "base.pt" in on_disk["files"] and on_disk["revisions"][hub.DECODER_REPO] == "main"


def test_first_render_with_vae_downloads_it_then_verifies_it(env):
    fake = FakeHub(env / "cache", commits=COMMITS)
    paths = hub.resolve_weights(downloader=fake, vae="tae")
    assert "taew2_1.pth" in fake.fetched and "lighttaew2_1.pth" not in fake.fetched
    fake.fetched.clear()
    assert hub.resolve_weights(downloader=fake, vae="tae", offline=True) == paths and fake.fetched == []
    path = paths.decoder("tae")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=r"taew2_1.pth.*truncated"):
        hub.resolve_weights(downloader=fake, vae="tae")


def test_offline_missing_decoder_is_an_input_error(env):
    fake = FakeHub(env / "cache", commits=COMMITS)
    hub.download(fake, cache_dir=env / "cache")
    fake.fetched.clear()
    with pytest.raises(InputError, match=r"--vae lightvae: daydreamlive/Autoencoders/lightvaew2_1.pth.*memflow download --vae lightvae"):
        hub.resolve_weights(downloader=fake, vae="lightvae", offline=True)
    assert fake.fetched == []
    with pytest.raises(InputError, match="unknown decoder"):
        hub.resolve_weights(downloader=fake, vae="vqgan", offline=True)


def test_weights_dir_finds_decoders_by_name(tmp_path):
    root = tmp_path / "w"
    for f in FILES:
        if f.required:
            (root / f.filename).parent.mkdir(parents=True, exist_ok=True)
            (root / f.filename).write_bytes(b"x" * 10)
    with pytest.raises(InputError, match=r"--vae tae: .*taew2_1.pth not found"):
        hub.weights_from_dir(root, vae="tae")
    (root / "taew2_1.pth").write_bytes(b"t" * 7)
    assert hub.weights_from_dir(root, vae="tae").decoder("tae") == root / "taew2_1.pth"
    rows = {kind: path for kind, _, path in hub.decoder_presence(root)}
    assert rows == {"wan": root / "Wan2.1_VAE.pth", "lightvae": None, "tae": root / "taew2_1.pth", "lighttae": None}
    # a lock in the folder is checked for the decoder too
    lock = hub.new_lock()
    hub.record(lock, hub.DECODER_FILES["tae"], root / "taew2_1.pth", None)
    hub.write_lock(root / hub.LOCK_NAME, lock)
    (root / "taew2_1.pth").write_bytes(b"t" * 8)
    with pytest.raises(CheckpointError, match="taew2_1.pth"):
        hub.weights_from_dir(root, vae="tae")


# ------------------------------------------------------------------------------- CLI


def test_cli_info_lists_decoders_and_download_refuses_unknown_vae(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from memflow_cli.cli.app import app

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = tmp_path / "w"
    root.mkdir()
    (root / "lighttaew2_1.pth").write_bytes(b"x")
    result = CliRunner().invoke(app, ["info", "--weights-dir", str(root), "--json"])
    assert result.exit_code == 0, result.output
    present = {d["vae"]: d["present"] for d in json.loads(result.stdout)["decoders"]}
    assert present == {"wan": False, "lightvae": False, "tae": False, "lighttae": True}
    result = CliRunner().invoke(app, ["info", "--weights-dir", str(root)])
    assert "decoders" in result.stdout and "lighttae" in result.stdout
    result = CliRunner().invoke(app, ["download", "--vae", "big", "--quiet"])
    assert result.exit_code == 2 and "unknown decoder 'big'" in result.output


def test_hub_and_decoders_agree_on_file_names():
    from memflow_cli.engine.decoders import DECODERS

    assert {k: f.filename for k, f in hub.DECODER_FILES.items()} == {
        k: s.filename for k, s in DECODERS.items() if k != "wan"}
    assert DECODERS["wan"].filename == next(f.filename for f in FILES if f.role == "vae")
