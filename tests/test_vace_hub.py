"""The VACE module file: fetched on demand, from the mirror when Kijai's repository fails, never offline."""

import pytest

from memflow_cli.weights import hub
from memflow_cli.errors import InputError
from memflow_cli.weights.hub import DownloadError
from test_hub import FakeHub


class FlakyHub(FakeHub):
    """A hub where some repositories cannot be reached."""

    def __init__(self, cache, down=()):
        super().__init__(cache, commits={hub.KIJAI_REPO: "c" * 40, hub.KIJAI_MIRROR: "d" * 40})
        self.down = set(down)

    def inspect(self, f, revision):
        if f.repo in self.down:
            raise DownloadError(f"{f.repo}: repository not found")
        return super().inspect(f, revision)


def test_downloaded_on_demand_and_recorded(env):
    fake = FlakyHub(env / "cache")
    path = hub.resolve_optional(hub.VACE_FILE, "--control", downloader=fake)
    assert path.name == "Wan2_1-VACE_module_1_3B_bf16.safetensors" and hub.KIJAI_REPO in str(path)
    assert fake.fetched == [hub.VACE_FILE.filename]
    entry = hub.read_lock(hub.lock_path())["files"][hub.VACE_FILE.filename]
    assert entry["repo"] == hub.KIJAI_REPO and entry["size"] == path.stat().st_size
    # second time: from the cache, nothing fetched, works offline
    assert hub.resolve_optional(hub.VACE_FILE, "--control", downloader=fake, offline=True) == path
    assert fake.fetched == [hub.VACE_FILE.filename]


def test_mirror_when_the_main_repository_fails(env):
    fake = FlakyHub(env / "cache", down={hub.KIJAI_REPO})
    path = hub.resolve_optional(hub.VACE_FILE, "--control", downloader=fake)
    assert hub.KIJAI_MIRROR in str(path)
    fake.down.add(hub.KIJAI_MIRROR)
    (env / "cache").rename(env / "gone")
    with pytest.raises(DownloadError, match="needed for --control.*Kijai.*daydreamlive"):
        hub.resolve_optional(hub.VACE_FILE, "--control", downloader=fake)


def test_offline_without_the_module_is_an_input_error(env, tmp_path):
    with pytest.raises(InputError, match="offline mode is on; it is needed for --reference") as info:
        hub.resolve_optional(hub.VACE_FILE, "--reference", downloader=FlakyHub(env / "cache"), offline=True)
    assert info.value.exit_code == 2
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(InputError, match="weights folder has no Wan2_1-VACE_module_1_3B_bf16.safetensors"):
        hub.resolve_optional(hub.VACE_FILE, "--mask", weights_dir=folder)
    (folder / hub.VACE_FILE.filename).write_bytes(b"x")
    assert hub.resolve_optional(hub.VACE_FILE, "--mask", weights_dir=folder) == folder / hub.VACE_FILE.filename


def test_download_command_fetches_the_module_with_vace(env, monkeypatch):
    from typer.testing import CliRunner

    from memflow_cli.cli.app import app

    fake = FlakyHub(env / "cache")
    fake.commits.update({hub.MEMFLOW_REPO: "a" * 40, hub.WAN_REPO: "b" * 40})
    monkeypatch.setattr(hub, "HFDownloader", lambda *a, **k: fake)
    monkeypatch.setattr(hub, "check_space", lambda plan, cache: 0)
    result = CliRunner().invoke(app, ["download", "--quiet", "--vace"])
    assert result.exit_code == 0, result.output
    assert hub.VACE_FILE.filename in fake.fetched and "base.pt" in fake.fetched
    assert hub.VACE_FILE.filename in hub.read_lock(hub.lock_path())["files"]
