"""Collections: folders and several paths as documents, the separator, the document split, --val-data,
the run's record of its data (data.json), --max-vocab, the collection cache and the offline pystdlib.

References are Python's own: os-level listings written by hand, str joins, len and set. Every command
runs in this process (`main`) with the tiny NumPy model, so the whole file stays fast.
"""
import contextlib
import io
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest

import charrnn
import charrnn.data.collection
from charrnn.cli import main
from charrnn.config import TrainConfig, from_dict
from charrnn.data.collection import Collection
from charrnn.data.dataset import document_split, training_data
from charrnn.data.documents import DEFAULT_SEP, Document, Spec
from charrnn.data.vocab import UNKNOWN

TINY = ["--impl", "naive", "--cell", "rnn", "--hidden", "16", "--embed", "8", "--layers", "1",
        "--batch-size", "2", "--seq-len", "8", "--eval-every", "1000", "--log-every", "1000"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Data dir and user cache under tmp_path, and no network."""
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")


def run(*argv) -> tuple:
    """`charrnn ARGV` in this process: (exit code, stdout, stderr); train's signal handlers are put back."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def ok(*argv) -> str:
    code, out, err = run(*argv)
    assert code == 0 and "Traceback" not in err, (code, out, err)
    return out


def one_line_error(*argv) -> str:
    code, out, err = run(*argv)
    assert code == 2 and "Traceback" not in err, (code, out, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("charrnn: error:"), err
    return lines[-1]


def words(seed: int, n: int = 400, vocabulary="the fox river light stone bird sings falls") -> str:
    r = random.Random(seed)
    choices = vocabulary.split()
    lines = [" ".join(r.choice(choices) for _ in range(7)) for _ in range(max(1, n // 40))]
    return "\n".join(lines) + "\n"


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Nested text files, and every kind of file a folder must skip without failing."""
    root = tmp_path / "poems"
    write(root / "b.txt", words(1))
    write(root / "a" / "z.txt", words(2))
    write(root / "a" / "deeper" / "y.md", words(3))
    write(root / "c-notes.txt", "naïve café, 中文 😀\n" * 5)
    write(root / ".hidden.txt", "hidden file\n")
    write(root / ".git" / "config", "hidden folder\n")
    write(root / "image.bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(root / "latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))
    write(root / "empty.txt", b"")
    os.symlink("..", root / "a" / "loop")          # a symlink loop back to the folder
    os.symlink("nowhere.txt", root / "dangling.txt")
    os.mkfifo(root / "pipe.txt")                    # opening it would block: never opened
    return root


# The folder's text files in sorted order of their relative path, compared folder by folder
READ = ["a/deeper/y.md", "a/z.txt", "b.txt", "c-notes.txt"]


def joined(root: Path, names, sep=DEFAULT_SEP) -> str:
    return sep.join((root / n).read_text(encoding="utf-8") for n in names)


# ---------------------------------------------------------------------------------------------- folders

def test_a_folder_reads_every_text_file_in_order_and_skips_the_rest(folder):
    collection = Collection(Spec((str(folder),)))
    assert [d.key for d in collection.documents] == READ
    assert sorted(why for _, why in collection.skipped) == ["binary", "broken link", "empty", "not UTF-8",
                                                            "not a regular file"]
    text = joined(folder, READ)
    out = ok("info", folder).splitlines()
    assert out[0] == f"Total {len(text)} characters with {len(set(text))} unique tokens."
    assert out[1].startswith("4 files read") and "5 skipped" in out[1] and "image.bin (binary)" in out[1]
    facts = json.loads(ok("info", folder, "--json"))
    assert (facts["characters"], facts["vocab_size"]) == (len(text), len(set(text)))
    assert (facts["files"], facts["skipped"]) == (4, 5)
    data = training_data(TrainConfig(data=[str(folder)], val_frac=0.0))   # the joined text itself, encoded
    assert data.vocab.decode(data.train) == text
    trained = ok("train", "--data", folder, "--out", folder.parent / "run", *TINY, "--max-iters", "1").splitlines()
    assert trained[1] == out[1]                            # training says the same in one line


def test_encoding_needs_uint32_only_beyond_65536_symbols():
    from charrnn.data.vocab import Encoder, Vocab

    for n, dtype in ((65536, np.uint16), (65537, np.uint32)):
        codes = list(range(0x20, 0x20 + n // 2)) + list(range(0x10000, 0x10000 + n - n // 2))
        vocab = Vocab.from_code_points(codes)
        assert len(vocab) == n and vocab.dtype == dtype
        text = np.array(codes[::-1], dtype=np.uint32)
        encoded = Encoder(vocab)(text)
        assert encoded.dtype == dtype and vocab.decode(encoded) == "".join(map(chr, codes[::-1]))
    with pytest.raises(charrnn.UserError, match="outside"):
        Encoder(Vocab(("a", "b")))(np.array([ord("a"), 0x1F600], dtype=np.uint32))
    assert Encoder(Vocab(("a", UNKNOWN)), UNKNOWN)(np.array([97, 0x1F600, 98], dtype=np.uint32)).tolist() == [0, 1, 1]


def test_a_file_named_explicitly_is_still_refused_in_one_line(folder):
    for name in ("latin1.txt", "image.bin", "empty.txt"):
        line = one_line_error("info", folder / "b.txt", folder / name)
        assert str(folder / name) in line
    assert "no UTF-8 text file" in one_line_error("info", folder, "--include", "*.bin")


def test_several_paths_and_include_exclude(folder, tmp_path):
    extra = write(tmp_path / "extra.txt", words(9))
    spec = Spec((str(extra), str(folder)), include=("*.txt",), exclude=("deeper", "c-*"))
    assert [d.key for d in Collection(spec).documents] == ["extra.txt", "a/z.txt", "b.txt"]
    assert [d.key for d in Collection(Spec((str(folder),), include=("a/*",))).documents] == ["a/deeper/y.md", "a/z.txt"]
    text = extra.read_text(encoding="utf-8") + DEFAULT_SEP + joined(folder, ["a/z.txt", "b.txt"])
    facts = json.loads(ok("info", extra, folder, "--include", "*.txt", "--exclude", "deeper", "--exclude", "c-*",
                          "--json"))
    assert facts["characters"] == len(text) and facts["files"] == 3
    # the same folder twice is read once
    assert [d.key for d in Collection(Spec((str(folder), str(folder / "a")))).documents] == READ


def test_the_scan_and_the_encoding_are_cached(folder, monkeypatch):
    first = Collection(Spec((str(folder),)))
    vocab = charrnn.data.vocab.Vocab.from_code_points(set(first.counts) | {ord(DEFAULT_SEP)})
    encoded, _ = first.encode(first.documents, vocab, DEFAULT_SEP)

    def no_reading(*args, **kwargs):
        raise AssertionError("a file was read again instead of the cache")

    monkeypatch.setattr(charrnn.data.collection, "decoded_blocks", no_reading)
    second = Collection(Spec((str(folder),)))
    again, _ = second.encode(second.documents, vocab, DEFAULT_SEP)
    assert isinstance(again.base, np.memmap) or isinstance(again, np.memmap)
    assert np.array_equal(again, encoded) and vocab.decode(again) == joined(folder, READ)
    monkeypatch.undo()
    os.utime(folder / "b.txt", ns=(1, 1))  # a changed stamp: scanned again
    monkeypatch.setattr(charrnn.data.collection, "decoded_blocks", no_reading)
    with pytest.raises(AssertionError, match="read again"):
        Collection(Spec((str(folder),)))


# ----------------------------------------------------------------------------------- the separator

def test_samples_stop_at_the_document_separator(tmp_path):
    root = tmp_path / "three"
    for i in range(3):
        write(root / f"doc{i}.txt", words(i, 300))
    out_dir = tmp_path / "run"
    ok("train", "--data", root, "--out", out_dir, *TINY, "--max-iters", "5", "--val-frac", "0")
    assert DEFAULT_SEP in json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    assert json.loads((out_dir / "data.json").read_text(encoding="utf-8"))["doc_sep"] == DEFAULT_SEP
    sample = ["sample", "--checkpoint", out_dir, "--impl", "naive", "--length", "3000", "--seed", "3"]
    full = json.loads(ok(*sample, "--json"))["samples"][0]
    assert DEFAULT_SEP in full                        # the model does end documents
    document = full.split(DEFAULT_SEP)[0]
    assert ok(*sample, "--stop-at-sep") == document + "\n"         # streamed, and cut where the document ends
    batch = ["--num-samples", "3", "--json"]   # three drawn as one batch: each cut where its own document ends
    wholes = json.loads(ok(*sample, *batch))["samples"]
    texts = json.loads(ok(*sample, "--stop-at-sep", *batch))["samples"]
    assert any(DEFAULT_SEP in w for w in wholes)
    assert texts == [w.split(DEFAULT_SEP)[0] for w in wholes] and all(DEFAULT_SEP not in t for t in texts)
    single = tmp_path / "single"
    ok("train", "--data", root / "doc0.txt", "--out", single, *TINY, "--max-iters", "2", "--val-frac", "0")
    assert "--stop-at-sep" in one_line_error("sample", "--checkpoint", single, "--impl", "naive", "--stop-at-sep")


def test_doc_sep_can_be_chosen(tmp_path):
    root = tmp_path / "two"
    write(root / "a.txt", words(1))
    write(root / "b.txt", words(2))
    out_dir = tmp_path / "run"
    ok("train", "--data", root, "--out", out_dir, *TINY, "--max-iters", "2", "--val-frac", "0", "--doc-sep", "\\f")
    assert json.loads((out_dir / "data.json").read_text(encoding="utf-8"))["doc_sep"] == "\f"
    assert "--doc-sep" in one_line_error("train", "--data", root, "--out", tmp_path / "r2", *TINY, "--doc-sep", "ab")
    assert TrainConfig(doc_sep="U+241E").doc_sep == "\u241e" and TrainConfig(doc_sep="none").doc_sep == ""


# ------------------------------------------------------------------------------------------ validation

def documents(sizes) -> list:
    return [Document(f"d/{i}.txt", f"{i}.txt", Path(f"{i}.txt"), n, 0, 0, i, 0, False, characters=n)
            for i, n in enumerate(sizes)]


def test_the_document_split_is_fixed_and_holds_out_whole_documents():
    docs = documents(random.Random(0).choices(range(100, 5000), k=200))
    train, val = document_split(docs, 0.1)
    assert {d.key for d in train} | {d.key for d in val} == {d.key for d in docs}
    assert not {d.key for d in train} & {d.key for d in val}
    total = sum(d.characters for d in docs)
    assert 0.08 * total <= sum(d.characters for d in val) <= 0.1 * total
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    assert {d.key for d in document_split(shuffled, 0.1)[1]} == {d.key for d in val}  # by path, not by position
    positions = sorted(docs.index(d) for d in val)
    assert positions[0] < 50 and positions[-1] > 150          # spread across the collection, not its tail
    assert len(document_split(documents([1000, 10]), 0.1)[1]) == 1      # at least one: the smallest
    assert document_split(documents([1000, 10]), 0.1)[1][0].characters == 10
    assert document_split(documents([500]), 0.5)[1] == [] and document_split(docs, 0.0)[1] == []


def test_a_folder_validates_on_whole_documents_and_a_file_on_its_tail(tmp_path):
    root = tmp_path / "many"
    for i in range(12):
        write(root / f"{i:02d}.txt", words(i, 400))
    out_dir = tmp_path / "run"
    ok("train", "--data", root, "--out", out_dir, *TINY, "--max-iters", "2", "--val-frac", "0.2")
    record = json.loads((out_dir / "data.json").read_text(encoding="utf-8"))
    held = [d for d in record["documents"] if d.get("held_out")]
    assert record["split"]["rule"] == "documents" and 1 <= len(held) < 12
    assert record["split"]["val_characters"] == sum(d["characters"] for d in held) + len(held) - 1
    assert held != record["documents"][-len(held):] or len(held) == 1
    single = tmp_path / "single"
    ok("train", "--data", root / "00.txt", "--out", single, *TINY, "--max-iters", "2", "--val-frac", "0.2")
    split = json.loads((single / "data.json").read_text(encoding="utf-8"))["split"]
    n = len((root / "00.txt").read_text(encoding="utf-8"))
    assert split["rule"] == "last-fraction" and split["val_characters"] == int(n * 0.2)


def test_val_data_is_a_separate_validation_set(tmp_path):
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    for i in range(3):
        write(train_dir / f"{i}.txt", words(i))
    write(val_dir / "v1.txt", words(10))
    write(val_dir / "v2.txt", words(11) + "Ωmega\n")    # a character training never sees: still in the vocabulary
    out_dir = tmp_path / "run"
    out = ok("train", "--data", train_dir, "--val-data", val_dir, "--out", out_dir, *TINY, "--max-iters", "4",
             "--eval-every", "2")
    assert "validation: --val-data" in out
    record = json.loads((out_dir / "data.json").read_text(encoding="utf-8"))
    assert record["split"]["rule"] == "val-data" and [d["key"] for d in record["val_documents"]] == ["v1.txt", "v2.txt"]
    assert record["split"]["val_characters"] == len(joined(val_dir, ["v1.txt", "v2.txt"]))
    assert record["split"]["train_characters"] == len(joined(train_dir, ["0.txt", "1.txt", "2.txt"]))
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in row for row in rows)


# ----------------------------------------------------------------------------------- the run's record

def test_resume_on_changed_data_is_refused_in_one_line(tmp_path):
    root = tmp_path / "docs"
    for i in range(3):
        write(root / f"{i}.txt", words(i))
    out_dir = tmp_path / "run"
    train = ["train", "--data", root, "--out", out_dir, *TINY]
    ok(*train, "--max-iters", "2")
    os.utime(root / "1.txt", ns=(10**18, 10**18))              # touched, not changed: resumes
    ok(*train, "--max-iters", "3", "--resume")
    write(root / "1.txt", words(1) + "one more line\n")
    line = one_line_error(*train, "--max-iters", "4", "--resume")
    assert "the data changed since" in line and "1.txt" in line and "changed" in line
    write(root / "3.txt", words(3))
    assert "added" in one_line_error(*train, "--max-iters", "4", "--resume")
    evaluated = json.loads(ok("eval", "--checkpoint", out_dir, "--impl", "naive", "--data", root / "0.txt", "--json"))
    assert evaluated["trained_on"]["paths"] == [str(root)] and evaluated["trained_on"]["files"] == 3
    text = ok("eval", "--checkpoint", out_dir, "--impl", "naive", "--data", root / "0.txt").splitlines()
    assert text[1].startswith(f"model trained on {root} (3 files")


def test_a_run_inside_the_folder_is_not_read_as_text(tmp_path, monkeypatch):
    root = tmp_path / "notes"
    for i in range(3):
        write(root / f"{i}.txt", words(i))
    monkeypatch.chdir(root)
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(root / "data"))   # its caches too
    ok("train", "--data", ".", "--out", "runs/first", *TINY, "--max-iters", "2")
    out = ok("train", "--data", ".", "--out", "runs/first", *TINY, "--max-iters", "3", "--resume")
    files = next(line for line in out.splitlines() if "files read" in line)
    assert files.startswith("3 files read") and "a charrnn run" in files and "data folder" in files


def test_an_older_config_with_one_data_string_still_loads():
    cfg = from_dict(TrainConfig, {"data": "tinyshakespeare", "out": "x"}, "config.json")
    assert cfg.data == ("tinyshakespeare",) and TrainConfig(data=["a", "b"]).data == ("a", "b")


# ------------------------------------------------------------------------------------------ any script

def test_thousands_of_characters_with_max_vocab(tmp_path):
    r = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(5000)]
    text = "".join(r.choices(chars, [1 / (i + 1) for i in range(5000)], k=20000)) + "".join(chars)
    text = "\n".join(text[i:i + 30] for i in range(0, len(text), 30))
    path = write(tmp_path / "cjk.txt", text)
    assert json.loads(ok("info", path, "--json"))["vocab_size"] == 5001
    out_dir = tmp_path / "run"
    out = ok("train", "--data", path, "--out", out_dir, *TINY, "--max-iters", "3", "--max-vocab", "2000")
    assert "Total" in out and "2000 unique tokens" in out and "U+FFFD" in out
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 2000 and UNKNOWN in vocab
    record = json.loads((out_dir / "data.json").read_text(encoding="utf-8"))
    assert record["max_vocab"] == 2000 and record["unknown"] == UNKNOWN and record["unknown_characters"] > 0
    model = charrnn.load(out_dir, impl="naive")
    for seed in range(3):
        sample = model.sample("", 3000, temperature=2.0, seed=seed)   # hot: rare symbols get their chance
        assert UNKNOWN not in sample and len(set(sample)) > 500
    assert UNKNOWN not in model.beam("中", 30, beam=3)
    assert UNKNOWN not in json.loads(ok("sample", "--checkpoint", out_dir, "--impl", "naive", "--length", "2000",
                                        "--temperature", "2", "--top-k", "1500", "--json"))["samples"][0]
    result = json.loads(ok("eval", "--checkpoint", out_dir, "--impl", "naive", "--data", path, "--json"))
    assert result["characters"] == len(text) - 1 and np.isfinite(result["loss"])
    ok("sample", "--checkpoint", out_dir, "--impl", "naive", "--prime", chars[-1] + "Ω", "--length", "5")


# ------------------------------------------------------------------------------------ offline pystdlib

def test_pystdlib_is_a_collection_whose_validation_spans_the_library():
    spec = Spec(("pystdlib",))
    collection = Collection(spec)
    assert len(collection.documents) > 50 and all(d.key.endswith(".py") for d in collection.documents)
    assert not any("decoding_table" in d.path.read_text(encoding="utf-8") for d in collection.documents)
    train, val = document_split(collection.documents, 0.1)
    packages = {d.key.split("/")[0].removesuffix(".py") for d in val}
    assert len(packages) >= 5, packages                       # modules from all over, not one kind of file
    assert 0.05 < sum(d.characters for d in val) / sum(d.characters for d in collection.documents) <= 0.1
    again = Collection(spec)                                  # deterministic (and cached)
    assert [(d.key, d.sha256) for d in again.documents] == [(d.key, d.sha256) for d in collection.documents]
