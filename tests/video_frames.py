"""What a viewer sees of a rendered mp4: its decoded RGB frames, or their digest."""

import hashlib

import imageio_ffmpeg
import numpy as np


def decoded_frames(path) -> np.ndarray:
    """Every frame as uint8 RGB, [N, H, W, 3]."""
    reader = imageio_ffmpeg.read_frames(str(path))
    w, h = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def frames_digest(path) -> str:
    """sha256 of the decoded RGB frames: independent of container details."""
    h = hashlib.sha256()
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    for frame in reader:
        h.update(frame)
    return h.hexdigest()
