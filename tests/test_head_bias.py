"""--head-bias: a new model's output bias at its training text's log character frequencies (models/base.py).

Every engine, kind of data and runtime is the conformance suite's (tests/test_conformance.py: a new run of each row
starts at its split's frequencies, and the refusals); here the closed form, what it leaves alone, what it is worth
in the first step, and the run directories written before the flag.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.models.base import init_parameters, parameter_shapes, unigram_bias


def test_the_bias_is_the_add_half_log_frequency_of_each_character():
    counts = np.array([0, 1, 7, 992])
    bias = unigram_bias(counts)
    total = 1000 + 4 * 0.5
    assert np.allclose(bias, [math.log((c + 0.5) / total) for c in counts], rtol=0, atol=1e-12)
    assert np.isclose(np.exp(bias).sum(), 1.0) and np.isfinite(bias).all()   # a distribution; absent stays finite


def test_the_counts_change_the_head_bias_and_nothing_else():
    cfg = ModelConfig(vocab_size=5, hidden=8, embed=4, layers=2, labels=("a", "b"))
    drawn = init_parameters(cfg, seed=11)
    counted = init_parameters(cfg, seed=11, char_counts=np.array([3, 0, 10, 1, 86]))
    assert set(drawn) == set(counted) == set(parameter_shapes(cfg))
    for name in drawn:
        if name != "head.bias":
            assert np.array_equal(drawn[name], counted[name]), name
    assert counted["head.bias"].dtype == np.float32
    assert np.allclose(counted["head.bias"], unigram_bias(np.array([3, 0, 10, 1, 86])), atol=1e-6)


def _first_loss(run_cli, text, tmp_path, bias):
    out = tmp_path / bias
    r = run_cli(["train", "--data", text, "--out", out, "--impl", "naive", "--hidden", 16, "--embed", 8,
                 "--max-iters", 0, "--head-bias", bias, "--val-frac", "0.2"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(row["val_loss"] for row in rows if "val_loss" in row), out


def test_a_unigram_start_scores_near_the_unigram_entropy_and_a_drawn_one_near_log_v(run_cli, tiny_text, tmp_path):
    """Before any step: the drawn bias leaves every character about equally likely (log V), the counted one
    scores the validation text as its training split's frequencies do. The head's drawn weights add to each
    logit a sum of H terms U(-1/sqrt(H), 1/sqrt(H)) times a state in (-1, 1): variance at most 1/3, which adds
    about half of it (<= 0.17) to the expected loss; 0.3 holds that with room, and the starts lie far apart."""
    text = tiny_text.read_text(encoding="utf-8")
    unigram, run = _first_loss(run_cli, tiny_text, tmp_path, "unigram")
    drawn, _ = _first_loss(run_cli, tiny_text, tmp_path, "random")
    record = json.loads((run / "data.json").read_text(encoding="utf-8"))
    train = text[:record["split"]["train_characters"]]
    val = text[record["split"]["train_characters"]:]
    chars = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    chars = chars["chars"] if isinstance(chars, dict) else chars
    counts = Counter(train)
    total = len(train) + 0.5 * len(chars)
    entropy = -sum(math.log((counts[c] + 0.5) / total) for c in val) / len(val)
    assert abs(unigram - entropy) < 0.3, (unigram, entropy)
    assert abs(drawn - math.log(len(chars))) < 0.3, (drawn, math.log(len(chars)))
    assert drawn - unigram > 0.5


def test_resume_keeps_the_runs_start_and_an_older_run_reads_as_drawn(run_cli, tiny_text, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", tiny_text, "--out", out, "--impl", "naive", "--hidden", 8, "--embed", 4]
    assert run_cli([*args, "--max-iters", 2]).returncode == 0
    same = run_cli([*args, "--max-iters", 3, "--resume", "--head-bias", "unigram"])   # what it has: fine
    assert same.returncode == 0, same.stderr
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    del config["train"]["head_bias"]   # as written before --head-bias existed
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    older = run_cli([*args, "--max-iters", 4, "--resume"])
    assert older.returncode == 0, older.stderr
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["train"]["head_bias"] == "random"


@pytest.mark.parametrize("value", ["uniform", "zero"])
def test_an_unknown_value_is_one_line(run_cli, tiny_text, tmp_path, value):
    r = run_cli(["train", "--data", tiny_text, "--out", tmp_path / "r", "--head-bias", value])
    assert r.returncode == 2 and "--head-bias" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_long_split_is_counted_over_evenly_spaced_blocks(monkeypatch):
    from charrnn.data import dataset

    ids = np.random.default_rng(0).integers(0, 7, 5000).astype(np.uint8)
    assert np.array_equal(dataset.character_counts(ids, 9), np.bincount(ids, minlength=9))   # short: every one
    monkeypatch.setattr(dataset, "COUNT_WHOLE", 1000)
    monkeypatch.setattr(dataset, "COUNT_BLOCKS", 4)
    monkeypatch.setattr(dataset, "COUNT_BLOCK", 100)
    blocks = np.concatenate([ids[s:s + 100] for s in (0, 1633, 3266, 4900)])   # linspace(0, 4900, 4), floored
    assert np.array_equal(dataset.character_counts(ids, 9), np.bincount(blocks, minlength=9))


def test_a_fine_tunes_new_characters_start_at_their_frequency_on_the_parents_scale():
    """A parent without U+FFFD, fine-tuned onto a text with three characters it lacks: with the head's weights
    aside, the biases give each new character its share of the new text over one plus the new ones' share
    (exp(b) = Z p for each of them, Z the parent's own normaliser), not the parent's whole alphabet's worth."""
    from charrnn.data.vocab import Vocab
    from charrnn.train.finetune import child_config, grow_parameters

    parent = ModelConfig(vocab_size=4, hidden=8, embed=4, layers=1)
    params = init_parameters(parent, 0, char_counts=np.array([500, 300, 150, 50]))
    params["head.bias"] = params["head.bias"] + 3.0   # a trained bias keeps no particular scale
    child_counts = np.array([400, 300, 200, 50, 30, 15, 5])
    child = child_config(parent, Vocab(tuple("abcdxyz")), (), 0.0)
    grown = grow_parameters(params, parent, child, Vocab(tuple("abcd")), 0, child_counts)
    bias = grown["head.bias"].astype(np.float64)
    assert np.array_equal(bias[:4], params["head.bias"])
    probs = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
    share = (child_counts[4:] + 0.5) / (child_counts.sum() + 0.5 * 7)
    assert np.allclose(probs[4:], share / (1 + share.sum()), rtol=1e-5)


def test_runs_from_before_the_flag_and_fine_tunes_refuse_a_head_bias_on_resume(run_cli, tiny_text, tmp_path):
    args = ["--data", tiny_text, "--impl", "naive", "--hidden", 8, "--embed", 4]
    parent, child = tmp_path / "parent", tmp_path / "child"
    assert run_cli(["train", *args, "--out", parent, "--max-iters", 2]).returncode == 0
    assert run_cli(["train", *args, "--out", child, "--init-from", parent, "--max-iters", 2]).returncode == 0
    assert json.loads((child / "config.json").read_text(encoding="utf-8"))["train"].get("head_bias") is None
    config = json.loads((parent / "config.json").read_text(encoding="utf-8"))
    del config["train"]["head_bias"]   # as written before --head-bias existed: its bias was drawn
    (parent / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for run, began in ((parent, "--head-bias random"), (child, "--init-from")):
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        r = run_cli(["train", *args, "--out", run, "--resume", "--max-iters", 3, "--head-bias", "unigram"])
        assert r.returncode == 2 and began in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
