"""The contact sheet: one picture of a render, a tile per timeline block, to judge a long video at a glance.

`NAME.sheet.png` sits beside `NAME.manifest.json`. Each tile is a frame of its block (the middle frame; a
long block gets several, see `tiles_for`) with two lines of label under it: the block's time range and the
start of its prompt. While a render runs, the sheet of the frames so far is `NAME.partial.sheet.png`
(beside the partial file and its manifest; blocks not reached yet are grey); it is rewritten, atomically,
each time a tile's frame has passed; the complete render publishes `NAME.sheet.png` with the video.

Cheap by construction: the frames the tiles need are picked as they stream past (`ContactSheet.add`) and
kept as small thumbnails; nothing is decoded again. `memflow sheet VIDEO.mp4` makes one for an existing
render: the blocks come from its manifest, the frames from one streaming decode of the video.

Text is drawn with Pillow (ImageDraw and its default font; no font file is needed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from memflow_cli.errors import InputError

FPS = 16
TILE_WIDTH = 240  # thumbnails fit in TILE_WIDTH x TILE_MAX_HEIGHT (aspect kept)
TILE_MAX_HEIGHT = 240
COLUMNS = 4
SECONDS_PER_TILE = 30.0  # a block gets one tile per started 30 s …
MAX_TILES_PER_BLOCK = 8  # … up to 8
PAD = 6
PROMPT_CHARS = 120  # the label keeps at most this much of the prompt, then cuts it to the tile's width
BACKGROUND = (24, 24, 24)
PENDING = (64, 64, 64)
TEXT = (235, 235, 235)
DIM = (150, 150, 150)


from memflow_cli.render.outputs import sheet_path  # noqa: E402,F401  (`out.mp4` → `out.sheet.png`)


@dataclass(frozen=True)
class SheetBlock:
    """What a tile needs of a timeline block: its time range and its prompts (text, weight)."""

    start: float
    end: float
    prompts: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, block) -> "SheetBlock":
        return cls(float(block.start), float(block.end), tuple((p.text, float(p.weight)) for p in block.prompts))


@dataclass(frozen=True)
class Tile:
    block: int  # index of the block
    part: int  # 0-based: which of the block's tiles
    parts: int  # how many tiles the block has
    frame: int  # the frame shown
    label: tuple[str, str]  # time range line, prompt line (uncut; cut to the tile's width when drawn)


def clock(seconds: float) -> str:
    """0:07, 1:02:05, 0:02.5 (tenths only when the time is not a whole second)."""
    tenths = round(seconds * 10)
    whole, tenth = divmod(tenths, 10)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    return f"{text}.{tenth}" if tenth else text


def prompt_start(prompts: Sequence[tuple[str, float]], limit: int = PROMPT_CHARS) -> str:
    """The start of the block's main prompt (the heaviest of a blend; `+ N` says how many others are mixed in)."""
    if not prompts:
        return ""
    text, _ = max(prompts, key=lambda p: p[1])
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{text} + {len(prompts) - 1}" if len(prompts) > 1 else text


def tiles_for(blocks: Sequence[SheetBlock], total_frames: int, fps: int = FPS) -> list[Tile]:
    """The tiles of a sheet. A block covers frames [round(start·fps), round(end·fps)) (cut to the video's
    length); it gets n = min(8, ceil(duration / 30 s)) tiles (at least 1), tile i showing the middle frame
    of the i-th of n equal parts (n = 1: the block's middle frame). A block with no frame in the video (past
    its end) still gets its tile, which stays grey."""
    tiles = []
    for index, block in enumerate(blocks):
        first = min(max(round(block.start * fps), 0), total_frames)
        end = min(max(round(block.end * fps), first), total_frames)
        duration = max(block.end - block.start, 0.0)
        parts = min(MAX_TILES_PER_BLOCK, max(1, math.ceil(duration / SECONDS_PER_TILE - 1e-9)))
        count = end - first
        parts = max(1, min(parts, count)) if count else parts
        span = f"{clock(block.start)} - {clock(block.end)}"  # ASCII: the default font has no en dash
        prompt = prompt_start(block.prompts)
        for part in range(parts):
            frame = first + (2 * part + 1) * count // (2 * parts) if count else -1
            line = span if parts == 1 else f"{span}  ({part + 1}/{parts} at {clock(max(frame, 0) / fps)})"
            tiles.append(Tile(index, part, parts, frame, (line, prompt)))
    return tiles


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    scale = min(TILE_WIDTH / width, TILE_MAX_HEIGHT / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail(frame: np.ndarray):
    """A frame `[H, W, 3]` uint8 as the tile's picture (a PIL image of `thumbnail_size`)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    size = thumbnail_size(image.width, image.height)
    grow = size[0] > image.width
    return image.resize(size, Image.Resampling.NEAREST if grow else Image.Resampling.BILINEAR)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1: a scalable font when FreeType is there
    except TypeError:  # an older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut with ... so that it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid].rstrip() + "...", font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


class ContactSheet:
    """Picks the tiles' frames as they stream past and draws the sheet.

    `add(frames)` takes the next frames of the video, in order (uint8 `[n, H, W, 3]`); `update` (if given) is
    called with the sheet's path whenever a new tile was captured, after the partial sheet was rewritten
    at `live` (None: no live sheet). `write(path)` draws the sheet of what was captured so far.
    """

    def __init__(self, blocks: Sequence[SheetBlock], total_frames: int, width: int, height: int, *, title: str = "",
                 fps: int = FPS, live: Path | None = None, temp_for: Path | None = None):
        self.blocks = list(blocks)
        self.total_frames = int(total_frames)
        self.width, self.height, self.fps = int(width), int(height), fps
        self.title = title
        self.tiles = tiles_for(self.blocks, self.total_frames, fps)
        self.thumbs: dict[int, object] = {}  # tile index → PIL thumbnail
        self._wanted = {}  # frame → tile indices (two tiles may show one frame)
        for i, tile in enumerate(self.tiles):
            if tile.frame >= 0:
                self._wanted.setdefault(tile.frame, []).append(i)
        self.seen = 0  # frames passed so far
        self.live = live  # the partial sheet rewritten while rendering
        self._temp_for = temp_for  # the file whose hidden temporaries our temporaries are named after
        self.writes = 0

    @classmethod
    def for_timeline(cls, timeline, total_frames: int, width: int, height: int, **kw) -> "ContactSheet":
        return cls([SheetBlock.of(b) for b in timeline.blocks], total_frames, width, height, **kw)

    # -- collecting ------------------------------------------------------------------------------

    def add(self, frames) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        first, self.seen = self.seen, self.seen + len(frames)
        captured = False
        for frame in range(first, self.seen):
            for i in self._wanted.get(frame, ()):
                self.thumbs[i] = thumbnail(frames[frame - first])
                captured = True
        if captured and self.live is not None:
            self.write(self.live, compress_level=1)

    @property
    def complete(self) -> bool:
        return all(i in self.thumbs for i, t in enumerate(self.tiles) if t.frame >= 0)

    # -- drawing ---------------------------------------------------------------------------------

    def geometry(self) -> dict:
        """Where things are: thumbnail size, font size, label height, columns, cell size, header height."""
        tw, th = thumbnail_size(self.width, self.height)
        font_size = max(10, min(16, TILE_WIDTH // 18))
        line = font_size + 4
        label = 2 * line + 2
        columns = max(1, min(COLUMNS, len(self.tiles)))
        rows = max(1, math.ceil(len(self.tiles) / columns))
        header = line + PAD if self.title else 0
        cell_w, cell_h = TILE_WIDTH + PAD, th + label + PAD
        return {"thumb": (tw, th), "font_size": font_size, "line": line, "label": label, "columns": columns,
                "rows": rows, "header": header, "cell": (cell_w, cell_h),
                "size": (PAD + columns * cell_w, PAD + header + rows * cell_h)}

    def tile_box(self, index: int) -> tuple[int, int, int, int]:
        """The thumbnail's box (left, top, right, bottom) of tile `index` on the sheet."""
        g = self.geometry()
        col, row = index % g["columns"], index // g["columns"]
        tw, th = g["thumb"]
        left = PAD + col * g["cell"][0] + (TILE_WIDTH - tw) // 2
        top = PAD + g["header"] + row * g["cell"][1]
        return left, top, left + tw, top + th

    def labels(self, draw=None) -> list[tuple[str, str]]:
        """The two label lines of each tile as drawn (the prompt cut to the tile's width)."""
        from PIL import Image, ImageDraw

        draw = draw or ImageDraw.Draw(Image.new("RGB", (1, 1)))
        font = _font(self.geometry()["font_size"])
        return [(_fit(draw, t.label[0], font, TILE_WIDTH), _fit(draw, t.label[1], font, TILE_WIDTH))
                for t in self.tiles]

    def image(self):
        from PIL import Image, ImageDraw

        g = self.geometry()
        sheet = Image.new("RGB", g["size"], BACKGROUND)
        draw = ImageDraw.Draw(sheet)
        font = _font(g["font_size"])
        if self.title:
            draw.text((PAD, PAD), _fit(draw, self.title, font, g["size"][0] - 2 * PAD), font=font, fill=TEXT)
        for i, (tile, (time_line, prompt_line)) in enumerate(zip(self.tiles, self.labels(draw))):
            left, top, right, bottom = self.tile_box(i)
            thumb = self.thumbs.get(i)
            if thumb is not None:
                sheet.paste(thumb, (left, top))
            else:
                draw.rectangle((left, top, right - 1, bottom - 1), fill=PENDING)
            x = PAD + (i % g["columns"]) * g["cell"][0]
            y = bottom + 2
            draw.text((x, y), time_line, font=font, fill=TEXT if thumb is not None else DIM)
            draw.text((x, y + g["line"]), prompt_line, font=font, fill=TEXT if thumb is not None else DIM)
        return sheet

    def write_temp(self, target: Path, compress_level: int = 6) -> Path:
        """Draw the sheet into a fresh hidden temporary beside `target` (named after the video, so that a later
        render removes it if this process dies) and return it; the caller renames it into place."""
        from memflow_cli.render.outputs import create_temp, signals_deferred

        owner = self._temp_for or target
        with signals_deferred():
            tmp = create_temp(owner, ".png")
        try:
            with open(tmp, "wb") as f:
                self.image().save(f, format="PNG", compress_level=compress_level)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def write(self, target: str | Path, compress_level: int = 6) -> Path:
        """Draw the sheet to `target` atomically (a hidden temporary, then a rename)."""
        target = Path(target)
        tmp = self.write_temp(target, compress_level)
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.writes += 1
        return target

    def entry(self, path: Path) -> dict:
        """The manifest's record of a sheet file."""
        from memflow_cli.weights.hub import sha256_file

        return {"path": str(path), "sha256": sha256_file(path), "tiles": len(self.tiles),
                "tiles_rendered": len(self.thumbs), "size": list(self.geometry()["size"])}


# ------------------------------------------------------------------------------------------------
# `memflow sheet VIDEO.mp4`: a sheet for an existing render


def _manifest_blocks(data, where: Path) -> list[SheetBlock]:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object (a memflow manifest)")
    source = data.get("input")
    if not isinstance(source, dict):
        raise InputError(f"{where}: input: expected an object with the timeline's blocks (is this a memflow manifest?)")
    blocks = source.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise InputError(f"{where}: input.blocks: expected a non-empty list of blocks, found {type(blocks).__name__}")
    out = []
    for i, block in enumerate(blocks):
        at = f"input.blocks[{i}]"
        if not isinstance(block, dict):
            raise InputError(f"{where}: {at}: expected an object with start, end and prompts")
        times = []
        for key in ("start", "end"):
            value = block.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{where}: {at}.{key}: expected a time in seconds >= 0, found {value!r}")
            times.append(float(value))
        if times[1] < times[0]:
            raise InputError(f"{where}: {at}.end: expected an end time after start ({times[0]:g} s), found {times[1]:g}")
        prompts = block.get("prompts")
        if not isinstance(prompts, list):
            raise InputError(f"{where}: {at}.prompts: expected a list of [text, weight] pairs")
        pairs = []
        for j, pair in enumerate(prompts):
            if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str)
                    or isinstance(pair[1], bool) or not isinstance(pair[1], (int, float))):
                raise InputError(f"{where}: {at}.prompts[{j}]: expected a [text, weight] pair, found {pair!r}")
            pairs.append((pair[0], float(pair[1])))
        out.append(SheetBlock(times[0], times[1], tuple(pairs)))
    return out


def sheet_for_video(video: str | Path, manifest: str | Path | None = None, output: str | Path | None = None) -> tuple[Path, ContactSheet]:
    """Make the contact sheet of an existing render: blocks from the manifest, frames decoded from the video.
    Bad input (a missing or undecodable video, a missing or invalid manifest) is an InputError naming the file
    and the field. Returns the sheet's path and the sheet."""
    import json

    import imageio_ffmpeg

    from memflow_cli.render.outputs import manifest_path

    from memflow_cli.input_files import check_input_file

    video = check_input_file(video, "video file")
    manifest = Path(manifest) if manifest is not None else manifest_path(video)
    if not manifest.exists():
        hint = "" if manifest != manifest_path(video) else " (the render's NAME.manifest.json beside the video; or pass --manifest)"
        raise InputError(f"{manifest}: no such manifest{hint}")
    check_input_file(manifest, "manifest")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{manifest}: not a text file; expected a memflow manifest (JSON)") from None
    except ValueError as exc:
        raise InputError(f"{manifest}: not valid JSON ({exc})") from None
    except (OSError, RecursionError) as exc:
        raise InputError(f"{manifest}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    blocks = _manifest_blocks(data, manifest)
    try:
        reader = imageio_ffmpeg.read_frames(str(video), pix_fmt="rgb24")
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise InputError(f"{video}: cannot decode it as a video ({str(exc).strip().splitlines()[-1] if str(exc).strip() else 'no video stream'})") from None
    width, height = (int(v) for v in meta["size"])
    fps = meta.get("fps") or FPS
    if abs(float(fps) - FPS) > 0.01:
        raise InputError(f"{video}: expected a {FPS} fps memflow render, found {fps:g} fps")
    end = max(b.end for b in blocks)
    total = round(end * FPS)
    recorded = (data.get("video") or {}).get("frames") if isinstance(data.get("video"), dict) else None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and 0 < recorded < total:
        total = recorded  # a partial render: its blocks past the end stay grey
    name = video.name
    sheet = ContactSheet(blocks, total, width, height, title=f"{name} · {clock(total / FPS)} · {len(blocks)} blocks")
    try:
        last_wanted = max(sheet._wanted, default=-1)
        for frame in reader:
            if sheet.seen > last_wanted:
                break
            sheet.add(np.frombuffer(frame, np.uint8).reshape(height, width, 3))
    except RuntimeError as exc:
        raise InputError(f"{video}: decoding failed after {sheet.seen} frames ({str(exc).strip()[:200]})") from None
    finally:
        reader.close()
    if sheet.seen == 0:
        raise InputError(f"{video}: no frames could be decoded")
    target = Path(output) if output is not None else sheet_path(video)
    return sheet.write(target), sheet
