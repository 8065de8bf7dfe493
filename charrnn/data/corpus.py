"""Encode a text file once into a compact integer array, cache it, and memory-map it.

Peers load the whole corpus as Python objects and run out of memory on large
files. Here the text is read in
blocks twice (once for the vocabulary, once to encode), never held whole, and
training reads a uint8/uint16 `.npy` through a memory map, so peak memory
stays near the size of the encoded array.

The cache sits beside the text (`NAME.charrnn-cache/`) or, when that folder is
not writable, under the data directory; it is keyed by the file's sha256, and
a cheap (size, mtime) stamp avoids re-hashing an unchanged file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from charrnn.data.sources import data_dir, resolve_data, sha256_of
from charrnn.data.textfile import decoded_chunks
from charrnn.data.vocab import Vocab, code_points
from charrnn.errors import UserError
from charrnn.storage import atomic_file, first_writable, user_cache_dir, write_text_atomic

BLOCK_BYTES = 1 << 20  # per block, decoding and encoding hold ~20 bytes per character at once
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Corpus:
    """An encoded text: `data[i]` is the vocabulary index of character i."""

    name: str
    vocab: Vocab
    data: np.ndarray
    sha256: Optional[str] = None   # of the file, where the cache knew it

    @property
    def characters(self) -> int:
        return int(self.data.shape[0])

    def summary(self) -> str:
        return f"Total {self.characters} characters with {len(self.vocab)} unique tokens."


def load_corpus(spec: str, use_cache: bool = True, option: Optional[str] = "--data") -> Corpus:
    """Resolve `--data` and return the encoded corpus (memory-mapped when cached); `option`: see resolve_data.

    A folder (or `pystdlib`) is read as a collection: its documents joined by the default
    separator (collection.py)."""
    path = resolve_data(spec, option)
    if path.is_dir():
        from charrnn.data.collection import Collection, Spec

        collection = Collection(Spec((spec,), flag=option))
        separator = collection.separator
        vocab = Vocab.from_code_points(set(collection.counts) | ({ord(separator)} if separator else set()))
        return Corpus(str(path), vocab, collection.encode(collection.documents, vocab, separator)[0])
    if not use_cache:
        vocab, data, _ = _encode_file(path)
        return Corpus(str(path), vocab, data)
    return Corpus(str(path), *_cached_encoding(path))


def corpus_from_text(text: str, name: str = "<text>") -> Corpus:
    if not text:
        raise UserError("the text is empty; give at least a few hundred characters")
    vocab = Vocab.from_text(text)
    return Corpus(name, vocab, vocab.encode(text))


def _decoded_blocks(path: Path) -> Iterator[np.ndarray]:
    """The file's code points, block by block, as the one text reader decodes them."""
    for text in decoded_chunks(path, BLOCK_BYTES):
        yield code_points(text)


def _scan(path: Path) -> tuple[Vocab, int]:
    seen: set[int] = set()
    count = 0
    for codes in _decoded_blocks(path):
        seen.update(np.unique(codes).tolist())
        count += len(codes)
    return Vocab.from_code_points(seen), count


def _encode_file(path: Path) -> tuple[Vocab, np.ndarray, int]:
    vocab, count = _scan(path)
    out = np.empty(count, dtype=vocab.dtype)
    _fill(path, vocab, out)
    return vocab, out, count


def _fill(path: Path, vocab: Vocab, out: np.ndarray) -> None:
    position = 0
    for codes in _decoded_blocks(path):
        out[position : position + len(codes)] = vocab.encode_code_points(codes)
        position += len(codes)
    assert position == len(out), "file changed while it was being encoded"


def _cache_dirs(path: Path) -> list[Path]:
    beside = path.parent / (path.name + ".charrnn-cache")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return list(dict.fromkeys([beside, data_dir() / "encoded" / key, user_cache_dir("encoded", key)]))


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _cached_encoding(path: Path) -> tuple[Vocab, np.ndarray, Optional[str]]:
    stamp = _stamp(path)
    for directory in _cache_dirs(path):
        hit = _read_cache(directory, stamp)
        if hit is not None:
            return hit
    directory = first_writable(_cache_dirs(path))
    if directory is not None:
        digest = sha256_of(path)
        for old in directory.glob("*.npy"):
            if not old.name.startswith(digest[:16]):
                old.unlink(missing_ok=True)
        return (*_write_cache(directory, path, stamp, digest), digest)
    vocab, data, _ = _encode_file(path)  # nowhere writable: encode in memory
    return vocab, data, None


def _read_cache(directory: Path, stamp: dict):
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("stamp") != stamp:
            return None
        vocab = Vocab(tuple(meta["vocab"]))
        data = np.load(directory / meta["array"], mmap_mode="r", allow_pickle=False)
        if data.shape != (meta["characters"],) or data.dtype != vocab.dtype:
            return None
        return vocab, data, meta.get("sha256")
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None


def _write_cache(directory: Path, path: Path, stamp: dict, digest: str) -> tuple[Vocab, np.ndarray]:
    vocab, count = _scan(path)
    array_name = f"{digest[:16]}.npy"
    final = directory / array_name
    # Plain writes, not a memory map: pages written through a map count in the RSS while mapped,
    # which would add the whole encoded array to the peak of the first run.
    with atomic_file(final) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (count,)})
        written = 0
        for codes in _decoded_blocks(path):
            encoded = vocab.encode_code_points(codes)
            f.write(encoded.tobytes())
            written += len(encoded)
        assert written == count, "file changed while it was being encoded"
    meta = {"format": CACHE_FORMAT, "stamp": stamp, "sha256": digest, "characters": count,
            "array": array_name, "vocab": list(vocab.chars)}
    write_text_atomic(directory / "meta.json", json.dumps(meta, ensure_ascii=False))
    return vocab, np.load(final, mmap_mode="r", allow_pickle=False)

