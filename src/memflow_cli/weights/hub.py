"""Which weight files inference needs, downloading them from Hugging Face, and the lock file.

Exactly the files of the inference spec §10.1 (no 5 GB `diffusion_pytorch_model.safetensors`, no 14B
teacher): per model (models.py) its base weights and LoRA, plus the Wan files every model shares.
Downloads go into the standard Hugging Face cache (honouring `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`,
`HF_HUB_OFFLINE`), so other tools share them; huggingface_hub resumes interrupted downloads.

After a download, a lock file records what we got: each repository's commit and each file's size and
sha256. Loading checks every file against it (size always, sha256 on request), so a truncated or
swapped file is caught before a 30-minute render, with a message that says what to do.

A weights folder given with `--weights-dir` holds the same files under the same relative paths
(`base.pt`, `Wan2.1_VAE.pth`, `google/umt5-xxl/tokenizer.json`, ...; LongLive's `models/longlive_base.pt`), so
one folder can serve every model; a `memflow.lock.json` inside it is verified the same way when present.

Its parts: hf_cache.py (where the files live, sha256, the errors), downloader.py (the network side, behind a
small `Downloader` interface so that tests can use a fake one) and lockfile.py (the lock file); their names
are re-exported here, the one module the rest of the project asks about weight files.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from memflow_cli.errors import CheckpointError, InputError, counted
from memflow_cli.weights.models import DEFAULT_MODEL, MODELS, WAN_REPO, check_revision, get_model
# hub is the one module the project asks about weight files: its parts' names are re-exported here
from memflow_cli.weights.downloader import Downloader, HFDownloader, RemoteFile  # noqa: F401
from memflow_cli.weights.hf_cache import (LOCK_NAME, DownloadError, NoNetwork, endpoint_host, hf_home,  # noqa: F401
                                         hub_cache, human_size, lock_path, offline_from_env, sha256_file)
from memflow_cli.weights.lockfile import LOCK_FORMAT, new_lock, read_lock, record, verify, write_lock  # noqa: F401

MEMFLOW_REPO = MODELS["memflow"].repo
SPACE_MARGIN = 512 * 2**20  # keep this much free beyond the files themselves


@dataclass(frozen=True)
class WeightFile:
    role: str  # what it is for (also the attribute of WeightPaths)
    repo: str
    filename: str  # path inside the repository == path inside a weights folder
    required: bool = True  # required in a --weights-dir (extra tokenizer files are not)
    model: str | None = None  # the model these weights belong to; None: shared by every model


WAN_FILES: tuple[WeightFile, ...] = (
    WeightFile("config", WAN_REPO, "config.json"),
    WeightFile("vae", WAN_REPO, "Wan2.1_VAE.pth"),
    WeightFile("t5", WAN_REPO, "models_t5_umt5-xxl-enc-bf16.pth"),
    WeightFile("tokenizer", WAN_REPO, "google/umt5-xxl/tokenizer.json"),
    WeightFile("tokenizer_config", WAN_REPO, "google/umt5-xxl/tokenizer_config.json", required=False),
    WeightFile("special_tokens_map", WAN_REPO, "google/umt5-xxl/special_tokens_map.json", required=False),
    WeightFile("spiece", WAN_REPO, "google/umt5-xxl/spiece.model", required=False),
)


# The other `--vae` choices (decoders.py): one file each, fetched only when chosen, never by default.
DECODER_REPO = "daydreamlive/Autoencoders"
DECODER_FILES: dict[str, WeightFile] = {
    "lightvae": WeightFile("decoder_lightvae", DECODER_REPO, "lightvaew2_1.pth", required=False),
    "tae": WeightFile("decoder_tae", DECODER_REPO, "taew2_1.pth", required=False),
    "lighttae": WeightFile("decoder_lighttae", DECODER_REPO, "lighttaew2_1.pth", required=False),
}


def decoder_file(vae: str) -> WeightFile | None:
    """The extra file a `--vae` choice needs (None for `wan`: its file is always part of the set)."""
    from memflow_cli.engine.decoders import decoder_spec

    return DECODER_FILES.get(decoder_spec(vae).kind)


def files_for(model: str = DEFAULT_MODEL, repo: str | None = None, vae: str = "wan") -> tuple[WeightFile, ...]:
    """A model's own files (from `repo`, default its main repository), the shared Wan files, and the file of
    the `--vae` choice when it is not the Wan VAE."""
    spec = get_model(model)
    repo = repo or spec.repo
    own = (WeightFile("base", repo, spec.base_file, model=spec.name),
           WeightFile("lora", repo, spec.lora_file, model=spec.name))
    extra = decoder_file(vae) if vae != "wan" else None
    return own + WAN_FILES + ((extra,) if extra else ())


def all_files() -> tuple[WeightFile, ...]:
    """Every model's files, then the shared ones once (for `memflow info`)."""
    return tuple(f for name in MODELS for f in files_for(name)[:2]) + WAN_FILES


FILES: tuple[WeightFile, ...] = files_for(DEFAULT_MODEL)


@dataclass(frozen=True)
class WeightPaths:
    """Where each file the renderer loads lives on disk, plus their recorded identities (from the lock)."""

    base: Path
    lora: Path
    config: Path
    vae: Path
    t5: Path
    tokenizer: Path  # tokenizer.json
    source: str  # "hf-cache" or the weights folder
    identities: dict  # filename → {repo, commit, size, sha256}
    model: str = DEFAULT_MODEL
    decoders: dict = field(default_factory=dict)  # `--vae` kind → path, for the choices other than wan

    def decoder(self, vae: str) -> Path:
        """The weight file of a `--vae` choice."""
        from memflow_cli.engine.decoders import decoder_spec

        kind = decoder_spec(vae).kind
        if kind == "wan":
            return self.vae
        if kind not in self.decoders:
            raise InputError(f"--vae {kind}: {DECODER_FILES[kind].filename} was not resolved with these weights")
        return self.decoders[kind]

    def describe(self) -> dict:
        out = {}
        extra = [DECODER_FILES[k] for k in self.decoders]
        for f in list(files_for(self.model)) + extra:
            if not f.required and f not in extra:
                continue
            path = self.decoders[f.role[len("decoder_"):]] if f in extra else getattr(self, f.role)
            ident = dict(self.identities.get(f.filename, {}))
            ident.setdefault("size", path.stat().st_size if path.exists() else None)
            out[f.filename] = {"path": str(path), **ident}
        return out


# ------------------------------------------------------------------------------------------------
# Plan, download, resolve


def plan_download(downloader: Downloader, revision: str | None = None, wan_revision: str | None = None,
                  files: Iterable[WeightFile] = FILES) -> list[RemoteFile]:
    """Ask the hub for each file's size and whether it is cached (no bytes are fetched).

    `revision` is for the model's repository, `wan_revision` for the shared Wan files.
    """
    return [downloader.inspect(f, _revision(f, revision, wan_revision)) for f in files]


def check_space(plan: list[RemoteFile], cache_dir: Path) -> int:
    """Bytes still to download; raises DownloadError when the disk cannot hold them."""
    needed = sum(p.size or 0 for p in plan if not p.cached)
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed and free < needed + SPACE_MARGIN:
        raise DownloadError(
            f"not enough free disk space in {cache_dir}: {human_size(needed)} to download, {human_size(free)} free; "
            "free some space or set HF_HOME to a bigger disk"
        )
    return needed


def download(
    downloader: Downloader | None = None,
    *,
    revision: str | None = None,
    wan_revision: str | None = None,
    verify_hashes: bool = False,
    show: Callable[[list[RemoteFile]], None] | None = None,
    cache_dir: Path | None = None,
    model: str = DEFAULT_MODEL,
    repo: str | None = None,
    vae: str = "wan",
) -> tuple[WeightPaths, dict]:
    """Fetch whatever of `model`'s files is missing, record the lock, return the paths and the lock.

    `show` is called with the plan (sizes, cached or not) before any byte is fetched. `repo` picks one of
    the model's mirrors instead of its main repository. `vae` adds the file of that decoder choice (and
    only that one) to the set.
    """
    check_revision(revision), check_revision(wan_revision, "--wan-revision")
    spec = get_model(model)
    if repo is not None and repo not in spec.repos:
        raise DownloadError(
            f"--mirror: {repo!r} is not a repository of {spec.title}; expected one of {', '.join(spec.repos)}")
    cache_dir = cache_dir or hub_cache()
    downloader = downloader or HFDownloader(cache_dir)
    try:
        plan = plan_download(downloader, revision, wan_revision, files_for(spec.name, repo, vae))
    except NoNetwork as exc:
        raise no_network_error(exc, downloader, cache_dir, revision, wan_revision,
                               "connect to the internet and run the command again", files_for(spec.name, repo, vae)) from None
    if show:
        show(plan)
    check_space(plan, cache_dir)
    lock_file = lock_path()
    lock = read_lock(lock_file) or new_lock()
    paths = {}
    for item in plan:
        f = item.file
        path = downloader.fetch(f, _revision(f, revision, wan_revision))
        entry = lock["files"].get(f.filename)
        fresh = not item.cached or entry is None or entry.get("commit") != item.commit
        if fresh or path.stat().st_size != entry.get("size"):
            entry = record(lock, f, path, item.commit)
        elif verify_hashes:
            verify(f, path, entry, hashes=True)
        paths[f.role] = path
    lock["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # One lock for every model: each download updates its own repositories' entries only.
    lock.setdefault("revisions", {}).update({plan[0].file.repo: revision or "main", WAN_REPO: wan_revision or "main"})
    if decoder_file(vae):
        lock["revisions"][DECODER_REPO] = "main"
    write_lock(lock_file, lock)
    return _paths(paths, "hf-cache", lock, spec.name), lock


def resolve_weights(
    weights_dir: str | Path | None = None,
    *,
    offline: bool = False,
    revision: str | None = None,
    wan_revision: str | None = None,
    downloader: Downloader | None = None,
    show: Callable[[list[RemoteFile]], None] | None = None,
    verify_hashes: bool = False,
    model: str = DEFAULT_MODEL,
    vae: str = "wan",
) -> WeightPaths:
    """`model`'s weight files: from a folder, from the cache, or downloaded now (unless offline).

    In the cache, a model's files count as present when they came from its main repository or a mirror.
    `vae` is the decoder choice: its file joins the set (found, downloaded and verified like the others).
    """
    spec = get_model(model)
    check_revision(revision), check_revision(wan_revision, "--wan-revision")
    if weights_dir is not None:
        return weights_from_dir(weights_dir, verify_hashes=verify_hashes, model=spec.name, vae=vae)
    offline = offline or offline_from_env()
    downloader = downloader or HFDownloader(hub_cache())
    lock_file = lock_path()
    lock = read_lock(lock_file)
    found, missing, files = {}, [], []
    for f in files_for(spec.name, vae=vae):
        for candidate in _sources(f, spec):
            rev = _revision(candidate, revision, wan_revision)
            entry = lock["files"].get(candidate.filename) if lock else None
            if rev is None and entry and entry.get("repo", candidate.repo) == candidate.repo:
                rev = entry.get("commit")  # the exact commit we verified
            path = downloader.cached(candidate, rev) or (
                downloader.cached(candidate, None) if rev and not _pinned(candidate, revision, wan_revision) else None)
            if path is not None:
                found[f.role] = path
                files.append(candidate)
                break
        else:
            missing.append(f)
    if missing and not offline:
        try:
            paths, _ = download(downloader, revision=revision, wan_revision=wan_revision, show=show, model=spec.name,
                                vae=vae)
        except NoNetwork as exc:
            raise NoNetwork(
                f"{str(exc).removesuffix(' ' + SMOKE_HINT)}; or run `memflow download` on a machine with a network and "
                "copy the Hugging Face cache (or a folder with the same file layout, given with --weights-dir DIR) here. "
                + SMOKE_HINT
            ) from None
        return paths
    extra = decoder_file(vae)
    if extra in missing:
        raise InputError(
            f"--vae {vae}: {extra.repo}/{extra.filename} is not in the Hugging Face cache {hub_cache()} and offline "
            f"mode is on (--offline or HF_HUB_OFFLINE); run `memflow download --vae {vae}` with a network connection "
            "first, or pass --weights-dir"
        )
    required_missing = [f for f in missing if f.required]
    if required_missing:
        names = ", ".join(f"{f.repo}/{f.filename}" for f in required_missing)
        download_hint = "memflow download" + ("" if spec.name == DEFAULT_MODEL else f" --model {spec.name}")
        raise CheckpointError(
            f"weights missing from the Hugging Face cache {hub_cache()}: {names}. Offline mode is on "
            f"(--offline or HF_HUB_OFFLINE); run `{download_hint}` with a network connection first, or pass --weights-dir DIR, a folder holding these files. "
            + SMOKE_HINT
        )
    lock = lock or new_lock()
    unrecorded = [f for f in files if f.filename not in lock["files"]]
    for f in files:
        if f.filename in lock["files"]:
            verify(f, found[f.role], lock["files"][f.filename], hashes=verify_hashes)
        else:
            record(lock, f, found[f.role], None)  # found in the cache but never recorded: record it now
    if unrecorded:
        write_lock(lock_file, lock)
    return _paths(found, "hf-cache", lock, spec.name)


# The README's "Smoke run without the real weights": where a user without the weights can still try everything.
SMOKE_HINT = ("To try memflow without the real weights (the README's smoke run): `python -m memflow_cli.testing.tiny_weights "
              "/tmp/tiny`, then `memflow render timelines/smoke.json --weights-dir /tmp/tiny`")


def no_network_error(reason: NoNetwork, downloader: Downloader, cache_dir: Path, revision: str | None,
                     wan_revision: str | None, remedy: str, files=None) -> NoNetwork:
    """One message naming every file we would have needed, instead of one file per failed attempt."""
    missing = [f"{f.repo}/{f.filename}" for f in (files if files is not None else FILES)
               if (f.required or f in DECODER_FILES.values())  # a decoder file is in `files` when it was asked for
               and downloader.cached(f, _revision(f, revision, wan_revision)) is None]
    what = (f"{counted(len(missing), 'weight file')} {'is' if len(missing) == 1 else 'are'} not in the cache {cache_dir}: {', '.join(missing)}" if missing
            else f"the files in the cache {cache_dir} cannot be checked against the hub")
    return NoNetwork(f"{reason}; {what}; {remedy}. {SMOKE_HINT}")


def check_folder_option(path: Path, option: str) -> None:
    """A folder named by an option (--weights-dir, --lora-dir) must exist: a usage error (exit 2) otherwise."""
    if path.is_dir():
        return
    what = "is not a folder" if path.exists() else "no such folder"
    hint = {"--weights-dir": "; expected a folder with the layout of `memflow download` (or leave --weights-dir out "
                             "to use the Hugging Face cache). " + SMOKE_HINT,
            "--lora-dir": "; expected a folder holding the timeline's LoRA files"}.get(option, "")
    raise InputError(f"{option} {path}: {what}{hint}")


def weights_from_dir(weights_dir: str | Path, *, verify_hashes: bool = False, model: str = DEFAULT_MODEL,
                     vae: str = "wan") -> WeightPaths:
    spec = get_model(model)
    root = Path(weights_dir).expanduser()
    check_folder_option(root, "--weights-dir")
    extra = decoder_file(vae)
    if extra and not (root / extra.filename).is_file():
        raise InputError(
            f"--vae {vae}: {root / extra.filename} not found; put {extra.filename} (from {extra.repo}) in the weights "
            f"folder, or run `memflow download --vae {vae}` and render without --weights-dir"
        )
    files = files_for(spec.name, vae=vae)
    missing = [f.filename for f in files if f.required and not (root / f.filename).is_file()]
    if missing:
        layout = ", ".join(f.filename for f in files if f.required)
        raise CheckpointError(
            f"{root}: weights folder is missing {', '.join(missing)} for {spec.title}; expected the layout of "
            f"`memflow download` ({layout})"
        )
    lock_file = root / LOCK_NAME
    lock = read_lock(lock_file) or new_lock()
    paths = {}
    for f in files:
        path = root / f.filename
        if path.is_file():
            verify(f, path, lock["files"].get(f.filename), hashes=verify_hashes,
                   remedy=f"replace it, or remove it from {lock_file}")
            paths[f.role] = path
    return _paths(paths, str(root), lock, spec.name)


def presence(weights_dir: str | Path | None = None, revision: str | None = None) -> list[tuple[WeightFile, Path | None, int | None]]:
    """For `memflow info`: every model's files and the shared ones, where each is (or None) and its size.

    `revision` applies to the models' repositories. In the cache, a mirror's copy counts. Never touches the network.
    """
    rows = []
    downloader = None if weights_dir else HFDownloader(hub_cache())
    for f in all_files():
        path = None
        if weights_dir:
            p = Path(weights_dir).expanduser() / f.filename
            path = p if p.is_file() else None
        else:
            for candidate in _sources(f, get_model(f.model) if f.model else None):
                path = downloader.cached(candidate, _revision(candidate, revision, None))
                if path is not None:
                    break
        rows.append((f, path, path.stat().st_size if path else None))
    return rows


def decoder_presence(weights_dir: str | Path | None = None) -> list[tuple[str, WeightFile, Path | None]]:
    """For `memflow info`: each `--vae` choice, its file and where it is (or None). No network."""
    from memflow_cli.engine.decoders import DECODER_KINDS

    downloader = None if weights_dir else HFDownloader(hub_cache())
    rows = []
    for kind in DECODER_KINDS:
        f = DECODER_FILES.get(kind) or next(x for x in FILES if x.role == "vae")
        if weights_dir:
            p = Path(weights_dir).expanduser() / f.filename
            path = p if p.is_file() else None
        else:
            path = downloader.cached(f, None)
        rows.append((kind, f, path))
    return rows


def _sources(f: WeightFile, spec) -> list[WeightFile]:
    """Where a file may come from: its repository, then (for a model's own files) the model's mirrors."""
    if f.model is None or spec is None:
        return [f]
    return [f] + [WeightFile(f.role, repo, f.filename, f.required, f.model) for repo in spec.mirrors]


def _revision(f: WeightFile, revision: str | None, wan_revision: str | None) -> str | None:
    if f.repo == WAN_REPO:
        return wan_revision
    return revision if f.model is not None else None  # decoders and modules: their repository's latest


def _pinned(f: WeightFile, revision: str | None, wan_revision: str | None) -> bool:
    return _revision(f, revision, wan_revision) is not None


def _paths(found: dict, source: str, lock: dict, model: str = DEFAULT_MODEL) -> WeightPaths:
    identities = {k: {kk: vv for kk, vv in v.items() if kk != "recorded"} for k, v in lock["files"].items()}
    decoders = {kind: found[f.role] for kind, f in DECODER_FILES.items() if f.role in found}
    return WeightPaths(found["base"], found["lora"], found["config"], found["vae"], found["t5"], found["tokenizer"],
                       source, identities, model, decoders)


# ------------------------------------------------------------------------------------------------
# Optional modules, fetched on demand (only when a render asks for them)

KIJAI_REPO = "Kijai/WanVideo_comfy"
KIJAI_MIRROR = "daydreamlive/WanVideo_comfy"
VACE_FILE = WeightFile("vace", KIJAI_REPO, "Wan2_1-VACE_module_1_3B_bf16.safetensors", required=False)
OPTIONAL_MIRRORS = {KIJAI_REPO: (KIJAI_MIRROR,)}


def resolve_optional(
    file: WeightFile,
    needed_for: str,
    weights_dir: str | Path | None = None,
    *,
    offline: bool = False,
    downloader: Downloader | None = None,
    verify_hashes: bool = False,
) -> Path:
    """Path of an optional module (the VACE blocks, …): from the weights folder, the cache, or downloaded now.

    The repository's mirrors are tried in turn when it cannot be read. A module that is not there while
    offline is an InputError (exit 2): the option that needs it cannot be honoured.
    """
    from memflow_cli.errors import InputError

    if weights_dir is not None:
        root = Path(weights_dir).expanduser()
        path = root / file.filename
        if not path.is_file():
            raise InputError(f"{root}: weights folder has no {file.filename} ({file.repo}), needed for {needed_for}")
        lock = read_lock(root / LOCK_NAME) or new_lock()
        verify(file, path, lock["files"].get(file.filename), hashes=verify_hashes,
               remedy=f"replace it, or remove it from {root / LOCK_NAME}")
        return path
    offline = offline or offline_from_env()
    downloader = downloader or HFDownloader(hub_cache())
    sources = [file] + [WeightFile(file.role, repo, file.filename, file.required) for repo in OPTIONAL_MIRRORS.get(file.repo, ())]
    lock_file = lock_path()
    lock = read_lock(lock_file) or new_lock()
    for source in sources:
        path = downloader.cached(source, None)
        if path is not None:
            verify(source, path, lock["files"].get(file.filename), hashes=verify_hashes)
            return path
    if offline:
        raise InputError(
            f"{file.repo}/{file.filename} is not in the Hugging Face cache {hub_cache()} and offline mode is on; it is "
            f"needed for {needed_for}. Run once with a network connection, or put it in a --weights-dir"
        )
    failures = []
    for source in sources:
        try:
            item = downloader.inspect(source, None)
            path = downloader.fetch(source, None)
        except DownloadError as exc:
            failures.append(str(exc))
            continue
        record(lock, source, path, item.commit)
        write_lock(lock_file, lock)
        return path
    raise DownloadError(f"cannot fetch {file.filename}, needed for {needed_for}: " + "; ".join(failures))
