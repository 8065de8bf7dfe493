"""The one text reader: how charrnn reads every text a user gives it (a corpus, a prime file, `read_text`).

UTF-8, strictly; a byte-order mark at the start is dropped (it is not part of the text);
line endings are kept exactly as they are (`\r\n` stays two characters, as the model saw
them in training), unlike Python's text mode, which turns them into `\n`. A NUL byte means
a binary file, and an empty file is refused: both with one line saying what to do.
The file is decoded in blocks, so a corpus of any size never has to be held whole.
"""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator, Optional

from charrnn.errors import UserError

BLOCK_BYTES = 1 << 20


def decoded_chunks(path: Path, block_bytes: int = BLOCK_BYTES, what: Optional[str] = None) -> Iterator[str]:
    """Yield the file's text block by block; UserError on non-UTF-8, NUL or empty input.

    `what` names the file in messages (e.g. "--prime-file notes.txt"); default: its path.
    """
    name = what or str(path)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, first, empty = 0, True, True
    try:
        f = open(path, "rb")
    except IsADirectoryError:
        raise UserError(f"{name} is a directory; give a UTF-8 text file") from None
    except OSError as e:
        raise UserError(f"cannot read {name} ({e.strerror}); check the path and its permissions") from None
    with f:
        while True:
            try:
                raw = f.read(block_bytes)
            except OSError as e:
                raise UserError(f"cannot read {name} ({e.strerror}); give a regular UTF-8 text file") from None
            final = not raw
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise UserError(f"{name} looks binary (NUL byte at offset {offset + nul}); give a UTF-8 text file")
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{name} is not valid UTF-8 (byte offset {offset + e.start}); "
                    "convert it, e.g. iconv -f LATIN1 -t UTF-8"
                ) from None
            if first and text:
                if text.startswith("\ufeff"):
                    text = text[1:]  # a UTF-8 byte-order mark is not part of the text
                first = False
            offset += len(raw)
            if text:
                empty = False
                yield text
            if final:
                break
    if empty:
        raise UserError(f"{name} is empty; give a text of at least a few hundred characters")


def read_text_file(path, what: Optional[str] = None) -> str:
    """The whole text of a file, read exactly as training and `charrnn eval` read it."""
    return "".join(decoded_chunks(Path(path), what=f"{what} {path}" if what else None))
