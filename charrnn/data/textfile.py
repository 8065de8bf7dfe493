"""A document -> its text: the one reader of every text a user gives charrnn (a corpus's files, a prime
file, `read_text`).

UTF-8, strictly; a byte-order mark at the start is dropped (it is not part of the text);
line endings are kept exactly as they are (`\r\n` stays two characters, as the model saw
them in training), unlike Python's text mode, which turns them into `\n`. A NUL byte means
a binary file, and an empty file is refused: both with one line saying what to do.
The file is decoded in blocks, so a corpus of any size never has to be held whole.
"""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator, Optional, Tuple

from charrnn.errors import UserError

BLOCK_BYTES = 1 << 20


class NotText(UserError):
    """A file refused by the text reader; `reason` says why in a word or two ("binary", "not UTF-8",
    "empty", "unreadable", "a directory"), so a folder can skip the file and count it."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def decoded_blocks(path: Path, block_bytes: int = BLOCK_BYTES,
                   what: Optional[str] = None) -> Iterator[Tuple[bytes, str]]:
    """Yield (the bytes read, their text) block by block; NotText (a UserError) on non-UTF-8, NUL or empty input.

    The text of a block may be "" (a character split across blocks comes whole in the next); the bytes
    are there for a caller that hashes or counts them. `what` names the file in messages (e.g.
    "--prime-file notes.txt"); default: its path.
    """
    name = what or str(path)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, first, empty = 0, True, True
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise NotText(f"{name} is a directory; give a UTF-8 text file", "a directory") from None
    except OSError as e:
        raise NotText(f"cannot read {name} ({e.strerror}); check the path and its permissions", "unreadable") from None
    with f:
        while True:
            try:
                raw = f.read(block_bytes)
            except OSError as e:
                raise NotText(f"cannot read {name} ({e.strerror}); give a regular UTF-8 text file",
                              "unreadable") from None
            final = not raw
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise NotText(f"{name} looks binary (NUL byte at offset {offset + nul}); give a UTF-8 text file",
                              "binary")
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise NotText(
                    f"{name} is not valid UTF-8 (byte offset {offset + e.start}); "
                    "convert it, e.g. iconv -f LATIN1 -t UTF-8", "not UTF-8") from None
            if first and text:
                if text.startswith("\ufeff"):
                    text = text[1:]  # a UTF-8 byte-order mark is not part of the text
                first = False
            offset += len(raw)
            empty = empty and not text
            if raw:
                yield raw, text
            if final:
                break
    if empty:
        raise NotText(f"{name} is empty; give a text of at least a few hundred characters", "empty")


def read_text_file(path, what: Optional[str] = None) -> str:
    """The whole text of a file, read exactly as training and `charrnn eval` read it."""
    return "".join(text for _, text in decoded_blocks(Path(path), what=f"{what} {path}" if what else None))
