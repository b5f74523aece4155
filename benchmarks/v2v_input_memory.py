"""Flat memory on a long video-to-video input: stream a long clip through VideoSource and the VAE encoder.

    PYTHONPATH=src python benchmarks/v2v_input_memory.py --minutes 10 --size 320x192 --vae-dim 8

Makes a clip with ffmpeg's test source, then reads it chunk by chunk (16 fps, fitted) and encodes every
chunk with the streaming Wan VAE encoder (random weights, width --vae-dim), sampling the process's
resident memory as it goes. Prints JSON: the clip's frames, chunks, ms per chunk for reading and
encoding, RSS after the first minute of input and at the end, and the encoder's carried state.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def rss_bytes() -> int:
    # current (not peak) resident memory, from /proc on Linux
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    from memflow_cli.model.vae import VAEConfig, WanVAE
    from memflow_cli.inputs.video_source import VideoSource, ffmpeg_exe, frames_to_video_tensor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--size", default="320x192")
    parser.add_argument("--vae-dim", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = WanVAE(replace(VAEConfig(), dim=args.vae_dim)).eval().requires_grad_(False)

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "long.mp4"
        subprocess.run([ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size={width}x{height}:rate=30", "-t", str(60 * args.minutes), "-c:v", "libx264",
                        "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True)
        t = time.perf_counter()
        source = VideoSource(clip, width, height)
        probe_s = time.perf_counter() - t
        encoder = vae.stream_encoder()
        read_s = encode_s = 0.0
        samples = {}
        chunks = source.chunks()
        t = time.perf_counter()
        for index, frames in enumerate(chunks):
            video = frames_to_video_tensor(frames)
            t2 = time.perf_counter()
            encoder.encode(video)
            t3 = time.perf_counter()
            read_s += t2 - t
            encode_s += t3 - t2
            t = t3
            done_frames = 9 + 12 * index
            if index == 1 or done_frames >= 16 * 60 and "after_1_min" not in samples:
                samples["after_1_min" if done_frames >= 16 * 60 else "after_2_chunks"] = rss_bytes()
        samples["at_end"] = rss_bytes()
    n = source.num_chunks
    print(json.dumps({
        "input": f"{args.minutes:g} min testsrc2 {width}x{height} @30fps",
        "frames_at_16fps": source.info.frames,
        "chunks": n,
        "probe_s": round(probe_s, 2),
        "read_ms_per_chunk": round(1000 * read_s / n, 2),
        "vae_encode_ms_per_chunk": round(1000 * encode_s / n, 2),
        "vae_dim": args.vae_dim,
        "rss_mib": {k: round(v / 2**20, 1) for k, v in samples.items()},
        "encoder_state_bytes": encoder.state_bytes(),
        "whole_input_as_uint8_mib": round(source.info.frames * width * height * 3 / 2**20, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
