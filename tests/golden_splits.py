"""Chunk splits for the golden harnesses, derived from a case's shapes (never written for one case's sizes).

A stream is fed its first chunk, then chunks of the streaming step, the last one whatever is left (cut to
what the codec accepts). `splits(9, first=1, step=4)` → (0,1),(1,5),(5,9); `splits(7, 3, 3)` → (0,3),(3,6),(6,7).
"""

from memflow_cli.engine.generator import StreamSettings

LATENTS_PER_CHUNK = StreamSettings().frames_per_chunk  # the renderer's streaming step, in latent frames


def splits(total: int, first: int, step: int, multiple: int = 1) -> list[tuple[int, int]]:
    """[(start, end), ...] covering range(total): `first`, then `step` at a time; every chunk after the first
    a multiple of `multiple` (the tail is cut down to one; a tail shorter than `multiple` is dropped)."""
    if total <= 0 or first <= 0 or step <= 0:
        raise ValueError(f"splits: need positive sizes, got total {total}, first {first}, step {step}")
    out, start = [(0, min(first, total))], min(first, total)
    while start < total:
        end = min(start + step, total)
        end = start + (end - start) // multiple * multiple
        if end == start:
            break
        out.append((start, end))
        start = end
    return out


def wan_pixel_frames(latents: int, first_chunk: bool = True) -> int:
    """Frames a Wan-grid decoder makes from `latents` latent frames: 1 + 4(t-1) for the first chunk, 4t after."""
    return 1 + 4 * (latents - 1) if first_chunk else 4 * latents
