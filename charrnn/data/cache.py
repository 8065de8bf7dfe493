"""Where a collection's scan and encodings are kept, and when they may be used.

One folder per list of paths and filters, `$CHARRNN_DATA_DIR/collections/<hash>/` (the user's cache
directory when the data directory cannot be written; nothing is cached when neither can):

    scan.json       what the scan found: each document's characters and sha256 (or why it was skipped),
                    and how often each code point occurs; valid while the key below is the same
    <key>.npy       an encoded text (the documents joined, as vocabulary indices), memory-mapped by training
    <key>.json      what it is: the collection's key, its characters, how many became the unknown symbol

The collection's key is the sha256 of the format and the filters, and, for every candidate file, its
path and its stamp: size, mtime_ns, ctime_ns and inode. The ctime matters: an edit in place that keeps
the size and sets the mtime back (`cp -p`, `touch -r`, an editor that restores it) still moves the
ctime, which no program can set. An encoding's key adds the documents it joins, the separator, the
unknown symbol and the vocabulary. A cache of another format (an older charrnn's: FORMAT 1 kept no
ctime, and single files had their own cache beside the text) never matches: its scan is read again and
its encodings dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from charrnn.data.documents import Document, Spec
from charrnn.storage import atomic_file, data_dir, first_writable, user_cache_dir, write_text_atomic

FORMAT = 2              # 1: without ctime_ns; single files cached beside the text (corpus.py)
KEEP_ENCODINGS = 4      # encoded arrays kept per collection (other splits, vocabularies), newest first


class Cache:
    """The cache folder of one collection as found (its documents' stamps), or None to keep nothing."""

    def __init__(self, spec: Spec, candidates: Sequence[Document], roots: Sequence[Path]):
        where = json.dumps([[str(r) for r in roots], spec.include, spec.exclude])
        where = hashlib.sha256(where.encode()).hexdigest()[:16]
        stamps = [[d.root, d.key, d.size, d.mtime_ns, d.ctime_ns, d.inode] for d in candidates]
        self.key = hashlib.sha256(json.dumps([FORMAT, spec.include, spec.exclude, stamps]).encode()).hexdigest()
        self.directory = first_writable([data_dir() / "collections" / where, user_cache_dir("collections", where)])

    # -- the scan
    def read_scan(self) -> Optional[dict]:
        return None if self.directory is None else self._meta(self.directory / "scan.json")

    def write_scan(self, scan: dict) -> None:
        """Keep the scan; drop the encodings of the collection as it was (or of another format)."""
        if self.directory is None:
            return
        for old in self.directory.glob("*.npy"):
            if self._meta(old.with_suffix(".json")) is None:
                self._drop(old)
        try:
            write_text_atomic(self.directory / "scan.json", json.dumps({"format": FORMAT, "key": self.key, **scan}))
        except OSError:
            pass

    # -- encodings
    def read_encoding(self, parts: list, characters: int, dtype: np.dtype):
        """(the memory-mapped array, its meta) when the encoding named by `parts` (the documents, separator,
        unknown symbol and vocabulary) is kept whole for this collection; else None."""
        if self.directory is None:
            return None
        key = self._encoding_key(parts)
        meta = self._meta(self.directory / f"{key}.json")
        if meta is None:
            return None
        try:
            array = np.load(self.directory / f"{key}.npy", mmap_mode="r" if characters else None, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.shape != (characters,) or array.dtype != dtype:
            return None
        try:
            os.utime(self.directory / f"{key}.json")  # recently used: kept when older encodings are dropped
        except OSError:
            pass
        return array, meta

    @contextmanager
    def writing_encoding(self, parts: list, characters: int, dtype: np.dtype) -> Iterator:
        """(a binary file, a meta dict) to write the `characters` encoded values into, in order, and to fill;
        kept as the encoding named by `parts` when the block ends without an error (read_encoding reads it)."""
        self._make_room()
        key = self._encoding_key(parts)
        meta: dict = {}
        # Plain writes, not a memory map: pages written through a map count in the RSS while mapped.
        with atomic_file(self.directory / f"{key}.npy") as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (characters,)})
            yield f, meta
        write_text_atomic(self.directory / f"{key}.json",
                          json.dumps({"format": FORMAT, "key": self.key, "characters": characters, **meta}))

    # -- housekeeping
    def _encoding_key(self, parts: list) -> str:
        return hashlib.sha256(json.dumps([self.key, parts], ensure_ascii=True).encode()).hexdigest()[:20]

    def _meta(self, path: Path) -> Optional[dict]:
        """A JSON file of this folder (the scan, an encoding's meta) when it belongs to this collection as
        found, in this format."""
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            return meta if meta.get("format") == FORMAT and meta.get("key") == self.key else None
        except (OSError, ValueError, AttributeError):
            return None

    def _drop(self, array_path: Path) -> None:
        for path in (array_path, array_path.with_suffix(".json")):
            try:
                path.unlink()
            except OSError:
                pass

    def _make_room(self) -> None:
        arrays = sorted(self.directory.glob("*.npy"), key=lambda p: _mtime(p.with_suffix(".json")), reverse=True)
        for old in arrays[KEEP_ENCODINGS - 1:]:
            self._drop(old)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
