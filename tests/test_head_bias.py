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
