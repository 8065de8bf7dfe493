"""Labels from the data (--label-by): which documents get which label, validation from every label, the
labels of every window, data.json and info, resume and fine-tuning onto new characters and labels.

The collections here are built so that a label can be read off the text itself: every document of label k
is written in its own letters, so the label a window must carry at each position is known from the
character there, independently of how charrnn assembled and cut the text.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from charrnn.config import TrainConfig, to_dict
from charrnn.data.batching import make_streams
from charrnn.data.dataset import training_data

LETTERS = {"alpha": "abc", "beta": "klm", "gamma": "xyz"}   # each label's own letters


def _write_collection(root: Path, per_label=(3, 1, 2), lines=40) -> Path:
    rng = np.random.default_rng(0)
    for (label, letters), count in zip(LETTERS.items(), per_label):
        (root / label).mkdir(parents=True)
        for i in range(count):
            text = "\n".join("".join(rng.choice(list(letters), size=30)) for _ in range(lines + 7 * i))
            (root / label / f"doc{i}.txt").write_text(text + "\n", encoding="utf-8")
    return root


def _config(root: Path, **kw) -> TrainConfig:
    return TrainConfig(data=(str(root),), label_by="folder", **kw)


def _label_of_char(ch: str, labels) -> int:
    for name, letters in LETTERS.items():
        if ch in letters:
            return labels.index(name)
    return -1   # a newline or the separator: its document's label, checked from the next letter


def test_folder_labels_hold_out_every_label_and_windows_carry_the_right_label(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    data = training_data(_config(_write_collection(tmp_path / "poems", per_label=(12, 1, 2))))
    assert data.labels == ("alpha", "beta", "gamma")
    for text, (starts, ids) in zip((data.train, data.val), data.segments):
        decoded = data.vocab.decode(text)
        present = {_label_of_char(c, data.labels) for c in decoded} - {-1}
        assert present == {0, 1, 2}, "every label has training and validation text"
        streams = make_streams(text, 3, 16, segments=(starts, ids))
        for k in range(streams.num_windows):
            x, _ = streams.window(k)
            labels = streams.labels(k)
            assert labels.shape == x.shape
            for row_chars, row_labels in zip(x, labels):
                for ch, lb in zip(data.vocab.decode(row_chars), row_labels):
                    expected = _label_of_char(ch, data.labels)
                    if expected >= 0:
                        assert lb == expected
    # alpha's documents are small enough to hold out whole ones; beta's one document and gamma's two are each more
    # than a tenth of their label: the end of the label's text is held out instead; each label within its tenth
    record = data.record
    held = {d["key"]: d.get("held_out") for d in record["documents"]}
    assert any(v is True for k, v in held.items() if k.startswith("alpha/"))
    assert isinstance(held["beta/doc0.txt"], int) and held["beta/doc0.txt"] > 0
    assert isinstance(held["gamma/doc1.txt"], int) and held.get("gamma/doc0.txt") is None
    for label in LETTERS:
        docs = [d for d in record["documents"] if d["label"] == label]
        out = sum(d["characters"] if d.get("held_out") is True else d.get("held_out") or 0 for d in docs)
        assert 0 < out <= 0.1 * sum(d["characters"] for d in docs)
    assert record["labels"] == ["alpha", "beta", "gamma"] and record["label_by"] == "folder"
    assert all(d["label"] == d["key"].split("/")[0] for d in record["documents"])


def test_a_shard_of_the_streams_carries_its_own_rows_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    data = training_data(_config(_write_collection(tmp_path / "poems")))
    whole = make_streams(data.train, 4, 8, segments=data.segments[0])
    for rank in range(2):
        shard = whole.shard(rank, 2)
        assert np.array_equal(shard.labels(1), whole.labels(1)[rank * 2:(rank + 1) * 2])


@pytest.mark.parametrize("label_by, expected", [
    ("file", {"alpha/doc0", "alpha/doc1", "alpha/doc2", "beta/doc0", "gamma/doc0", "gamma/doc1"}),
    ("path", {"alpha", "beta", "gamma"}),
])
def test_file_and_path_labels(tmp_path, monkeypatch, label_by, expected):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    root = _write_collection(tmp_path / "poems")
    paths = (str(root),) if label_by == "file" else tuple(str(root / name) for name in LETTERS)
    data = training_data(TrainConfig(data=paths, label_by=label_by))
    assert set(data.labels) == expected


def test_unlabelled_data_is_described_as_before(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "cache"))
    data = training_data(TrainConfig(data=(str(_write_collection(tmp_path / "poems")),)))
    assert data.labels == () and data.segments is None
    assert "labels" not in data.record and "label_by" not in data.record
    assert all("label" not in d for d in data.record["documents"])
    assert "label_by" not in to_dict(TrainConfig())   # config.json's "train" as before --label-by existed


def test_info_lists_labels_with_their_sizes(tmp_path, run_cli):
    root = _write_collection(tmp_path / "poems")
    done = run_cli(["info", root, "--label-by", "folder", "--json"], env={"CHARRNN_DATA_DIR": tmp_path / "c"})
    assert done.returncode == 0, done.stderr
    labels = json.loads(done.stdout)["labels"]
    assert [entry["label"] for entry in labels] == ["alpha", "beta", "gamma"]
    assert [entry["documents"] for entry in labels] == [3, 1, 2]
    sizes = {name: sum(len(p.read_text()) for p in (root / name).iterdir()) for name in LETTERS}
    assert {e["label"]: e["characters"] for e in labels} == sizes


@pytest.mark.parametrize("args, message", [
    (["--label-by", "folder", "--val-data", "X"], "--label-by holds out documents of every label itself"),
    (["--label-by", "path"], "found one label"),
])
def test_labels_that_cannot_work_are_refused_in_one_line(tmp_path, run_cli, args, message):
    root = _write_collection(tmp_path / "poems")
    args = [str(root) if a == "X" else a for a in args]
    out = tmp_path / "run"
    done = run_cli(["train", "--data", root, "--impl", "naive", "--max-iters", "1", "--out", out, *args],
                   env={"CHARRNN_DATA_DIR": tmp_path / "c"})
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def _train(run_cli, tmp_path, data, out, *extra):
    done = run_cli(["train", "--data", data, "--impl", "naive", "--hidden", "8", "--layers", "1", "--embed", "4",
                    "--batch-size", "4", "--seq-len", "16", "--eval-every", "2", "--out", out, *extra],
                   env={"CHARRNN_DATA_DIR": tmp_path / "c"})
    assert done.returncode == 0, done.stderr
    return done


def test_resume_keeps_labels_and_refuses_another_label_rule(tmp_path, run_cli):
    root = _write_collection(tmp_path / "poems")
    out = tmp_path / "run"
    _train(run_cli, tmp_path, root, out, "--label-by", "folder", "--max-iters", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    done = run_cli(["train", "--data", root, "--impl", "naive", "--resume", "--max-iters", "4", "--out", out,
                    "--label-by", "file"], env={"CHARRNN_DATA_DIR": tmp_path / "c"})
    assert done.returncode == 2 and "--label-by" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    _train(run_cli, tmp_path, root, out, "--label-by", "folder", "--resume", "--max-iters", "4")
    assert json.loads((out / "config.json").read_text())["model"]["labels"] == ["alpha", "beta", "gamma"]


def test_fine_tuning_onto_new_characters_and_a_new_label_grows_the_model(tmp_path, run_cli):
    from charrnn.checkpoint import load_run

    parent_data = tmp_path / "two"
    _write_collection(tmp_path / "all")
    parent_data.mkdir()
    for name in ("alpha", "beta"):
        (tmp_path / "all" / name).rename(parent_data / name)
    parent = tmp_path / "parent"
    _train(run_cli, tmp_path, parent_data, parent, "--label-by", "folder", "--max-iters", "2")
    child_data = tmp_path / "three"
    child_data.mkdir()
    for name in ("alpha", "beta"):
        (parent_data / name).rename(child_data / name)
    (tmp_path / "all" / "gamma").rename(child_data / "gamma")   # new label, new letters x y z
    child = tmp_path / "child"
    done = _train(run_cli, tmp_path, child_data, child, "--label-by", "folder", "--init-from", parent,
                  "--max-iters", "1", "--lr", "1e-9")
    assert "3 characters the --init-from model never saw added to its vocabulary" in done.stdout
    assert "new label gamma added" in done.stdout
    p_cfg, p_vocab, p_params = load_run(parent)
    c_cfg, c_vocab, c_params = load_run(child)
    assert c_vocab.chars[: len(p_vocab)] == p_vocab.chars and set(c_vocab.chars[len(p_vocab):]) == set("xyz")
    assert c_cfg.labels == ("alpha", "beta", "gamma")
    # the parent's rows are where they were (one step at lr 1e-9 moves them by ~1e-9 at most)
    n = len(p_vocab)
    for name in ("embed.weight", "head.weight", "head.bias"):
        np.testing.assert_allclose(c_params[name][:n], p_params[name], atol=1e-6)
    np.testing.assert_allclose(c_params["label.weight"][:2], p_params["label.weight"], atol=1e-6)
    assert np.all(np.abs(c_params["label.weight"][2]) < 1e-6)
    # an unlabelled fine-tune of a labelled model is refused in one line
    done = run_cli(["train", "--data", child_data, "--impl", "naive", "--init-from", parent, "--max-iters", "1",
                    "--out", tmp_path / "x"], env={"CHARRNN_DATA_DIR": tmp_path / "c"})
    assert done.returncode == 2 and "fine-tune it with --label-by" in done.stderr


def test_new_characters_start_as_the_parents_unknown_symbol(tmp_path):
    from charrnn.config import ModelConfig
    from charrnn.data.vocab import Vocab
    from charrnn.models.base import init_parameters
    from charrnn.train import finetune

    parent_vocab = Vocab(tuple("ab\ufffd"))
    parent = ModelConfig(vocab_size=3, layers=1, hidden=4, embed=2)
    params = init_parameters(parent, 0)
    vocab = parent_vocab.extended(Vocab(tuple("abcd")))
    assert vocab.chars == ("a", "b", "\ufffd", "c", "d")
    child = finetune.child_config(parent, vocab, (), 0.0)
    grown = finetune.grow_parameters(params, parent, child, parent_vocab, seed=1)
    for name in ("embed.weight", "head.weight", "head.bias"):
        assert grown[name].shape[0] == 5
        np.testing.assert_array_equal(grown[name][:3], params[name])
        np.testing.assert_array_equal(grown[name][3], params[name][2])
        np.testing.assert_array_equal(grown[name][4], params[name][2])


def test_samples_during_training_take_each_label_in_turn(tmp_path, run_cli):
    root = _write_collection(tmp_path / "poems")
    done = _train(run_cli, tmp_path, root, tmp_path / "run", "--label-by", "folder", "--max-iters", "6",
                  "--sample-every", "2")
    said = [line.split("]")[0] + "]" for line in (done.stdout + done.stderr).splitlines() if line.startswith("[")]
    assert said == ["[alpha]", "[beta]", "[gamma]"]
