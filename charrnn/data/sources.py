"""A corpus name -> a path: named corpora are sources that resolve to a file or a folder, nothing more.

`--data` is a path to a UTF-8 text file, a folder of them (documents.py), or one
of the names below. `tinyshakespeare` is downloaded once into the cache directory
and verified by sha256; `pystdlib` needs no network at all (a folder of the
interpreter's own standard-library modules), so a machine with no internet can
still train.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional

from charrnn.errors import UserError
from charrnn.storage import TMP_PREFIX, data_dir, write_bytes_atomic

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
PYSTDLIB_MAX_CHARS = 4_000_000
NAMED_CORPORA = ("tinyshakespeare", "pystdlib")


def resolve_data(spec: str, option: Optional[str] = "--data") -> Path:
    """Turn a --data value into the path of a text file or a folder, fetching or generating it if needed.

    `option` is how the user gave `spec`, for the messages: "--data", or None for a positional (`charrnn info`)."""
    if spec == "tinyshakespeare":
        return fetch_tinyshakespeare(option)
    if spec == "pystdlib":
        return build_pystdlib()
    path = Path(spec).expanduser()
    given = f"{option} {spec}" if option else spec
    if not path.exists():
        names = ", ".join(NAMED_CORPORA)
        raise UserError(f"{given}: no such file or folder; give a UTF-8 text file, a folder of them, "
                        f"or a corpus name ({names})")
    if not path.is_dir() and not path.is_file():  # a FIFO or a device would block or never end
        raise UserError(f"{given} is not a regular file; give a UTF-8 text file or a folder of them")
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
    """A folder of the interpreter's standard-library modules, one .py document per module, about
    PYSTDLIB_MAX_CHARS characters in all; built once into the data directory, needing no network.

    Which modules: every stdlib .py file except tests, site-packages and generated tables (codec
    tables, pydoc's topics), taken in the order of sha256("pystdlib:" + its relative path) until the
    total reaches PYSTDLIB_MAX_CHARS: a sample spread across the whole library (not its first letters),
    deterministic for a given Python version. As a collection, its validation split holds out whole
    modules from all over the library (collection.py), so validation resembles training.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = data_dir() / f"pystdlib-{version}"
    if target.is_dir():
        return target
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = []
    for source in stdlib.rglob("*.py"):
        relative = source.relative_to(stdlib)
        if _excluded_from_pystdlib(relative):
            continue
        candidates.append((hashlib.sha256(f"pystdlib:{relative.as_posix()}".encode()).hexdigest(), relative))
    chosen, total = [], 0
    for _, relative in sorted(candidates):
        try:
            text = (stdlib / relative).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "\x00" in text or not text.strip() or "decoding_table = (" in text:
            continue  # binary, empty, or a generated codec table (not Python anyone writes)
        chosen.append((relative, text))
        total += len(text)
        if total >= PYSTDLIB_MAX_CHARS:
            break
    try:
        directory = data_dir()
        directory.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}pystdlib-{version}-", dir=directory))
        try:
            for relative, text in chosen:
                (building / relative).parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(building / relative, text.encode("utf-8"))
            try:
                os.rename(building, target)  # the whole folder appears at once
            except OSError:
                if not target.is_dir():      # else another process built it first: use theirs
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    except OSError as e:
        raise UserError(f"cannot write {target} ({e.strerror}); "
                        "set $CHARRNN_DATA_DIR to a writable directory") from None
    return target


def _excluded_from_pystdlib(relative: Path) -> bool:
    parts = relative.parts
    return (parts[0] in ("site-packages", "dist-packages", "pydoc_data") or parts[0].startswith("config-")
            or any(p in ("test", "tests", "idle_test") or p.startswith("test_") for p in parts)
            or relative.name.startswith("_sysconfigdata"))
