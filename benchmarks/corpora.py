"""Build the texts `--preset auto` was tuned and judged on, from what a Debian machine already holds.

None of them is committed: they are written under DIR (default: charrnn's data directory).

    licenses.txt    small  (~260 KB): /usr/share/common-licenses, legal English
    changelogs.txt  large  (24 MB):   Debian package changelogs under /usr/share/doc, oldest format first
    manpages.txt    held out (2.5 MB): section-1 manual pages rendered to plain text by man(1)

tiny shakespeare and `pystdlib` (Python's standard library, 4 MB of code) come from charrnn itself.

    python benchmarks/corpora.py [DIR]
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charrnn.data.sources import data_dir  # noqa: E402
from charrnn.storage import write_bytes_atomic  # noqa: E402

LARGE_BYTES = 24_000_000
HELD_OUT_BYTES = 2_500_000


def licenses() -> bytes:
    folder = Path("/usr/share/common-licenses")
    return b"\n\n".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def _first_bytes(texts: Iterable[bytes], limit: int) -> bytes:
    """The texts joined by newlines, read only until `limit` bytes, cut there at a whole character."""
    parts, size = [], 0
    for text in texts:
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return b"\n".join(parts)[:limit].decode("utf-8", "ignore").encode("utf-8")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def changelogs() -> bytes:
    texts = (gzip.decompress(p.read_bytes()) for p in sorted(Path("/usr/share/doc").glob("*/changelog*.gz")))
    return _first_bytes((t for t in texts if _utf8(t)), LARGE_BYTES)


def manpages() -> bytes:
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")

    def rendered(path: Path) -> bytes:
        shown = subprocess.run(["man", "-P", "cat", "-l", str(path)], capture_output=True, env=env).stdout
        return subprocess.run(["col", "-bx"], input=shown, capture_output=True).stdout

    pages = (rendered(p) for p in sorted(Path("/usr/share/man/man1").glob("*.1.gz")))
    return _first_bytes((page for page in pages if page.strip()), HELD_OUT_BYTES)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    for name, build in (("licenses.txt", licenses), ("changelogs.txt", changelogs), ("manpages.txt", manpages)):
        target = out / name
        if not target.exists():
            write_bytes_atomic(target, build())
        print(f"{target}: {target.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
