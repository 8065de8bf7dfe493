"""Characters <-> indices: the vocabulary, and the one encoder of code points every text goes through.

The vocabulary is the sorted unique characters: min-char-rnn's `list(set(data))` changes order
between runs; sorting by code point makes the same text give the same indices on every machine.
Encoding looks each code point up in a table for the Basic Multilingual Plane (U+0000..U+FFFF, where
nearly every character of real text lies) and by binary search beyond it, so a block of a million
characters costs one indexing of NumPy, whatever the script.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from charrnn.errors import UserError

BMP = 0x10000   # code points below this are looked up in a table, the rest by binary search
UNKNOWN = "\ufffd"   # --max-vocab's symbol for every character it drops (Unicode's replacement character)


@dataclass(frozen=True)
class Vocab:
    """An ordered tuple of single characters; index i encodes chars[i]."""

    chars: tuple[str, ...]

    def __post_init__(self):
        if any(len(c) != 1 for c in self.chars):
            raise UserError("vocabulary entries must be single characters; the vocab.json is damaged")
        if len(set(self.chars)) != len(self.chars):
            raise UserError("vocabulary has duplicate characters; the vocab.json is damaged")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    @classmethod
    def from_code_points(cls, codes: Iterable[int]) -> "Vocab":
        return cls(tuple(chr(int(c)) for c in sorted(set(int(c) for c in codes))))

    @classmethod
    def chosen(cls, counts: dict, separator: Optional[str], max_vocab: Optional[int]) -> "tuple[Vocab, Optional[str]]":
        """A text's vocabulary from its character counts (code point -> count), sorted by code point, and the
        unknown symbol: None when every character is kept; with more than `max_vocab`, the max_vocab - 1 most
        frequent (the separator always among them) and U+FFFD for the others."""
        codes = set(counts) | ({ord(separator)} if separator else set())
        if not max_vocab or len(codes) <= max_vocab:
            return cls.from_code_points(codes), None
        forced = {ord(separator)} if separator else set()
        ranked = sorted((c for c in codes - forced if c != ord(UNKNOWN)), key=lambda c: (-counts.get(c, 0), c))
        kept = forced | set(ranked[: max_vocab - 1 - len(forced)]) | {ord(UNKNOWN)}
        return cls.from_code_points(kept), UNKNOWN

    def extended(self, other: "Vocab") -> "Vocab":
        """This vocabulary's characters in their order, then those only `other` has, by code point: a run
        continued on a text keeps every index it learned."""
        return Vocab(self.chars + tuple(sorted(c for c in other.chars if c not in self._index)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self._index

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned integer type that holds every index."""
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` missing from the vocabulary, sorted, each once."""
        return sorted(set(text) - set(self._index))

    def encode(self, text: str) -> np.ndarray:
        """Encode text to an index array; raises UserError listing unknown characters."""
        return self.encode_code_points(code_points(text))

    def encode_code_points(self, codes: np.ndarray) -> np.ndarray:
        """Code points (uint32) -> indices; raises UserError listing the characters the vocabulary lacks."""
        if "_encoder" not in self.__dict__:
            object.__setattr__(self, "_encoder", Encoder(self))  # built on first use: a 256 KB table
        return self._encoder(codes)

    def translate(self, other: "Vocab", data: np.ndarray, what: str, unknown: Optional[str] = None) -> np.ndarray:
        """Re-encode `data` (indices in `other`) as indices in this vocabulary.

        Characters this vocabulary lacks become `unknown` (one of its own, a --max-vocab run's symbol),
        or without one a UserError listing them; `what` names the text in it."""
        missing = [c for c in other.chars if c not in self._index]
        if missing and unknown not in self._index:
            raise UserError(f"{what} has characters outside the model's vocabulary: {format_chars(missing)}")
        table = np.array([self._index.get(c, self._index.get(unknown, 0)) for c in other.chars], dtype=self.dtype)
        return table[np.asarray(data)]

    def decode(self, indices: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in indices)

    def save(self, path: Path) -> None:
        from charrnn.storage import write_text_atomic

        write_text_atomic(Path(path), json.dumps(list(self.chars), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path} is missing; is this a charrnn run directory?") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data) or not data:
            raise UserError(f"{path} must be a non-empty JSON array of characters; the run directory is damaged")
        return cls(tuple(data))


class Encoder:
    """Code points -> indices in one vocabulary: a table for the BMP, a binary search beyond it.

    Characters outside the vocabulary become `unknown`'s index (counted in `unknown_count`), or,
    without one, a UserError naming them ("`what` has characters outside the vocabulary: ...")."""

    def __init__(self, vocab: Vocab, unknown: Optional[str] = None, what: str = "text"):
        codes = np.array([ord(c) for c in vocab.chars], dtype=np.int64)
        low = codes < BMP
        self.table = np.full(BMP, -1, np.int32)
        self.table[codes[low]] = np.nonzero(low)[0]
        high = np.nonzero(~low)[0]
        high = high[np.argsort(codes[high])]  # sorted for the binary search, whatever the vocabulary's order
        self.high_codes, self.high_index = codes[high], high.astype(np.int32)
        self.unknown_index = vocab.chars.index(unknown) if unknown else None
        self.dtype, self.what, self.unknown_count = vocab.dtype, what, 0

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        if not len(codes):
            return np.zeros(0, self.dtype)
        if codes.max() < BMP:
            index = self.table[codes]
        else:
            index = np.empty(len(codes), np.int32)
            high = codes >= BMP
            index[~high] = self.table[codes[~high]]
            index[high] = self._beyond(codes[high])
        missing = index < 0
        if missing.any():
            if self.unknown_index is None:
                chars = sorted({chr(int(c)) for c in np.unique(codes[missing])})
                raise UserError(f"{self.what} has characters outside the vocabulary: {format_chars(chars)}")
            index[missing] = self.unknown_index
            self.unknown_count += int(missing.sum())
        return index.astype(self.dtype)

    def _beyond(self, codes: np.ndarray) -> np.ndarray:
        if not len(self.high_codes):
            return np.full(len(codes), -1, np.int32)
        at = np.minimum(np.searchsorted(self.high_codes, codes), len(self.high_codes) - 1)
        return np.where(self.high_codes[at] == codes, self.high_index[at], -1).astype(np.int32)


def format_chars(chars: Iterable[str], limit: int = 20) -> str:
    """Show characters unambiguously in one line (repr escapes newlines, NULs, ...)."""
    chars = list(chars)
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" ... ({len(chars)} in all)" if len(chars) > limit else "")


def code_points(text: str) -> np.ndarray:
    """The text's characters as Unicode code points (uint32), without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
