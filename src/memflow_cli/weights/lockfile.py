"""The lock file: what a download got (each repository's commit, each file's size and sha256), read, checked
field by field, written, and each file verified against it (size always, sha256 on request)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from memflow_cli.errors import CheckpointError
from memflow_cli.weights.hf_cache import sha256_file

if TYPE_CHECKING:
    from memflow_cli.weights.hub import WeightFile

LOCK_FORMAT = 1


def read_lock(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        lock = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(lock, dict) or not isinstance(lock.get("files"), dict):
            raise ValueError("no `files` table")
        _check_lock_entries(lock["files"])
        return lock
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable lock file ({exc}); delete it and run `memflow download`") from None


# Field → (accepted types, what to say): a lock edited by hand or damaged must fail here, naming the field,
# not later as an AttributeError deep in verification.
_LOCK_FIELDS = {"repo": ((str,), "a repository name"), "commit": ((str, type(None)), "a commit hash or null"),
                "size": ((int, type(None)), "a size in bytes or null"), "sha256": ((str, type(None)), "a sha256 hex digest or null"),
                "recorded": ((str,), "a date")}


def _check_lock_entries(files: dict) -> None:
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise ValueError(f"files.{name}: expected an object, found {type(entry).__name__}")
        for key, (types, expected) in _LOCK_FIELDS.items():
            if key in entry and (not isinstance(entry[key], types) or isinstance(entry[key], bool)):
                raise ValueError(f"files.{name}.{key}: expected {expected}, found {json.dumps(entry[key])[:40]}")
        if isinstance(entry.get("size"), int) and entry["size"] < 0:
            raise ValueError(f"files.{name}.size: expected a size in bytes ≥ 0, found {entry['size']}")


def write_lock(path: Path, lock: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(lock, indent=2) + "\n")
    os.replace(tmp, path)


def new_lock() -> dict:
    return {"format": LOCK_FORMAT, "files": {}}


def record(lock: dict, file: WeightFile, path: Path, commit: str | None) -> dict:
    entry = {"repo": file.repo, "commit": commit, "size": path.stat().st_size, "sha256": sha256_file(path),
             "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    lock["files"][file.filename] = entry
    return entry


def verify(file: WeightFile, path: Path, entry: dict | None, *, hashes: bool = False,
           remedy: str = "run `memflow download` to fetch it again") -> None:
    """Raise CheckpointError when the file on disk is not the one the lock recorded."""
    if entry is None:
        return
    size = path.stat().st_size
    if entry.get("size") is not None and size != entry["size"]:
        raise CheckpointError(
            f"{path}: {size} bytes, but the lock file recorded {entry['size']} for {file.repo}/{file.filename}; "
            f"the file is truncated or was replaced; {remedy}"
        )
    if hashes and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise CheckpointError(f"{path}: content differs from the recorded sha256 {entry['sha256'][:12]}…; {remedy}")
