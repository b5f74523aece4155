"""Prompt text -> umT5 embeddings, with an on-disk cache so the 11 GB encoder loads only when needed.

`PromptEncoder.encode` returns, for every given text, a `[512, dim]` float32 CPU tensor whose rows at
and after the token count are exactly zero (spec §8.2). Each (weights, cleaned text) pair is cached as
one small safetensors file holding only the non-zero rows plus metadata; an entry is used only if the
metadata matches exactly and the tensor is well-formed, otherwise it is rebuilt. The encoder is
loaded on the first miss and freed by `release()` (the renderer calls it before generation).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from memflow_cli.errors import CheckpointError
from memflow_cli.model.t5 import load_umt5_encoder
from memflow_cli.model.tokenizer import MAX_LENGTH, PromptTokenizer, clean_prompt

log = logging.getLogger(__name__)

CACHE_FORMAT = "memflow-prompt-embedding/1"
_FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of a file
_fingerprints: dict[tuple, str] = {}


def default_cache_dir() -> Path:
    env = os.environ.get("MEMFLOW_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "memflow-cli" / "prompt-embeddings"


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap content identity: sha256 of the size and the first and last MiB.

    Unlike size+mtime it survives copying the file elsewhere and catches a re-download with other
    content; reading 2 MiB is instant even for the 11 GB encoder. Memoised per (path, size, mtime).
    """
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _fingerprints:
        h = hashlib.sha256(str(st.st_size).encode())
        with open(path, "rb") as f:
            h.update(f.read(_FINGERPRINT_SPAN))
            if st.st_size > _FINGERPRINT_SPAN:
                f.seek(max(_FINGERPRINT_SPAN, st.st_size - _FINGERPRINT_SPAN))
                h.update(f.read())
        _fingerprints[memo_key] = h.hexdigest()
    return _fingerprints[memo_key]


class PromptEncoder:
    def __init__(self, tokenizer_path, encoder_path, cache_dir=None, device="cpu", dtype=torch.float32,
                 quantization: str | None = None):
        self.tokenizer_path = Path(tokenizer_path)
        self.encoder_path = Path(encoder_path)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.device = torch.device(device)
        self.dtype = dtype
        self.quantization = quantization  # "fp8": weights stored in fp8, computing in `dtype`
        self.encoder_loads = 0  # how many times the big model was loaded (tests, logging)
        self.cache_hits = 0  # distinct prompts read from the disk cache / computed (for the summary)
        self.cache_misses = 0
        self._encoder = None
        self._tokenizer = None
        self._identity = None

    # ---------------------------------------------------------------------------------------------

    def identity(self) -> dict:
        """What an embedding depends on besides the text: weights, tokenizer, compute dtype."""
        if self._identity is None:
            for path in (self.encoder_path, self._tokenizer_file()):
                if not path.is_file():
                    raise CheckpointError(f"{path}: file not found")
            self._identity = {
                "format": CACHE_FORMAT,
                "encoder": file_fingerprint(self.encoder_path),
                "tokenizer": file_fingerprint(self._tokenizer_file()),
                "dtype": str(self.dtype).replace("torch.", ""),
                "max_length": str(MAX_LENGTH),
            }
            if self.quantization:  # only then: plain entries keep their keys
                self._identity["quantization"] = self.quantization
        return self._identity

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Map each text to its embedding [512, dim] float32 (CPU), zero after the last token."""
        cleaned = {text: clean_prompt(text) for text in texts}
        rows: dict[str, torch.Tensor] = {}
        for text in dict.fromkeys(cleaned.values()):
            emb = self._read_cache(text)
            if emb is None:
                emb = self._compute(text)
                self._write_cache(text, emb)
                self.cache_misses += 1
            else:
                self.cache_hits += 1
            rows[text] = emb
        out = {}
        for text, clean in cleaned.items():
            emb = rows[clean]
            full = torch.zeros(MAX_LENGTH, emb.shape[1], dtype=torch.float32)
            full[: emb.shape[0]] = emb
            out[text] = full
        return out

    def release(self) -> None:
        """Free the encoder (and its GPU memory); a later miss loads it again."""
        if self._encoder is None:
            return
        self._encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------------

    def _tokenizer_file(self) -> Path:
        p = self.tokenizer_path
        return p / "tokenizer.json" if p.is_dir() else p

    @torch.no_grad()
    def _compute(self, text: str) -> torch.Tensor:
        """Embedding rows [n_tokens, dim] (float32, CPU) of one cleaned text."""
        if self._tokenizer is None:
            self._tokenizer = PromptTokenizer.from_file(self.tokenizer_path)
        if self._encoder is None:
            log.info("loading text encoder %s", self.encoder_path)
            self._encoder = load_umt5_encoder(self.encoder_path, device=self.device, dtype=self.dtype,
                                              quantization=self.quantization)
            self.encoder_loads += 1
        ids, mask = self._tokenizer([text], clean=False)
        n = int(mask[0].sum())
        out = self._encoder(ids.to(self.device), mask.to(self.device))
        return out[0, :n].float().cpu().contiguous()

    def _entry_path(self, text: str) -> Path:
        key = json.dumps({**self.identity(), "text": text}, sort_keys=True)
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest() + ".safetensors")

    def _read_cache(self, text: str) -> torch.Tensor | None:
        path = self._entry_path(text)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                expected = {**self.identity(), "text": text}
                if any(meta.get(k) != v for k, v in expected.items()) or list(f.keys()) != ["embedding"]:
                    raise ValueError("metadata does not match")
                emb = f.get_tensor("embedding")
            n = int(meta["tokens"])
            ok = (
                emb.dtype == torch.float32 and emb.ndim == 2 and emb.shape[0] == n
                and 1 <= n <= MAX_LENGTH and emb.shape[1] > 0 and bool(torch.isfinite(emb).all())
            )
            if not ok:
                raise ValueError("bad tensor")
            return emb
        except Exception as exc:  # any unreadable or foreign entry is simply recomputed
            log.warning("ignoring prompt cache entry %s (%s); recomputing", path, exc)
            return None

    def _write_cache(self, text: str, emb: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._entry_path(text)
        meta = {**self.identity(), "text": text, "tokens": str(emb.shape[0])}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
            os.close(fd)
            try:
                save_file({"embedding": emb}, tmp, metadata=meta)
                os.replace(tmp, path)  # atomic: readers see the old entry or the complete new one
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as exc:  # a read-only cache must not stop a render
            log.warning("cannot write prompt cache %s (%s)", path, exc)
