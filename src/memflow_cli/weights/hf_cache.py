"""Where the weights live: the Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE), the lock file's
place, sizes and the project's one streaming sha256; and the errors of getting files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from memflow_cli.errors import MemflowError

LOCK_NAME = "memflow.lock.json"


class DownloadError(MemflowError):
    """No network, a gated or missing repository, a full disk: something the user must fix."""


class NoNetwork(DownloadError):
    """The hub cannot be reached at all (host not resolvable, no connection): no other file will fare better,
    so we stop at the first failure instead of retrying file after file."""


# ------------------------------------------------------------------------------------------------
# Locations


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (not at import)."""
    return Path(os.environ.get("HF_HUB_CACHE") or hf_home() / "hub").expanduser()


def lock_path() -> Path:
    return hf_home() / "memflow-cli" / LOCK_NAME


def offline_from_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def endpoint_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def sha256_file(path: Path, chunk: int = 8 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
