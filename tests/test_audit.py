"""Regression tests for the bugs an independent audit confirmed (issue #20), and the loose ends it settled.

Most commands run in-process through `charrnn.cli.main` on the naive engine: quick, and the
same code path as the `charrnn` command.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import write_word_text

import charrnn
from charrnn.cli import main
from charrnn.errors import UserError

SMALL = ["--hidden", "16", "--embed", "8", "--layers", "1", "--batch-size", "4", "--seq-len", "16",
         "--eval-every", "1000", "--log-every", "1", "--seed", "3"]


@pytest.fixture
def text(tmp_path):
    return write_word_text(tmp_path / "text.txt", 200)


def train(*args) -> int:
    return main(["train", *map(str, args)])


def weights(run):
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


def rows(run, key):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("charrnn: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


# ---- 1. a changed optimizer hyperparameter on --resume is in force, and said ------------------------

@pytest.mark.parametrize("impl", ["naive", "library"])
def test_resume_applies_a_changed_weight_decay_and_says_so(impl, text, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train("--impl", impl, "--data", text, "--out", a, *SMALL, "--optimizer", "adamw", "--max-iters", 10) == 0
    shutil.copytree(a, b)
    assert train("--data", text, "--out", a, "--resume", "--max-iters", 20) == 0
    capsys.readouterr()
    assert train("--data", text, "--out", b, "--resume", "--max-iters", 20, "--weight-decay", 5.0) == 0
    assert "--weight-decay 5.0 (was 0.0)" in capsys.readouterr().out
    plain, decayed = weights(a), weights(b)
    assert max(float(np.abs(plain[k] - decayed[k]).max()) for k in plain) > 1e-3
    assert json.loads((b / "config.json").read_text())["train"]["weight_decay"] == 5.0


# ---- 2. a sample never stops training -----------------------------------------------------------------

def test_sample_every_on_a_text_without_a_newline_trains_on(tmp_path, capsys):
    path = tmp_path / "one-line.txt"
    path.write_text("abcab cabba bacca " * 200, encoding="utf-8")
    assert train("--impl", "naive", "--data", path, "--out", tmp_path / "run", *SMALL, "--max-iters", 4,
                 "--sample-every", 2) == 0
    err = capsys.readouterr().err
    assert "--- sample at iteration 2 ---" in err and "--- sample at iteration 4 ---" in err
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_a_failing_sampler_is_reported_and_training_goes_on(text, tmp_path):
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.batching import make_streams
    from charrnn.models import build_model
    from charrnn.train.learners import NumpyLearner
    from charrnn.train.loop import Trainer

    def broken():
        raise RuntimeError("boom")

    logs = []
    model = build_model("naive", ModelConfig(vocab_size=5, cell="rnn", layers=1, hidden=8, embed=4))
    learner = NumpyLearner(model, "adagrad", 0.1, 0.0, 5.0, seed=0)
    data = np.random.default_rng(0).integers(0, 5, size=200).astype(np.uint8)
    cfg = TrainConfig(impl="naive", max_iters=3, sample_every=1, eval_every=1000, out=str(tmp_path))
    assert Trainer(cfg, learner, make_streams(data, 2, 4), None, tmp_path, sampler=broken,
                   log=logs.append).run().iteration == 3
    assert sum("warning: no sample at iteration" in m and "boom" in m for m in logs) == 3


# ---- 3. each generation owns its state ------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    path = folder / "text.txt"
    rng = np.random.default_rng(1)
    words = ["a", "quiet", "river", "runs", "under", "the", "old", "bridge", "and", "sings"]
    path.write_text("\n".join(" ".join(rng.choice(words, 7)) for _ in range(300)), encoding="utf-8")
    assert main(["train", "--impl", "naive", "--data", str(path), "--out", str(folder / "run"), "--hidden", "32",
                 "--embed", "8", "--layers", "2", "--batch-size", "4", "--seq-len", "16", "--max-iters", "30",
                 "--eval-every", "1000", "--log-every", "1000"]) == 0
    return folder / "run"


@pytest.mark.parametrize("impl, quantize", [("naive", None), ("library", None), ("naive", "int8"), ("library", "int8")])
def test_interleaved_generations_do_not_disturb_each_other(run, impl, quantize):
    model = charrnn.load(run, impl=impl, quantize=quantize)
    alone = "".join(model.stream("the ", 80, temperature=0.9, seed=1))
    stream = model.stream("the ", 80, temperature=0.9, seed=1)
    first = "".join(next(stream) for _ in range(40))
    model.sample("a quiet", 30, temperature=0.9, seed=2)                         # another generation
    model.evaluate("the old bridge and the quiet river")                       # and an evaluation
    other = model.stream("runs", 80, seed=3)
    mixed = [first]
    for _ in range(40):                                                         # two streams alternated
        mixed.append(next(stream))
        next(other)
    assert "".join(mixed) == alone


# ---- 4. one text reader ---------------------------------------------------------------------------------

def test_prime_file_is_read_as_training_reads(tmp_path, capsys):
    path = tmp_path / "crlf.txt"
    path.write_bytes(("first line of text\r\nsecond line\r\n" * 150).encode())
    out = tmp_path / "run"
    assert train("--impl", "naive", "--data", path, "--out", out, *SMALL, "--max-iters", 3) == 0
    prime = tmp_path / "prime.txt"
    prime.write_bytes("\ufeffsecond line\r\n".encode())                        # a BOM, and Windows line ends
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--impl", "naive", "--prime-file", str(prime),
                 "--length", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("second line\r\n")              # BOM dropped, \r kept
    assert charrnn.read_text(prime) == "second line\r\n"


# ---- 6. --resume refuses a changed data layout ---------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--seq-len", 32), ("--batch-size", 8), ("--val-frac", 0.2)])
def test_resume_refuses_a_changed_layout_in_one_line(flag, value, text, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--impl", "naive", "--data", text, "--out", out, *SMALL, "--max-iters", 3) == 0
    before = (out / "resume.safetensors").read_bytes()
    capsys.readouterr()
    one_line_error(capsys, train("--data", text, "--out", out, "--resume", "--max-iters", 6, flag, value),
                   f"{flag} {value} differs from the run being resumed")
    assert (out / "resume.safetensors").read_bytes() == before


# ---- 7 and the API's loose ends: every option checked where it enters -----------------------------------

@pytest.mark.parametrize("args, needle", [
    (["sample", "--quantize", "int4"], "--quantize"), (["sample", "--impl", "nope"], "--impl"),
    (["eval", "--which", "worst", "--data", "x"], "--which"), (["sample", "--device", "tpu"], "--device")])
def test_bad_choices_fail_at_once_in_one_line(args, needle, capsys):
    one_line_error(capsys, main([args[0], "--checkpoint", "no-such-run", *args[1:]]), needle)


@pytest.mark.parametrize("kwargs, needle", [
    ({"impl": "nope"}, "impl= 'nope'"), ({"which": "worst"}, "which= 'worst'"), ({"device": "tpu"}, "device= 'tpu'"),
    ({"quantize": True}, "quantize= True"), ({"quantize": "INT8"}, "quantize= 'INT8'")])
def test_load_checks_its_options_before_anything_else(kwargs, needle, tmp_path):
    with pytest.raises(UserError, match=needle):
        charrnn.load(tmp_path / "no-such-run", **kwargs)
    with pytest.raises(ValueError):                                             # a UserError is a ValueError
        charrnn.load(tmp_path / "no-such-run", **kwargs)


@pytest.mark.parametrize("call, needle", [
    (lambda m: m.sample("the", 2.5), "length= 2.5 must be a whole number"),
    (lambda m: m.sample("the", 5, num_samples="3"), "num_samples= '3' must be a whole number"),
    (lambda m: m.sample("the", 5, top_k=True), "top_k= True must be a whole number"),
    (lambda m: m.beam("the", 5, beam=1.5), "beam= 1.5 must be a whole number"),
    (lambda m: m.stream("the", 5, seed="x"), "seed= 'x'"),
    (lambda m: m.stream("the", 5, greedy=True, temperature=0.5), "greedy= takes the most likely"),
    (lambda m: m.evaluate_indices(np.array([3, -1, 2])), "must be in [0,"),
    (lambda m: m.evaluate_indices(np.array([0.5, 1.0])), "1-D array of character indices")])
def test_api_arguments_give_one_clear_error(run, call, needle):
    model = charrnn.load(run, impl="naive")
    with pytest.raises(UserError) as caught:
        call(model)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


# ---- loose ends: the learning rate ------------------------------------------------------------------------

def test_warm_up_reaches_lr_and_then_the_cosine_starts(text, tmp_path):
    out = tmp_path / "run"
    assert train("--impl", "naive", "--data", text, "--out", out, *SMALL, "--max-iters", 40, "--optimizer", "adam",
                 "--lr", 0.01, "--schedule", "cosine", "--warmup-iters", 5) == 0
    lrs = [r["lr"] for r in rows(out, "lr")]
    assert lrs[:5] == pytest.approx([0.002, 0.004, 0.006, 0.008, 0.010], rel=1e-12)   # peak: exactly --lr
    assert lrs[5] == pytest.approx(0.01, rel=1e-9) and lrs[6] < lrs[5]               # the cosine starts at --lr
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))
    assert lrs[-1] == pytest.approx(0.001, rel=0.02)                                   # lr/10 at the end


def test_warm_up_applies_to_the_epoch_schedule_too(text, tmp_path):
    out = tmp_path / "run"
    assert train("--impl", "naive", "--data", text, "--out", out, *SMALL, "--max-iters", 6, "--lr", 0.1,
                 "--warmup-iters", 4) == 0
    assert [r["lr"] for r in rows(out, "lr")][:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1], rel=1e-12)


def test_resuming_a_cosine_run_with_a_larger_budget_continues_the_decay(text, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--impl", "naive", "--data", text, "--out", out, *SMALL, "--max-iters", 20, "--optimizer", "adam",
                 "--lr", 0.01, "--schedule", "cosine") == 0
    assert train("--data", text, "--out", out, "--resume", "--max-iters", 40) == 0
    assert "the cosine continues from lr" in capsys.readouterr().err
    lrs = {r["iter"]: r["lr"] for r in rows(out, "lr")}
    assert lrs[21] <= lrs[20] * 1.0001                                        # no jump (it was x5.5 before)
    assert all(lrs[i + 1] <= lrs[i] * 1.0001 for i in range(20, 39))
    assert lrs[40] == pytest.approx(0.001, rel=0.05)


# ---- loose ends: sampling -----------------------------------------------------------------------------------

def test_top_p_keeps_every_character_tied_with_its_last_one():
    from charrnn.infer.sampling import sample_next

    logits = np.log(np.array([[0.4, 0.15, 0.15, 0.15, 0.15]]))
    # 0.4 + 0.15 reaches 0.5: the set is {0, one of the ties}; every tie is as likely, so all are kept
    drawn = {int(sample_next(logits, top_p=0.5, rng=np.random.default_rng(seed))[0]) for seed in range(400)}
    assert drawn == {0, 1, 2, 3, 4}
    drawn = {int(sample_next(logits, top_p=0.3, rng=np.random.default_rng(seed))[0]) for seed in range(100)}
    assert drawn == {0}


# ---- early stopping (--patience) ----------------------------------------------------------------------------

def test_patience_stops_after_n_evaluations_without_a_new_best(tmp_path):
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.batching import make_streams
    from charrnn.models import build_model
    from charrnn.train.learners import NumpyLearner
    from charrnn.train.loop import Trainer

    data = np.random.default_rng(0).integers(0, 5, size=400).astype(np.uint8)
    model = build_model("naive", ModelConfig(vocab_size=5, cell="rnn", layers=1, hidden=8, embed=4))
    from conftest import ScriptedValidation

    learner = ScriptedValidation(NumpyLearner(model, "adagrad", 0.1, 0.0, 5.0, seed=0), [2.0, 1.5, 1.6, 1.4, 1.45, 1.5])
    cfg = TrainConfig(impl="naive", max_iters=100, eval_every=2, log_every=1000, patience=2, out=str(tmp_path))
    logs = []
    val = make_streams(data[:5], 1, 4)                                       # one window: one loss per validation
    progress = Trainer(cfg, learner, make_streams(data, 2, 4), val, tmp_path, log=logs.append).run()
    assert progress.iteration == 12 and progress.best_val == 1.4         # 2.0 1.5 1.6 1.4 | 1.45 1.5: two without
    assert any("early stop at iteration 12" in m and "--patience 2" in m for m in logs)
    from charrnn.checkpoint import read_safetensors

    assert read_safetensors(tmp_path / "best.safetensors")[1]["charrnn"]["iteration"] == 8   # where 1.4 was


def test_python_callers_read_python_names_not_flags(run):
    """A message for charrnn.load names its arguments as Python writes them, not the command line's flags."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError) as caught:
        charrnn.load(run, impl="library", device="cuda")
    assert "device='cuda'" in str(caught.value) and "--" not in str(caught.value)
    with pytest.raises(UserError) as caught:
        charrnn.load(run, impl="naive", device="cuda")
    assert "impl='naive'" in str(caught.value) and "--" not in str(caught.value)
