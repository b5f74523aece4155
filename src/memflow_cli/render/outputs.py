"""Where a render's files go, and how they appear there: checked before anything loads, published as one step.

- `check_output` refuses, before any weights load, an output the writer cannot produce or must not touch:
  a name that is not a video (`.mp4`), one that resolves to an input (timeline, input video, LoRA, weights)
  by itself or through its manifest, names too long for the filesystem (temporaries included), a directory,
  a folder that cannot be written. A missing folder is created. All are input errors (exit 2).
- Temporaries are hidden files next to the target whose name records the owning process
  (`.NAME.memflow-PID@HOST.RANDOM.tmp.mp4`): a later render to the same output removes those whose process
  is gone (SIGKILL leaves them behind), never one of a live render.
- `publish` renames the finished video and its manifest into place as one step: both temporaries exist
  first, then the manifest and the video are renamed; if the second rename fails the first is undone, and
  signals wait until both are done. The video and its manifest always describe the same render.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import threading
from pathlib import Path
from typing import Iterable, Sequence

from memflow_cli.errors import InputError, MemflowError

VIDEO_SUFFIXES = (".mp4",)  # the writer always produces an MP4 container (ffmpeg -f mp4)
_DEFERRED = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class PublishError(MemflowError):
    """The finished files could not be put in place (permissions, full disk); nothing was replaced."""


# Every file a render writes is named from its video's name: one rule, one place.

def _beside(video: str | Path, name: str) -> Path:
    video = Path(video)
    return video.with_name(name.format(stem=video.stem, name=video.name, suffix=video.suffix or ".mp4"))


def manifest_path(video: str | Path) -> Path:
    """`out.mp4` → `out.manifest.json`: the render's settings, inputs and figures."""
    return _beside(video, "{stem}.manifest.json")


def partial_path(path: str | Path) -> Path:
    """`out.mp4` → `out.partial.mp4`: where an interrupted render keeps its frames."""
    return _beside(path, "{stem}.partial{suffix}")


def sheet_path(video: str | Path) -> Path:
    """`out.mp4` → `out.sheet.png` (the contact sheet, sheet.py); `out.partial.mp4` → `out.partial.sheet.png`."""
    return _beside(video, "{stem}.sheet.png")


def resume_dir(output: str | Path) -> Path:
    """`out.mp4` → `out.resume/`: the checkpoint folder of an interrupted render (render/resume.py)."""
    return _beside(output, "{stem}.resume")


def lock_path(output: str | Path) -> Path:
    """`out.mp4` → `.out.mp4.lock`: held by the render writing `out.mp4` (its PID and host inside)."""
    return _beside(output, ".{name}.lock")


# ------------------------------------------------------------------------------------------------
# Temporaries


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def temp_prefix(target: Path, pid: int | None = None) -> str:
    return f".{target.stem}.memflow-{os.getpid() if pid is None else pid}@{_host()}."


def temp_name(target: Path, suffix: str, pid: int | None = None) -> Path:
    """A fresh hidden name next to `target` that records this process: `.NAME.memflow-PID@HOST.RANDOM.tmp.mp4`."""
    return target.with_name(f"{temp_prefix(target, pid)}{secrets.token_hex(4)}.tmp{suffix}")


def create_temp(target: Path, suffix: str) -> Path:
    """Create (O_EXCL) an empty temporary file next to `target` and return its path."""
    while True:
        path = temp_name(target, suffix)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # when in doubt, the file belongs to someone
    return True


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove hidden temporaries of `target` (and of its partial file) left by processes of this host that no
    longer exist; a live render's files are never touched. Returns what was removed."""
    target = Path(target)
    folder = target.parent
    pattern = re.compile(r"\.memflow-(\d+)@([A-Za-z0-9-]+)\.[0-9a-f]+\.tmp\.[A-Za-z0-9]+$")
    stems = {f".{target.stem}.", f".{partial_path(target).stem}."}
    removed = []
    try:
        entries = list(os.scandir(folder if str(folder) else "."))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        match = next((m for s in stems if name.startswith(s) and (m := pattern.fullmatch(name[len(s) - 1:]))), None)
        if not match or match.group(2) != _host():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


class OutputBusy(InputError):
    """Another render is writing the same output now."""


def _lock_holder(path: Path) -> tuple[int, str] | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    match = re.fullmatch(r"(\d+)@([A-Za-z0-9-]+)", text)
    return (int(match.group(1)), match.group(2)) if match else None


@contextlib.contextmanager
def output_lock(output: str | Path):
    """Hold `.NAME.lock` next to the output while rendering it: a second render of the same output, started
    while the first runs, is refused (OutputBusy, exit 2) instead of replacing the first one's files. The lock
    is taken atomically (a complete file linked into place, else O_EXCL), released on exit, and stale when its
    process (on this host) is gone: a killed render does not block the name."""
    output = Path(output)
    path = lock_path(output)
    mine = f"{os.getpid()}@{_host()}"
    for _ in range(3):
        tmp = create_temp(output, ".lock")  # a temporary of the output: cleaned like the others if left
        try:
            tmp.write_text(mine + "\n", encoding="utf-8")
            try:
                os.link(tmp, path)  # fails if the lock exists: never an empty lock file seen by another render
                taken = True
            except FileExistsError:
                taken = False
            except OSError:  # no hard links here: exclusive creation instead
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    taken = False
                else:
                    with os.fdopen(fd, "w") as f:
                        f.write(mine + "\n")
                    taken = True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if taken:
            break
        holder = _lock_holder(path)
        if holder is not None and holder[1] == _host() and holder[0] != os.getpid() and not _alive(holder[0]):
            with contextlib.suppress(OSError):
                os.unlink(path)  # stale: its render is gone
            continue
        who = f"process {holder[0]} on {holder[1]}" if holder else "another process"
        raise OutputBusy(f"{output}: another render ({who}) is writing this output now (lock {path}); wait for it "
                         "to finish or choose another name with -o; if no render is running, delete the lock file")
    else:
        raise OutputBusy(f"{output}: cannot take the lock {path}; delete it if no render is running")
    try:
        yield path
    finally:
        if _lock_holder(path) == (os.getpid(), _host()):
            with contextlib.suppress(OSError):
                os.unlink(path)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so that a step of several renames (or a file creation
    and the bookkeeping that owns it) is never cut in half. The signal is delivered right after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------------------------------------------------
# Checks before loading


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError, ValueError):
        return False


def check_output(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Check that a render may write `path` (+ its manifest, partial file and temporaries); create a missing
    folder. Raises InputError (exit 2) before any weights load. `inputs` are files the render reads."""
    path = Path(path)
    shown = str(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        found = f"'{path.suffix}'" if path.suffix else "no extension"
        raise InputError(f"{shown}: expected a video file name ending in .mp4 (the writer writes MP4/H.264), found {found}")
    produced = [path, manifest_path(path), partial_path(path), manifest_path(partial_path(path)), lock_path(path),
                sheet_path(path), sheet_path(partial_path(path))]
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    limit = _name_max(existing)
    longest = [name.name for name in produced] + [temp_name(path, ".json", pid=2**32).name,
                                                 temp_name(partial_path(path), ".json", pid=2**32).name]
    too_long = [n for n in longest if len(os.fsencode(n)) > limit]
    if too_long:
        raise InputError(
            f"{shown}: the name is too long for this filesystem ({len(os.fsencode(too_long[0]))} bytes in "
            f"{too_long[0][:40]}…, the limit is {limit}, temporary names included); choose a shorter output name"
        )
    try:
        for name in produced:
            if name.is_dir():
                raise InputError(f"{name}: is a directory; expected the path of a video file to write")
            if name.exists() and not name.is_file():
                raise InputError(f"{name}: exists and is not a regular file (a device, pipe or socket); choose another output")
    except OSError as exc:
        raise InputError(f"{shown}: cannot use this output path ({exc.strerror or exc})") from None
    checkpoint = resume_dir(path)  # removed when the render completes (or with -y): never a home for an input
    for source in inputs:
        source = Path(source)
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            if checkpoint.resolve() in Path(source).resolve().parents:
                raise InputError(f"{shown}: the input {source} is inside {checkpoint}, the checkpoint folder this "
                                 "render replaces and removes; move the input or choose another output name")
        for name in produced:
            if _same_file(name, source):
                what = "the video" if name == path else f"its manifest/partial file {name}"
                raise InputError(f"{shown}: {what} would overwrite the input {source}; choose another output name")
    if not folder.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{shown}: cannot create the folder {folder} ({exc.strerror or exc})") from None
    if not folder.is_dir():
        raise InputError(f"{shown}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only filesystem" if _read_only(folder) else "permission denied"
        raise InputError(f"{shown}: cannot write into {folder} ({reason})")
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------------
# Publishing


def write_temp_json(target: Path, data: dict) -> Path:
    """Write `data` into a fresh temporary next to `target`, flushed to disk."""
    tmp = None
    try:
        with signals_deferred():
            tmp = create_temp(target, ".json")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        return tmp
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _ordinary_mode(path: Path) -> None:
    """Temporaries are created 0600; a finished file gets the mode of any file the user creates."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def publish(video_tmp: Path | None, video: Path | None, manifest: dict | None, manifest_target: Path | None,
            extras: Sequence[tuple[Path, Path]] = ()) -> None:
    """Put a finished video and its manifest in place as one step (either may be None: only the other).

    The manifest is written to a temporary first; then the extras (finished temporaries → their names, e.g.
    the contact sheet), the manifest and the video are renamed. If the video's rename fails, the old manifest
    and extras come back (or the new ones are removed). Signals wait until all are in place. On failure the
    temporaries are removed and a PublishError explains what was kept.
    """
    manifest_tmp = None
    old_manifest: bytes | None = None
    extras = list(extras)
    moved: list[tuple[Path, bytes | None]] = []  # extras already renamed, with what they replaced
    try:
        if manifest is not None:
            manifest_tmp = write_temp_json(manifest_target, manifest)
            _ordinary_mode(manifest_tmp)
            if manifest_target.is_file():
                old_manifest = manifest_target.read_bytes()
        if video_tmp is not None:
            _ordinary_mode(video_tmp)
            with open(video_tmp, "rb+") as f:
                os.fsync(f.fileno())  # the data is on disk before the name points to it
        with signals_deferred():
            try:
                for tmp, target in extras:
                    old = target.read_bytes() if target.is_file() else None
                    os.replace(tmp, target)
                    moved.append((target, old))
            except OSError:
                for target, old in moved:
                    _undo_manifest(target, old)
                raise
            if manifest_tmp is not None:
                os.replace(manifest_tmp, manifest_target)
                manifest_tmp = None
            if video_tmp is not None:
                try:
                    os.replace(video_tmp, video)
                except OSError:
                    if manifest is not None:
                        _undo_manifest(manifest_target, old_manifest)
                    for target, old in moved:
                        _undo_manifest(target, old)
                    raise
    except OSError as exc:
        target = video if video_tmp is not None else manifest_target
        kept = "the existing file was left as it was" if target.exists() else "nothing was written"
        raise PublishError(f"{target}: cannot put the finished file in place ({exc.strerror or exc}); {kept}") from None
    finally:
        for tmp in (manifest_tmp, video_tmp, *(t for t, _ in extras)):
            if tmp is not None and tmp.exists():
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _undo_manifest(target: Path, old: bytes | None) -> None:
    with contextlib.suppress(OSError):
        if old is None:
            os.unlink(target)
        else:
            tmp = create_temp(target, ".json")
            tmp.write_bytes(old)
            _ordinary_mode(tmp)
            os.replace(tmp, target)
