"""Renders that survive interruption: checkpoints next to the output, and an exact `--resume`.

`NAME.resume/` holds what it takes to continue a render at a chunk boundary and get the very frames an
uninterrupted render gives:

- `state-N.pt`: the streaming state after chunk N-1 — the generator's (KV cache, memory bank and its
  staged frame, text cache, conditioning, clean latents kept for re-caching, random number generators)
  and the decoder's causal caches. Captured generically from the objects that own them (`snapshot`), so
  a new piece of state in those objects is saved without touching this file; an owner lists what its
  constructor rebuilds anyway in `_transient` (the model, the initial noise drawn from the seed).
- `seg-K.mkv`: the frames written so far, losslessly (FFV1, RGB planes): the final H.264 is encoded in
  one pass from exact frames, so a resumed video is identical to an uninterrupted one, byte for byte.
  A segment is closed at each checkpoint.
- `meta.json` (written last, atomically): the render's fingerprint (input sha256, settings, weights),
  the chunk to continue at, the frame count, the segments and the state file with its sha256. A checkpoint
  whose meta, state or segments do not check out is refused with a message (never silently used).

Checkpoints are taken at chunk boundaries only: on SIGINT/SIGTERM/SIGHUP (the render finishes its chunk,
saves, keeps NAME.partial.mp4 and stops) and every `checkpoint_every` seconds. The folder is removed
when the render completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from memflow_cli.errors import InputError, MemflowError
from memflow_cli.render.outputs import resume_dir  # noqa: F401 (NAME.resume/: callers name it through resume)
from memflow_cli.weights.hub import sha256_file

FORMAT = "memflow-resume/1"


class ResumeError(InputError):
    """A checkpoint that cannot be used: another render's, or damaged."""




# ------------------------------------------------------------------------------------------------
# Generic state capture of the streaming objects


def _is_state_object(value: Any) -> bool:
    """Our own plain objects (generator, memory, caches, stream decoders) — not modules, not settings."""
    cls = type(value)
    return (cls.__module__.startswith("memflow_cli.") and not isinstance(value, torch.nn.Module)
            and hasattr(value, "__dict__") and not getattr(cls, "__dataclass_params__", None))


def _modules(obj: Any) -> dict[str, torch.nn.Module]:
    """name → module for every module reachable from `obj`'s attributes (the decoder's caches are keyed by
    its layers, so a checkpoint names them; a fresh object of the same kind gives the same names)."""
    names: dict[str, torch.nn.Module] = {}

    def walk(o, prefix, seen):
        if id(o) in seen:
            return
        seen.add(id(o))
        for attr, v in vars(o).items():
            if isinstance(v, torch.nn.Module):
                for sub, m in v.named_modules(prefix=prefix + attr):
                    names.setdefault(sub, m)
            elif _is_state_object(v):
                walk(v, f"{prefix}{attr}.", seen)

    walk(obj, "", set())
    return names


def snapshot(obj: Any) -> dict:
    """The mutable state of `obj` as nested dicts of CPU tensors and plain values.

    A tensor that is a view of another captured tensor is skipped: restoring the base restores it.
    Dictionary keys that are layers are saved by their names.
    """
    bases: set[int] = set()
    modules = {id(m): name for name, m in reversed(list(_modules(obj).items()))}  # the first name wins

    def collect(o, seen):
        if id(o) in seen:
            return
        seen.add(id(o))
        for name, v in vars(o).items():
            if name in getattr(type(o), "_transient", ()):
                continue
            if isinstance(v, torch.Tensor) and v._base is None:
                bases.add(id(v))
            elif _is_state_object(v):
                collect(v, seen)

    collect(obj, set())

    def key(k):
        if isinstance(k, torch.nn.Module):
            return {"__module__": modules[id(k)]}
        if isinstance(k, tuple):
            return {"__tuple__": [key(x) for x in k]}
        return k

    def value(v):
        if isinstance(v, torch.Tensor):
            if v._base is not None and id(v._base) in bases:
                return {"__view__": True}
            return v.detach().to("cpu", copy=True)
        if isinstance(v, torch.Generator):
            return {"__rng__": v.get_state(), "device": str(v.device)}
        if _is_state_object(v):
            return {"__object__": walk(v)}
        if isinstance(v, dict):
            return {"__dict__": [[key(k), value(x)] for k, x in v.items()]}
        if isinstance(v, (list, tuple)):
            return {"__list__": [value(x) for x in v], "tuple": isinstance(v, tuple)}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return {"__skip__": type(v).__name__}  # modules, callables, devices, configs: rebuilt by the constructor

    def walk(o):
        return {name: value(v) for name, v in vars(o).items() if name not in getattr(type(o), "_transient", ())}

    return walk(obj)


def restore(obj: Any, state: dict, device: torch.device | str) -> None:
    """Put a `snapshot` back into a freshly built object of the same kind (in place, keeping views)."""
    by_name = _modules(obj)

    def key(k):
        if isinstance(k, dict) and "__tuple__" in k:
            return tuple(key(x) for x in k["__tuple__"])
        if isinstance(k, dict) and "__module__" in k:
            if k["__module__"] not in by_name:
                raise ResumeError(f"the checkpoint refers to a layer {k['__module__']!r} this model does not have")
            return by_name[k["__module__"]]
        return k

    def value(current, saved):
        if isinstance(saved, torch.Tensor):
            if isinstance(current, torch.Tensor) and current.shape == saved.shape and current.dtype == saved.dtype:
                current.copy_(saved)
                return current
            return saved.to(device)
        if isinstance(saved, dict):
            if "__view__" in saved or "__skip__" in saved:
                return current
            if "__rng__" in saved:
                current.set_state(saved["__rng__"])
                return current
            if "__object__" in saved:
                apply(current, saved["__object__"])
                return current
            if "__dict__" in saved:
                cur = current if isinstance(current, dict) else {}
                out = {}
                for k, x in saved["__dict__"]:
                    k = key(k)
                    out[k] = value(cur.get(k), x)
                return out
            if "__list__" in saved:
                cur = list(current) if isinstance(current, (list, tuple)) else []
                items = [value(cur[i] if i < len(cur) else None, x) for i, x in enumerate(saved["__list__"])]
                return tuple(items) if saved.get("tuple") else items
        return saved

    def apply(o, saved):
        for name, s in saved.items():
            setattr(o, name, value(getattr(o, name, None), s))

    apply(obj, state)


# ------------------------------------------------------------------------------------------------
# Lossless frame segments


class SegmentWriter:
    """uint8 RGB frames → one lossless FFV1 file (RGB planes: an exact round trip)."""

    def __init__(self, path: Path, width: int, height: int, fps: int):
        import imageio_ffmpeg

        self.path, self.frames = path, 0
        self.tmp = path.with_name(path.name + ".part")
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
               "-an", "-c:v", "ffv1", "-level", "3", "-pix_fmt", "gbrp", "-f", "matroska", str(self.tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True)

    def write(self, frames: np.ndarray) -> None:
        self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        self.frames += len(frames)

    def close(self) -> Path:
        self._proc.stdin.close()
        err = self._proc.stderr.read().decode("utf-8", "replace").strip()
        if self._proc.wait() != 0:
            raise MemflowError(f"{self.path}: could not write the checkpoint's frames ({err or 'ffmpeg failed'})")
        os.replace(self.tmp, self.path)
        return self.path

    def abandon(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self.tmp.unlink(missing_ok=True)


def read_segment(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    next(reader)  # metadata
    for frame in reader:
        yield np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3)


# ------------------------------------------------------------------------------------------------
# Saving and loading


class Checkpoint:
    """A validated checkpoint on disk: where to continue, and the state to continue with."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta

    @property
    def chunk(self) -> int:
        return self.meta["next_chunk"]

    @property
    def frames(self) -> int:
        return self.meta["frames"]

    @classmethod
    def load(cls, folder: Path, fingerprint: str, settings: dict, input_sha256: str | None) -> "Checkpoint":
        where = f"{folder}/meta.json"
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            ok = (isinstance(meta, dict) and meta.get("format") == FORMAT and _count(meta.get("next_chunk"))
                  and _count(meta.get("frames")) and isinstance(meta.get("segments"), list)
                  and all(isinstance(seg, dict) for seg in meta["segments"])
                  and isinstance(meta.get("state"), dict))
        except (OSError, ValueError, RecursionError):
            ok, meta = False, None
        if not ok:
            raise ResumeError(f"{where}: not a readable memflow checkpoint; remove {folder} (or render with -y) to start over")
        if meta.get("fingerprint") != fingerprint:
            of = f" of {meta['input']}" if isinstance(meta.get("input"), str) else ""
            raise ResumeError(f"{folder}: this checkpoint belongs to a different render{of} ({_difference(meta, settings, input_sha256)}); "
                              f"use the same input and settings, or -y to start over")
        for seg in meta["segments"]:
            p = folder / str(seg.get("file", ""))
            if not p.is_file() or p.stat().st_size != seg.get("size"):
                raise ResumeError(f"{p}: a frame segment of the checkpoint is missing or damaged; remove {folder} "
                                  "(or render with -y) to start over")
        state = folder / str(meta["state"].get("file", ""))
        if not state.is_file() or state.stat().st_size != meta["state"].get("size") or sha256_file(state) != meta["state"].get("sha256"):
            raise ResumeError(f"{state}: the checkpoint's state file is missing or damaged; remove {folder} "
                              "(or render with -y) to start over")
        return cls(folder, meta)

    def check_position(self, num_chunks: int, total_frames: int) -> None:
        """Every field that steers the resume against the render's schedule and the segments' record: the chunk
        to continue at is inside the render (a checkpoint is never taken after the last chunk), the frame count
        is exactly what the chunks before it produce, and the segments add up to it. Else the checkpoint is
        refused as damaged (a short video published as complete, or an IndexError, would follow)."""
        from memflow_cli.inputs.schedule import chunk_start_frame

        chunk, frames = self.meta["next_chunk"], self.meta["frames"]
        counts = [seg.get("frames") if isinstance(seg, dict) else None for seg in self.meta["segments"]]
        problem = None
        if not 1 <= chunk < num_chunks:
            problem = f"next_chunk is {chunk}, but this render has chunks 1 to {num_chunks - 1} to continue at"
        elif frames != chunk_start_frame(chunk) or frames >= total_frames:
            problem = f"frames is {frames}, but {chunk} chunk(s) make {chunk_start_frame(chunk)} frames"
        elif not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in counts) or sum(counts) != frames:
            problem = f"its segments hold {counts} frames, its record says {frames}"
        if problem:
            raise ResumeError(f"{self.folder}/meta.json: a damaged checkpoint ({problem}); remove {self.folder} "
                              "(or render with -y) to start over")

    def check_restored(self, generator: Any) -> None:
        """The latents saved agree with the position: the generator restored has made exactly next_chunk chunks."""
        made = getattr(generator, "chunk_index", None)
        if made != self.chunk:
            raise ResumeError(f"{self.folder}: a damaged checkpoint (its state has made {made} chunk(s), its record "
                              f"says {self.chunk}); remove {self.folder} (or render with -y) to start over")

    def restore(self, owners: dict[str, Any], device) -> None:
        try:
            saved = torch.load(self.folder / self.meta["state"]["file"], map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 — any unpickling problem is a damaged checkpoint
            raise ResumeError(f"{self.folder}: cannot read the checkpoint's state ({exc}); remove it to start over") from None
        missing = [n for n in owners if not isinstance(saved, dict) or not isinstance(saved.get(n), dict)]
        if missing:
            raise ResumeError(f"{self.folder}: the checkpoint's state lacks part of this render's state "
                              f"({', '.join(missing)}); remove it (or render with -y) to start over")
        for name, obj in owners.items():
            restore(obj, saved[name], device)
        if "generator" in owners:
            self.check_restored(owners["generator"])

    def frames_written(self, width: int, height: int) -> Iterator[np.ndarray]:
        for seg in self.meta["segments"]:
            yield from read_segment(self.folder / seg["file"], width, height)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _difference(meta: dict, settings: dict, input_sha256: str | None) -> str:
    old = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    now = json.loads(json.dumps(settings, default=str))  # as meta.json holds them: a tuple reads back as a list
    diffs = [f"{k} {old.get(k)!r} then, {v!r} now" for k, v in now.items() if old.get(k) != v]
    if meta.get("input_sha256") != input_sha256:
        diffs.insert(0, "the input file's content changed")
    return "; ".join(diffs[:4]) or "different weights"


# ------------------------------------------------------------------------------------------------
# The checkpoint folder: it exists only complete (built aside, then renamed into place)

_SIBLING = re.compile(r"\.memflow-(\d+)@([A-Za-z0-9-]+)\.[0-9a-f]+\.(work|tmp|old)$")
_OURS = re.compile(r"(seg-\d+\.mkv(\.part)?|state-\d+\.pt|\.(state|meta)\..*\.tmp|meta\.json)$")


def _sibling(folder: Path, kind: str) -> Path:
    """A hidden name next to NAME.resume/ that records this process: `.NAME.resume.memflow-PID@HOST.RANDOM.kind`."""
    from memflow_cli.render.outputs import _host

    return folder.with_name(f".{folder.name}.memflow-{os.getpid()}@{_host()}.{secrets.token_hex(4)}.{kind}")


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove what a render that is gone (killed, out of memory, power cut) left beside NAME.resume/: its work
    folder, a checkpoint it was building, the previous checkpoint it was replacing. A live render's are kept.
    If the crash came between the two renames of a swap, the previous checkpoint is put back first."""
    from memflow_cli.render.outputs import _alive, _host

    folder = Path(folder)
    prefix = f".{folder.name}."
    removed = []
    try:
        entries = sorted(os.scandir(folder.parent if str(folder.parent) else "."), key=lambda e: e.name)
    except OSError:
        return removed
    for entry in entries:
        match = entry.name.startswith(prefix) and _SIBLING.fullmatch(entry.name[len(prefix) - 1:])
        if not match or match.group(2) != _host():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        path = Path(entry.path)
        if match.group(3) == "old" and not folder.exists():
            with contextlib.suppress(OSError):
                os.replace(path, folder)  # the last complete checkpoint, back under its name
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def is_incomplete(folder: Path) -> bool:
    """NAME.resume/ without a readable meta.json whose every entry is a file a checkpoint holds: what an earlier
    version left after a failure. It is no checkpoint, and removing it loses nothing."""
    if read_meta(folder) is not None:
        return False
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return all(_OURS.fullmatch(name) for name in names)


def read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


class CheckpointRecorder:
    """Owns NAME.resume/ during a render: tees frames into segments, saves state at chunk boundaries.

    The open segment is written in a hidden work folder beside NAME.resume/. A save builds the whole new
    checkpoint in a hidden folder (the segments hard-linked, or copied where links are not possible, then the
    state and meta.json), fsyncs it and renames it into place: the previous checkpoint is renamed aside first and
    removed after. So NAME.resume/ is always a complete, readable checkpoint or absent; a failure removes the
    hidden folders, and a later render removes those of a process that is gone (`clean_stale`).
    """

    def __init__(self, folder: Path, identity: dict, width: int, height: int, fps: int, every: float,
                 resumed: Checkpoint | None = None, clock=time.monotonic):
        self.folder, self.width, self.height, self.fps, self.every, self.clock = folder, width, height, fps, every, clock
        self.base = {"format": FORMAT, "fingerprint": identity["fingerprint"], "settings": identity["settings"],
                     "input_sha256": identity["input"].get("sha256"), "input": identity["input"].get("path"),
                     "output": str(folder)}
        self.segments: list[dict] = list(resumed.meta["segments"]) if resumed else []
        self._new: set[str] = set()  # segments in the work folder, not yet in a checkpoint
        self.work: Path | None = None
        self._segment: SegmentWriter | None = None
        self._last = clock()
        self.saves = 0
        self.seconds = 0.0
        self.bytes = 0

    def write(self, frames: np.ndarray) -> None:
        if self._segment is None:
            if self.work is None:
                self.work = _sibling(self.folder, "work")
                self.work.mkdir()
            self._segment = SegmentWriter(self.work / f"seg-{len(self.segments):04d}.mkv", self.width, self.height, self.fps)
        self._segment.write(frames)

    def due(self) -> bool:
        return self.every > 0 and self.clock() - self._last >= self.every

    def save(self, owners: dict[str, Any], next_chunk: int, frames: int, timings: dict) -> None:
        """State after `next_chunk - 1` chunks and `frames` frames, as a new complete checkpoint put in place."""
        from memflow_cli.render.outputs import signals_deferred

        started = time.perf_counter()
        if self._segment is not None:
            path = self._segment.close()
            _fsync(path)
            self.segments.append({"file": path.name, "frames": self._segment.frames, "size": path.stat().st_size})
            self._new.add(path.name)
            self._segment = None
        build = _sibling(self.folder, "tmp")
        try:
            build.mkdir()
            for seg in self.segments:
                source = (self.work if seg["file"] in self._new else self.folder) / seg["file"]
                try:
                    os.link(source, build / seg["file"])
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(source, build / seg["file"])
                    _fsync(build / seg["file"])
            state = {name: snapshot(obj) for name, obj in owners.items()}
            name = f"state-{next_chunk:06d}.pt"
            torch.save(state, build / name)
            _fsync(build / name)
            path = build / name
            meta = {**self.base, "next_chunk": next_chunk, "frames": frames, "segments": self.segments,
                    "state": {"file": name, "size": path.stat().st_size, "sha256": sha256_file(path)},
                    "timings_s": {k: round(v, 4) for k, v in timings.items()}}
            with open(build / "meta.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            _fsync(build, directory=True)
            old = _sibling(self.folder, "old")
            with signals_deferred():  # the two renames are never cut in half by Ctrl-C
                if self.folder.exists():
                    os.replace(self.folder, old)
                os.replace(build, self.folder)
            _fsync(self.folder.parent if str(self.folder.parent) else Path("."), directory=True)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        for seg in self._new:  # now in the checkpoint; the work folder's links are not needed any more
            with contextlib.suppress(OSError):
                (self.work / seg).unlink()
        self._new.clear()
        self._last = self.clock()
        self.saves += 1
        self.seconds += time.perf_counter() - started
        self.bytes = (self.folder / name).stat().st_size + sum(s["size"] for s in self.segments)

    def abandon_open_segment(self) -> None:
        """After a failure or a stop: frames not in a checkpoint are dropped with the work folder; the last
        complete checkpoint (if any) stays as it is."""
        if self._segment is not None:
            self._segment.abandon()
            self._segment = None
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
            self._new.clear()

    def remove(self) -> None:
        """The render completed: the checkpoint has served its purpose."""
        self.abandon_open_segment()
        shutil.rmtree(self.folder, ignore_errors=True)
