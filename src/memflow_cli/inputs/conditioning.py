"""Per-chunk text conditioning: weighted blends and transitions of prompt embeddings.

Everything happens on the text-encoder output (`[512, text_dim]` per prompt, padding rows zero), before
the DiT's own text projection (`timelines.md` §3):

  - linear blend: the weighted sum, rescaled so that its Frobenius norm equals the weighted mean of the
    inputs' norms. A plain weighted sum of dissimilar prompts is shorter than any of them, and the DiT
    reads that as a weaker, washed-out prompt.
  - slerp (two prompts): per token row, along the great circle between the L2-normalised rows, with the
    row length interpolated linearly; where the rows are nearly parallel (or one is a zero padding row)
    the angle is meaningless and the row falls back to linear interpolation.
  - a transition at progress t is a two-input blend of (the conditioning in use, the target) with
    weights (1 − t, t), using the block's interpolation method.

Blending runs in float32 and returns the embeddings' dtype.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from memflow_cli.inputs.schedule import Blend, Conditioning, Transition

PARALLEL_EPS = 1e-4  # sin(angle) below this: rows (anti)parallel, slerp is ill-conditioned → linear
ZERO_EPS = 1e-12  # row norms below this are padding rows


def normalise(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"blend weights must have a positive sum, got {list(weights)}")
    return [float(w) / total for w in weights]


def linear_blend(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Norm-preserving weighted sum of equally shaped embeddings."""
    weights = normalise(weights)
    if len(embeddings) == 1:
        return embeddings[0]
    xs = [e.float() for e in embeddings]
    out = sum(w * x for w, x in zip(weights, xs))
    target = sum(w * torch.linalg.vector_norm(x) for w, x in zip(weights, xs))
    norm = torch.linalg.vector_norm(out)
    if norm > ZERO_EPS:  # exactly opposite inputs cancel: nothing sensible to rescale
        out = out * (target / norm)
    return out.to(embeddings[0].dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation per token row (last dimension), row lengths interpolated linearly."""
    af, bf = a.float(), b.float()
    na = torch.linalg.vector_norm(af, dim=-1, keepdim=True)
    nb = torch.linalg.vector_norm(bf, dim=-1, keepdim=True)
    ua = af / na.clamp_min(ZERO_EPS)
    ub = bf / nb.clamp_min(ZERO_EPS)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    ok = (sin > PARALLEL_EPS) & (na > ZERO_EPS) & (nb > ZERO_EPS)
    safe_sin = torch.where(ok, sin, torch.ones_like(sin))
    direction = (torch.sin((1 - t) * theta) * ua + torch.sin(t * theta) * ub) / safe_sin
    spherical = direction * ((1 - t) * na + t * nb)
    linear = (1 - t) * af + t * bf
    return torch.where(ok, spherical, linear).to(a.dtype)


def blend(embeddings: Sequence[torch.Tensor], weights: Sequence[float], method: str = "linear") -> torch.Tensor:
    """Blend prompts: "slerp" for exactly two, otherwise (or when asked) norm-preserving linear."""
    if method == "slerp" and len(embeddings) == 2:
        w0, w1 = normalise(weights)
        return slerp(embeddings[0], embeddings[1], w1)
    if method not in ("linear", "slerp"):
        raise ValueError(f"unknown blend method {method!r}; expected 'linear' or 'slerp'")
    return linear_blend(embeddings, weights)


class Conditioner:
    """Turns a schedule's conditioning trees into tensors, from a dict text → `[512, text_dim]` embedding.

    Results are cached per tree: a long timeline reuses a handful of distinct conditionings.
    """

    def __init__(self, embeddings: Mapping[str, torch.Tensor]):
        self.embeddings = {text: _as_rows(e, text) for text, e in embeddings.items()}
        self._cache: dict[Conditioning, torch.Tensor] = {}

    def __call__(self, conditioning: Conditioning) -> torch.Tensor:
        if conditioning not in self._cache:
            self._cache[conditioning] = self._compute(conditioning)
        return self._cache[conditioning]

    def _compute(self, c: Conditioning) -> torch.Tensor:
        if isinstance(c, Blend):
            missing = [t for t in c.texts if t not in self.embeddings]
            if missing:
                raise KeyError(f"no embedding for prompt {missing[0]!r}")
            return blend([self.embeddings[t] for t in c.texts], c.weights, c.method)
        if isinstance(c, Transition):
            return blend([self(c.source), self(c.target)], [1 - c.t, c.t], c.method)
        raise TypeError(f"not a conditioning: {c!r}")


def _as_rows(embedding: torch.Tensor, text: str) -> torch.Tensor:
    if embedding.dim() == 3 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.dim() != 2:
        raise ValueError(f"embedding of {text!r} has shape {tuple(embedding.shape)}; expected [tokens, dim]")
    return embedding
