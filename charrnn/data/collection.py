"""Documents -> an encoded text: every input, one file or thousands, read as a collection of documents.

Two passes over the files, in blocks, never holding the text. The scan counts each character (the
vocabulary, and `--max-vocab`'s frequencies), takes each file's sha256 (the run records it) and finds
which files are text. The encoding writes the encoded text of a list of documents, joined by the
separator, into a `.npy` file that training memory-maps. Both are kept in the cache (cache.py): an
unchanged collection starts at once, with no file read.

A file must read the same in both passes, and as it was found: its bytes as many as its size, its
stamp unchanged after each pass, its characters as many in the encoding as in the scan. A file that
changes (grows, is rewritten) while it is read stops the command with one line: it names the file
and says to run again.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from charrnn.data.cache import Cache
from charrnn.data.documents import Document, Spec, find_documents
from charrnn.data.sources import resolve_data
from charrnn.data.textfile import NotText, decoded_blocks
from charrnn.data.vocab import BMP, Encoder, Vocab, code_points
from charrnn.errors import UserError

BLOCK_BYTES = 1 << 20       # per block, decoding and encoding hold ~20 bytes per character at once
PROGRESS_MIN_BYTES = 32 << 20
SHOWN_SKIPPED = 3           # files named in the one line that says how many were skipped


class Collection:
    """The documents a Spec names, scanned: which files are text, with their characters and sha256,
    and how often each character occurs. `encode` gives the joined text of any list of them."""

    def __init__(self, spec: Spec):
        self.spec = spec
        roots = [resolve_data(given, spec.flag) for given in spec.paths]
        candidates, self.skipped = find_documents(spec, roots)
        self.one_file = len(spec.paths) == 1 and len(candidates) == 1 and candidates[0].explicit
        self.cache = Cache(spec, candidates, [root.resolve() for root in roots])
        scan = self.cache.read_scan()
        if scan is None:
            scan = _scan(candidates)
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

    # -- the encoding pass
    def encode(self, documents: Sequence[Document], vocab: Vocab, separator: Optional[str] = None,
               unknown: Optional[str] = None, what: Optional[str] = None) -> Tuple[np.ndarray, int]:
        """The documents' texts joined by `separator`, as indices in `vocab`, memory-mapped from the cache
        when it can be written; and how many characters became `unknown`."""
        total = self.characters(documents, separator)
        parts = [[[d.root, d.key] for d in documents], separator, unknown, "".join(vocab.chars)]
        hit = self.cache.read_encoding(parts, total, vocab.dtype)
        if hit is not None:
            return hit[0], int(hit[1].get("unknown", 0))
        encoder = Encoder(vocab, unknown, what or self.spec.given)
        if self.cache.directory is None:  # nowhere to write: encode in memory
            out = np.empty(total, vocab.dtype)

            def put(block, at):
                out[at : at + len(block)] = block

            _fill(documents, separator, encoder, put)
            return out, encoder.unknown_count
        try:
            with self.cache.writing_encoding(parts, total, vocab.dtype) as (f, meta):
                _fill(documents, separator, encoder, lambda block, at: f.write(block.tobytes()))
                meta["unknown"] = encoder.unknown_count
        except OSError as e:
            raise UserError(f"cannot write the encoded text to {self.cache.directory} ({e.strerror or e}); free "
                            "space, or set $CHARRNN_DATA_DIR to a folder with room for it") from None
        if total == 0:
            return np.zeros(0, vocab.dtype), 0  # an empty file cannot be memory-mapped
        hit = self.cache.read_encoding(parts, total, vocab.dtype)
        if hit is None:
            raise UserError(f"the encoded text just written to {self.cache.directory} cannot be read back; "
                            "check that folder, or set $CHARRNN_DATA_DIR to another")
        return hit[0], encoder.unknown_count


# ------------------------------------------------------------------------------------------ the passes

def _scan(candidates: Sequence[Document]) -> dict:
    """Per candidate its characters and sha256, or why it was skipped; the count of every code point."""
    counts = np.zeros(BMP, np.int64)
    beyond: Dict[int, int] = {}
    results = []
    with _progress(sum(d.size for d in candidates), "reading") as bar:
        for doc in candidates:
            try:
                result, local, local_beyond = _scan_one(doc, bar)
            except NotText as e:
                if doc.explicit:
                    raise
                results.append({"skip": e.reason})
                continue
            counts += local
            for code, c in local_beyond.items():
                beyond[code] = beyond.get(code, 0) + c
            results.append(result)
    codes = np.nonzero(counts)[0]
    return {"results": results, "codes": codes.tolist() + sorted(beyond),
            "counts": counts[codes].tolist() + [beyond[c] for c in sorted(beyond)]}


def _scan_one(doc: Document, bar) -> tuple:
    sha, local, local_beyond, n, read = hashlib.sha256(), np.zeros(BMP, np.int64), {}, 0, 0
    for raw, text in decoded_blocks(doc.path, BLOCK_BYTES, what=doc.name):
        sha.update(raw)
        bar.update(len(raw))
        read += len(raw)
        codes = code_points(text)
        n += len(codes)
        if len(codes) and codes.max() >= BMP:
            high = codes >= BMP
            for code, c in zip(*(a.tolist() for a in np.unique(codes[high], return_counts=True))):
                local_beyond[code] = local_beyond.get(code, 0) + c
            codes = codes[~high]
        local += np.bincount(codes, minlength=BMP)
    if read != doc.size or not _as_found(doc):
        raise changed_while_read(doc)
    return {"characters": n, "sha256": sha.hexdigest()}, local, local_beyond


def _fill(documents: Sequence[Document], separator: Optional[str], encoder: Encoder, put) -> None:
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
                for raw, text in decoded_blocks(doc.path, BLOCK_BYTES, what=doc.name):
                    bar.update(len(raw))
                    block = encoder(code_points(text))
                    if position + len(block) - start > doc.characters:
                        break  # longer than it was scanned
                    put(block, position)
                    position += len(block)
            except NotText:
                raise changed_while_read(doc) from None      # it was text when scanned
            except UserError:
                if not _as_found(doc):
                    raise changed_while_read(doc) from None  # a character the scan never saw
                raise
            if position - start != doc.characters or not _as_found(doc):
                raise changed_while_read(doc)


def _as_found(doc: Document) -> bool:
    """Whether the file's stamp is still the one it was found with (a file gone is not)."""
    try:
        st = os.stat(doc.path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev) == doc.stamp


def changed_while_read(doc: Document) -> UserError:
    """The one error for a text that changed while charrnn read it."""
    return UserError(f"{doc.name} changed while it was being read; run again")


def _progress(total_bytes: int, what: str):
    from tqdm import tqdm

    quiet = (not sys.stderr.isatty() or total_bytes < PROGRESS_MIN_BYTES
             or os.environ.get("RANK", "0") != "0")  # under torchrun, rank 0 shows it
    return tqdm(total=total_bytes, desc=what, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=quiet, file=sys.stderr, dynamic_ncols=True)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
