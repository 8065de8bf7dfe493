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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from charrnn.data.sources import data_dir  # noqa: E402
from charrnn.storage import write_bytes_atomic  # noqa: E402

LARGE_BYTES = 24_000_000
HELD_OUT_BYTES = 2_500_000


def licenses() -> bytes:
    folder = Path("/usr/share/common-licenses")
    return b"\n\n".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def changelogs() -> bytes:
    parts, size = [], 0
    for path in sorted(Path("/usr/share/doc").glob("*/changelog*.gz")):
        data = gzip.decompress(path.read_bytes())
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        parts.append(data)
        size += len(data)
        if size >= LARGE_BYTES:
            break
    return b"\n".join(parts)[:LARGE_BYTES].decode("utf-8", "ignore").encode("utf-8")


def manpages() -> bytes:
    parts, size = [], 0
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    for path in sorted(Path("/usr/share/man/man1").glob("*.1.gz")):
        shown = subprocess.run(["man", "-P", "cat", "-l", str(path)], capture_output=True, env=env).stdout
        plain = subprocess.run(["col", "-bx"], input=shown, capture_output=True).stdout
        if plain.strip():
            parts.append(plain)
            size += len(plain)
        if size >= HELD_OUT_BYTES:
            break
    return b"\n".join(parts)[:HELD_OUT_BYTES].decode("utf-8", "ignore").encode("utf-8")


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
