"""Files on disk: atomic writes, and the user cache folder charrnn keeps its downloads and builds in.

Atomic: a reader (or a crash) never sees a half-written file under its final name. The
recipe is the classic one: write a temporary file in the same directory, flush and fsync
it, rename it over the target (atomic on POSIX), then fsync the directory so the rename
itself survives a power loss. Every file charrnn writes goes through `atomic_file`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to fill by any means (a stream, a compiler); on success it is synced
    and renamed over `path`, on any failure removed. The new file gets the mode any new file would."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; a checkpoint gets the mode any new file would
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left by a process killed mid-write (they never carry a final name)."""
    for p in Path(directory).glob(TMP_PREFIX + "*"):
        try:
            p.unlink()
        except OSError:
            pass


def _mode_for(path: Path) -> int:
    """The target's current mode, else what open() would give a new file under this umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def data_dir() -> Path:
    """Where fetched and generated corpora and the encoded texts live: $CHARRNN_DATA_DIR, else the user's cache."""
    env = os.environ.get("CHARRNN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def user_cache_dir(*parts: str) -> Path:
    """charrnn's folder in the user's cache (platformdirs: $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn)."""
    from platformdirs import user_cache_path

    return user_cache_path("charrnn", appauthor=False).joinpath(*parts)


def may_write_under(directory: Path) -> bool:
    """False for a folder whose nearest existing ancestor has no write bits.

    Checked by mode bits, not os.access: root may write anywhere, but a folder
    marked read-only (a shared data folder, say) is not ours to fill.
    """
    for folder in [directory, *directory.parents]:
        if folder.exists():
            return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK)
    return False


def first_writable(folders) -> Optional[Path]:
    """The first of `folders` we may fill (may_write_under) that takes a file, made if missing; None if none."""
    for folder in dict.fromkeys(Path(f) for f in folders):
        if not may_write_under(folder):
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            continue
        return folder
    return None
