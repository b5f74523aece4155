"""Options that cannot apply to the input are errors; options that are adjusted say so.

A render takes hours: an option that silently does nothing (`--seconds` with a timeline file, which sets
its own length) or is quietly moved (`--switch-frames 40` happens at latent frame 42, the next chunk start)
is found out too late. Errors are raised before any weight is loaded; warnings go into the manifest.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from memflow_cli.errors import InputError
from memflow_cli.inputs.schedule import LATENT_FRAMES_PER_CHUNK

# option → what it applies to
_PROMPT_LIST_OPTIONS = ("--segment-seconds", "--switch-frames", "--latent-frames", "--line")


def check_input_options(kinds: Iterable[str], where: str, given: dict[str, Any]) -> None:
    """Raise InputError for an option given on the command line that none of the inputs can use.

    `kinds` are the inputs' formats: "prompt" for --prompt, else each readable timeline's format
    ("memflow-jsonl", "scope-timeline 2.1", ...); in a batch an option must apply to at least one item.
    `given` maps option names to their values, None for options that were not given.
    """
    kinds = set(kinds)
    given = {name: value for name, value in given.items() if value is not None}
    if "prompt" in kinds:
        for name in _PROMPT_LIST_OPTIONS:
            if name in given:
                raise InputError(f"{name}: applies to MemFlow prompt-list JSONL files, not to --prompt; remove it")
        return
    if "--seconds" in given:
        raise InputError(
            f"--seconds: sets the length of a --prompt video; {where} sets its own length (its blocks' end times); "
            "remove --seconds"
        )
    if kinds and "memflow-jsonl" not in kinds:
        for name in _PROMPT_LIST_OPTIONS:
            if name in given:
                what = "a " + next(iter(kinds)) + " file" if len(kinds) == 1 else "Scope files"
                raise InputError(
                    f"{name}: applies to MemFlow prompt-list JSONL files; {where} is {what}, whose blocks carry "
                    f"their own times; remove {name}"
                )
        return
    if "--segment-seconds" in given and "--switch-frames" in given:
        raise InputError("--segment-seconds and --switch-frames: both set where the prompts switch; choose one")
    if "--latent-frames" in given and "--switch-frames" not in given:
        raise InputError("--latent-frames: sets the length for --switch-frames; without --switch-frames it has no "
                         "effect (use --segment-seconds to set the length of each prompt)")


def chunk_start(latent_frame: int) -> int:
    """The first chunk start at or after `latent_frame`: where a switch asked for at that frame happens."""
    return -(-latent_frame // LATENT_FRAMES_PER_CHUNK) * LATENT_FRAMES_PER_CHUNK


def switch_frame_warnings(switch_frames: Sequence[int] | None) -> list[str]:
    """A warning naming every switch point that moves to the next chunk start."""
    if not switch_frames:
        return []
    moved = [(s, chunk_start(s)) for s in switch_frames if chunk_start(s) != s]
    if not moved:
        return []
    pairs = ", ".join(f"{a} → {b}" for a, b in moved)
    return [
        f"--switch-frames: prompts switch only at chunk starts (every {LATENT_FRAMES_PER_CHUNK} latent frames), "
        f"so these switch points move to the next one: {pairs}"
    ]
