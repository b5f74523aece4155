"""Per-block aten op counts of the DiT (CPU): the eager glue, visible without a GPU.

    PYTHONPATH=src python benchmarks/op_count.py [--sma] [--preset tiny]

Prints one markdown table (non-view aten ops of one block in a steady denoising pass, per op, float32 and
bf16) and the launches per steady chunk of the real model that the count implies:
ops/block/pass × 30 layers × 5 passes (4 denoising steps + the context pass). See benchmarks/README.md,
"DiT glue", and memflow_cli/testing/op_count.py for how ops are counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from memflow_cli.testing.op_count import steady_block_ops, table, total  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sma", action="store_true", help="count with sparse memory activation on")
    parser.add_argument("--no-fp8", action="store_true", help="leave out the fp8 column")
    args = parser.parse_args(argv)
    counts = {name: steady_block_ops(dtype, preset=args.preset, sma=args.sma)
              for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16))}
    if not args.no_fp8 and hasattr(torch, "_scaled_mm"):
        try:  # bf16 activations, fp8 weights through torch._scaled_mm (the CUDA path; CPU builds have it too)
            counts["bf16 + fp8 (scaled_mm)"] = steady_block_ops(torch.bfloat16, preset=args.preset, sma=args.sma,
                                                                fp8="scaled_mm")
        except (RuntimeError, NotImplementedError) as exc:
            print(f"(fp8 column left out: {exc})", file=sys.stderr)
    print(table(counts))
    print()
    for name, c in counts.items():
        n = total(c)
        print(f"{name}: {n} ops/block/pass × 30 layers × 5 passes = {n * 150:,} launches per steady chunk "
              "(blocks only; at least one launch per op)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
