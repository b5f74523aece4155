"""The golden comparison rule: rel-L2 (float64) and max-abs, both within the case's tolerance."""

import torch


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out64 = out.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    assert out64.shape == ref64.shape, f"shape {tuple(out64.shape)} != expected {tuple(ref64.shape)}"
    diff = out64 - ref64
    rel = (diff.norm() / ref64.norm().clamp_min(1e-300)).item()
    return rel, diff.abs().max().item()


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tolerance: dict, report: dict | None = None):
    rel, mx = compare(out, ref)
    if report is not None:
        report[name] = {"rel_l2": rel, "max_abs": mx}
    print(f"{name}: rel_l2={rel:.3e} max_abs={mx:.3e}")
    assert rel <= tolerance["rel_l2"] and mx <= tolerance["max_abs"], (
        f"{name}: rel_l2 {rel:.3e} (tol {tolerance['rel_l2']:.1e}), max_abs {mx:.3e} (tol {tolerance['max_abs']:.1e})"
    )
