"""The one check every input file passes before anything opens it, whatever option names it.

A timeline, `--video`, `--control`, `--mask`, `--reference`, a LoRA, a weight file: each is a path the user
chose, and opening the wrong kind of thing hangs or never ends (a FIFO blocks `open()` until a writer comes;
`/dev/zero` and `/dev/urandom` never reach an end of file). So a path must name an existing, readable,
regular file (a folder only where the option takes one: an image sequence) before it is opened, probed or
hashed. The refusal names the option's file and what was expected; its type is the caller's (InputError for
options, CheckpointError or LoraError for weights).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from memflow_cli.errors import InputError


def check_input_file(path: str | os.PathLike, what: str = "input file", *, error: type[Exception] = InputError,
                     folder_ok: bool = False, shown: str | None = None) -> Path:
    """`path` as a Path when it names a readable regular file (or a folder, with `folder_ok`); else `error`.

    Never opens the file: a FIFO or a device is refused from its `stat`, before any read could block.
    `shown` is how the file is named in the message (default: the path).
    """
    path = Path(path)
    name = shown or str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{name}: {what} not found") from None
    except (OSError, ValueError) as exc:  # a loop of links, a name too long, an embedded NUL
        raise error(f"{name}: cannot read the {what} ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        if folder_ok:
            return path
        raise error(f"{name}: expected a {what}, found a directory")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{name}: expected a regular {what}, found a pipe, socket or device (reading it could block "
                    "or never end)")
    if not os.access(path, os.R_OK):
        raise error(f"{name}: cannot read the {what} (permission denied)")
    return path

