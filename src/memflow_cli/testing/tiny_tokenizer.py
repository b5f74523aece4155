"""A tiny SentencePiece-style (Unigram) `tokenizer.json`, shaped like google/umt5-xxl's, for tests.

Same special-token layout as the real file (`<pad>` 0, `</s>` 1, `<unk>` 2), a Metaspace pre-tokenizer
and a T5 post-processor that appends `</s>`, but only ~100 pieces, so every id fits the tiny umT5
fixture's 512-entry vocabulary.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIALS = ["<pad>", "</s>", "<unk>"]
WORDS = ["the", "a", "cat", "dog", "on", "in", "red", "blue", "sky", "walks", "runs", "city", "night", "and"]


def tiny_vocab() -> list[tuple[str, float]]:
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in SPECIALS]
    # whole words score best so that "▁cat" wins over "▁" + "c" + "a" + "t"
    pieces += [("\u2581" + w, -2.0) for w in WORDS]
    pieces += [("\u2581", -3.0)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,!?'\"&-:;()"
    pieces += [(c, -5.0) for c in chars]
    return pieces


def build_tiny_tokenizer(path: str | os.PathLike, with_eos_post_processor: bool = True) -> Path:
    """Write a tiny umT5-like tokenizer.json to `path` and return the path.

    `with_eos_post_processor=False` leaves out the `</s>` template, to test loaders that must
    append EOS themselves.
    """
    tok = Tokenizer(models.Unigram(tiny_vocab(), unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    if with_eos_post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path
