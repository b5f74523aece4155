"""Where a render's video goes: the name we pick when none is given, and the rule for existing files.

One rule for every command that writes videos (render, batches): an existing video is never replaced
unless `-y/--overwrite` (alias `--force`) says so, and the refusal comes before any weight is loaded. A
name we pick ourselves never needs that option: it is made unique instead (`<slug>-<seed>.mp4`, then
`-2`, `-3`, …), so two quick `--prompt` tries do not overwrite each other.

Only the finished video counts as "existing": a `NAME.partial.mp4` left by an interrupted render is what
the next complete render of the same name supersedes.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from memflow_cli.errors import InputError

SLUG_CHARS = 40  # long enough to recognise the prompt, short enough for a file name


class OutputExists(InputError):
    """The output file exists and replacing it was not asked for."""


def slug(text: str, limit: int = SLUG_CHARS) -> str:
    """`"A cat walks in the city, at night!"` → `a-cat-walks-in-the-city-at-night` (ASCII, cut at a word)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > limit:
            break
        out = candidate
    return out or (words[0][:limit] if words else "memflow")


def prompt_output(text: str, seed: int, folder: Path = Path(".")) -> Path:
    """The name we pick for a `--prompt` render: `<slug>-<seed>.mp4`."""
    return folder / f"{slug(text)}-{seed}.mp4"


def unique(path: Path) -> Path:
    """`path` if no such file exists, else the first free `stem-2`, `stem-3`, … next to it."""
    path = Path(path)
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def check_overwrite(path: Path, overwrite: bool) -> Path:
    """Refuse at once to replace an existing file that is not one of our renders, unless `overwrite`.

    An existing output with a manifest next to it may be exactly the render asked for (a batch rerun
    skips it); that takes the weights' identity to decide, so the renderer checks it later. A file
    without a manifest is someone else's: it is refused here, before anything is loaded.
    """
    from memflow_cli.render.outputs import manifest_path

    path = Path(path)
    if path.exists() and not path.is_dir() and not overwrite and not manifest_path(path).exists():
        raise OutputExists(refusal(path))
    return path


def refusal(path: Path) -> str:
    return f"{path}: the file already exists; pass -y/--overwrite to replace it, or choose another name with -o"


def choose_output(requested: Path | None, picked: Path, overwrite: bool, *, make_unique: bool = False) -> Path:
    """The user's `-o` (or a name derived from a file the user chose) under the overwrite rule, or our own
    pick (`make_unique`) made unique."""
    if requested is None and make_unique:
        return unique(picked)
    return check_overwrite(requested if requested is not None else picked, overwrite)
