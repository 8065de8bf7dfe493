"""Character vocabulary: sorted unique characters, so indices are stable across runs.

min-char-rnn's `list(set(data))` changes order between runs; sorting by code
point makes the same text give the same indices on every machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from charrnn.errors import UserError


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
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        object.__setattr__(self, "_codes", codes)

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    @classmethod
    def from_code_points(cls, codes: Iterable[int]) -> "Vocab":
        return cls(tuple(chr(int(c)) for c in sorted(set(int(c) for c in codes))))

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
        if not text:
            return np.zeros(0, dtype=self.dtype)
        return self.encode_code_points(code_points(text))

    def encode_code_points(self, codes: np.ndarray) -> np.ndarray:
        if len(self._codes) == 0:
            if len(codes):
                raise UserError(f"text has characters outside the (empty) vocabulary: "
                                f"{format_chars(sorted({chr(int(c)) for c in codes}))}")
            return np.zeros(0, dtype=self.dtype)
        positions = np.searchsorted(self._codes, codes)
        positions = np.minimum(positions, len(self._codes) - 1)
        bad = self._codes[positions] != codes
        if bad.any():
            missing = sorted({chr(int(c)) for c in codes[bad]})
            raise UserError(f"text has characters outside the vocabulary: {format_chars(missing)}")
        return positions.astype(self.dtype)

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


def format_chars(chars: Iterable[str], limit: int = 20) -> str:
    """Show characters unambiguously in one line (repr escapes newlines, NULs, ...)."""
    chars = list(chars)
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" ... ({len(chars)} in all)" if len(chars) > limit else "")


def code_points(text: str) -> np.ndarray:
    """The text's characters as Unicode code points (uint32), without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
