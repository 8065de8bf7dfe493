"""Paths -> documents: which files a `--data` (or `--val-data`, or `info`'s) list of paths names, in order.

A path is a text file or a folder (a corpus name has become one of them: sources.py).
A single file is a collection of one document; a folder means every file below it, recursively, in
sorted order of the path relative to it (compared folder by folder), skipping hidden files and folders
(a name starting with '.') and the `*.charrnn-cache` folders that an older charrnn wrote beside a
text. `--include`/`--exclude` glob patterns narrow it: a pattern without '/' matches a file or folder
name at any depth (a matching folder takes everything in it), a pattern with '/' matches the path
relative to the folder given. A folder reached twice (a symlink loop, two links to one folder) is read
once; so is a file. A charrnn run directory (it holds resume.safetensors, or config.json and vocab.json)
and the data directory below the folder are not read: `--data . --out runs/x` must not train on its own
checkpoints and metrics next time. Inside a folder, a file that is not UTF-8 text (binary, another
encoding, empty), unreadable, or not a regular file is skipped and counted; a file named explicitly is
refused in one line, as always.

Each document carries its stamp (size, mtime, ctime, inode, device) as found: the cache is keyed by the
stamps, and a file whose stamp changes while it is read is refused (collection.py).

Documents are joined with a separator, `--doc-sep`, by default U+001E, the ASCII record separator: a
control character made for exactly this, which real texts almost never contain (the form feed, the
other classic choice, occurs in source code, the Python standard library's included). It is used, and
so enters the vocabulary, only when there are two or more documents.
"""
from __future__ import annotations

import fnmatch
import os
import re
import stat
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from charrnn.errors import UserError
from charrnn.storage import data_dir

DEFAULT_SEP = "\x1e"        # ASCII record separator (see the module docstring)
CACHE_SUFFIX = ".charrnn-cache"  # the caches charrnn once wrote beside a text file: never read as text
RUN_MARKERS = ("resume.safetensors", "config.json", "vocab.json")  # a charrnn run: the first, or the other two


@dataclass(frozen=True)
class Spec:
    """What to read: paths (files, folders or corpus names), filters, and the separator ("" for none)."""

    paths: Tuple[str, ...]
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    doc_sep: str = DEFAULT_SEP
    flag: Optional[str] = "--data"   # how messages name the paths: None for a positional argument (info)
    label_by: Optional[str] = None   # "folder", "file" or "path": each document's label (see label_of)

    @property
    def given(self) -> str:
        """The paths as the user gave them, for messages."""
        return " ".join(([self.flag] if self.flag else []) + list(self.paths))


@dataclass(frozen=True)
class Document:
    name: str        # as messages show it: the path given, then the path inside it
    key: str         # the path relative to the folder given (a file given: its name); the split hashes it
    path: Path
    size: int        # the stamp, as found: size, mtime, ctime (an edit that restores the mtime still moves
    mtime_ns: int    # it), inode and device
    ctime_ns: int
    inode: int
    device: int
    explicit: bool   # named on the command line: refused in one line, never skipped
    root: int = 0    # which of the paths given it came from
    characters: int = -1
    sha256: str = ""
    label: str = ""  # its label under --label-by, "" without

    @classmethod
    def of(cls, name: str, key: str, path: Path, st: os.stat_result, explicit: bool, root: int) -> "Document":
        return cls(name, key, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, explicit, root)

    @property
    def stamp(self) -> Tuple[int, int, int, int, int]:
        return self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device


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
            found.append((here, Document.of(name, "/".join(here), Path(entry.path), st, False, index)))
    found.sort(key=lambda item: item[0])
    return found


def label_of(document: Document, by: str, given: str, path_labels: Sequence[str]) -> str:
    """A document's label: `folder`, the first folder under the path given (a file directly in it, or given
    itself: the folder it lies in); `file`, its path inside the folder given without the extension (a file
    given: its name without it; see _distinct_file_labels where two would be the same); `path`, the path given
    on the command line (its name without the extension, when those are distinct)."""
    if by == "path":
        return path_labels[document.root]
    if by == "file":
        return _without_extension(document.key)   # made distinct afterwards (_distinct_file_labels)
    if "/" in document.key:
        return document.key.split("/", 1)[0]
    return _name(str(document.path.parent) if document.explicit else given)


def _name(path: str) -> str:
    """A folder's name as given (a link keeps its own name), or as resolved where it has none ('.', '..')."""
    name = os.path.basename(os.path.normpath(path))
    return name if name not in ("", ".", "..") else Path(path).resolve().name or path


def _without_extension(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1].lstrip(".") else name


def _path_labels(paths: Sequence[str]) -> List[str]:
    names = [Path(p.rstrip("/\\") or p).stem or p for p in paths]
    return names if len(set(names)) == len(names) else [p.rstrip("/\\") or p for p in paths]


def find_documents(spec: Spec, roots: Sequence[Path]) -> Tuple[List[Document], List[Tuple[str, str]]]:
    """The candidate documents in order (each path's files in sorted order) and the files skipped so far, given
    the paths resolved (sources.resolve_data: a corpus name is a path by now). A candidate is a regular file;
    whether it is text, the scan finds."""
    documents, skipped, seen = [], [], set()
    path_labels = _path_labels(spec.paths)
    for index, (given, root) in enumerate(zip(spec.paths, roots)):
        if root.is_dir():
            found = [doc for _, doc in _walk(root, index, _label(given), spec, skipped)]
        else:
            found = [Document.of(given, root.name, root, root.stat(), True, index)]
        for doc in found:
            ident = (doc.device, doc.inode)
            if ident in seen:
                if not doc.explicit:
                    skipped.append((doc.name, "read already"))
                continue
            seen.add(ident)
            documents.append(replace(doc, label=label_of(doc, spec.label_by, given, path_labels))
                             if spec.label_by else doc)
    if spec.label_by == "file":
        documents = _distinct_file_labels(documents, path_labels)
    return documents, skipped


def _distinct_file_labels(documents: List[Document], path_labels: Sequence[str]) -> List[Document]:
    """Each file its own label: its path inside the folder given without the extension; where two would be the
    same (x.txt, x.md), with it; where still the same (one name under two paths given), after the path's label."""
    for rule in (lambda d: _without_extension(d.key), lambda d: d.key, lambda d: f"{path_labels[d.root]}/{d.key}"):
        labels = [rule(d) for d in documents]
        if len(set(labels)) == len(labels):
            break
    return [replace(d, label=label) for d, label in zip(documents, labels)]
