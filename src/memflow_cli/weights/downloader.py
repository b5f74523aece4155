"""The network side of the weights: huggingface_hub behind a small `Downloader` interface (tests use a fake one)."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from memflow_cli.weights.hf_cache import DownloadError, NoNetwork, endpoint_host, hub_cache, offline_from_env

if TYPE_CHECKING:
    from memflow_cli.weights.hub import WeightFile


# ------------------------------------------------------------------------------------------------
# The network side


@dataclass(frozen=True)
class RemoteFile:
    file: WeightFile
    commit: str
    size: int | None
    cached: bool


class Downloader(Protocol):
    def inspect(self, file: WeightFile, revision: str | None) -> RemoteFile: ...
    def fetch(self, file: WeightFile, revision: str | None) -> Path: ...
    def cached(self, file: WeightFile, revision: str | None) -> Path | None: ...


class HFDownloader:
    """huggingface_hub behind the Downloader interface, with its errors turned into plain messages.

    Before the first request the hub's host name is resolved once: without a network huggingface_hub
    retries each request with back-off for ~23 s before giving up, while a failed lookup says the same
    at once. `resolve` defaults to `socket.getaddrinfo` (tests pass a failing one).
    """

    def __init__(self, cache_dir: Path | None = None, progress: bool = True, resolve=None):
        self.cache_dir = cache_dir or hub_cache()
        self.progress = progress
        self._resolve = resolve
        self._resolved = False

    def inspect(self, file: WeightFile, revision: str | None) -> RemoteFile:
        from huggingface_hub import hf_hub_download

        self.check_network()
        info = self._call(file, revision, lambda: hf_hub_download(
            file.repo, file.filename, revision=revision, cache_dir=self.cache_dir, dry_run=True))
        return RemoteFile(file, info.commit_hash, info.file_size, info.is_cached)

    def fetch(self, file: WeightFile, revision: str | None) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if self.progress else disable_progress_bars)()
        self.check_network()
        return Path(self._call(file, revision, lambda: hf_hub_download(
            file.repo, file.filename, revision=revision, cache_dir=self.cache_dir)))

    def cached(self, file: WeightFile, revision: str | None) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(file.repo, file.filename, cache_dir=self.cache_dir, revision=revision)
        return Path(found) if isinstance(found, str) else None

    def check_network(self) -> None:
        """Raise NoNetwork when the hub's host name does not resolve (skipped behind a proxy, which resolves it)."""
        if self._resolved or offline_from_env():
            return
        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            self._resolved = True
            return
        host = endpoint_host()
        try:
            (self._resolve or socket.getaddrinfo)(host, 443)
        except (socket.gaierror, UnicodeError) as exc:
            raise NoNetwork(f"cannot resolve the host name {host} ({getattr(exc, 'strerror', None) or exc}): no network?") from None
        self._resolved = True

    def _call(self, file: WeightFile, revision: str | None, fn):
        from huggingface_hub import errors as e

        where = f"{file.repo}/{file.filename}"
        try:
            return fn()
        except e.GatedRepoError:
            raise DownloadError(
                f"{file.repo} is gated: accept its terms at https://huggingface.co/{file.repo} and set HF_TOKEN "
                "(or run `hf auth login`)"
            ) from None
        except e.RevisionNotFoundError:
            raise DownloadError(f"{file.repo}: revision {revision!r} not found") from None
        except e.RepositoryNotFoundError:
            raise DownloadError(
                f"{file.repo}: repository not found (or private: set HF_TOKEN to a token that can read it)"
            ) from None
        except e.RemoteEntryNotFoundError:
            raise DownloadError(f"{where}: no such file in the repository at revision {revision or 'main'}") from None
        except e.OfflineModeIsEnabled:
            raise NoNetwork("HF_HUB_OFFLINE is set") from None
        except (e.LocalEntryNotFoundError, ConnectionError):
            raise NoNetwork(f"cannot reach {endpoint_host()} (no network?)") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(
                    f"{where}: the disk is full (cache {self.cache_dir}); free some space or set HF_HOME to a "
                    "bigger disk, then run the command again (the download resumes)"
                ) from None
            if type(exc).__module__.startswith(("httpx", "huggingface_hub", "requests", "urllib3")):
                raise DownloadError(f"{where}: download failed ({type(exc).__name__}: {exc})") from None
            raise
