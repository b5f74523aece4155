"""Download selection, lock file and verification, against a fake downloader (no network)."""

import errno
import hashlib
import socket
from pathlib import Path

import pytest

from memflow_cli.weights import hub
from memflow_cli.errors import CheckpointError, InputError
from memflow_cli.weights.hub import FILES, DownloadError, RemoteFile, WeightFile
from memflow_cli.weights.models import MODELS

LONGLIVE = MODELS["longlive"]


class FakeHub:
    """Stands in for huggingface_hub: files per repo at a commit, a cache folder, a log of transfers."""

    def __init__(self, cache: Path, commits=None, sizes=None):
        self.cache = cache
        self.commits = commits or {hub.MEMFLOW_REPO: "a" * 40, hub.WAN_REPO: "b" * 40, LONGLIVE.repo: "d" * 40,
                                   LONGLIVE.mirrors[0]: "e" * 40}
        self.sizes = sizes or {}
        self.fetched: list[str] = []
        self.events: list[str] = []

    def content(self, f: WeightFile) -> bytes:
        n = self.sizes.get(f.filename, 100 + len(f.filename))
        return (f.filename.encode() * (n // len(f.filename) + 1))[:n]

    def _path(self, f, commit):
        return self.cache / f.repo / commit / f.filename

    def inspect(self, f, revision):
        commit = revision or self.commits[f.repo]
        self.events.append(f"inspect {f.filename}")
        size = self.sizes.get(f.filename) or len(self.content(f))
        return RemoteFile(f, commit, size, self._path(f, commit).exists())

    def fetch(self, f, revision):
        commit = revision or self.commits[f.repo]
        path = self._path(f, commit)
        if not path.exists():
            self.events.append(f"fetch {f.filename}")
            self.fetched.append(f.filename)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.content(f))
        return path

    def cached(self, f, revision):
        if f.repo not in self.commits:
            return None
        path = self._path(f, revision or self.commits[f.repo])
        return path if path.exists() else None


def test_exactly_the_inference_files():
    names = {(f.repo, f.filename) for f in FILES}
    assert names == {
        ("KlingTeam/MemFlow", "base.pt"),
        ("KlingTeam/MemFlow", "lora.pt"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "config.json"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1_VAE.pth"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "models_t5_umt5-xxl-enc-bf16.pth"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "google/umt5-xxl/tokenizer.json"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "google/umt5-xxl/tokenizer_config.json"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "google/umt5-xxl/special_tokens_map.json"),
        ("Wan-AI/Wan2.1-T2V-1.3B", "google/umt5-xxl/spiece.model"),
    }


def test_download_shows_plan_first_and_writes_lock(env):
    fake = FakeHub(env / "cache")
    shown = []
    paths, lock = hub.download(fake, show=lambda plan: (shown.append(plan), fake.events.append("show")),
                               cache_dir=env / "cache")
    assert fake.events.index("show") < min(i for i, e in enumerate(fake.events) if e.startswith("fetch"))
    assert len(shown[0]) == len(FILES) and all(not p.cached for p in shown[0])
    assert sorted(fake.fetched) == sorted(f.filename for f in FILES)
    lock_file = env / "hf" / "memflow-cli" / "memflow.lock.json"  # under HF_HOME
    assert lock_file.exists()
    entry = lock["files"]["base.pt"]
    assert entry["commit"] == "a" * 40 and entry["size"] == paths.base.stat().st_size
    assert entry["sha256"] == hashlib.sha256(paths.base.read_bytes()).hexdigest()
    assert lock["files"]["config.json"]["commit"] == "b" * 40
    assert paths.tokenizer.name == "tokenizer.json" and paths.source == "hf-cache"


def test_second_download_fetches_nothing(env):
    fake = FakeHub(env / "cache")
    hub.download(fake, cache_dir=env / "cache")
    fake.fetched.clear()
    plan = []
    hub.download(fake, show=plan.extend, cache_dir=env / "cache")
    assert fake.fetched == [] and all(p.cached for p in plan)


def test_revision_goes_to_memflow_repo(env):
    fake = FakeHub(env / "cache")
    _, lock = hub.download(fake, revision="c" * 40, cache_dir=env / "cache")
    assert lock["files"]["lora.pt"]["commit"] == "c" * 40
    assert lock["files"]["Wan2.1_VAE.pth"]["commit"] == "b" * 40


def test_resolve_downloads_missing_then_verifies(env):
    fake = FakeHub(env / "cache")
    paths = hub.resolve_weights(downloader=fake)
    assert len(fake.fetched) == len(FILES)
    fake.fetched.clear()
    again = hub.resolve_weights(downloader=fake)
    assert again == paths and fake.fetched == []
    # a truncated file is caught before loading
    data = paths.t5.read_bytes()
    paths.t5.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"truncated.*memflow download"):
        hub.resolve_weights(downloader=fake)


def test_same_size_swap_caught_with_hashes(env):
    fake = FakeHub(env / "cache")
    paths = hub.resolve_weights(downloader=fake)
    data = bytearray(paths.vae.read_bytes())
    data[0] ^= 1
    paths.vae.write_bytes(bytes(data))
    hub.resolve_weights(downloader=fake)  # sizes match: the cheap check passes
    with pytest.raises(CheckpointError, match="sha256"):
        hub.resolve_weights(downloader=fake, verify_hashes=True)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_missing_files_is_a_clear_error(env, monkeypatch, how):
    fake = FakeHub(env / "cache")
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"KlingTeam/MemFlow/base\.pt.*memflow download"):
        hub.resolve_weights(downloader=fake, offline=how == "flag")
    assert fake.fetched == []


def test_offline_uses_cache(env):
    fake = FakeHub(env / "cache")
    hub.download(fake, cache_dir=env / "cache")
    fake.fetched.clear()
    paths = hub.resolve_weights(downloader=fake, offline=True)
    assert paths.base.exists() and fake.fetched == []


def test_full_disk_is_refused_before_downloading(env):
    fake = FakeHub(env / "cache", sizes={"base.pt": 10**18})
    with pytest.raises(DownloadError, match="not enough free disk space"):
        hub.download(fake, cache_dir=env / "cache")
    assert fake.fetched == []


def test_weights_dir_layout_and_lock(tmp_path):
    root = tmp_path / "w"
    with pytest.raises(InputError, match="--weights-dir .*/w: no such folder") as info:
        hub.weights_from_dir(root)
    assert info.value.exit_code == 2
    for f in FILES:
        if f.required:
            (root / f.filename).parent.mkdir(parents=True, exist_ok=True)
            (root / f.filename).write_bytes(b"x" * 10)
    (root / "lora.pt").unlink()
    with pytest.raises(CheckpointError, match="missing lora.pt"):
        hub.weights_from_dir(root)
    (root / "lora.pt").write_bytes(b"y" * 10)
    lock = hub.new_lock()
    for f in FILES:
        if f.required:
            hub.record(lock, f, root / f.filename, None)
    hub.write_lock(root / hub.LOCK_NAME, lock)
    paths = hub.weights_from_dir(root, verify_hashes=True)
    assert paths.lora == root / "lora.pt" and paths.source == str(root)
    assert paths.describe()["lora.pt"]["sha256"] == hashlib.sha256(b"y" * 10).hexdigest()
    (root / "lora.pt").write_bytes(b"y" * 11)
    with pytest.raises(CheckpointError, match="lora.pt"):
        hub.weights_from_dir(root)


def _http_error(cls, status):
    import httpx2

    return cls("boom", response=httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x")))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda e: _http_error(e.GatedRepoError, 403), "gated.*HF_TOKEN"),
        (lambda e: _http_error(e.RepositoryNotFoundError, 404), "repository not found"),
        (lambda e: _http_error(e.RevisionNotFoundError, 404), "revision"),
        (lambda e: e.LocalEntryNotFoundError("offline"), "cannot reach huggingface.co"),
        (lambda e: OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
    ],
)
def test_hf_errors_become_messages(tmp_path, monkeypatch, make, expected):
    import huggingface_hub
    from huggingface_hub import errors

    def fail(*args, **kwargs):
        raise make(errors)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    d = hub.HFDownloader(tmp_path, progress=False, resolve=lambda host, port: [])  # the host resolves
    with pytest.raises(DownloadError, match=expected):
        d.fetch(FILES[0], None)


def _no_dns(host, port, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
def no_hub_calls(monkeypatch):
    """Fail the test if huggingface_hub is asked for anything over the network."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("huggingface_hub was called although the host name does not resolve")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def test_no_network_fails_at_once_naming_every_missing_file(env, no_hub_calls):
    downloader = hub.HFDownloader(env / "cache", progress=False, resolve=_no_dns)
    with pytest.raises(hub.NoNetwork) as info:
        hub.download(downloader, cache_dir=env / "cache")
    text = str(info.value)
    assert "cannot resolve the host name huggingface.co" in text and "Name or service not known" in text
    for f in FILES:
        assert (f"{f.repo}/{f.filename}" in text) == f.required
    assert "--weights-dir" not in text.split("without the real weights")[0]  # `memflow download` has no such option


def test_render_without_network_explains_weights_dir(env, no_hub_calls):
    downloader = hub.HFDownloader(env / "cache", progress=False, resolve=_no_dns)
    with pytest.raises(hub.NoNetwork) as info:
        hub.resolve_weights(downloader=downloader)
    text = str(info.value)
    assert "base.pt" in text and "models_t5_umt5-xxl-enc-bf16.pth" in text
    assert "--weights-dir DIR" in text and "memflow download" in text


def test_connection_error_after_resolving_names_every_file_once(env, monkeypatch):
    import huggingface_hub

    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    downloader = hub.HFDownloader(env / "cache", progress=False, resolve=lambda host, port: [])
    with pytest.raises(hub.NoNetwork, match=r"cannot reach huggingface.co.*base\.pt.*lora\.pt"):
        hub.download(downloader, cache_dir=env / "cache")
    assert len(calls) == 1  # no second file is tried


def test_no_dns_check_behind_a_proxy(env, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    hub.HFDownloader(env / "cache", resolve=_no_dns).check_network()  # the proxy resolves names, not us


# ------------------------------------------------------------------------------ per model (LongLive)


def test_each_model_has_its_own_files_and_shares_wan():
    longlive = hub.files_for("longlive")
    assert [(f.repo, f.filename) for f in longlive[:2]] == [
        ("Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt"),
        ("Efficient-Large-Model/LongLive-1.3B", "models/lora.pt"),
    ]
    assert longlive[2:] == FILES[2:] == hub.WAN_FILES
    assert hub.all_files() == FILES[:2] + longlive[:2] + hub.WAN_FILES
    with pytest.raises(InputError, match="unknown model 'krea'.*memflow, longlive"):
        hub.files_for("krea")


def test_download_fetches_only_the_chosen_model_and_wan_once(env):
    fake = FakeHub(env / "cache")
    paths, lock = hub.download(fake, model="longlive", cache_dir=env / "cache")
    assert sorted(fake.fetched) == sorted(f.filename for f in hub.files_for("longlive"))
    assert paths.base.name == "longlive_base.pt" and paths.model == "longlive"
    assert lock["files"]["models/lora.pt"]["commit"] == "d" * 40
    fake.fetched.clear()
    _, lock = hub.download(fake, model="memflow", revision="c" * 40, cache_dir=env / "cache")
    assert sorted(fake.fetched) == ["base.pt", "lora.pt"]  # the Wan files are cached already
    assert lock["files"]["base.pt"]["commit"] == "c" * 40 and "models/longlive_base.pt" in lock["files"]
    assert lock["revisions"] == {hub.MEMFLOW_REPO: "c" * 40, LONGLIVE.repo: "main", hub.WAN_REPO: "main"}


def test_revision_goes_to_the_chosen_models_repository(env):
    fake = FakeHub(env / "cache")
    _, lock = hub.download(fake, model="longlive", revision="f" * 40, cache_dir=env / "cache")
    assert lock["files"]["models/longlive_base.pt"]["commit"] == "f" * 40
    assert lock["files"]["config.json"]["commit"] == "b" * 40


def test_offline_longlive_names_its_own_download_command(env):
    fake = FakeHub(env / "cache")
    hub.download(fake, model="memflow", cache_dir=env / "cache")
    with pytest.raises(CheckpointError, match=r"LongLive-1\.3B/models/longlive_base\.pt.*memflow download --model longlive"):
        hub.resolve_weights(downloader=fake, offline=True, model="longlive")
    assert hub.resolve_weights(downloader=fake, offline=True).base.name == "base.pt"


def test_a_mirror_download_serves_offline_renders(env):
    fake = FakeHub(env / "cache")
    with pytest.raises(DownloadError, match="not a repository of LongLive"):
        hub.download(fake, model="longlive", repo="someone/else", cache_dir=env / "cache")
    hub.download(fake, model="longlive", repo=LONGLIVE.mirrors[0], cache_dir=env / "cache")
    paths = hub.resolve_weights(downloader=fake, offline=True, model="longlive")
    assert LONGLIVE.mirrors[0] in str(paths.base)
    assert paths.describe()["models/longlive_base.pt"]["repo"] == LONGLIVE.mirrors[0]


def test_one_weights_folder_serves_both_models(tmp_path):
    root = tmp_path / "w"
    for f in FILES:
        if f.required:
            (root / f.filename).parent.mkdir(parents=True, exist_ok=True)
            (root / f.filename).write_bytes(b"x" * 10)
    assert hub.weights_from_dir(root).base == root / "base.pt"
    with pytest.raises(CheckpointError, match=r"missing models/longlive_base\.pt, models/lora\.pt for LongLive"):
        hub.weights_from_dir(root, model="longlive")
    (root / "models").mkdir()
    (root / "models" / "longlive_base.pt").write_bytes(b"l" * 10)
    (root / "models" / "lora.pt").write_bytes(b"r" * 10)
    paths = hub.weights_from_dir(root, model="longlive")
    assert paths.base == root / "models" / "longlive_base.pt" and paths.config == root / "config.json"
    assert set(paths.describe()) == {f.filename for f in hub.files_for("longlive") if f.required}
    rows = {f.filename: (f.model, path) for f, path, _ in hub.presence(root)}
    assert rows["models/lora.pt"] == ("longlive", root / "models" / "lora.pt")
    assert rows["config.json"] == (None, root / "config.json")
