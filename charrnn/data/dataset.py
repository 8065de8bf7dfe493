"""What `train`, `eval` and `info` read: the collection, its vocabulary, the validation split, and the
record of it all that a run keeps (`data.json`).

Every input is a collection (collection.py). A single text file (or tinyshakespeare) is a collection
of one document, and validation is its last `--val-frac`:

    train = text[: n - floor(n * val_frac)],  val = text[n - floor(n * val_frac):]    (views, no copies)

A collection of several documents (a folder, several paths, `pystdlib`) holds out whole documents
spread across it, by a fixed rule:

    the documents, in the order of sha256(their path relative to the folder given), are held out
    one by one whenever the next still fits within --val-frac of the characters; at least one
    (the smallest) when there are two or more, never all.

The tail of a sorted folder is one kind of file (pystdlib's was 21 codec tables); a hash of the
path spreads the held-out documents over the whole collection and keeps them when files are
added. `--val-data PATH...` validates on other files instead. A labelled collection (`--label-by`) holds out
--val-frac of every label: whole documents by the rule above where one fits within the label's share,
else the end of the label's text; its two texts are assembled with their label segments (batching.py).

A run that continues another (`Base`: --resume's run, --init-from's parent) keeps that run's vocabulary
and labels first and adds what the text brings after them, so the text is encoded once, in the
vocabulary the run trains with.

`--max-vocab N` keeps the N-1 most frequent characters (the separator always among them) and maps
every other one to U+FFFD, the Unicode replacement character, made for a character that cannot be
represented; the vocabulary then has N entries, and sampling never emits U+FFFD (a text that holds
U+FFFD itself shares the symbol).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from charrnn.data.collection import Collection
from charrnn.data.documents import Document, Spec
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError
from charrnn.storage import write_text_atomic

RECORD = "data.json"
RECORD_FORMAT = "charrnn-data/1"
Segments = Tuple[np.ndarray, np.ndarray]   # (where each label begins in a text, ascending from 0; the label ids)


def split_train_val(data: np.ndarray, val_frac: float) -> Tuple[np.ndarray, np.ndarray]:
    """The last `val_frac` of the text is validation; the rest is training. Views, no copies."""
    if not 0.0 <= val_frac < 1.0:
        raise UserError(f"--val-frac {val_frac} must be in [0, 1)")
    n_val = int(len(data) * val_frac)
    return data[: len(data) - n_val], data[len(data) - n_val :]


COUNT_WHOLE = 1 << 22     # characters counted one by one; a longer split is counted in COUNT_BLOCKS blocks
COUNT_BLOCKS, COUNT_BLOCK = 16, 1 << 18   # few and long: each block's first page fault reads ahead


def character_counts(ids: np.ndarray, size: int) -> np.ndarray:
    """How often each of `size` characters occurs in `ids` (size,), for a new model's output bias
    (models/base.unigram_bias). A split longer than COUNT_WHOLE (a memory-mapped cache of gigabytes) is
    counted over COUNT_BLOCKS evenly spaced blocks, the same on every process: reading all of it would bring
    every page of the map into this process's memory for a first guess that 4M characters already settle."""
    n = len(ids)
    starts = (range(0, n, COUNT_BLOCK) if n <= COUNT_WHOLE
              else np.linspace(0, n - COUNT_BLOCK, COUNT_BLOCKS).astype(np.int64))
    counts = np.zeros(size, dtype=np.int64)
    for start in starts:   # block by block: bincount widens what it reads to 8 bytes a character
        counts += np.bincount(np.asarray(ids[start:start + COUNT_BLOCK]), minlength=size)[:size]
    return counts


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
    labels: Tuple[str, ...] = ()                            # --label-by's names, in index order
    segments: Optional[Tuple[Segments, Segments]] = None     # (training, validation) label segments


def show_char(c: Optional[str]) -> str:
    """A separator in messages: its code point and its repr, or none."""
    return "none" if not c else f"U+{ord(c):04X} {c!r}"


@dataclass(frozen=True)
class Base:
    """The run a training continues (--resume: the run itself) or starts from (--init-from: the parent), as
    the data sees it. Its vocabulary and labels keep their indices and whatever the text adds follows them
    (train/finetune.py grows the weights to match), so the text is encoded once, in the run's vocabulary;
    its data.json's unknown symbol carries over; and a resumed run's data must be what it was trained on."""

    run_dir: Path
    vocab: Vocab
    labels: Tuple[str, ...]
    resume: bool


def training_data(cfg, base: Optional[Base] = None) -> TrainingData:
    """The training and validation texts, encoded in the run's vocabulary, for a TrainConfig."""
    previous = read_record(base.run_dir) if base else None
    source = Collection(Spec(tuple(cfg.data), tuple(cfg.include), tuple(cfg.exclude), cfg.doc_sep, "--data",
                             cfg.label_by))
    val_source = (Collection(Spec(tuple(cfg.val_data), tuple(cfg.include), tuple(cfg.exclude), cfg.doc_sep,
                                  "--val-data")) if cfg.val_data else None)
    sources = [s for s in (source, val_source) if s is not None]
    separator = (cfg.doc_sep or None) if any(len(s.documents) > 1 for s in sources) else None
    counts: Counter = Counter()
    for s in sources:
        counts.update(s.counts)
    own, unknown = Vocab.chosen(counts, separator, cfg.max_vocab)
    vocab = base.vocab.extended(own) if base else own
    unknown = unknown or (previous or {}).get("unknown")  # a --max-vocab parent's symbol: eval and sample read so
    unknown = unknown if unknown in vocab else None
    split = _split(cfg, source, val_source, vocab, separator, unknown, base.labels if base else ())
    record = {
        "format": RECORD_FORMAT,
        "paths": list(cfg.data), "val_paths": list(cfg.val_data) if cfg.val_data else None,
        "include": list(cfg.include), "exclude": list(cfg.exclude),
        "doc_sep": separator, "max_vocab": cfg.max_vocab, "unknown": unknown,
        "unknown_characters": split.dropped, "vocab_size": len(vocab),
        "split": {"rule": split.plan.rule, "val_frac": cfg.val_frac, "about": split.about,
                  "train_characters": int(len(split.train)), "val_characters": int(len(split.val))},
        "documents": [_entry(d, split.plan.held.get(id(d))) for d in source.documents],
        "val_documents": [_entry(d) for d in split.plan.val_documents] if split.plan.rule == "val-data" else None,
        "skipped": [[name, why] for s in sources for name, why in s.skipped],
    }
    if split.plan.labels:  # only a labelled run's record has these keys: an unlabelled one's is as it was
        record.update(label_by=cfg.label_by, labels=sorted(split.plan.labels))
    if base and base.resume:
        check_same_data(base.run_dir, record, previous)
    lines, warnings = _report(cfg, source, val_source, own, counts, separator, unknown, split)
    return TrainingData(vocab, split.train, split.val, separator, unknown, record, lines, warnings, split.plan.labels,
                        split.segments)


@dataclass
class _Plan:
    """Which documents each text is encoded from, decided before any is encoded (the module docstring's rules)."""

    rule: str                                        # "val-data", "documents", "labels", "last-fraction", "none"
    parts: List[Tuple[Collection, List[Document]]]   # encoded in order: training and validation, or the whole
    held: Dict[int, object] = field(default_factory=dict)   # id(document) -> True, or the characters of its tail
    val_documents: List[Document] = field(default_factory=list)
    labels: Tuple[str, ...] = ()                     # a labelled run's label names, in the model's order
    found: Tuple[str, ...] = ()                      # the text's own labels, by name


@dataclass
class _Split:
    """The texts a plan made, encoded."""

    plan: _Plan
    train: np.ndarray
    val: np.ndarray
    dropped: int                 # characters that became the unknown symbol, in both
    about: str                   # the split in words
    segments: Optional[Tuple[Segments, Segments]] = None     # (training, validation) label segments


def _plan(cfg, source: Collection, val_source: Optional[Collection], base_labels: Sequence[str]) -> _Plan:
    documents = source.documents
    if cfg.label_by:
        return _labelled_plan(cfg, source, base_labels)
    if val_source is not None:
        return _Plan("val-data", [(source, documents), (val_source, val_source.documents)],
                     val_documents=val_source.documents)
    if cfg.val_frac > 0 and len(documents) > 1:
        train_documents, val_documents = document_split(documents, cfg.val_frac)
        return _Plan("documents", [(source, train_documents), (source, val_documents)],
                     {id(d): True for d in val_documents})
    return _Plan("last-fraction" if cfg.val_frac > 0 else "none", [(source, documents)])


def _labelled_plan(cfg, source: Collection, base_labels: Sequence[str]) -> _Plan:
    """Validation from every label, each label's share --val-frac of its characters: whole documents by the
    documents rule where one fits within that share, else the last --val-frac of the label's text (its
    documents in order; a label of one document: that document's tail). The labels are the base run's, in its
    order, then the text's new ones by name; a fine-tune may bring one label of its own."""
    found = tuple(sorted({d.label for d in source.documents}))
    labels = tuple(base_labels) + tuple(name for name in found if name not in base_labels)
    if len(labels) < 2:
        raise UserError(f"--label-by {cfg.label_by} found one label in {source.spec.given} ({found[0]}); labels "
                        "need two or more: give a folder of folders, several files or several paths")
    held: Dict[int, object] = {}
    for label in found if cfg.val_frac > 0 else ():
        group = [d for d in source.documents if d.label == label]
        share = cfg.val_frac * sum(d.characters for d in group)
        if len(group) > 1 and min(d.characters for d in group) <= share:
            held.update((id(d), True) for d in document_split(group, cfg.val_frac)[1])
            continue
        need = int(share)
        for d in reversed(group):   # the label's text's tail: whole documents from the end, then part of one
            if need <= 0:
                break
            held[id(d)] = True if d.characters <= need else need
            need -= d.characters
    return _Plan("labels", [(source, source.documents)], held, labels=labels, found=found)


def _split(cfg, source: Collection, val_source: Optional[Collection], vocab: Vocab, separator: Optional[str],
           unknown: Optional[str], base_labels: Sequence[str]) -> _Split:
    """The texts encoded and split by the rule in the module docstring: planned, then each part encoded once."""
    plan = _plan(cfg, source, val_source, base_labels)
    encoded = [collection.encode(documents, vocab, separator, unknown) for collection, documents in plan.parts]
    dropped, segments = sum(n for _, n in encoded), None
    if plan.rule == "labels":
        train, val, segments = _cut_labelled(plan, encoded[0][0], source.documents, vocab, separator)
    elif len(encoded) == 2:
        (train, _), (val, _) = encoded
    else:
        train, val = split_train_val(encoded[0][0], cfg.val_frac)
    return _Split(plan, train, val, dropped, _about(cfg, plan, train, val), segments)


def _cut_labelled(plan: _Plan, whole: np.ndarray, documents: Sequence[Document], vocab: Vocab,
                  separator: Optional[str]) -> tuple:
    """A labelled collection's two texts (copies) assembled from its encoding, each with its label segments
    (a separator belongs to the document after it)."""
    train_parts, val_parts, start = [], [], 0
    for d in documents:
        end = start + d.characters
        tail = plan.held.get(id(d), 0)
        cut = start if tail is True else end - tail
        train_parts.append((whole[start:cut], plan.labels.index(d.label)))
        val_parts.append((whole[cut:end], plan.labels.index(d.label)))
        start = end + (1 if separator else 0)
    sep = vocab.encode(separator) if separator else np.zeros(0, vocab.dtype)
    (train, train_segments), (val, val_segments) = (_assemble(parts, sep) for parts in (train_parts, val_parts))
    return train, val, (train_segments, val_segments)


def _about(cfg, plan: _Plan, train: np.ndarray, val: np.ndarray) -> str:
    """The split in words, for the run's output and data.json."""
    share = f"{len(val):,} characters, {len(val) / max(1, len(val) + len(train)):.1%}"
    if plan.rule == "val-data":
        return f"--val-data {' '.join(cfg.val_data)} ({_files(len(plan.val_documents))})"
    if plan.rule == "documents":
        return f"{_files(len(plan.held))} held out whole, chosen by a hash of their path ({share})"
    if plan.rule == "labels" and cfg.val_frac > 0:
        return (f"{cfg.val_frac * 100:g}% of each of {len(plan.found)} labels: whole documents (by a hash of their "
                f"path) where one fits, else the end of the label's text ({share})")
    return f"the last {cfg.val_frac * 100:g}% of the text" if cfg.val_frac > 0 else "none (--val-frac 0)"


def _assemble(parts: Sequence[Tuple[np.ndarray, int]], sep: np.ndarray) -> Tuple[np.ndarray, Segments]:
    """The non-empty parts joined by the separator, and where each part's label begins (its separator's place)."""
    parts = [(text, label) for text, label in parts if len(text)]
    if not parts:
        return np.zeros(0, sep.dtype), (np.zeros(1, np.int64), np.zeros(1, np.int64))
    pieces, starts, at = [], [], 0
    for i, (text, _) in enumerate(parts):
        if i and len(sep):
            pieces.append(sep)
        starts.append(at)
        at += (len(sep) if i else 0) + len(text)
        pieces.append(text)
    return np.concatenate(pieces), (np.asarray(starts, np.int64), np.asarray([lb for _, lb in parts], np.int64))


def _report(cfg, source: Collection, val_source: Optional[Collection], vocab: Vocab, counts: Counter,
            separator: Optional[str], unknown: Optional[str], split: _Split) -> Tuple[List[str], List[str]]:
    """What training prints about its data (one file: the first line only, as `info` does), and warnings."""
    total = {"documents": len(split.train) + len(split.val) + (1 if separator else 0),  # the separator between
             "labels": source.characters(separator=separator),  # as info counts: a split document is one
             "val-data": len(split.train)}.get(split.plan.rule, len(split.train) + len(split.val))
    lines, warnings = [f"Total {total} characters with {len(vocab)} unique tokens."], []
    if not source.one_file:
        lines.append(source.files_line())
    if val_source is not None and not val_source.one_file:
        lines.append(f"validation: {val_source.files_line()}")
    if cfg.max_vocab is not None:
        distinct = len(set(counts) | ({ord(separator)} if separator else set()))
        lines.append(f"--max-vocab {cfg.max_vocab}: " + (
            f"kept the {len(vocab) - 1} most frequent of {distinct} characters; the other "
            f"{distinct - len(vocab) + 1} ({split.dropped:,} occurrences) became U+FFFD"
            if unknown else f"all {len(vocab)} characters kept"))
    if not source.one_file or val_source is not None:
        joined = f"; documents joined by {show_char(separator)}" if separator else ""
        lines.append(f"validation: {split.about}{joined}")
    if split.plan.labels:
        lines.append(labels_line(cfg.label_by, source.documents))
    if separator and counts.get(ord(separator)):
        warnings.append(f"the separator {show_char(separator)} occurs {counts[ord(separator)]} times inside the "
                        "documents; the model will take those for boundaries (choose another --doc-sep)")
    return lines, warnings


def label_sizes(documents: Sequence[Document]) -> List[dict]:
    """Each label of `documents`, by name, with its documents and characters (`info --json`'s "labels")."""
    sizes: Dict[str, List[int]] = {}
    for d in documents:
        size = sizes.setdefault(d.label, [0, 0])
        size[0], size[1] = size[0] + 1, size[1] + d.characters
    return [{"label": label, "documents": n, "characters": c} for label, (n, c) in sorted(sizes.items())]


def labels_line(label_by: str, documents: Sequence[Document]) -> str:
    """The labels with their sizes, one line: `2 labels (--label-by folder): dickinson (12 documents, 210,301
    characters), whitman (...)`; one label is said to be too few for training."""
    sizes = label_sizes(documents)
    shown = ", ".join(f"{e['label']} ({_files(e['documents'])}, {e['characters']:,} characters)" for e in sizes)
    few = "; training needs two or more (or --init-from a labelled run)" if len(sizes) < 2 else ""
    return f"{len(sizes)} label{'s' if len(sizes) != 1 else ''} (--label-by {label_by}): {shown}{few}"


def _files(n: int) -> str:
    return f"{n} document{'s' if n != 1 else ''}"


def _entry(document: Document, held_out=None) -> dict:
    """A document in data.json: held_out is True (whole), or the characters of its tail held out (a label's
    single document); a labelled run's documents name their label."""
    entry = {"name": document.name, "key": document.key, "size": document.size, "sha256": document.sha256,
             "characters": document.characters}
    if document.label:
        entry["label"] = document.label
    return {**entry, "held_out": held_out} if held_out else entry


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


def check_same_data(run_dir: Path, current: dict, saved: Optional[dict]) -> None:
    """Refuse, in one line, to resume a run on data other than what it was trained on (`saved`: its data.json)."""
    if saved is None:
        return  # a run from before data.json: nothing to compare with
    changes = []
    for part, what in (("documents", "--data"), ("val_documents", "--val-data")):
        old = Counter((d.get("key"), d.get("sha256")) for d in saved.get(part) or [])
        new = Counter((d["key"], d["sha256"]) for d in current.get(part) or [])
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
    held = [sorted(f"{d.get('key')}:{d.get('held_out')}" for d in r.get("documents") or [] if d.get("held_out"))
            for r in (saved, current)]  # held_out: True (whole), or the length of a document's held-out tail
    if saved.get("labels") != current.get("labels") or saved.get("label_by") != current.get("label_by"):
        was, now = (f"--label-by {r.get('label_by')} ({', '.join(r.get('labels') or [])})" if r.get("label_by")
                    else "no labels" for r in (saved, current))
        changes.append(f"the labels are {now}, were {was}")
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
    """`charrnn info`: the summary line (and for more than one file given, the files line), and the --json object."""
    collection = Collection(spec)
    separator = collection.separator
    characters = collection.characters(separator=separator)
    vocab_size = len(set(collection.counts) | ({ord(separator)} if separator else set()))
    summary = f"Total {characters} characters with {vocab_size} unique tokens."
    lines, facts = [summary], {"characters": characters, "vocab_size": vocab_size}
    if not collection.one_file:
        lines.append(collection.files_line())
        facts.update(files=len(collection.documents), skipped=len(collection.skipped),
                     skipped_files=[{"path": name, "reason": why} for name, why in collection.skipped])
    if spec.label_by:
        lines.append(labels_line(spec.label_by, collection.documents))
        facts["labels"] = label_sizes(collection.documents)
    return lines, facts


def eval_text(paths: Sequence[str], include: Sequence[str], exclude: Sequence[str], vocab: Vocab,
              record: Optional[dict]) -> Tuple[Vocab, np.ndarray, Collection]:
    """The text `charrnn eval` reads: (its vocabulary, its indices, the collection read). Documents are joined by
    the run's separator (a run trained on one text has none: a newline, where the vocabulary has one). A
    --max-vocab run's text comes encoded in the model's vocabulary, every character it lacks read as the
    unknown symbol; otherwise in its own, for the caller to map (or refuse, or skip) what the model lacks."""
    separator = (record or {}).get("doc_sep")
    if not separator or separator not in vocab:
        separator = "\n" if "\n" in vocab else ""
    unknown = (record or {}).get("unknown")
    unknown = unknown if unknown in vocab else None
    source = Collection(Spec(tuple(paths), tuple(include), tuple(exclude), separator, "--data"))
    what = " ".join(paths)
    if unknown:
        return vocab, source.encode(source.documents, vocab, source.separator, unknown, what)[0], source
    own, _ = Vocab.chosen(source.counts, source.separator, None)
    return own, source.encode(source.documents, own, source.separator, what=what)[0], source
