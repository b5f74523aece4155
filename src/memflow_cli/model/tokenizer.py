"""Prompt cleaning and umT5 tokenization (spec §8.2), on the `tokenizers` library directly.

The reference calls a Hugging Face fast T5 tokenizer with `padding="max_length", truncation=True,
max_length=512`: text pieces, then `</s>`, then `<pad>` up to 512, and a prompt longer than 511
pieces is cut so that `</s>` still sits at position 511. We reproduce that by tokenizing *without*
the file's post-processor and appending EOS ourselves. That gives the same ids for the real
google/umt5-xxl `tokenizer.json` (whose T5 template only appends `</s>`) and stays correct for a file
whose post-processor adds nothing (or something else).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import ftfy
import torch

from memflow_cli.errors import CheckpointError

MAX_LENGTH = 512
_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """ftfy repair, HTML entities decoded twice (handles `&amp;quot;`), whitespace collapsed."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


class PromptTokenizer:
    def __init__(self, tokenizer, max_length: int = MAX_LENGTH, source: str = "<memory>"):
        self._tok = tokenizer
        self.max_length = max_length
        self.source = source
        # the real file defines both; the fallbacks are umT5's fixed ids
        eos = tokenizer.token_to_id("</s>")
        pad = tokenizer.token_to_id("<pad>")
        self.eos_id = 1 if eos is None else eos
        self.pad_id = 0 if pad is None else pad

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_length: int = MAX_LENGTH) -> "PromptTokenizer":
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer file not found")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on malformed JSON
            raise CheckpointError(f"{path}: cannot read this tokenizer file ({exc})") from exc
        tok.no_truncation()
        tok.no_padding()
        return cls(tok, max_length, str(path))

    def token_ids(self, text: str) -> list[int]:
        """Ids of one already-cleaned text, EOS included, truncated to max_length (no padding)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ids[: self.max_length - 1] + [self.eos_id]

    def __call__(self, texts: list[str] | str, clean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids [B, max_length] int64, mask [B, max_length] int64)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [clean_prompt(t) if clean else t for t in texts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=False) if texts else []
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(texts), self.max_length), dtype=torch.int64)
        for row, enc in enumerate(encodings):
            seq = enc.ids[: self.max_length - 1] + [self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
            mask[row, : len(seq)] = 1
        return ids, mask
