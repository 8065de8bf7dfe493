"""Collections: one or more paths, each a text file or a folder, read as documents joined by a separator.

Finding. A folder means every file below it, recursively, in sorted order of the path relative to
it (compared folder by folder), skipping hidden files and folders (a name starting with '.') and
charrnn's own `*.charrnn-cache` folders. `--include`/`--exclude` glob patterns narrow it: a pattern
without '/' matches a file or folder name at any depth (a matching folder takes everything in it), a
pattern with '/' matches the path relative to the folder given. A folder reached twice (a symlink
loop, two links to one folder) is read once; so is a file. A charrnn run directory (it holds
resume.safetensors, or config.json and vocab.json) and the data directory below the folder are
not read: `--data . --out runs/x` must not train on its own checkpoints and metrics next time.
Inside a folder, a file that is not UTF-8 text (binary, another encoding, empty), unreadable, or not
a regular file is skipped and counted; a file named explicitly is refused in one line, as always.

Joining. Documents are joined with a separator, `--doc-sep`, by default U+001E, the ASCII record
separator: a control character made for exactly this, which real texts almost never contain (the
form feed, the other classic choice, occurs in source code, the Python standard library's included).
It is used, and so enters the vocabulary, only when there are two or more documents.

Two passes over the files, in blocks, never holding the text. The scan counts each character (the
vocabulary, and `--max-vocab`'s frequencies), takes each file's sha256 (the run records it) and finds
which files are text. The encoding writes the encoded text of a list of documents into a `.npy` file
that training memory-maps. Both are cached in the data directory, keyed by the list of (path, size,
mtime, inode) of the files and the filters, and, for an encoding, the documents, the separator and
the vocabulary: an unchanged collection starts at once, with no file read.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from charrnn.data.sources import data_dir, resolve_data
from charrnn.data.textfile import NotText, decoded_chunks
from charrnn.data.vocab import Vocab, code_points, format_chars
from charrnn.errors import UserError
from charrnn.storage import atomic_file, first_writable, user_cache_dir, write_text_atomic

DEFAULT_SEP = "\x1e"        # ASCII record separator (see the module docstring)
CACHE_SUFFIX = ".charrnn-cache"
CACHE_FORMAT = 1
BLOCK_BYTES = 1 << 20
BMP = 0x10000               # code points below this are counted and encoded through a table
KEEP_ENCODINGS = 4          # encoded arrays kept per collection (other splits, vocabularies), newest first
PROGRESS_MIN_BYTES = 32 << 20
SHOWN_SKIPPED = 3           # files named in the one line that says how many were skipped
RUN_MARKERS = ("resume.safetensors", "config.json", "vocab.json")  # a charrnn run: the first, or the other two


@dataclass(frozen=True)
class Spec:
    """What to read: paths (files, folders or corpus names), filters, and the separator ("" for none)."""

    paths: Tuple[str, ...]
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    doc_sep: str = DEFAULT_SEP
    flag: Optional[str] = "--data"   # how messages name the paths: None for a positional argument (info)

    @property
    def given(self) -> str:
        """The paths as the user gave them, for messages."""
        return " ".join(([self.flag] if self.flag else []) + list(self.paths))


@dataclass(frozen=True)
class Document:
    name: str        # as messages show it: the path given, then the path inside it
    key: str         # the path relative to the folder given (a file given: its name); the split hashes it
    path: Path
    size: int
    mtime_ns: int
    inode: int
    explicit: bool   # named on the command line: refused in one line, never skipped
    root: int = 0    # which of the paths given it came from
    device: int = 0
    characters: int = -1
    sha256: str = ""


def parse_separator(value: str, flag: str = "--doc-sep") -> str:
    """One character, from itself or an escape: \\x1e, \\f, \\n, \\t, \\u241e, U+241E; '' or 'none' for none."""
    if not isinstance(value, str):
        raise UserError(f"{flag} {value!r} must be a string")
    if len(value) <= 1:
        return value
    if value.lower() == "none":
        return ""
    named = {"\\f": "\f", "\\n": "\n", "\\t": "\t", "\\r": "\r", "\\v": "\v", "\\0": "\0"}
    if value in named:
        return named[value]
    match = re.fullmatch(r"(?:\\x|\\u|\\U|[Uu]\+)([0-9A-Fa-f]{1,8})", value)
    if match and int(match.group(1), 16) <= sys.maxunicode and not 0xD800 <= int(match.group(1), 16) < 0xE000:
        return chr(int(match.group(1), 16))
    raise UserError(f"{flag} {value!r} must be one character, an escape such as \\x1e, \\f or U+241E, or 'none'")


def show_char(c: Optional[str]) -> str:
    return "none" if not c else f"U+{ord(c):04X} {c!r}"


# ---------------------------------------------------------------------------------------------- finding

def _matches(patterns: Sequence[str], parts: Tuple[str, ...]) -> bool:
    relative = "/".join(parts)
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatchcase(relative, pattern.strip("/")):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern.strip("/")) for part in parts):
            return True
    return False


def _label(given: str) -> str:
    return given.rstrip("/\\") or given


def _identity(path: Path):
    try:
        st = path.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _walk(root: Path, index: int, label: str, spec: Spec,
          skipped: List[Tuple[str, str]]) -> List[Tuple[Tuple[str, ...], Document]]:
    """Files below `root` that pass the filters, as (relative parts, Document); skipped ones noted."""
    found = []
    seen_folders, data_folder = set(), _identity(data_dir())
    pending: List[Tuple[Path, Tuple[str, ...]]] = [(root, ())]
    while pending:  # a stack, not recursion: a deep tree must not exhaust Python's stack
        folder, parts = pending.pop()
        shown = "/".join((label,) + parts)
        try:
            st = folder.stat()
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            skipped.append((shown + "/", "unreadable folder"))
            continue
        if (st.st_dev, st.st_ino) in seen_folders:
            continue  # a symlink loop, or a second way into a folder already read
        seen_folders.add((st.st_dev, st.st_ino))
        names = {entry.name for entry in entries}
        run = RUN_MARKERS[0] in names or set(RUN_MARKERS[1:]) <= names
        if parts and (run or (st.st_dev, st.st_ino) == data_folder):
            skipped.append((shown + "/", "a charrnn run" if run else "charrnn's data folder"))
            continue  # checkpoints and caches written there are not the user's text
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(CACHE_SUFFIX):
                continue
            here = parts + (entry.name,)
            try:
                is_folder = entry.is_dir()  # follows a link; the inode check above stops loops
            except OSError:
                is_folder = False
            if is_folder:
                if not _matches(spec.exclude, here):
                    pending.append((Path(entry.path), here))
                continue
            if (spec.include and not _matches(spec.include, here)) or _matches(spec.exclude, here):
                continue
            name = "/".join((label,) + here)
            try:
                st = os.stat(entry.path)
            except OSError:
                skipped.append((name, "broken link" if entry.is_symlink() else "unreadable"))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append((name, "not a regular file"))
                continue
            found.append((here, Document(name, "/".join(here), Path(entry.path), st.st_size, st.st_mtime_ns,
                                         st.st_ino, False, index, st.st_dev)))
    found.sort(key=lambda item: item[0])
    return found


def find_documents(spec: Spec) -> Tuple[List[Document], List[Tuple[str, str]], List[Path]]:
    """The candidate documents in order (each path's files in sorted order), the files skipped so far,
    and the paths given, resolved."""
    documents, skipped, seen, roots = [], [], set(), []
    for index, given in enumerate(spec.paths):
        root = resolve_data(given, spec.flag)
        roots.append(root.resolve())
        if root.is_dir():
            found = [doc for _, doc in _walk(root, index, _label(given), spec, skipped)]
        else:
            st = root.stat()
            found = [Document(given, root.name, root, st.st_size, st.st_mtime_ns, st.st_ino, True, index, st.st_dev)]
        for doc in found:
            ident = (doc.device, doc.inode)
            if ident in seen:
                if not doc.explicit:
                    skipped.append((doc.name, "read already"))
                continue
            seen.add(ident)
            documents.append(doc)
    return documents, skipped, roots


# --------------------------------------------------------------------------------------------- encoding

class Encoder:
    """Code points -> vocabulary indices: a table for the BMP, a binary search beyond it. Characters
    outside the vocabulary become `unknown`'s index, or, without one, a UserError naming them."""

    def __init__(self, vocab: Vocab, unknown: Optional[str] = None, what: str = "the text"):
        codes = np.array([ord(c) for c in vocab.chars], dtype=np.int64)
        low = codes < BMP
        self.table = np.full(BMP, -1, np.int32)
        self.table[codes[low]] = np.nonzero(low)[0]
        self.high_codes, self.high_index = codes[~low], np.nonzero(~low)[0].astype(np.int32)
        self.unknown_index = vocab.chars.index(unknown) if unknown else None
        self.dtype, self.what, self.unknown_count = vocab.dtype, what, 0

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        if not len(codes):
            return np.zeros(0, self.dtype)
        if codes.max() < BMP:
            index = self.table[codes]
        else:
            index = np.empty(len(codes), np.int32)
            high = codes >= BMP
            index[~high] = self.table[codes[~high]]
            index[high] = self._beyond(codes[high])
        missing = index < 0
        if missing.any():
            if self.unknown_index is None:
                chars = sorted({chr(int(c)) for c in np.unique(codes[missing])})
                raise UserError(f"{self.what} has characters outside the model's vocabulary: {format_chars(chars)}")
            index[missing] = self.unknown_index
            self.unknown_count += int(missing.sum())
        return index.astype(self.dtype)

    def _beyond(self, codes: np.ndarray) -> np.ndarray:
        if not len(self.high_codes):
            return np.full(len(codes), -1, np.int32)
        at = np.minimum(np.searchsorted(self.high_codes, codes), len(self.high_codes) - 1)
        return np.where(self.high_codes[at] == codes, self.high_index[at], -1).astype(np.int32)


class _Tap:
    """Feeds the bytes the text reader reads to a sha256 and a progress bar."""

    def __init__(self, bar):
        self.sha, self.bar = hashlib.sha256(), bar

    def update(self, raw: bytes) -> None:
        self.sha.update(raw)
        self.bar.update(len(raw))


def _progress(total_bytes: int, what: str):
    from tqdm import tqdm

    quiet = (not sys.stderr.isatty() or total_bytes < PROGRESS_MIN_BYTES
             or os.environ.get("RANK", "0") != "0")  # under torchrun, rank 0 shows it
    return tqdm(total=total_bytes, desc=what, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=quiet, file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------- the cache

class _Cache:
    """Scan results and encodings of one collection, in its own folder under the data directory."""

    def __init__(self, spec: Spec, candidates: Sequence[Document], roots: Sequence[Path]):
        where = json.dumps([[str(r) for r in roots], spec.include, spec.exclude])
        where = hashlib.sha256(where.encode()).hexdigest()[:16]
        stamps = [[d.root, d.key, d.size, d.mtime_ns, d.inode] for d in candidates]
        self.key = hashlib.sha256(json.dumps([CACHE_FORMAT, spec.include, spec.exclude, stamps]).encode()).hexdigest()
        self.directory = first_writable([data_dir() / "collections" / where, user_cache_dir("collections", where)])

    def read_scan(self) -> Optional[dict]:
        if self.directory is None:
            return None
        try:
            scan = json.loads((self.directory / "scan.json").read_text(encoding="utf-8"))
            return scan if scan.get("format") == CACHE_FORMAT and scan.get("key") == self.key else None
        except (OSError, ValueError, AttributeError):
            return None

    def write_scan(self, scan: dict) -> None:
        if self.directory is None:
            return
        for old in self.directory.glob("*.npy"):  # encodings of the collection as it was
            try:
                stale = json.loads(old.with_suffix(".json").read_text(encoding="utf-8")).get("key") != self.key
            except (OSError, ValueError, AttributeError):
                stale = True
            if stale:
                self._drop(old)
        try:
            write_text_atomic(self.directory / "scan.json",
                              json.dumps({"format": CACHE_FORMAT, "key": self.key, **scan}))
        except OSError:
            pass

    def encoding_key(self, parts: list) -> str:
        return hashlib.sha256(json.dumps([self.key, parts], ensure_ascii=True).encode()).hexdigest()[:20]

    def read_encoding(self, key: str, characters: int, dtype: np.dtype):
        if self.directory is None:
            return None
        try:
            meta = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
            array = np.load(self.directory / f"{key}.npy", mmap_mode="r" if characters else None, allow_pickle=False)
            if meta.get("key") != self.key or array.shape != (characters,) or array.dtype != dtype:
                return None
        except (OSError, ValueError, AttributeError):
            return None
        try:
            os.utime(self.directory / f"{key}.json")  # recently used: kept when older encodings are dropped
        except OSError:
            pass
        return array, meta

    def _drop(self, array_path: Path) -> None:
        for path in (array_path, array_path.with_suffix(".json")):
            try:
                path.unlink()
            except OSError:
                pass

    def make_room(self) -> None:
        arrays = sorted(self.directory.glob("*.npy"), key=lambda p: _mtime(p.with_suffix(".json")), reverse=True)
        for old in arrays[KEEP_ENCODINGS - 1:]:
            self._drop(old)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ------------------------------------------------------------------------------------------ collection

class Collection:
    """The documents a Spec names, scanned: which files are text, with their characters and sha256,
    and how often each character occurs. `encode` gives the joined text of any list of them."""

    def __init__(self, spec: Spec):
        self.spec = spec
        candidates, self.skipped, roots = find_documents(spec)
        self.cache = _Cache(spec, candidates, roots)
        scan = self.cache.read_scan()
        if scan is None:
            scan = self._scan(candidates)
            self.cache.write_scan(scan)
        self.documents: List[Document] = []
        for doc, result in zip(candidates, scan["results"]):
            if "skip" in result:
                self.skipped.append((doc.name, result["skip"]))
            else:
                self.documents.append(replace(doc, characters=result["characters"], sha256=result["sha256"]))
        self.counts: Dict[int, int] = dict(zip(scan["codes"], scan["counts"]))
        self.skipped.sort(key=lambda item: item[0].split("/"))
        if not self.documents:
            raise UserError(f"{spec.given}: no UTF-8 text file found"
                            + (f" ({self.skipped_text()})" if self.skipped else "")
                            + "; give files or folders holding UTF-8 text" + ("" if not (spec.include or spec.exclude)
                                                                              else ", or loosen --include/--exclude"))

    # -- facts
    @property
    def separator(self) -> Optional[str]:
        """The separator joining this collection's documents: None for a single document."""
        return self.spec.doc_sep or None if len(self.documents) > 1 else None

    def characters(self, documents: Optional[Sequence[Document]] = None, separator: Optional[str] = None) -> int:
        documents = self.documents if documents is None else documents
        return sum(d.characters for d in documents) + (len(documents) - 1 if separator and documents else 0)

    def skipped_text(self) -> str:
        shown = ", ".join(f"{name} ({why})" for name, why in self.skipped[:SHOWN_SKIPPED])
        more = len(self.skipped) - SHOWN_SKIPPED
        return f"{len(self.skipped)} skipped: {shown}" + (f" and {more} more" if more > 0 else "")

    def files_line(self) -> str:
        """How many files were read and skipped, naming a few of the skipped ones: one line."""
        size = sum(d.size for d in self.documents)
        read = f"{len(self.documents)} file{'s' if len(self.documents) != 1 else ''} read ({_size(size)})"
        return read + (f", {self.skipped_text()}" if self.skipped else ", none skipped")

    # -- the two passes
    def _scan(self, candidates: Sequence[Document]) -> dict:
        counts = np.zeros(BMP, np.int64)
        beyond: Dict[int, int] = {}
        results = []
        with _progress(sum(d.size for d in candidates), "reading") as bar:
            for doc in candidates:
                tap = _Tap(bar)
                local, local_beyond, n = np.zeros(BMP, np.int64), {}, 0
                try:
                    for text in decoded_chunks(doc.path, BLOCK_BYTES, what=doc.name, digest=tap):
                        codes = code_points(text)
                        n += len(codes)
                        if codes.max() >= BMP:
                            high = codes >= BMP
                            for code, c in zip(*(a.tolist() for a in np.unique(codes[high], return_counts=True))):
                                local_beyond[code] = local_beyond.get(code, 0) + c
                            codes = codes[~high]
                        local += np.bincount(codes, minlength=BMP)
                except NotText as e:
                    if doc.explicit:
                        raise
                    results.append({"skip": e.reason})
                    continue
                counts += local
                for code, c in local_beyond.items():
                    beyond[code] = beyond.get(code, 0) + c
                results.append({"characters": n, "sha256": tap.sha.hexdigest()})
        codes = np.nonzero(counts)[0]
        return {"results": results, "codes": codes.tolist() + sorted(beyond),
                "counts": counts[codes].tolist() + [beyond[c] for c in sorted(beyond)]}

    def encode(self, documents: Sequence[Document], vocab: Vocab, separator: Optional[str] = None,
               unknown: Optional[str] = None, what: Optional[str] = None) -> Tuple[np.ndarray, int]:
        """The documents' texts joined by `separator`, as indices in `vocab`, memory-mapped from the cache
        when it can be written; and how many characters became `unknown`."""
        total = self.characters(documents, separator)
        parts = [[[d.root, d.key] for d in documents], separator, unknown, "".join(vocab.chars)]
        key = self.cache.encoding_key(parts)
        hit = self.cache.read_encoding(key, total, vocab.dtype)
        if hit is not None:
            return hit[0], int(hit[1].get("unknown", 0))
        encoder = Encoder(vocab, unknown, what or self.spec.given)
        if self.cache.directory is None:  # nowhere to write: encode in memory
            out = np.empty(total, vocab.dtype)

            def put(block, at):
                out[at : at + len(block)] = block

            self._fill(documents, separator, encoder, put)
            return out, encoder.unknown_count
        self.cache.make_room()
        final = self.cache.directory / f"{key}.npy"
        try:
            # Plain writes, not a memory map: pages written through a map count in the RSS while mapped.
            with atomic_file(final) as tmp, open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (total,)})
                self._fill(documents, separator, encoder, lambda block, at: f.write(block.tobytes()))
            write_text_atomic(self.cache.directory / f"{key}.json",
                              json.dumps({"format": CACHE_FORMAT, "key": self.cache.key, "characters": total,
                                          "unknown": encoder.unknown_count}))
        except OSError as e:
            raise UserError(f"cannot write the encoded text to {self.cache.directory} ({e.strerror or e}); free "
                            "space, or set $CHARRNN_DATA_DIR to a folder with room for it") from None
        if total == 0:
            return np.zeros(0, vocab.dtype), 0  # an empty file cannot be memory-mapped
        return np.load(final, mmap_mode="r", allow_pickle=False), encoder.unknown_count

    def _fill(self, documents, separator, encoder: Encoder, put) -> None:
        """put(block, position) each encoded block of the joined text, in order."""
        position = 0
        sep = encoder(code_points(separator)) if separator else None
        with _progress(sum(d.size for d in documents), "encoding") as bar:
            for i, doc in enumerate(documents):
                if sep is not None and i:
                    put(sep, position)
                    position += 1
                start = position
                try:
                    for text in decoded_chunks(doc.path, BLOCK_BYTES, what=doc.name, digest=_Tap(bar)):
                        block = encoder(code_points(text))
                        if position + len(block) - start > doc.characters:
                            break
                        put(block, position)
                        position += len(block)
                except NotText:
                    pass
                if position - start != doc.characters:
                    raise UserError(f"{doc.name} changed while it was being read; run again")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def is_collection(paths: Iterable[str]) -> bool:
    """Several paths, or any folder (pystdlib is one): documents rather than one text."""
    paths = list(paths)
    if len(paths) != 1:
        return True
    if paths[0] == "pystdlib":
        return True
    if paths[0] == "tinyshakespeare":
        return False
    return Path(paths[0]).expanduser().is_dir()
