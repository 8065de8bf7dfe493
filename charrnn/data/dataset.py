"""What `train`, `eval` and `info` read: one text or a collection, its vocabulary, the validation
split, and the record of it all that a run keeps (`data.json`).

One text file (or tinyshakespeare) is read as it always was (corpus.py: one cache beside the file)
and validation is its last `--val-frac`. Several paths, a folder or `pystdlib` are a collection
(collection.py), and validation holds out whole documents spread across it, by a fixed rule:

    the documents, in the order of sha256(their path relative to the folder given), are held out
    one by one whenever the next still fits within --val-frac of the characters; at least one
    (the smallest) when there are two or more, never all.

The tail of a sorted folder is one kind of file (pystdlib's was 21 codec tables); a hash of the
path spreads the held-out documents over the whole collection and keeps them when files are
added. `--val-data PATH...` validates on other files instead.

`--max-vocab N` keeps the N-1 most frequent characters (the separator always among them) and maps
every other one to U+FFFD, the Unicode replacement character, made for a character that cannot be
represented; the vocabulary then has N entries, and sampling never emits U+FFFD (a text that holds
U+FFFD itself shares the symbol).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from charrnn.data.batching import split_train_val
from charrnn.data.collection import Collection, Document, Spec, is_collection, show_char
from charrnn.data.corpus import load_corpus
from charrnn.data.sources import resolve_data, sha256_of
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError
from charrnn.storage import write_text_atomic

UNKNOWN = "\ufffd"
RECORD = "data.json"
RECORD_FORMAT = "charrnn-data/1"


class SingleText:
    """One text file read as it always was: encoded once into the cache beside it (corpus.py)."""

    counts = None

    def __init__(self, spec: Spec):
        given = spec.paths[0]
        path = resolve_data(given, spec.flag)
        self.spec, self.corpus = spec, load_corpus(given, option=spec.flag)
        st = path.stat()
        self.documents = [Document(given, path.name, path, st.st_size, st.st_mtime_ns, st.st_ino, True, 0, st.st_dev,
                                   self.corpus.characters, self.corpus.sha256 or sha256_of(path))]
        self.skipped: List[Tuple[str, str]] = []
        self.separator = None

    def code_points(self) -> set:
        return {ord(c) for c in self.corpus.vocab.chars}

    def characters(self, documents=None, separator=None) -> int:
        return self.corpus.characters

    def encode(self, documents, vocab: Vocab, separator=None, unknown=None, what=None) -> Tuple[np.ndarray, int]:
        if vocab == self.corpus.vocab:
            return self.corpus.data, 0
        return translate(self.corpus.vocab, self.corpus.data, vocab, unknown, what or self.spec.paths[0])


def _code_points(source) -> set:
    return source.code_points() if isinstance(source, SingleText) else set(source.counts)


def open_source(spec: Spec, as_collection: bool = False):
    """A Collection, or for one text file a SingleText (unless `as_collection`)."""
    return Collection(spec) if as_collection or is_collection(spec.paths) else SingleText(spec)


def translate(source: Vocab, data: np.ndarray, target: Vocab, unknown: Optional[str],
              what: str) -> Tuple[np.ndarray, int]:
    """Indices in `source` re-encoded in `target` (a copy); characters `target` lacks become `unknown`,
    or, without one, a UserError naming them."""
    data = np.asarray(data)
    missing = [i for i, c in enumerate(source.chars) if c not in target]
    mapped = int(np.isin(data, missing).sum()) if missing else 0
    return target.translate(source, data, what, unknown), mapped


def build_vocab(code_points: set, counts: Optional[Dict[int, int]], separator: Optional[str],
                max_vocab: Optional[int]) -> Tuple[Vocab, Optional[str]]:
    """The vocabulary (sorted by code point) and the unknown symbol, None when nothing was dropped."""
    codes = set(code_points) | ({ord(separator)} if separator else set())
    if not max_vocab or len(codes) <= max_vocab:
        return Vocab.from_code_points(codes), None
    forced = {ord(separator)} if separator else set()
    ranked = sorted((c for c in codes - forced if c != ord(UNKNOWN)), key=lambda c: (-(counts or {}).get(c, 0), c))
    kept = forced | set(ranked[: max_vocab - 1 - len(forced)]) | {ord(UNKNOWN)}
    return Vocab.from_code_points(kept), UNKNOWN


def _hash(document: Document) -> str:
    return hashlib.sha256(document.key.encode("utf-8")).hexdigest()


def document_split(documents: Sequence[Document], val_frac: float) -> Tuple[List[Document], List[Document]]:
    """(training, held out), each in the collection's order, by the rule in the module docstring."""
    if val_frac <= 0 or len(documents) < 2:
        return list(documents), []
    target = val_frac * sum(d.characters for d in documents)
    order = sorted(range(len(documents)), key=lambda i: (_hash(documents[i]), i))
    held, chosen = 0, set()
    for i in order:
        if held + documents[i].characters <= target:
            chosen.add(i)
            held += documents[i].characters
    if not chosen:
        chosen = {min(order, key=lambda i: documents[i].characters)}
    if len(chosen) == len(documents):
        chosen.discard(order[-1])
    return ([d for i, d in enumerate(documents) if i not in chosen],
            [d for i, d in enumerate(documents) if i in chosen])


@dataclass
class TrainingData:
    vocab: Vocab
    train: np.ndarray
    val: np.ndarray
    separator: Optional[str]     # in the vocabulary when there are several documents
    unknown: Optional[str]       # U+FFFD when --max-vocab dropped characters
    record: dict                 # data.json
    lines: List[str]             # what training prints about its data
    warnings: List[str]


def _spec(cfg, paths, flag: str) -> Spec:
    return Spec(tuple(paths), tuple(cfg.include), tuple(cfg.exclude), cfg.doc_sep, flag)


def training_data(cfg) -> TrainingData:
    """The training and validation texts, encoded, for a TrainConfig."""
    collection_needed = cfg.max_vocab is not None or cfg.val_data is not None
    source = open_source(_spec(cfg, cfg.data, "--data"), collection_needed)
    val_source = open_source(_spec(cfg, cfg.val_data, "--val-data"), True) if cfg.val_data else None
    several = len(source.documents) > 1 or (val_source is not None and len(val_source.documents) > 1)
    separator = (cfg.doc_sep or None) if several else None
    sources = [s for s in (source, val_source) if s is not None]
    counts: Counter = Counter()
    for s in sources:
        counts.update(s.counts or {})
    code_points = set().union(*(_code_points(s) for s in sources))
    vocab, unknown = build_vocab(code_points, counts, separator, cfg.max_vocab)

    documents, val_documents = source.documents, []
    if val_source is not None:
        rule, val_documents = "val-data", val_source.documents
        train, dropped = source.encode(documents, vocab, separator, unknown)
        val, dropped_val = val_source.encode(val_documents, vocab, separator, unknown)
        about = f"--val-data {' '.join(cfg.val_data)} ({_files(len(val_documents))})"
    elif cfg.val_frac > 0 and len(documents) > 1:
        rule = "documents"
        documents, val_documents = document_split(documents, cfg.val_frac)
        train, dropped = source.encode(documents, vocab, separator, unknown)
        val, dropped_val = source.encode(val_documents, vocab, separator, unknown)
        about = (f"{_files(len(val_documents))} held out whole, chosen by a hash of their path "
                 f"({len(val):,} characters, {len(val) / max(1, len(val) + len(train)):.1%})")
    else:
        rule = "last-fraction" if cfg.val_frac > 0 else "none"
        whole, dropped = source.encode(documents, vocab, separator, unknown)
        train, val = split_train_val(whole, cfg.val_frac)
        dropped_val = 0
        about = f"the last {cfg.val_frac * 100:g}% of the text" if cfg.val_frac > 0 else "none (--val-frac 0)"

    held = {id(d) for d in val_documents} if rule == "documents" else set()
    record = {
        "format": RECORD_FORMAT,
        "paths": list(cfg.data), "val_paths": list(cfg.val_data) if cfg.val_data else None,
        "include": list(cfg.include), "exclude": list(cfg.exclude),
        "doc_sep": separator, "max_vocab": cfg.max_vocab, "unknown": unknown,
        "unknown_characters": dropped + dropped_val, "vocab_size": len(vocab),
        "split": {"rule": rule, "val_frac": cfg.val_frac, "about": about,
                  "train_characters": int(len(train)), "val_characters": int(len(val))},
        "documents": [_entry(d, id(d) in held) for d in source.documents],
        "val_documents": [_entry(d) for d in val_documents] if rule == "val-data" else None,
        "skipped": [[name, why] for s in sources for name, why in s.skipped],
    }
    total = {"documents": len(train) + len(val) + (1 if separator else 0),  # the separator between the two
             "val-data": len(train)}.get(rule, len(train) + len(val))
    lines, warnings = [f"Total {total} characters with {len(vocab)} unique tokens."], []
    if isinstance(source, Collection):
        lines.append(source.files_line())
    if isinstance(val_source, Collection):
        lines.append(f"validation: {val_source.files_line()}")
    if cfg.max_vocab is not None:
        distinct = len(code_points | ({ord(separator)} if separator else set()))
        lines.append(f"--max-vocab {cfg.max_vocab}: " + (
            f"kept the {len(vocab) - 1} most frequent of {distinct} characters; the other "
            f"{distinct - len(vocab) + 1} ({dropped + dropped_val:,} occurrences) became U+FFFD"
            if unknown else f"all {len(vocab)} characters kept"))
    if isinstance(source, Collection):
        lines.append(f"validation: {about}" + (f"; documents joined by {show_char(separator)}" if separator else ""))
    if separator and counts.get(ord(separator)):
        warnings.append(f"the separator {show_char(separator)} occurs {counts[ord(separator)]} times inside the "
                        "documents; the model will take those for boundaries (choose another --doc-sep)")
    return TrainingData(vocab, train, val, separator, unknown, record, lines, warnings)


def _files(n: int) -> str:
    return f"{n} document{'s' if n != 1 else ''}"


def _entry(document: Document, held_out: bool = False) -> dict:
    entry = {"name": document.name, "key": document.key, "size": document.size, "sha256": document.sha256,
             "characters": document.characters}
    return {**entry, "held_out": True} if held_out else entry


# ------------------------------------------------------------------------------------------ the record

def write_record(run_dir: Path, record: dict) -> None:
    write_text_atomic(Path(run_dir) / RECORD, json.dumps(record, ensure_ascii=False, indent=1))


def read_record(run_dir: Path) -> Optional[dict]:
    """The run's data.json, or None for a run made before it existed."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); the run directory is damaged") from None
    if (not isinstance(record, dict) or record.get("format") != RECORD_FORMAT
            or not isinstance(record.get("documents"), list)):
        raise UserError(f"{path} is not a {RECORD_FORMAT} record; the run directory is damaged")
    return record


def check_same_data(run_dir: Path, current: dict) -> None:
    """Refuse, in one line, to resume a run on data other than what it was trained on."""
    saved = read_record(run_dir)
    if saved is None:
        return  # a run from before data.json: nothing to compare with
    changes = []
    for field, what in (("documents", "--data"), ("val_documents", "--val-data")):
        old = Counter((d.get("key"), d.get("sha256")) for d in saved.get(field) or [])
        new = Counter((d["key"], d["sha256"]) for d in current.get(field) or [])
        if old == new:
            continue
        old_keys, new_keys = {k for k, _ in old}, {k for k, _ in new}
        hashes = [{k: {h for kk, h in c if kk == k} for k in keys} for c, keys in ((old, old_keys), (new, new_keys))]
        edited = sorted(k for k in old_keys & new_keys if hashes[0][k] != hashes[1][k])
        for label, keys in (("changed", edited), ("added", sorted(new_keys - old_keys)),
                            ("removed", sorted(old_keys - new_keys))):
            if keys:
                changes.append(f"{len(keys)} file{'s' if len(keys) != 1 else ''} {label} in {what} ({_few(keys)})")
        if not changes:
            changes.append(f"the files of {what} changed")
    held = [sorted(d.get("key") for d in r.get("documents") or [] if d.get("held_out")) for r in (saved, current)]
    if not changes and held[0] != held[1]:
        changes.append(f"the held-out documents changed (--val-frac {current['split']['val_frac']:g}, "
                       f"was {saved.get('split', {}).get('val_frac')})")
    for key, flag in (("doc_sep", "--doc-sep"), ("max_vocab", "--max-vocab"), ("unknown", "--max-vocab")):
        if saved.get(key) != current.get(key) and not any(flag in c for c in changes):
            was, now = saved.get(key), current.get(key)
            changes.append(f"{flag} is {show_char(now) if key == 'doc_sep' else now}, "
                           f"was {show_char(was) if key == 'doc_sep' else was}")
    if changes:
        raise UserError(f"the data changed since {run_dir} was trained: {'; '.join(changes)}; resume with the same "
                        "data and settings, or train a new run (another --out, or --overwrite)")


def _few(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def trained_on(run_dir: Path, train_settings: Optional[dict]) -> Tuple[str, dict]:
    """What a run was trained on, as one line and as a dict for --json; `train_settings` (config.json's
    "train") names the data of a run older than data.json."""
    record = read_record(run_dir)
    if record is None:
        data = (train_settings or {}).get("data")
        paths = [data] if isinstance(data, str) else list(data or [])
        return f"model trained on {' '.join(paths) or 'an unrecorded text'}", {"paths": paths}
    documents = record["documents"]
    characters = sum(d.get("characters", 0) for d in documents)
    split = record.get("split") or {}
    info = {"paths": record.get("paths"), "files": len(documents), "characters": characters,
            "skipped": len(record.get("skipped") or []), "doc_sep": record.get("doc_sep"),
            "max_vocab": record.get("max_vocab"), "validation": split.get("about")}
    if len(documents) == 1:
        info["sha256"] = documents[0].get("sha256")
    files = f"{len(documents)} file{'s' if len(documents) != 1 else ''}"
    line = (f"model trained on {' '.join(record.get('paths') or [])} ({files}, {characters:,} characters); "
            f"validation: {split.get('about', 'unrecorded')}")
    return line, info


# ------------------------------------------------------------------------------------------ info, eval

def describe(spec: Spec) -> Tuple[List[str], dict]:
    """`charrnn info`: the summary line (and for a collection, the files line), and the --json object."""
    if not is_collection(spec.paths):
        corpus = load_corpus(spec.paths[0], option=spec.flag)
        return [corpus.summary()], {"characters": corpus.characters, "vocab_size": len(corpus.vocab)}
    collection = Collection(spec)
    separator = collection.separator
    characters = collection.characters(separator=separator)
    vocab_size = len(set(collection.counts) | ({ord(separator)} if separator else set()))
    return ([f"Total {characters} characters with {vocab_size} unique tokens.", collection.files_line()],
            {"characters": characters, "vocab_size": vocab_size, "files": len(collection.documents),
             "skipped": len(collection.skipped),
             "skipped_files": [{"path": name, "reason": why} for name, why in collection.skipped]})


def eval_text(paths: Sequence[str], include: Sequence[str], exclude: Sequence[str], vocab: Vocab,
              record: Optional[dict]) -> Tuple[Vocab, np.ndarray, object]:
    """The text `charrnn eval` reads: (its vocabulary, its indices, the source read). Documents are joined by
    the run's separator (a run trained on one text has none: a newline, where the vocabulary has one). A
    --max-vocab run's text comes encoded in the model's vocabulary, every character it lacks read as the
    unknown symbol; otherwise in its own, for the caller to map (or refuse, or skip) what the model lacks."""
    separator = (record or {}).get("doc_sep")
    if not separator or separator not in vocab:
        separator = "\n" if "\n" in vocab else ""
    unknown = (record or {}).get("unknown")
    unknown = unknown if unknown in vocab else None
    source = open_source(Spec(tuple(paths), tuple(include), tuple(exclude), separator, "--data"))
    what = " ".join(paths)
    if isinstance(source, SingleText):
        if unknown:
            return vocab, translate(source.corpus.vocab, source.corpus.data, vocab, unknown, what)[0], source
        return source.corpus.vocab, source.corpus.data, source
    if unknown:
        return vocab, source.encode(source.documents, vocab, source.separator, unknown, what)[0], source
    own, _ = build_vocab(set(source.counts), None, source.separator, None)
    return own, source.encode(source.documents, own, source.separator, what=what)[0], source
