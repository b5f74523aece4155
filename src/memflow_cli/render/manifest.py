"""The manifest written next to every video: what was rendered, from what, with which settings, how fast.

Two halves: the *identity* (input, settings, weights, versions — known before the first chunk) and the
*figures* (frames, timings, FPS, memory — known at the end). The identity's `fingerprint` is what a batch
compares to decide that an existing output is already the render it would make.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from memflow_cli import __version__

FPS = 16


def fingerprint(identity: dict) -> str:
    """sha256 over what determines the frames: the input's content, the settings and the weights."""
    key = {
        "input": {k: identity["input"].get(k) for k in ("sha256", "format", "item")},
        "settings": identity["settings"],
        "weights": {name: {k: v for k, v in f.items() if k in ("sha256", "size", "commit")}
                    for name, f in identity.get("weights", {}).get("files", {}).items()},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def identity(timeline, schedule, settings: dict, weights, loras: list | None = None) -> dict:
    import huggingface_hub
    import imageio_ffmpeg

    data = {
        "memflow_cli": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "source": timeline.source,
            "format": timeline.format,
            "sha256": timeline.sha256,
            # which item of a multi-item file (a JSONL line); the whole file has one sha256
            "item": timeline.source.rsplit(" line ", 1)[1] if " line " in timeline.source else None,
            "blocks": [{"start": b.start, "end": b.end, "prompts": [[p.text, p.weight] for p in b.prompts],
                        "transition_steps": b.transition_steps, "interpolation": b.interpolation}
                       for b in timeline.blocks],
        },
        "settings": settings,
        "schedule": {"chunks": schedule.num_chunks, "latent_frames": schedule.num_latent_frames,
                     "video_frames": schedule.total_frames, "fps": FPS, "conditioning_changes": schedule.switches},
        "weights": {"source": weights.source, "files": weights.describe()},
        # user LoRAs in merge order: path, sha256, scale, detected format, ranks, matched module count
        "loras": list(loras or []),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if str(settings.get("device", "")).startswith("cuda") else None,
            "huggingface_hub": huggingface_hub.__version__,
            "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(),
        },
    }
    data["fingerprint"] = fingerprint(data)
    return data


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (shell-quoted), the program called `memflow` however it was started."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join(["memflow", *argv[1:]])


def settings_sources(timeline, options) -> dict:
    """Where each setting came from ("command line", "file" or "default"), and what the file said where the
    command line overrode it (e.g. resolution 96x64 from the command line, 832x480 in the file)."""
    s = timeline.settings
    rows = {
        "seed": (options.seed, s.seed),
        "resolution": (f"{options.width}x{options.height}" if options.width and options.height else None,
                       f"{s.width}x{s.height}" if s.width and s.height else None),
        "denoising_steps": (list(options.steps) if options.steps else None,
                            list(s.denoising_steps) if s.denoising_steps else None),
        "sma": (options.sma, None),
        "blend": (options.blend if options.blend != "linear" else None, None),
        "device": (options.device, None),
        "dtype": (options.dtype, None),
    }
    sources = {name: "command line" if given is not None else "file" if in_file is not None else "default"
               for name, (given, in_file) in rows.items()}
    overridden = {name: in_file for name, (given, in_file) in rows.items()
                  if given is not None and in_file is not None and given != in_file}
    return {"from": sources, "file_values_overridden": overridden}


def input_path(timeline) -> str | None:
    """The timeline file's absolute path (None for --prompt)."""
    return None if timeline.format == "prompt" else str(Path(timeline.source.rsplit(" line ", 1)[0]).resolve())


def provenance(timeline, options) -> dict:
    """How this render was asked for: the command line and each setting's source.

    Kept out of the fingerprint: the same render asked for another way is still the same render.
    """
    return {"command": options.command, "settings_sources": settings_sources(timeline, options)}


def figures(summary) -> dict:
    return {
        "video": {"path": summary.output, "complete": summary.complete, "frames": summary.frames, "fps": FPS,
                  "seconds": summary.seconds, "width": summary.width, "height": summary.height,
                  "sha256": summary.sha256, "encoder": summary.encoder,
                  "codec": "h264", "pix_fmt": "yuv420p"},
        "timings_s": {k: round(v, 4) for k, v in summary.timings.items()},
        "fps": {"end_to_end": round(summary.fps_end_to_end, 3), "generation": round(summary.fps_generation, 3)},
        "peak_memory_bytes": {"gpu": summary.peak_gpu_memory_bytes, "rss": summary.peak_rss_bytes},
        "prompt_cache": summary.prompt_cache,
        "warnings": summary.warnings,
        **({"compile": summary.compile} if getattr(summary, "compile", None) else {}),
        **({"schedule": summary.schedule} if getattr(summary, "schedule", None) else {}),
    }


def read_manifest(path: str | Path) -> dict | None:
    """A manifest as a dict, or None if it is missing or unreadable (then it matches nothing)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def is_complete_render(video: Path, manifest: dict | None, expected_fingerprint: str) -> bool:
    """An existing output is the render we would make: complete, same fingerprint, the video is there."""
    if manifest is None or not video.is_file():
        return False
    v = manifest.get("video")
    return (isinstance(v, dict) and v.get("complete") is True and manifest.get("fingerprint") == expected_fingerprint
            and video.stat().st_size > 0)
