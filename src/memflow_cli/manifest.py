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
from pathlib import Path

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


def figures(summary) -> dict:
    return {
        "video": {"path": summary.output, "complete": summary.complete, "frames": summary.frames, "fps": FPS,
                  "seconds": summary.seconds, "width": summary.width, "height": summary.height,
                  "codec": "h264", "pix_fmt": "yuv420p"},
        "timings_s": {k: round(v, 4) for k, v in summary.timings.items()},
        "fps": {"end_to_end": round(summary.fps_end_to_end, 3), "generation": round(summary.fps_generation, 3)},
        "peak_memory_bytes": {"gpu": summary.peak_gpu_memory_bytes, "rss": summary.peak_rss_bytes},
        "warnings": summary.warnings,
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
