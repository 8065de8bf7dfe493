"""The data layer and the `info` command against independent references.

References: Python's own str/len/set for text facts, `np.arange` data (each
value is its own position, so any misplaced window shows), the published size
of tinyshakespeare, and the CLI contract (exit 2, one line on stderr).
"""
import json
import math
import os
import random
import shutil
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import charrnn.data.collection
import charrnn.data.sources
from charrnn.cli import main
from charrnn.config import TrainConfig
from charrnn.data.batching import make_streams
from charrnn.data.dataset import split_train_val, training_data
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
MIXED = "Hello, wörld! naïve café — 中文 😀 \U0010fffd\ttab\r\nline\n"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """In-process runs: data dir and user cache under tmp_path; texts go in tmp_path / 'texts'."""
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    texts = tmp_path / "texts"
    texts.mkdir()
    return texts


def distinct_chars(n: int) -> str:
    """n different characters, spread over the BMP and beyond, in a shuffled order."""
    chars = [chr(c) for c in range(0x20, 0x20 + n // 2)] + [chr(0x10000 + c) for c in range(n - n // 2)]
    random.Random(n).shuffle(chars)
    return "".join(chars)


# ---------------------------------------------------------------- vocab


@SETTINGS
@given(st.text(min_size=1), st.randoms())
@example("a\U0001F600\U0010FFFF\x00\n", random.Random(0))
def test_vocab_sorted_stable_and_round_trips(text, rnd):
    vocab = Vocab.from_text(text)
    assert set(vocab.chars) == set(text)
    assert all(ord(a) < ord(b) for a, b in zip(vocab.chars, vocab.chars[1:]))  # by code point, no repeats
    shuffled = list(text)
    rnd.shuffle(shuffled)
    assert Vocab.from_text("".join(shuffled)) == vocab  # order of appearance does not matter
    encoded = vocab.encode(text)
    assert encoded.shape == (len(text),)
    assert encoded.tolist() == [vocab.chars.index(c) for c in text]
    assert vocab.decode(encoded) == text


@pytest.mark.parametrize("n, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16), (1000, np.uint16)])
def test_vocab_dtype_is_smallest_that_fits(n, dtype):
    text = distinct_chars(n)
    vocab = Vocab.from_text(text)
    assert len(vocab) == n
    assert vocab.dtype == np.dtype(dtype)
    encoded = vocab.encode(text)
    assert encoded.dtype == np.dtype(dtype)
    assert sorted(encoded.tolist()) == list(range(n))  # the largest index survives the cast
    assert vocab.decode(encoded) == text


def test_vocab_save_load_round_trip(tmp_path):
    vocab = Vocab.from_text(MIXED + '"\\\x00')
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == list(vocab.chars)
    assert Vocab.load(path) == vocab


@pytest.mark.parametrize("content", ["not json", '{"a": 1}', "[]", '["ab"]', '["a", "a"]'])
def test_vocab_load_rejects_damaged_file(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError):
        Vocab.load(path)


def test_vocab_unknown_characters_are_listed():
    vocab = Vocab.from_text("abc")
    with pytest.raises(UserError) as info:
        vocab.encode("abx\ny😀ab")
    message = str(info.value)
    for c in "x\ny😀":
        assert repr(c) in message
    for c in "ab":
        assert repr(c) not in message


# ---------------------------------------------------------------- batching


@st.composite
def layouts(draw):
    batch_size = draw(st.integers(1, 9))
    seq_len = draw(st.integers(1, 12))
    n = draw(st.integers(batch_size * seq_len + 1, batch_size * seq_len * 6 + 20))
    return n, batch_size, seq_len


@SETTINGS
@given(layouts())
def test_windows_tile_each_stream_in_order(layout):
    n, B, T = layout
    data = np.arange(n)  # each value is its position in the text
    streams = make_streams(data, B, T)
    L = streams.inputs.shape[1]
    assert streams.batch_size == B
    assert B * L + 1 <= n < B * (L + 1) + 1  # the longest streams the text allows (targets need one more)
    W = streams.num_windows
    assert W * T <= L < (W + 1) * T and W >= 1
    windows = [streams.window(k) for k in range(W)]
    for x, y in windows:
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == np.int64
        assert x.flags.c_contiguous and y.flags.c_contiguous
        assert np.array_equal(y, x + 1)  # every target is the character after its input
    for b in range(B):
        inputs = np.concatenate([x[b] for x, _ in windows])
        targets = np.concatenate([y[b] for _, y in windows])
        assert np.array_equal(inputs, data[b * L : b * L + W * T])
        assert np.array_equal(targets, data[b * L + 1 : b * L + W * T + 1])
    for k in (-1, W):
        with pytest.raises(IndexError):
            streams.window(k)


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 12), st.data())
def test_too_short_text_raises(B, T, data):
    n = data.draw(st.integers(0, B * T))
    with pytest.raises(UserError, match="--batch-size"):
        make_streams(np.arange(n), B, T)
    make_streams(np.arange(B * T + 1), B, T)  # one more character is enough


@pytest.mark.parametrize("B, T", [(0, 5), (3, 0)])
def test_nonpositive_sizes_raise(B, T):
    with pytest.raises(UserError):
        make_streams(np.arange(100), B, T)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 6), st.integers(0, 30))
def test_shards_are_disjoint_contiguous_and_reassemble(world, per, T, extra):
    B = world * per
    streams = make_streams(np.arange(B * T * 3 + 1 + extra), B, T)
    shards = [streams.shard(rank, world) for rank in range(world)]
    for rank, shard in enumerate(shards):
        assert shard.batch_size == per and shard.seq_len == T
        assert np.array_equal(shard.inputs, streams.inputs[rank * per : (rank + 1) * per])
        assert np.array_equal(shard.targets, streams.targets[rank * per : (rank + 1) * per])
    assert np.array_equal(np.concatenate([s.inputs for s in shards]), streams.inputs)
    assert np.array_equal(np.concatenate([s.targets for s in shards]), streams.targets)
    for k in range(streams.num_windows):
        full_x, full_y = streams.window(k)
        assert np.array_equal(np.concatenate([s.window(k)[0] for s in shards]), full_x)
        assert np.array_equal(np.concatenate([s.window(k)[1] for s in shards]), full_y)


@SETTINGS
@given(st.integers(2, 12), st.integers(2, 5))
def test_shard_of_indivisible_batch_raises(B, world):
    assume(B % world)
    streams = make_streams(np.arange(B * 4 + 1), B, 2)
    with pytest.raises(UserError, match="--batch-size"):
        streams.shard(0, world)


@SETTINGS
@given(st.integers(0, 5000), st.floats(0.0, 1.0, exclude_max=True))
def test_split_takes_the_last_fraction(n, val_frac):
    data = np.arange(n)
    train, val = split_train_val(data, val_frac)
    assert len(val) == math.floor(n * val_frac)
    assert np.array_equal(np.concatenate([train, val]), data)


@pytest.mark.parametrize("val_frac", [-0.1, 1.0, 1.5])
def test_split_rejects_bad_fraction(val_frac):
    with pytest.raises(UserError, match="--val-frac"):
        split_train_val(np.arange(10), val_frac)


# ---------------------------------------------------------------- dataset


def read_as_training_does(path):
    """(vocab, indices) of the whole text at `path`, through the one way in (`training_data`, --val-frac 0)."""
    data = training_data(TrainConfig(data=[str(path)], val_frac=0.0))
    assert len(data.val) == 0
    return data.vocab, data.train


def assert_encodes(vocab, data, text):
    """Against Python alone: the vocabulary is sorted(set(text)), each index its character's place in it."""
    reference = sorted(set(text))
    assert vocab.chars == tuple(reference)
    assert data.dtype == (np.uint8 if len(reference) <= 256 else np.uint16)
    place = {c: i for i, c in enumerate(reference)}
    assert np.asarray(data).tolist() == [place[c] for c in text]


def is_memmap(array) -> bool:
    return isinstance(array, np.memmap) or isinstance(getattr(array, "base", None), np.memmap)


@pytest.mark.parametrize("block_bytes", [1, 5, None])  # tiny blocks split multibyte characters
@pytest.mark.parametrize("cached", [True, False])
def test_the_text_read_in_blocks_is_the_text(isolated, tmp_path, monkeypatch, block_bytes, cached):
    if block_bytes:
        monkeypatch.setattr(charrnn.data.collection, "BLOCK_BYTES", block_bytes)
    if not cached:  # neither the data dir nor the user cache can be written: encoded in memory
        for folder in (tmp_path / "data", tmp_path / "xdg"):
            folder.mkdir(mode=0o555)
    text = MIXED * 7
    path = isolated / "mixed.txt"
    path.write_bytes(text.encode("utf-8"))
    vocab, data = read_as_training_does(path)
    assert len(data) == len(text) and is_memmap(data) == cached
    assert_encodes(vocab, data, text)


def test_second_load_is_memory_mapped_from_cache(isolated, tiny_text, monkeypatch):
    text = tiny_text.read_text(encoding="utf-8")
    assert_encodes(*read_as_training_does(tiny_text), text)

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read again instead of the cache")

    monkeypatch.setattr(charrnn.data.collection, "decoded_blocks", no_reading)
    vocab, data = read_as_training_does(tiny_text)
    assert is_memmap(data)
    assert_encodes(vocab, data, text)


@pytest.mark.parametrize("same_size", [False, True])
def test_changed_file_is_encoded_again(isolated, same_size):
    path = isolated / "text.txt"
    old = "abcabcabc hello\n" * 20
    new = ("xyzxyzxyz HELLO\n" * 20) if same_size else ("entirely new content, é\n" * 15)
    path.write_text(old, encoding="utf-8")
    assert_encodes(*read_as_training_does(path), old)
    before = os.stat(path).st_mtime_ns
    path.write_text(new, encoding="utf-8")
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))  # an edit a moment later
    assert_encodes(*read_as_training_does(path), new)


@pytest.mark.parametrize("block_bytes", [1, None])
def test_utf8_bom_is_stripped(isolated, monkeypatch, block_bytes):
    if block_bytes:
        monkeypatch.setattr(charrnn.data.collection, "BLOCK_BYTES", block_bytes)
    text = "first line\nsecond \ufeff stays inside\n"
    path = isolated / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    vocab, data = read_as_training_does(path)
    assert len(data) == len(text)
    assert_encodes(vocab, data, text)


def test_crlf_is_kept(isolated):
    text = "one\r\ntwo\r\nthree\n"
    path = isolated / "crlf.txt"
    path.write_bytes(text.encode("utf-8"))
    vocab, data = read_as_training_does(path)
    assert len(data) == len(text) == 16
    assert "\r" in vocab
    assert_encodes(vocab, data, text)


def test_large_vocabulary_gives_uint16(isolated):
    text = distinct_chars(300) * 3
    path = isolated / "wide.txt"
    path.write_text(text, encoding="utf-8")
    vocab, data = read_as_training_does(path)
    assert len(vocab) == 300
    assert data.dtype == np.uint16
    assert_encodes(vocab, data, text)


def test_read_only_text_folder_gets_nothing_written_and_a_read_only_data_dir_uses_the_user_cache(
        isolated, tiny_text, tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    path = folder / "tiny.txt"
    shutil.copy(tiny_text, path)
    text = path.read_text(encoding="utf-8")
    (tmp_path / "data").mkdir(mode=0o555)
    folder.chmod(0o555)
    try:
        for _ in range(2):  # the second load reads the cache the first one wrote
            vocab, data = read_as_training_does(path)
            assert_encodes(vocab, data, text)
            assert is_memmap(data)
            assert sorted(p.name for p in folder.iterdir()) == ["tiny.txt"]
    finally:
        folder.chmod(stat.S_IRWXU)
    assert not any((tmp_path / "data").iterdir())
    assert any((tmp_path / "xdg" / "charrnn" / "collections").rglob("*.npy"))  # the user cache took it


# ---------------------------------------------------------------- info


def test_info_tinyshakespeare(run_cli, shakespeare_path):
    result = run_cli(["info", shakespeare_path])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Total 1115394 characters with 65 unique tokens.\n"
    result = run_cli(["info", shakespeare_path, "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"characters": 1115394, "vocab_size": 65}


def test_info_counts_characters_not_bytes(run_cli, tiny_text):
    text = tiny_text.read_text(encoding="utf-8") + MIXED + "Ωμέγα ½ 🎉\n"
    tiny_text.write_text(text, encoding="utf-8")
    assert len(text.encode("utf-8")) > len(text)  # the file really has multibyte characters
    result = run_cli(["info", tiny_text, "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"characters": len(text), "vocab_size": len(set(text))}
    result = run_cli(["info", tiny_text])
    assert result.stdout == f"Total {len(text)} characters with {len(set(text))} unique tokens.\n"


# ---------------------------------------------------------------- bad input


def assert_one_line_error(result, stdout_empty=True):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("charrnn: error:"), result.stderr
    if stdout_empty:
        assert result.stdout == ""


BAD_FILES = {
    "empty": b"",
    "bom-only": b"\xef\xbb\xbf",
    "binary": b"\x7fELF\x02\x01\x01\x00\x00\x00 some text after",
    "latin-1": "caf\xe9 au lait\n".encode("latin-1"),
    "utf-16": "hello, world\n".encode("utf-16"),
    "truncated-utf-8": "ok then \u20ac".encode("utf-8")[:-1],
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_info_rejects_bad_file(run_cli, tmp_path, name):
    path = tmp_path / f"{name}.txt"
    path.write_bytes(BAD_FILES[name])
    assert_one_line_error(run_cli(["info", path]))


def test_info_rejects_empty_directory_and_missing_path(run_cli, tmp_path):
    assert_one_line_error(run_cli(["info", tmp_path]))  # a folder with no text file in it
    assert_one_line_error(run_cli(["info", tmp_path / "no-such-file.txt"]))


def test_train_rejects_text_too_short_for_one_window(run_cli, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 25 + "y" * 25, encoding="utf-8")
    result = run_cli(["train", "--data", path, "--out", tmp_path / "run", "--batch-size", "8", "--seq-len", "20",
                      "--val-frac", "0", "--impl", "naive", "--device", "cpu"])
    assert_one_line_error(result, stdout_empty=False)
    assert "--batch-size" in result.stderr


@pytest.mark.parametrize("args", [["info", "x.txt", "--bogus"], ["--bogus"], ["train", "--cell", "foo"], []])
def test_usage_errors_are_one_line(run_cli, tmp_path, args):
    assert_one_line_error(run_cli(args, cwd=tmp_path))


# ---------------------------------------------------------------- named corpora


def test_pystdlib_builds_offline_and_deterministically(run_cli, tmp_path):
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "no_proxy": None, "NO_PROXY": None}
    counts, texts = [], []
    for attempt in ("a", "b", "b"):  # two fresh builds, then a cached one
        data_dir = tmp_path / attempt
        result = run_cli(["info", "pystdlib", "--json"], env={**offline, "CHARRNN_DATA_DIR": data_dir})
        assert result.returncode == 0, result.stderr
        counts.append(json.loads(result.stdout))
        folder = next(data_dir.glob("pystdlib-*"))  # one document per module, joined by the separator
        files = sorted(folder.rglob("*.py"), key=lambda p: p.relative_to(folder).parts)
        texts.append("\x1e".join(p.read_text(encoding="utf-8") for p in files))
    assert counts[0]["characters"] > 100_000 and counts[0]["vocab_size"] > 50
    assert counts[0] == counts[1] == counts[2]
    assert texts[0] == texts[1] and len(texts[0]) == counts[0]["characters"]


@pytest.fixture
def no_tinyshakespeare(tmp_path, monkeypatch):
    data_dir = tmp_path / "empty-data"
    data_dir.mkdir()
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(charrnn.data.sources, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/nothing")
    return data_dir


def test_tinyshakespeare_unreachable_is_one_line_error(no_tinyshakespeare, capsys):
    assert main(["info", "tinyshakespeare"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("charrnn: error:")
    for needle in ("http://127.0.0.1:9/nothing", "give its path", "CHARRNN_DATA_DIR"):
        assert needle in err
    assert "--data" not in err  # info takes the corpus as its argument (train and eval say --data PATH)
    assert not any(no_tinyshakespeare.iterdir())  # nothing half-downloaded is left behind


@pytest.mark.parametrize("where", ["tinyshakespeare.txt", "tinyshakespeare/input.txt"])
def test_tinyshakespeare_wrong_cached_content(no_tinyshakespeare, capsys, where):
    path = no_tinyshakespeare / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Not the corpus:\nany text whose sha256 differs.\n", encoding="utf-8")
    assert main(["info", "tinyshakespeare"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("charrnn: error:")
    assert "sha256" in err and str(path) in err


def test_tinyshakespeare_cached_copy_is_used(no_tinyshakespeare, shakespeare_path, capsys):
    shutil.copy(shakespeare_path, no_tinyshakespeare / "tinyshakespeare.txt")
    assert main(["info", "tinyshakespeare", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"characters": 1115394, "vocab_size": 65}
