"""One way in for text: a single file and a folder go through the same reader, scan, encoder and cache.

Each seam where the two ways in once differed has its test, run on both kinds of input: an edit in place
that keeps the size and restores the mtime; a file that grows while it is read; a cache left by the
previous format; the record and vocabulary of a run made before the change (written by charrnn at
624b558, whose data.json and vocab.json are copied below), and the tail split of tinyshakespeare.
The last tests read the layout of charrnn/data itself: the modules its docstring lists, in order, and
calls that only go one way along that order. References are Python's own (str, sorted, set, hashlib).
"""
import ast
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import charrnn.data.textfile
from charrnn.config import TrainConfig
from charrnn.data.dataset import training_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--impl", "naive", "--cell", "rnn", "--hidden", "8", "--embed", "4", "--layers", "1",
        "--batch-size", "2", "--seq-len", "8", "--eval-every", "1000", "--log-every", "1000", "--max-iters", "1"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Data dir and user cache under tmp_path."""
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def run(*argv) -> tuple:
    """`charrnn ARGV` in this process: (exit code, stdout, stderr) (conftest's CharrnnCLI.in_process)."""
    from conftest import CharrnnCLI

    done = CharrnnCLI.in_process(argv)
    return done.returncode, done.stdout, done.stderr


def words(seed: int, n: int) -> str:
    r = random.Random(seed)
    choices = "the fox river light stone bird sings falls".split()
    lines = [" ".join(r.choice(choices) for _ in range(7)) for _ in range(max(1, n // 40))]
    return "\n".join(lines) + "\n"


def make_input(tmp_path: Path, kind: str) -> tuple:
    """(what to pass as --data, the file the test changes): one file, or that file inside a folder of three."""
    folder = tmp_path / "docs"
    folder.mkdir()
    target = folder / "b.txt"
    target.write_text(words(2, 1500), encoding="utf-8")
    if kind == "file":
        return target, target
    (folder / "a.txt").write_text(words(1, 1500), encoding="utf-8")
    (folder / "c.txt").write_text(words(3, 1500), encoding="utf-8")
    return folder, target


def info(data) -> dict:
    code, out, err = run("info", data, "--json")
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------------ an edit in place

@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_edit_in_place_with_the_mtime_set_back_is_seen(kind, tmp_path):
    data, target = make_input(tmp_path, kind)
    before = info(data)
    found = os.stat(target)
    edited = target.read_bytes().replace(b"the", b"THE")  # same size, three characters never seen
    with open(target, "r+b") as f:                          # in place: the same inode
        f.write(edited)
    os.utime(target, ns=(found.st_atime_ns, found.st_mtime_ns))
    for _ in range(100):  # the ctime moves with any change, but only by a clock tick: wait for one
        if os.stat(target).st_ctime_ns != found.st_ctime_ns:
            break
        time.sleep(0.01)
        os.utime(target, ns=(found.st_atime_ns, found.st_mtime_ns))
    now = os.stat(target)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (found.st_size, found.st_mtime_ns, found.st_ino)
    assert now.st_ctime_ns != found.st_ctime_ns

    assert info(data)["vocab_size"] == before["vocab_size"] + 3
    read = training_data(TrainConfig(data=[str(data)], val_frac=0.0))
    entry = next(d for d in read.record["documents"] if d["key"] == "b.txt")
    assert entry["sha256"] == hashlib.sha256(edited).hexdigest()  # data.json names the text trained on
    assert edited.decode("utf-8") in read.vocab.decode(read.train)


# --------------------------------------------------------------- a file that grows as it is read

class GrowsOnFirstRead:
    """A file object that appends a line to the file on disk before its first read returns."""

    def __init__(self, f, path: Path):
        self.f, self.path, self.grown = f, path, False

    def read(self, n=-1):
        if not self.grown:
            self.grown = True
            with open(self.path, "ab") as more:
                more.write(b"one more line, written while charrnn was reading\n")
        return self.f.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("opening", [1, 2], ids=["while-scanned", "while-encoded"])
def test_a_file_that_grows_while_it_is_read_is_one_line_and_exit_2(kind, opening, tmp_path, monkeypatch):
    """The reader's `open` is replaced so that the target's n-th opening (1: the scan, 2: the encoding)
    grows the file as it is read: deterministic, where a writer in another process would race."""
    data, target = make_input(tmp_path, kind)
    openings = []

    def opener(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if Path(path) == target:
            openings.append(path)
            if len(openings) == opening:
                return GrowsOnFirstRead(f, target)
        return f

    monkeypatch.setattr(charrnn.data.textfile, "open", opener, raising=False)
    out_dir = tmp_path / "run"
    code, _, err = run("train", "--data", data, "--out", out_dir, *TINY, "--val-frac", "0")
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"charrnn: error: {target} changed while it was being read; run again"
    assert len(openings) == opening and not out_dir.exists()  # refused before anything was written


# ----------------------------------------------------------------------- the previous cache format

def _old_collection_key(root: Path, documents) -> tuple:
    """The folder and key charrnn 624b558 gave a collection's cache (format 1: no ctime in the stamps)."""
    where = hashlib.sha256(json.dumps([[str(root.resolve())], [], []]).encode()).hexdigest()[:16]
    stamps = []
    for key in documents:
        st = os.stat(root / key if root.is_dir() else root)
        stamps.append([0, key, st.st_size, st.st_mtime_ns, st.st_ino])
    return where, hashlib.sha256(json.dumps([1, [], [], stamps]).encode()).hexdigest()


def _write_old_collection_cache(data_dir: Path, root: Path, keys) -> Path:
    """A format-1 scan that lies (every document 5 characters of 'z'), and an encoding beside it."""
    where, key = _old_collection_key(root, keys)
    folder = data_dir / "collections" / where
    folder.mkdir(parents=True)
    results = [{"characters": 5, "sha256": "0" * 64} for _ in keys]
    (folder / "scan.json").write_text(json.dumps({"format": 1, "key": key, "results": results,
                                                  "codes": [ord("z")], "counts": [5 * len(keys)]}))
    np.save(folder / "0123456789abcdef0123.npy", np.zeros(5, np.uint8))
    (folder / "0123456789abcdef0123.json").write_text(json.dumps({"format": 1, "key": key, "characters": 5}))
    return folder


def _write_old_file_cache(folder: Path, path: Path) -> None:
    """The cache 624b558 kept for one text file (corpus.py), for its stamp now: a vocabulary and text that lie."""
    st = os.stat(path)
    text = len(path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True)
    np.save(folder / "feedfacefeedface.npy", np.zeros(text, np.uint8))
    meta = {"format": 1, "stamp": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                   "inode": st.st_ino},
            "sha256": "0" * 64, "characters": text, "array": "feedfacefeedface.npy", "vocab": ["z"]}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("where", ["collection", "beside-the-file", "data-dir"])
def test_a_cache_of_the_previous_format_is_never_read(where, tmp_path):
    data, target = make_input(tmp_path, "folder" if where == "collection" else "file")
    if where == "collection":
        old = _write_old_collection_cache(tmp_path / "data", data, ["a.txt", "b.txt", "c.txt"])
        text = "\x1e".join((data / n).read_text(encoding="utf-8") for n in ("a.txt", "b.txt", "c.txt"))
    elif where == "beside-the-file":
        _write_old_file_cache(target.parent / (target.name + ".charrnn-cache"), target)
        text = target.read_text(encoding="utf-8")
    else:
        key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
        _write_old_file_cache(tmp_path / "data" / "encoded" / key, target)
        text = target.read_text(encoding="utf-8")
    facts = info(data)
    assert (facts["characters"], facts["vocab_size"]) == (len(text), len(set(text)))
    read = training_data(TrainConfig(data=[str(data)], val_frac=0.0))
    assert read.vocab.decode(read.train) == text
    if where == "collection":  # rebuilt in place: the old scan replaced, its encoding dropped
        assert json.loads((old / "scan.json").read_text())["format"] != 1
        assert not (old / "0123456789abcdef0123.npy").exists()


def test_an_old_cache_folder_inside_a_folder_is_not_read_as_text(tmp_path):
    data, target = make_input(tmp_path, "folder")
    _write_old_file_cache(target.parent / (target.name + ".charrnn-cache"), target)  # meta.json is UTF-8
    assert info(data)["files"] == 3


# -------------------------------------------------------- runs made before: the same record, vocabulary, split

def _record(paths, documents, split, vocab_size, **settings) -> dict:
    return {"format": "charrnn-data/1", "paths": paths, "val_paths": None, "include": [], "exclude": [],
            "doc_sep": None, "max_vocab": None, "unknown": None, "unknown_characters": 0, **settings,
            "vocab_size": vocab_size, "split": split, "documents": documents, "val_documents": None, "skipped": []}


ONE = [{"name": "BASE/one.txt", "key": "one.txt", "size": 2857,
        "sha256": "afbd5fe2305f67160f14f002075112eccf84b496c8556bf57b8cef5b726d24df", "characters": 2846}]
TAIL = {"rule": "last-fraction", "val_frac": 0.1, "about": "the last 10% of the text",
        "train_characters": 2562, "val_characters": 284}
DOCS = [{"name": f"BASE/docs/d{i}/{i}.txt", "key": f"d{i}/{i}.txt", "size": size, "sha256": sha, "characters": n}
        for i, (size, n, sha) in enumerate([
            (768, 768, "447e0644936d14ce7b848982720b55e613fbf3cb49ed5bba4ebc1d02e7ee20f2"),
            (751, 750, "7c662974efc3ab2ab19b975b4a8c91ea515f77c5e02e702b84b02fab252da9e0"),
            (756, 754, "f9b450c67434442f6b9fc184458110503e2b799aafdb2fc1687b7d9c6b2bf4be"),
            (778, 775, "677a04dbece4705e9ee8f7224036a1f0b67a9359a5e99c290cfa7d6910ad9dab")])]
DOCS[3]["held_out"] = True
# data.json and vocab.json as charrnn 624b558 wrote them for these inputs (BASE: the folder they were in)
MADE_BEFORE = {
    "one": (["--data", "BASE/one.txt"], _record(["BASE/one.txt"], ONE, TAIL, 25),
            "\n abcdefghilnorstvxéï—中文😀"),
    "one, --max-vocab 12": (["--data", "BASE/one.txt", "--max-vocab", "12"],
                            _record(["BASE/one.txt"], ONE, TAIL, 12, max_vocab=12, unknown="\ufffd",
                                    unknown_characters=523),
                            " eghilnorst\ufffd"),
    "folder": (["--data", "BASE/docs", "--val-frac", "0.3"],
               _record(["BASE/docs"], DOCS, {"rule": "documents", "val_frac": 0.3, "about": "1 document held out "
                                             "whole, chosen by a hash of their path (775 characters, 25.4%)",
                                             "train_characters": 2274, "val_characters": 775}, 20, doc_sep="\x1e"),
               "\n\x1e abdefghilnorstvxü"),
}


def _inputs_made_before(base: Path) -> None:
    (base / "one.txt").write_bytes((words(1, 3000) + "naïve café — 中文 😀\n").encode("utf-8"))
    for i in range(4):
        (base / "docs" / f"d{i}").mkdir(parents=True)
        (base / "docs" / f"d{i}" / f"{i}.txt").write_bytes((words(10 + i, 800) + "ü" * i).encode("utf-8"))


@pytest.mark.parametrize("name", sorted(MADE_BEFORE))
def test_a_run_made_before_the_change_reads_the_same_data_and_resumes(name, tmp_path):
    base = tmp_path / "inputs"
    base.mkdir()
    _inputs_made_before(base)
    flags, record, vocab = MADE_BEFORE[name]
    flags = [f.replace("BASE", str(base)) for f in flags]
    out_dir = tmp_path / "run"
    code, _, err = run("train", *flags, "--out", out_dir, *TINY)
    assert code == 0, err
    written = (out_dir / "data.json").read_text(encoding="utf-8").replace(str(base), "BASE")
    assert json.loads(written) == record                  # what --resume compares, field for field
    assert "".join(json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))) == vocab
    # a run whose files are the ones 624b558 wrote resumes (the data check passes) and trains on
    (out_dir / "data.json").write_text(json.dumps(record, ensure_ascii=False).replace("BASE", str(base)),
                                       encoding="utf-8")
    code, _, err = run("train", *flags, "--out", out_dir, *TINY[:-1], "2", "--resume")
    assert code == 0, err


def test_tinyshakespeare_validates_on_its_last_tenth_with_the_vocabulary_sorted(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    read = training_data(TrainConfig(data=[str(shakespeare_path)], val_frac=0.1))
    assert "".join(read.vocab.chars) == "".join(sorted(set(text)))
    chars = np.array([ord(c) for c in read.vocab.chars], np.uint32)
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    n_val = len(text) // 10                                  # floor(0.1 * 1,115,394) = 111,539
    assert len(read.val) == n_val == 111_539
    assert np.array_equal(chars[read.train], codes[:-n_val]) and np.array_equal(chars[read.val], codes[-n_val:])


# ------------------------------------------------------------------------- the layout of charrnn/data

def _path_order() -> list:
    """The modules charrnn/data/__init__.py lists, in its order (the path of a text)."""
    doc = ast.get_docstring(ast.parse((ROOT / "charrnn" / "data" / "__init__.py").read_text(encoding="utf-8")))
    return [line.split()[0][:-3] for line in doc.splitlines() if line.startswith("    ") and ".py " in line]


def test_the_package_docstring_lists_every_data_module_in_order_and_each_says_what_it_does():
    order = _path_order()
    modules = sorted(p.stem for p in (ROOT / "charrnn" / "data").glob("*.py") if p.stem != "__init__")
    assert sorted(order) == modules and len(order) == len(set(order))
    for name in modules:
        source = (ROOT / "charrnn" / "data" / f"{name}.py").read_text(encoding="utf-8")
        assert len(ast.get_docstring(ast.parse(source)) or "") > 80, name


def test_data_modules_import_only_those_before_them():
    order = _path_order()
    for i, name in enumerate(order):
        tree = ast.parse((ROOT / "charrnn" / "data" / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module.split(".")[2] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("charrnn.data.")}
        assert imported <= set(order[:i]), f"{name} imports {sorted(imported - set(order[:i]))}"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_following_data_to_the_first_window_calls_only_down_the_path(kind, tmp_path):
    """Every call from one data module into another, traced from training_data to the first window, goes
    to a module earlier in the path: no callback, no module that calls back up."""
    from charrnn.data.batching import make_streams

    data, _ = make_input(tmp_path, kind)
    order = _path_order()
    calls = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if callee.startswith("charrnn.data.") and caller.startswith("charrnn.data.") and callee != caller:
            calls.add((caller.split(".")[2], callee.split(".")[2]))

    sys.setprofile(profile)
    try:
        for _ in range(2):  # the first reads and caches, the second reads the cache
            read = training_data(TrainConfig(data=[str(data)]))
            make_streams(read.train, 2, 8).window(0)
    finally:
        sys.setprofile(None)
    assert {"dataset", "collection", "documents", "sources", "textfile", "vocab", "cache"} <= {m for c in calls
                                                                                               for m in c}
    upward = [(a, b) for a, b in calls if order.index(b) > order.index(a)]
    assert not upward, upward
