"""fp8 quality on the golden pipeline cases: latents rel-L2 against the float32 golden, per case.

    PYTHONPATH=src:tests python benchmarks/fp8_quality.py

Columns: bf16 (weights and compute), fp8 storage with float32 compute (the CI path), the same with
bf16 compute (what older GPUs run), fp8 with every Linear quantized (embeddings and head included), and
the fp8-matmul path (`torch._scaled_mm`, per-token activation scales, bf16 out) run on the CPU kernel.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from golden_metric import compare  # noqa: E402
from golden_pipeline import build_case_model, generate_case  # noqa: E402
from memflow_cli.model.quantization import quantize_dit  # noqa: E402

GOLDEN = ROOT / "tests" / "golden"


def variants(case, index):
    def model(dtype=torch.float32, **quant):
        m = build_case_model(case, index, GOLDEN).to(dtype)
        return quantize_dit(m, **quant) if quant else m

    yield "bf16", model(torch.bfloat16), torch.bfloat16
    yield "fp8 (f32 compute)", model(compute="dequantize"), torch.float32
    yield "fp8 (bf16 compute)", model(torch.bfloat16, compute="dequantize"), torch.bfloat16
    yield "fp8 all Linears", model(compute="dequantize", keep=()), torch.float32
    yield "fp8 _scaled_mm", model(torch.bfloat16, compute="scaled_mm"), torch.bfloat16


def main():
    index = json.loads((GOLDEN / "cases.json").read_text())
    rows = {}
    for case in index["cases"]:
        if case["kind"] != "pipeline":
            continue
        expected = load_file(str(GOLDEN / case["expected"]["file"]))["latents"]
        for name, model, dtype in variants(case, index):
            _, chunks = generate_case(case, index, GOLDEN, model=model, dtype=dtype)
            rel, _ = compare(torch.cat(chunks, dim=1).float().reshape(expected.shape), expected)
            rows.setdefault(case["id"], {})[name] = rel
            print(case["id"], name, f"{rel:.2e}", flush=True)
    names = list(next(iter(rows.values())))
    print("\n| case | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for cid, r in rows.items():
        print(f"| {cid} | " + " | ".join(f"{r[n]:.2e}" for n in names) + " |")


if __name__ == "__main__":
    main()
