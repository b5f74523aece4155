"""Read every timeline format into one `Timeline`: blocks of weighted prompts on a clock in seconds.

Formats (spec `timelines.md` §1), detected from the content, never from the file name:
  - Daydream Scope timeline export, version 1.0 / 2.0 / 2.1 (`{"prompts": [{startTime, endTime, prompts|text}]}`)
  - Daydream Scope workflow file (`{"format": "scope-workflow", "timeline": {"entries": [...]}}`)
  - MemFlow prompt-list JSONL (`{"prompts": ["segment 1", "segment 2", ...]}` per line, one video per line)
  - a single prompt given on the command line (`prompt_timeline`)

Every problem is an `InputError` that names the file, the JSON path and what was expected, so that a
person can fix the file without reading a traceback. Fields that are understood but have no offline
meaning are collected into one warning per timeline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from memflow_cli.errors import InputError, counted
from memflow_cli.limits import MAX_TIMELINE_BYTES, as_finite, check_seed, check_steps, describe_number, is_blank_prompt
from memflow_cli.weights.models import MODELS

FPS = 16  # MemFlow's native frame rate; video files are written at this rate.
DEFAULT_SEGMENT_SECONDS = 10.0  # the published benchmark: 10 s per prompt
DEFAULT_LATENT_FRAMES = 240  # MemFlow's interactive default when switch points are given in latent frames
INTERPOLATIONS = ("linear", "slerp")
SCOPE_VERSIONS = ("1.0", "2.0", "2.1")
# Scope pipelines we have no model for (ours are models.MODELS: their pipelineId is their --model name).
OTHER_SCOPE_PIPELINES = ("krea-realtime-video", "reward-forcing", "streamdiffusionv2")
MAX_SIDE = 8192  # pixels; far beyond what the model was trained for, and still a sane allocation per frame
MAX_LATENT_FRAMES = 10**9  # --latent-frames; the length limit (--max-hours) applies on top
OVERLAP_TOLERANCE = 1e-6  # seconds; exported boundaries are copied floats and match exactly, allow rounding noise


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float  # as written in the file (any positive scale); normalised when blended


@dataclass(frozen=True)
class Block:
    """One prompt block: a weighted blend that becomes active at `start` seconds."""

    start: float
    end: float
    prompts: tuple[WeightedPrompt, ...]
    transition_steps: int = 0  # move to this blend over N chunks; 0 = switch at once
    interpolation: str = "linear"  # how that transition interpolates: "linear" or "slerp"
    where: str = ""  # JSON path of the block in its file, for messages

    @property
    def weights(self) -> tuple[float, ...]:
        # Scaled by the largest weight first, so that weights near the float limit cannot overflow the sum.
        largest = max(p.weight for p in self.prompts)
        scaled = [p.weight / largest for p in self.prompts]
        total = sum(scaled)
        return tuple(w / total for w in scaled)


@dataclass(frozen=True)
class LoraSpec:
    path: Path  # resolved, existing file
    scale: float
    merge_mode: str | None = None
    sha256: str | None = None  # expected content hash, when the file gives one (workflow `loras[].sha256`)
    where: str = ""  # JSON path (or --lora) for messages


@dataclass(frozen=True)
class TimelineSettings:
    """Render settings a file may carry; None = not given (the renderer's default or the command line decides)."""

    seed: int | None = None
    width: int | None = None
    height: int | None = None
    pipeline_id: str | None = None
    denoising_steps: tuple[int, ...] | None = None  # only kept for MemFlow files
    loras: tuple[LoraSpec, ...] = ()
    vace_scale: float | None = None  # VACE guidance strength (workflow `vace_context_scale`, Scope `vaceContextScale`)
    quantization: str | None = None  # "fp8" when the file asks for fp8_e4m3fn weights
    input_mode: str | None = None  # "text" or "video" (video-to-video: needs --video)
    noise_scale: float | None = None  # video-to-video strength (checked when used)
    noise_controller: bool | None = None  # video-to-video: motion-adaptive strength
    vae: str | None = None  # decoder choice (decoders.DECODER_KINDS) from Scope's `vae_type`


@dataclass(frozen=True)
class Timeline:
    blocks: tuple[Block, ...]  # sorted by start, non-overlapping
    settings: TimelineSettings = field(default_factory=TimelineSettings)
    source: str = "--prompt"  # the file (and line) it came from
    format: str = "prompt"
    warnings: tuple[str, ...] = ()
    sha256: str | None = None  # of the input file's bytes

    @classmethod
    def read(cls, path: str | Path, *, line: int | None = None, **options: Any) -> "Timeline":
        """Read a timeline file of any supported format (for a multi-line JSONL, choose `line`, 1-based)."""
        return read_timeline(path, line=line, **options)

    @classmethod
    def from_prompt(cls, text: str, seconds: float = DEFAULT_SEGMENT_SECONDS) -> "Timeline":
        """One prompt for `seconds` (what `memflow render --prompt` makes)."""
        return prompt_timeline(text, seconds)

    @property
    def end(self) -> float:
        return max(b.end for b in self.blocks)

    @property
    def total_frames(self) -> int:
        return round(self.end * FPS)

    @property
    def texts(self) -> tuple[str, ...]:
        """Distinct prompt texts in order of first use: what the text encoder must encode."""
        seen: dict[str, None] = {}
        for block in self.blocks:
            for p in block.prompts:
                seen.setdefault(p.text, None)
        return tuple(seen)


# ------------------------------------------------------------------------------------------------
# Entry points


def read_timelines(
    path: str | Path,
    *,
    segment_seconds: float | None = None,
    switch_frames: Sequence[int] | None = None,
    num_latent_frames: int | None = None,
    lora_dirs: Iterable[str | Path] = (),
    line: int | None = None,
) -> list[Timeline]:
    """Read a timeline file of any supported format. A prompt-list JSONL gives one timeline per line; with
    `line` (1-based, blank lines not counted) only that prompt list is read and checked, the others are not."""
    path = Path(path)
    where = str(path)
    raw = _read_regular_file(path, where)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: expected UTF-8 JSON text, found undecodable bytes at offset {exc.start}") from None
    digest = hashlib.sha256(raw).hexdigest()
    reader = _Reader(where, lora_dirs=[*lora_dirs, path.parent])

    if not text.strip():
        raise InputError(f"{where}: the file is empty; expected a JSON timeline or JSONL prompt lists")
    try:
        doc = _parse_json(text, where)
        documents = [(None, doc)]
    except json.JSONDecodeError as exc:
        # Several JSON values, one per line: the MemFlow prompt-list format.
        if exc.msg == "Extra data":
            documents = _json_lines(text, where, line)
        else:
            raise InputError(f"{where}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None

    if len(documents) == 1 and documents[0][0] is None:
        doc = documents[0][1]
        if isinstance(doc, dict) and doc.get("format") == "scope-workflow":
            timelines = [reader.scope_workflow(doc)]
        elif isinstance(doc, dict) and _is_prompt_list(doc.get("prompts")) and not {"version", "settings"} & doc.keys():
            documents = [(1, doc)]
            _check_line(line, 1, where)
            timelines = []
        elif isinstance(doc, dict) and "prompts" in doc:
            timelines = [reader.scope_timeline(doc)]
        elif isinstance(doc, dict):
            raise InputError(
                f"{where}: $: expected a Scope timeline (a `prompts` array of blocks), a Scope workflow "
                "(`format: \"scope-workflow\"`) or MemFlow prompt lists (`{\"prompts\": [\"...\"]}` per line); "
                "found an object without `prompts`"
            )
        else:
            raise InputError(f"{where}: $: expected a JSON object, found {_kind(doc)}")
    else:
        timelines = []
    if not timelines:
        timelines = [
            reader.prompt_list(doc, line, segment_seconds, switch_frames, num_latent_frames) for line, doc in documents
        ]
    return [replace(t, sha256=digest) for t in timelines]


def read_timeline(path: str | Path, *, line: int | None = None, **options: Any) -> Timeline:
    """Read one timeline; for a multi-line JSONL choose `line` (1-based)."""
    timelines = read_timelines(path, line=line, **options)
    if line is None and len(timelines) > 1:
        raise InputError(f"{path}: holds {len(timelines)} prompt lists (one video each); choose one with a line number")
    return timelines[0]


def prompt_timeline(text: str, seconds: float = DEFAULT_SEGMENT_SECONDS) -> Timeline:
    """A single prompt for `seconds`: the quickest way to try the model."""
    if not isinstance(text, str) or is_blank_prompt(text):
        raise InputError("--prompt: expected a non-empty prompt text")
    if as_finite(seconds) is None or seconds <= 0:
        shown = describe_number(seconds) if isinstance(seconds, (int, float)) else repr(seconds)
        raise InputError(f"--seconds: expected a finite duration > 0 seconds, found {shown}")
    _check_duration(seconds, "--prompt")
    return Timeline(blocks=(Block(0.0, float(seconds), (WeightedPrompt(text.strip(), 1.0),), where="--prompt"),))


# ------------------------------------------------------------------------------------------------
# Parsing helpers


def _read_regular_file(path: Path, where: str) -> bytes:
    """The bytes of a regular file of sane size. A FIFO would block forever and /dev/zero never ends, so
    anything but a regular file is refused before it is opened."""
    from memflow_cli.input_files import check_input_file

    info = check_input_file(path, "timeline file", shown=where).stat()
    if info.st_size > MAX_TIMELINE_BYTES:
        raise InputError(
            f"{where}: expected a timeline file of at most {MAX_TIMELINE_BYTES // 2**20} MiB, found {info.st_size:,} bytes"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: cannot read the file ({exc.strerror or exc})") from None


def _parse_json(text: str, where: str, line: int | None = None) -> Any:
    """json.loads, with the failures that are not JSONDecodeError turned into input errors: nesting deeper
    than Python's recursion limit, and integers longer than Python's 4300-digit conversion limit."""
    at = "" if line is None else f" at line {line}"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise InputError(f"{where}: expected a timeline, found JSON nested too deeply{at}") from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise InputError(f"{where}: not valid JSON{at}: {exc}") from None


def _check_line(line: int | None, count: int, where: str) -> None:
    if line is not None and not 1 <= line <= count:
        raise InputError(f"{where}: line {line} does not exist; the file holds {counted(count, 'prompt list')}, "
                         f"expected 1 to {count}")


def _json_lines(text: str, where: str, chosen: int | None = None) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line; with `chosen` (the n-th non-blank line, 1-based) only that
    one is parsed: a render of line 3 does not depend on what line 7 holds."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if chosen is not None:
        _check_line(chosen, len(lines), where)
        lines = [lines[chosen - 1]]
    out = []
    for number, line in lines:
        try:
            out.append((number, _parse_json(line, where, number)))
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON at line {number}, column {exc.colno}: {exc.msg}") from None
    return out


def _is_prompt_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _blank(text: str) -> str:
    return "an empty string" if not text else "only invisible characters (spaces, zero-width characters or &nbsp;)"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return describe_number(value)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({json.dumps(shown)})"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_number(value: Any) -> bool:
    return as_finite(value) is not None


def _check_duration(end: float, where: str) -> None:
    if end * FPS < 0.5:  # round(end·FPS) < 1, without overflowing for absurd ends
        raise InputError(f"{where}: the video would have no frames; expected an end time of at least {1 / FPS:.4f} s")


class _Reader:
    """Reads one file's documents; knows the file name for messages and collects warnings."""

    def __init__(self, where: str, lora_dirs: Sequence[Path]):
        self.where = where
        self.lora_dirs = [Path(d) for d in lora_dirs]
        self.ignored: list[str] = []
        self.notes: list[str] = []

    # -- error and field helpers ----------------------------------------------------------------

    def fail(self, path: str, expected: str, value: Any = ..., *, prefix: str = "") -> InputError:
        found = "" if value is ... else f", found {_kind(value)}"
        return InputError(f"{self.where}: {prefix}{path}: expected {expected}{found}")

    def number(self, obj: dict, key: str, path: str, *, required: bool = True, default: float | None = None) -> float | None:
        if key not in obj or obj[key] is None:
            if required:
                raise InputError(f"{self.where}: {path}.{key}: expected a number of seconds, but the field is missing")
            return default
        value = obj[key]
        if not _is_number(value):
            raise self.fail(f"{path}.{key}", "a finite number", value)
        return float(value)

    def vace_scale(self, obj: dict, key: str, path: str) -> float | None:
        value = self.number(obj, key, path, required=False)
        if value is not None and not 0.0 <= value <= 2.0:
            raise self.fail(f"{path}.{key}", "a VACE scale from 0 to 2", value)
        return value

    def integer(self, obj: dict, key: str, path: str, *, minimum: int = 0) -> int | None:
        if key not in obj or obj[key] is None:
            return None
        value = obj[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(f"{path}.{key}", f"an integer ≥ {minimum}", value)
        return value

    def choice(self, obj: dict, key: str, path: str, options: Sequence[str], default: str) -> str:
        if key not in obj or obj[key] is None:
            return default
        value = obj[key]
        if value not in options:
            raise self.fail(f"{path}.{key}", " or ".join(json.dumps(o) for o in options), value)
        return value

    def obj(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, "an object", value)
        return value

    def array(self, value: Any, path: str, *, nonempty: bool = True) -> list:
        if not isinstance(value, list):
            raise self.fail(path, "an array", value)
        if nonempty and not value:
            raise InputError(f"{self.where}: {path}: expected at least one entry, found an empty array")
        return value

    # -- blocks ---------------------------------------------------------------------------------

    def weighted_prompts(self, items: Any, path: str, default_weight: float) -> tuple[WeightedPrompt, ...]:
        items = self.array(items, path)
        out = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            item = self.obj(item, p)
            text = item.get("text")
            if not isinstance(text, str):
                raise self.fail(f"{p}.text", "a prompt text (string)", text) if "text" in item else InputError(
                    f"{self.where}: {p}.text: expected a prompt text, but the field is missing"
                )
            if is_blank_prompt(text):
                raise InputError(f"{self.where}: {p}.text: expected a non-empty prompt text, found {_blank(text)}")
            weight = item.get("weight", default_weight)
            if weight is None:
                weight = default_weight
            if not _is_number(weight) or weight < 0:
                raise self.fail(f"{p}.weight", "a finite weight ≥ 0", weight)
            out.append(WeightedPrompt(text.strip(), float(weight)))
        if sum(p.weight for p in out) <= 0:
            raise InputError(f"{self.where}: {path}: expected weights with a positive sum, found weights summing to 0")
        return tuple(out)

    def block(self, raw: Any, path: str, *, keys: dict[str, str], default_weight: float, allow_text: bool) -> Block:
        raw = self.obj(raw, path)
        start = self.number(raw, keys["start"], path)
        end = self.number(raw, keys["end"], path)
        if start < 0:
            raise InputError(f"{self.where}: {path}.{keys['start']}: expected a time ≥ 0 seconds, found {start:g}")
        if end <= start:
            raise InputError(
                f"{self.where}: {path}.{keys['end']}: expected an end time after {keys['start']} ({start:g} s), found {end:g}"
            )
        if keys["prompts"] in raw:
            prompts = self.weighted_prompts(raw[keys["prompts"]], f"{path}.{keys['prompts']}", default_weight)
        elif allow_text and "text" in raw:
            # Scope 1.0: a block with a single `text` instead of a blend.
            prompts = self.weighted_prompts([{"text": raw["text"], "weight": 100}], path, default_weight)
        else:
            raise InputError(f"{self.where}: {path}.{keys['prompts']}: expected an array of {{text, weight}}, but the field is missing")
        steps = self.integer(raw, keys["steps"], path) or 0
        method = self.choice(raw, keys["method"], path, INTERPOLATIONS, "linear")
        return Block(start, end, prompts, steps, method, where=path)

    def ordered(self, blocks: list[Block]) -> tuple[Block, ...]:
        blocks = sorted(blocks, key=lambda b: (b.start, b.end))
        for before, after in zip(blocks, blocks[1:]):
            if after.start < before.end - OVERLAP_TOLERANCE:
                raise InputError(
                    f"{self.where}: {after.where}: overlaps {before.where} ({after.start:g}–{after.end:g} s against "
                    f"{before.start:g}–{before.end:g} s); expected blocks that do not overlap"
                )
        _check_duration(max(b.end for b in blocks), f"{self.where}: {blocks[-1].where}")
        self.note_gaps(blocks)
        return tuple(blocks)

    def note_gaps(self, blocks: list[Block]) -> None:
        """One warning for every stretch no block covers (at least a frame long), saying what fills it: the
        blend in use goes on (timelines.md §2), and the first block also covers the time before it."""
        gaps = [(before.end, after.start) for before, after in zip(blocks, blocks[1:])
                if round(after.start * FPS) > round(before.end * FPS)]
        lead = round(blocks[0].start * FPS) > 0
        if not gaps and not lead:
            return
        shown = [f"{a:g}–{b:g} s" for a, b in gaps[:4]] + ([f"… ({len(gaps)} in all)"] if len(gaps) > 4 else [])
        parts = []
        if gaps:
            parts.append(f"{counted(len(gaps), 'gap')} between blocks ({', '.join(shown)}): the blend before each gap "
                         "continues through it until the next block starts")
        if lead:
            parts.append(f"nothing before {blocks[0].start:g} s: the first block ({blocks[0].where}) starts the video")
        self.notes.append("; ".join(parts))

    # -- settings -------------------------------------------------------------------------------

    def resolution(self, height: Any, width: Any, path_h: str, path_w: str) -> tuple[int | None, int | None]:
        out = []
        for value, path in ((height, path_h), (width, path_w)):
            if value is None:
                out.append(None)
                continue
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % 16 or value > MAX_SIDE:
                raise self.fail(path, f"a positive multiple of 16 pixels, at most {MAX_SIDE}", value)
            out.append(value)
        return out[0], out[1]

    def vae_type(self, value: Any, path: str) -> str | None:
        from memflow_cli.engine.decoders import DECODER_KINDS

        if value is None:
            return None
        if not isinstance(value, str) or value.strip().lower() not in DECODER_KINDS:
            raise self.fail(path, f"a decoder: one of {', '.join(DECODER_KINDS)}", value)
        return value.strip().lower()

    def seed(self, value: Any, path: str) -> int | None:
        if value is None:
            return None
        return check_seed(value, f"{self.where}: {path}")

    def steps(self, value: Any, path: str) -> tuple[int, ...] | None:
        if value is None:
            return None
        return check_steps(self.array(value, path), f"{self.where}: {path}")

    def quantization(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if value != "fp8_e4m3fn":
            raise self.fail(path, 'null or "fp8_e4m3fn"', value)
        return "fp8"  # the DiT (and the text encoder) store fp8 weights; see quantization.py

    def input_mode(self, value: Any, path: str) -> str | None:
        # "video" needs an input video (--video); the renderer checks that before loading weights.
        if value is None or value in ("text", "video"):
            return value
        raise self.fail(path, '"text" or "video"', value)

    def noise(self, scale: Any, controller: Any, path_scale: str, path_controller: str) -> tuple[float | None, bool | None]:
        """Video-to-video strength and noise controller; the strength's range is checked when it is used."""
        if scale is not None and not _is_number(scale):
            raise self.fail(path_scale, "a number (the video-to-video strength, in (0, 1])", scale)
        if controller is not None and not isinstance(controller, bool):
            raise self.fail(path_controller, "true or false", controller)
        return (None if scale is None else float(scale)), controller

    def pipeline(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(path, "a pipeline id (string)", value)
        if value not in MODELS:
            known = "" if value in OTHER_SCOPE_PIPELINES else " (unknown to us)"
            self.notes.append(
                f"made for Scope's {value!r} pipeline{known}: rendering it with MemFlow, keeping its prompts, timing, "
                "resolution and seed, with MemFlow's own denoising steps"
            )
        return value

    def lora(self, name: Any, scale: Any, merge: Any, path: str, name_key: str, sha256: Any = None) -> LoraSpec:
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"{path}.{name_key}", "the path or file name of a LoRA file", name)
        if scale is None:
            scale = 1.0
        from memflow_cli.limits import MAX_LORA_SCALE

        if not _is_number(scale) or abs(scale) > MAX_LORA_SCALE:
            raise self.fail(f"{path}.scale" if name_key == "path" else f"{path}.weight",
                            f"a LoRA scale from {-MAX_LORA_SCALE:g} to {MAX_LORA_SCALE:g}", scale)
        if sha256 is not None and not (isinstance(sha256, str) and len(sha256.strip()) == 64
                                       and all(c in "0123456789abcdefABCDEF" for c in sha256.strip())):
            raise self.fail(f"{path}.sha256", "a sha256 of 64 hex digits", sha256)
        for candidate in self.lora_candidates(name):
            try:
                if candidate.is_file():
                    return LoraSpec(candidate, float(scale), merge if isinstance(merge, str) else None,
                                    sha256.strip().lower() if sha256 else None, f"{self.where}: {path}")
            except (OSError, ValueError):  # a name too long for the filesystem, an embedded NUL byte
                continue
        searched = ", ".join(str(d) for d in self.lora_dirs) or "(no LoRA folder given)"
        raise InputError(
            f"{self.where}: {path}.{name_key}: expected an existing LoRA file; {name!r} was not found, "
            f"nor a file of that name in {searched} (use --lora-dir)"
        )

    def lora_candidates(self, name: str) -> list[Path]:
        """Where a LoRA named in a file may be: the path as given (with ~ expanded when that user exists),
        then a file of that name in each LoRA folder."""
        given = Path(name)
        try:
            given = given.expanduser()
        except RuntimeError:  # `~nosuchuser/x`: no such home folder; the name may still match in a folder
            pass
        base = Path(name.replace("\\", "/")).name
        return [given] + ([d / base for d in self.lora_dirs] if base else [])

    def finish(self, settings: TimelineSettings) -> tuple[str, ...]:
        warnings = list(self.notes)
        if self.ignored:
            warnings.append("ignored (no meaning offline): " + ", ".join(dict.fromkeys(self.ignored)))
        return tuple(warnings)

    # -- formats --------------------------------------------------------------------------------

    def scope_timeline(self, doc: dict) -> Timeline:
        version = doc.get("version")
        if version is not None and not isinstance(version, str):
            raise self.fail("version", '"1.0", "2.0" or "2.1"', version)
        if version is not None and version not in SCOPE_VERSIONS:
            self.notes.append(f"unknown Scope timeline version {version!r}; read as 2.1")
        items = self.array(doc["prompts"], "prompts")
        keys = {"start": "startTime", "end": "endTime", "prompts": "prompts", "steps": "transitionSteps",
                "method": "temporalInterpolationMethod"}
        blocks = [
            self.block(item, f"prompts[{i}]", keys=keys, default_weight=100.0, allow_text=True)
            for i, item in enumerate(items)
        ]
        settings = TimelineSettings()
        raw = doc.get("settings")
        if raw is not None:
            settings = self.scope_settings(self.obj(raw, "settings"))
        blocks = self.ordered(blocks)
        return Timeline(blocks, settings, self.where, f"scope-timeline {version or '?'}", self.finish(settings))

    def scope_settings(self, s: dict) -> TimelineSettings:
        pipeline = self.pipeline(s.get("pipelineId"), "settings.pipelineId")
        input_mode = self.input_mode(s.get("inputMode"), "settings.inputMode")
        noise_scale, noise_controller = self.noise(s.get("noiseScale"), s.get("noiseController"),
                                                   "settings.noiseScale", "settings.noiseController")
        height = width = None
        if s.get("resolution") is not None:
            res = self.obj(s["resolution"], "settings.resolution")
            height, width = self.resolution(
                res.get("height"), res.get("width"), "settings.resolution.height", "settings.resolution.width"
            )
        overrides = s.get("schemaFieldOverrides")
        overrides = self.obj(overrides, "settings.schemaFieldOverrides") if overrides is not None else {}
        seed = self.seed(s.get("seed"), "settings.seed")
        if overrides.get("base_seed") is not None:
            seed = self.seed(overrides["base_seed"], "settings.schemaFieldOverrides.base_seed")
        steps = self.steps(s.get("denoisingSteps"), "settings.denoisingSteps")
        if steps is not None and pipeline is not None and pipeline not in MODELS:
            steps = None  # another pipeline's step count (often 2) is not MemFlow's distilled 4-step list
        quantization = self.quantization(s.get("quantization"), "settings.quantization")
        if s.get("useFp8E4m3fn") is True:
            quantization = self.quantization("fp8_e4m3fn", "settings.useFp8E4m3fn")
        for key in ("manageCache", "kvCacheAttentionBias", "loraMergeStrategy"):
            if key in s:
                self.ignored.append(f"settings.{key}")
        vae = self.vae_type(overrides.get("vae_type"), "settings.schemaFieldOverrides.vae_type")
        for key in overrides:
            if key not in ("base_seed", "vae_type"):
                self.ignored.append(f"settings.schemaFieldOverrides.{key}")
        loras = []
        if s.get("loras") is not None:
            for i, item in enumerate(self.array(s["loras"], "settings.loras", nonempty=False)):
                p = f"settings.loras[{i}]"
                item = self.obj(item, p)
                loras.append(self.lora(item.get("path"), item.get("scale"), item.get("mergeMode"), p, "path"))
        vace_scale = self.vace_scale(s, "vaceContextScale", "settings")
        return TimelineSettings(seed, width, height, pipeline, steps, tuple(loras), vace_scale=vace_scale,
                                quantization=quantization, input_mode=input_mode,
                                noise_scale=noise_scale, noise_controller=noise_controller, vae=vae)

    def scope_workflow(self, doc: dict) -> Timeline:
        version = doc.get("format_version")
        if version not in (None, "1.0"):
            self.notes.append(f"Scope workflow format_version {version!r} is newer than 1.0; unknown keys are ignored")
        pipelines = self.array(doc.get("pipelines"), "pipelines") if "pipelines" in doc else []
        main = None
        for i, p in enumerate(pipelines):
            self.obj(p, f"pipelines[{i}]")
            if p.get("role") == "main":
                main, main_path = p, f"pipelines[{i}]"
                break
        if main is None and len(pipelines) == 1:
            main, main_path = pipelines[0], "pipelines[0]"
        if main is None and len(pipelines) > 1:
            raise InputError(f"{self.where}: pipelines: expected one pipeline with role \"main\", found {len(pipelines)} without")
        settings = TimelineSettings()
        if main is not None:
            settings = self.workflow_settings(main, main_path)
        tl = self.obj(doc.get("timeline"), "timeline")
        entries = self.array(tl.get("entries"), "timeline.entries")
        keys = {"start": "start_time", "end": "end_time", "prompts": "prompts", "steps": "transition_steps",
                "method": "temporal_interpolation_method"}
        blocks = [
            self.block(item, f"timeline.entries[{i}]", keys=keys, default_weight=1.0, allow_text=False)
            for i, item in enumerate(entries)
        ]
        blocks = self.ordered(blocks)
        return Timeline(blocks, settings, self.where, f"scope-workflow {version or '1.0'}", self.finish(settings))

    def workflow_settings(self, main: dict, path: str) -> TimelineSettings:
        pipeline = self.pipeline(main.get("pipeline_id"), f"{path}.pipeline_id")
        params = main.get("params")
        params = self.obj(params, f"{path}.params") if params is not None else {}
        pp = f"{path}.params"
        input_mode = self.input_mode(params.get("input_mode"), f"{pp}.input_mode")
        noise_scale, noise_controller = self.noise(params.get("noise_scale"), params.get("noise_controller"),
                                                   f"{pp}.noise_scale", f"{pp}.noise_controller")
        height, width = self.resolution(params.get("height"), params.get("width"), f"{pp}.height", f"{pp}.width")
        seed = self.seed(params.get("base_seed"), f"{pp}.base_seed")
        steps = self.steps(params.get("denoising_step_list"), f"{pp}.denoising_step_list")
        if steps is not None and pipeline is not None and pipeline not in MODELS:
            steps = None
        quantization = self.quantization(params.get("quantization"), f"{pp}.quantization")
        vae = self.vae_type(params.get("vae_type"), f"{pp}.vae_type")
        for key in ("manage_cache", "kv_cache_attention_bias"):
            if key in params:
                self.ignored.append(f"{pp}.{key}")
        loras = []
        if main.get("loras") is not None:
            for i, item in enumerate(self.array(main["loras"], f"{path}.loras", nonempty=False)):
                p = f"{path}.loras[{i}]"
                item = self.obj(item, p)
                loras.append(self.lora(item.get("filename"), item.get("weight"), item.get("merge_mode"), p, "filename",
                                       item.get("sha256")))
        vace_scale = self.vace_scale(params, "vace_context_scale", pp)
        return TimelineSettings(seed, width, height, pipeline, steps, tuple(loras), vace_scale=vace_scale,
                                quantization=quantization, input_mode=input_mode,
                                noise_scale=noise_scale, noise_controller=noise_controller, vae=vae)

    def prompt_list(
        self,
        doc: Any,
        line: int,
        segment_seconds: float | None,
        switch_frames: Sequence[int] | None,
        num_latent_frames: int | None,
    ) -> Timeline:
        prefix = f"line {line}: "
        if not isinstance(doc, dict):
            raise self.fail("$", 'an object {"prompts": [...]}', doc, prefix=prefix)
        if "prompts" not in doc:
            raise InputError(f"{self.where}: {prefix}prompts: expected an array of prompt texts, but the field is missing")
        prompts = doc["prompts"]
        if not isinstance(prompts, list) or not prompts:
            raise self.fail("prompts", "a non-empty array of prompt texts", prompts, prefix=prefix)
        for i, text in enumerate(prompts):
            if not isinstance(text, str):
                raise self.fail(f"prompts[{i}]", "a prompt text (string)", text, prefix=prefix)
            if is_blank_prompt(text):
                raise InputError(f"{self.where}: {prefix}prompts[{i}]: expected a non-empty prompt text, found {_blank(text)}")
        times = segment_times(len(prompts), segment_seconds, switch_frames, num_latent_frames, f"{self.where}: {prefix}prompts")
        blocks = tuple(
            Block(start, end, (WeightedPrompt(text.strip(), 1.0),), where=f"{prefix}prompts[{i}]")
            for i, (text, (start, end)) in enumerate(zip(prompts, times))
        )
        return Timeline(blocks, TimelineSettings(), f"{self.where} line {line}", "memflow-jsonl", self.finish(TimelineSettings()))


def segment_times(
    count: int,
    segment_seconds: float | None,
    switch_frames: Sequence[int] | None,
    num_latent_frames: int | None,
    where: str,
) -> list[tuple[float, float]]:
    """Start and end seconds of `count` prompt-list segments.

    Either equal segments of `segment_seconds`, or the reference's switch points in latent frames: latent frame
    s ≥ 1 is the first latent frame of video frames 4s−3 .. 4s, so a switch at s becomes a block starting at
    (4s−3)/16 s, which the schedule maps back to the first chunk starting at or after latent frame s.
    """
    if switch_frames is None:
        seconds = DEFAULT_SEGMENT_SECONDS if segment_seconds is None else segment_seconds
        if not _is_number(seconds) or seconds * FPS < 1:
            shown = describe_number(seconds) if isinstance(seconds, (int, float)) else repr(seconds)
            raise InputError(
                f"--segment-seconds: expected a finite duration of at least one frame ({1 / FPS:g} s) per prompt, found {shown}"
            )
        if not _is_number(seconds * count):
            raise InputError(f"--segment-seconds: {count} segments of {seconds:g} s overflow the clock; expected a shorter duration")
        return [(i * seconds, (i + 1) * seconds) for i in range(count)]
    total = DEFAULT_LATENT_FRAMES if num_latent_frames is None else num_latent_frames
    if not isinstance(total, int) or isinstance(total, bool) or not 1 <= total <= MAX_LATENT_FRAMES:
        raise InputError(f"--latent-frames: expected a number of latent frames from 1 to {MAX_LATENT_FRAMES}, got {total}")
    frames = list(switch_frames)
    if len(frames) != count - 1:
        raise InputError(
            f"{where}: expected {counted(count - 1, 'switch frame')} for {counted(count, 'prompt')} (--switch-frames), "
            f"found {len(frames)}"
        )
    if any(not 0 < s < total for s in frames) or any(b <= a for a, b in zip(frames, frames[1:])):
        raise InputError(f"--switch-frames: expected increasing latent frames between 1 and {total - 1}, got {frames}")
    bounds = [0.0] + [(4 * s - 3) / FPS for s in frames] + [(4 * total - 3) / FPS]
    return list(zip(bounds, bounds[1:]))
