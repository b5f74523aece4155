"""Side-by-side VAE time per chunk of the four `--vae` choices (random weights at real size, one run).

    PYTHONPATH=src python benchmarks/decoders.py --resolution 320x192 --chunks 3 [--device cuda --dtype bfloat16]

Prints a Markdown row for benchmarks/README.md and writes results/<date>-decoders-<device>.json.
"""

import argparse
import json
import sys
from pathlib import Path

from memflow_cli.render.bench import run_decoder_bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", default="832x480")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    w, h = (int(v) for v in args.resolution.split("x"))
    report = run_decoder_bench(width=w, height=h, chunks=args.chunks, device=args.device, dtype=args.dtype)
    report["command"] = " ".join(["python", *sys.argv])
    out = Path(__file__).parent / "results" / f"{report['date']}-decoders-{args.device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    ms = report["vae_ms_per_chunk"]
    fastest = min(ms.values())
    print("| " + " | ".join(f"{k}: {v:.0f} ms" for k, v in ms.items()) + " |")
    print("ratio (time, fastest = 1): " + " : ".join(f"{ms[k] / fastest:.1f}" for k in ms))
    print(f"written {out}")


if __name__ == "__main__":
    main()
