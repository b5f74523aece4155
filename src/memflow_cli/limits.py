"""Sanity limits shared by every way a value can reach the renderer (timeline files, the command line, the
Python API), so that one rule holds whatever the source: absurd numbers are refused with a message before
anything loads, never turned into a traceback, a hang or an absurd allocation.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any, Sequence

from memflow_cli.errors import InputError

MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds; larger ones are refused, not reduced (two seeds, one video)
MAX_TIMESTEP = 1000
DEFAULT_MAX_HOURS = 24.0  # of video; `--max-hours` raises it
MAX_FRAMES = 2**31 - 1  # an MP4 (and ffmpeg's frame counters) number frames in 32 bits: 37,282 hours at 16 fps
MAX_TIMELINE_BYTES = 64 * 2**20  # a timeline of prompts is kilobytes; refuse to slurp a disk image


def as_finite(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not a number, not finite, or too large for a float.

    Booleans are not numbers here (JSON `true` is not 1). Integers like 10**400 are valid JSON and Python
    but overflow a float: they are refused like infinities.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def describe_number(value: Any) -> str:
    """How a number that is not finite or too large reads in a message."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "an infinite number" if value > 0 else "a negative infinite number"
    if isinstance(value, int) and as_finite(value) is None:
        return f"a number too large for a float ({len(str(abs(value)))} digits)"
    text = repr(value)
    return f"a number ({text if len(text) <= 24 else text[:21] + '...'})"


def is_integer(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )


def check_seed(value: Any, where: str) -> int:
    """A seed in 0 .. 2^64−1. Larger seeds are refused rather than reduced modulo 2^64, which would silently
    give two different seeds the same video."""
    if not is_integer(value) or not 0 <= int(value) <= MAX_SEED:
        found = describe_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise InputError(f"{where}: expected a seed (an integer from 0 to 2^64−1 = {MAX_SEED}), found {found}")
    return int(value)


def check_steps(values: Sequence[Any], where: str) -> tuple[int, ...]:
    """Denoising timesteps: a non-empty, strictly decreasing list of integers in 1..1000."""
    if not values:
        raise InputError(f"{where}: expected at least one denoising timestep, found none")
    steps = []
    for i, s in enumerate(values):
        if not is_integer(s) or not 0 < int(s) <= MAX_TIMESTEP:
            shown = describe_number(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else repr(s)
            raise InputError(f"{where}[{i}]: expected a timestep in 1..{MAX_TIMESTEP}, found {shown}")
        steps.append(int(s))
    if any(b >= a for a, b in zip(steps, steps[1:])):
        raise InputError(f"{where}: expected strictly decreasing timesteps such as 1000,750,500,250, found {steps}")
    return tuple(steps)


MAX_LORA_SCALE = 1000.0  # LoRA strengths are about -2 to 2; far beyond, the merged weights overflow to infinity


def check_lora_scale(value: Any, where: str) -> float:
    """A LoRA strength: a finite number of magnitude up to MAX_LORA_SCALE (1e308 would overflow every merged
    weight to infinity and render a black video)."""
    number = as_finite(value)
    if number is None or abs(number) > MAX_LORA_SCALE:
        shown = describe_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
        raise InputError(f"{where}: expected a LoRA scale from {-MAX_LORA_SCALE:g} to {MAX_LORA_SCALE:g} "
                         f"(usually 0 to 2), found {shown}")
    return number


def check_length(seconds: float, where: str, max_hours: float = DEFAULT_MAX_HOURS) -> None:
    """Refuse a video longer than `max_hours` before any plan or tensor of that length exists."""
    if not (as_finite(max_hours) is not None and max_hours > 0):
        raise InputError(f"--max-hours: expected a positive number of hours, found {describe_number(max_hours)}")
    if as_finite(seconds) is None or seconds > max_hours * 3600:
        shown = "an endless video" if as_finite(seconds) is None else f"{seconds / 3600:,.6g} hours of video"
        raise InputError(
            f"{where}: would render {shown}; the limit is {max_hours:g} hours (raise it with --max-hours)"
        )
    if seconds * 16 > MAX_FRAMES:  # 16 fps (timeline.FPS): whatever --max-hours allows, one file cannot hold more
        raise InputError(
            f"{where}: would render {seconds / 3600:,.6g} hours of video ({seconds * 16:,.4g} frames); one video file "
            f"holds at most {MAX_FRAMES:,} frames ({MAX_FRAMES / 16 / 3600:,.0f} hours at 16 fps), whatever --max-hours says"
        )


# Characters that print as nothing: zero-width spaces and joiners, the BOM, soft hyphens, bidi marks. Every
# "format" character (Unicode category Cf) is one; whitespace (including no-break spaces) is handled by strip().
def is_blank_prompt(text: str) -> bool:
    """True when a prompt shows no visible character once HTML entities are decoded (`&nbsp;` is a space)."""
    import html

    decoded = html.unescape(html.unescape(text))
    return not any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc", "Zs") for ch in decoded)
