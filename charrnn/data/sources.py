"""Named corpora and where their text comes from.

`--data` is either a path to a UTF-8 text file or one of the names below.
`tinyshakespeare` is downloaded once into the cache directory and verified by
sha256; `pystdlib` needs no network at all (the interpreter's own standard
library sources), so a machine with no internet can still train.
"""
from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import urllib.request
from pathlib import Path
from typing import Optional

from charrnn.errors import UserError
from charrnn.storage import user_cache_dir, write_bytes_atomic

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
PYSTDLIB_MAX_CHARS = 4_000_000
NAMED_CORPORA = ("tinyshakespeare", "pystdlib")


def data_dir() -> Path:
    """Where fetched and generated corpora live: $CHARRNN_DATA_DIR, else the user's cache dir."""
    env = os.environ.get("CHARRNN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def resolve_data(spec: str, option: Optional[str] = "--data") -> Path:
    """Turn a --data value into the path of a text file, fetching or generating it if needed.

    `option` is how the user gave `spec`, for the messages: "--data", or None for a positional (`charrnn info`)."""
    if spec == "tinyshakespeare":
        return fetch_tinyshakespeare(option)
    if spec == "pystdlib":
        return build_pystdlib()
    path = Path(spec).expanduser()
    given = f"{option} {spec}" if option else spec
    if not path.exists():
        names = ", ".join(NAMED_CORPORA)
        raise UserError(f"{given}: no such file; give a path to a UTF-8 text file or a corpus name ({names})")
    if path.is_dir():
        raise UserError(f"{given} is a directory; give the path of a UTF-8 text file")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_tinyshakespeare(option: Optional[str] = "--data") -> Path:
    """Return the verified cached copy, downloading it the first time; `option`: see resolve_data."""
    directory = data_dir()
    for candidate in (directory / "tinyshakespeare.txt", directory / "tinyshakespeare" / "input.txt"):
        if candidate.is_file():
            if sha256_of(candidate) != TINYSHAKESPEARE_SHA256:
                raise UserError(f"{candidate} does not match the tinyshakespeare sha256; delete it and run again to "
                                f"re-download")
            return candidate
    target = directory / "tinyshakespeare.txt"
    instead = f"pass {option} PATH" if option else "give its path instead"
    how = f"download it yourself and {instead}, or put it at {target} (or set $CHARRNN_DATA_DIR)"
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
            payload = response.read()
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"tinyshakespeare is not cached and {TINYSHAKESPEARE_URL} could not be fetched ({reason}); "
                        f"{how}") from None
    if hashlib.sha256(payload).hexdigest() != TINYSHAKESPEARE_SHA256:
        raise UserError(f"the file fetched from {TINYSHAKESPEARE_URL} has the wrong sha256; {how}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, payload)
    except OSError as e:
        raise UserError(f"cannot write {target} ({e.strerror}); "
                        "set $CHARRNN_DATA_DIR to a writable directory") from None
    return target


def build_pystdlib() -> Path:
    """The interpreter's standard-library .py sources, sorted by path, capped at PYSTDLIB_MAX_CHARS.

    Deterministic for a given Python version, and needs no network.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = data_dir() / f"pystdlib-{version}.txt"
    if target.is_file():
        return target
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for source in sorted(stdlib.rglob("*.py")):
        relative = source.relative_to(stdlib)
        if relative.parts[0] in ("site-packages", "dist-packages") or "test" in relative.parts[0]:
            continue
        try:
            text = source.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "\x00" in text:
            continue
        parts.append(text)
        total += len(text)
        if total >= PYSTDLIB_MAX_CHARS:
            break
    corpus = "".join(parts)[:PYSTDLIB_MAX_CHARS]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, corpus.encode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot write {target} ({e.strerror}); "
                        "set $CHARRNN_DATA_DIR to a writable directory") from None
    return target
