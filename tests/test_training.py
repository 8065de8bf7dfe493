"""Training: truncated BPTT with carried state, exact resume, checkpoints, signals, metrics."""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batching import make_streams
from charrnn.models import build_model
from charrnn.train.loop import Trainer

ENGINES = ["naive", "scratch", "library"]


@pytest.fixture
def cli(run_cli):
    """`charrnn ARGS` run in this process (conftest's run_cli.in_process): these tests need no fresh process,
    and a torch import per command made them most of the quick subset's time. Exact resume and signals
    start real processes (run_cli)."""
    return run_cli.in_process


@pytest.fixture
def text_file(tmp_path):
    from conftest import write_word_text

    return write_word_text(tmp_path / "corpus.txt", 400)


SMALL = ["--hidden", 16, "--embed", 8, "--layers", 2, "--batch-size", 4, "--seq-len", 16, "--eval-every", 1000,
         "--log-every", 5]


def load_weights(run):
    from safetensors.numpy import load_file

    return load_file(str(Path(run) / "model.safetensors"))


# naive in the quick subset; the torch engines (four runs, a torch import each: ~20 s apiece) in the full suite
@pytest.mark.parametrize("impl", ["naive", *(pytest.param(impl, marks=pytest.mark.slow) for impl in ENGINES[1:])])
def test_resume_equals_uninterrupted(impl, text_file, tmp_path, run_cli):
    """10 iterations + resume to 20 == 20 iterations straight, with dropout on (RNG state matters)."""
    common = ["--impl", impl, "--data", text_file, *SMALL, "--dropout", 0.3, "--seed", 5]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(["train", *common, "--out", straight, "--max-iters", 20]).returncode == 0
    first = run_cli(["train", *common, "--out", split, "--max-iters", 10])
    assert first.returncode == 0, first.stderr
    resumed = run_cli(["train", "--data", text_file, "--out", split, "--max-iters", 20, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "iteration 10" in resumed.stdout
    a, b = load_weights(straight), load_weights(split)
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6
    # and dropout really was on: a run without it ends elsewhere
    other = tmp_path / "nodrop"
    nodrop = run_cli(["train", *common[:-4], "--seed", 5, "--dropout", 0.0, "--out", other, "--max-iters", 20])
    assert nodrop.returncode == 0
    c = load_weights(other)
    assert max(float(np.abs(a[k] - c[k]).max()) for k in a) > 1e-4


class RecordingStepper:
    """Wraps a stepper and records the state each window starts from and ends with."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_step(self, x, y, state, labels=None):
        loss, new_state = self.inner.train_step(x, y, state)
        self.calls.append((x.copy(), [s.detach().numpy().copy() for s in state],
                           [s.detach().numpy().copy() for s in new_state]))
        return loss, new_state


def test_state_carries_between_windows_and_resets_each_epoch(tmp_path):
    import torch

    from charrnn.train.learners import TorchLearner

    data = np.random.default_rng(1).integers(0, 7, size=4 * 50 + 1).astype(np.uint8)
    streams = make_streams(data, batch_size=4, seq_len=10)          # 5 windows per epoch
    cfg = TrainConfig(max_iters=12, eval_every=1000, log_every=1000, out=str(tmp_path))
    model = build_model("library", ModelConfig(vocab_size=7, cell="lstm", layers=2, hidden=8, embed=4))
    stepper = RecordingStepper(TorchLearner(model, "adam", 1e-2, 0.0, 5.0, torch.device("cpu")))
    Trainer(cfg, stepper, streams, None, tmp_path, log=lambda m: None).run()
    calls = stepper.calls
    assert len(calls) == 12
    for k, (x, start, _) in enumerate(calls):
        if k % streams.num_windows == 0:
            assert all(np.all(s == 0) for s in start), f"window {k} should start an epoch from zeros"
        else:
            previous_end = calls[k - 1][2]
            assert all(np.array_equal(a, b) for a, b in zip(start, previous_end)), f"window {k} lost the carried state"
            assert any(np.abs(s).max() > 0 for s in start)
        np.testing.assert_array_equal(x, streams.window(k % streams.num_windows)[0])


def test_metrics_plot_and_checkpoint_files(text_file, tmp_path, cli):
    out = tmp_path / "run"
    r = cli(["train", "--data", text_file, "--out", out, *SMALL[:-4], "--eval-every", 10, "--log-every", 5,
             "--max-iters", 20, "--optimizer", "adagrad", "--lr", 0.1, "--lr-decay", 0.5,
             "--batch-size", 32, "--seq-len", 64])  # about 7 windows per epoch: the decay shows
    assert r.returncode == 0, r.stderr
    assert "Total" in r.stdout and "unique tokens." in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in train_rows] == [5, 10, 15, 20]
    for row in train_rows:
        assert {"iter", "epoch", "train_loss", "lr", "chars_per_sec", "elapsed_s"} <= row.keys()
        assert row["chars_per_sec"] > 0
    assert [r["iter"] for r in val_rows] == [10, 20]
    for row in val_rows:
        assert math.isclose(row["val_bpc"], row["val_loss"] / math.log(2), rel_tol=1e-3)
    # lr = lr0 * decay ** epoch: the epoch is the integer part of the row's epoch at the step's start
    assert train_rows[-1]["epoch"] >= 2
    for row in train_rows:
        epoch_at_step = math.floor(row["epoch"] - 1e-9) if row["epoch"] == int(row["epoch"]) else int(row["epoch"])
        assert math.isclose(row["lr"], 0.1 * 0.5 ** epoch_at_step, rel_tol=1e-9)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("config.json", "vocab.json", "model.safetensors", "best.safetensors", "resume.safetensors"):
        assert (out / name).is_file()
    assert not list(out.glob(".tmp-*"))
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden"] == 16 and config["train"]["optimizer"] == "adagrad"


def test_existing_run_is_not_overwritten_without_flag(text_file, tmp_path, cli):
    out = tmp_path / "run"
    assert cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 2]).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    r = cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 2])
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_refuses_a_changed_model_shape(text_file, tmp_path, cli):
    out = tmp_path / "run"
    assert cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 2]).returncode == 0
    r = cli(["train", "--data", text_file, "--out", out, "--resume", "--hidden", 32])
    assert r.returncode == 2 and "--hidden" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_and_exits_zero(sig, text_file, tmp_path, run_cli):
    out = tmp_path / "run"
    proc = run_cli.popen(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", "100000"])
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "saving a checkpoint" in stderr
    meta = json.loads(json.dumps(__import__("charrnn.checkpoint",
                                            fromlist=["x"]).read_safetensors(out / "resume.safetensors")[1]))
    iteration = meta["progress"]["iteration"]
    assert iteration >= 5
    r = run_cli(["train", "--data", text_file, "--out", out, "--resume", "--max-iters", iteration + 3])
    assert r.returncode == 0 and f"iteration {iteration}" in r.stdout


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(text_file, tmp_path, cli):
    out = tmp_path / "run"
    assert cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 3]).returncode == 0
    good = (out / "model.safetensors").read_bytes()
    r = cli(["train", "--data", text_file, "--out", out, "--resume", "--max-iters", 400, "--lr", 1e30,
             "--grad-clip", 0, "--eval-every", 2])
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "iteration" in last and "--lr" in last and "Traceback" not in r.stderr
    from charrnn.checkpoint import load_run

    _, _, params = load_run(out)  # still loadable, and finite
    assert all(np.isfinite(v).all() for v in params.values())
    assert (out / "model.safetensors").read_bytes() == good or all(np.isfinite(v).all() for v in params.values())


def test_init_from_fine_tunes_and_grows_to_new_characters(text_file, tmp_path, cli):
    base = tmp_path / "base"
    assert cli(["train", "--data", text_file, "--out", base, *SMALL, "--max-iters", 4]).returncode == 0
    subset = tmp_path / "subset.txt"
    subset.write_text(text_file.read_text()[:3000], encoding="utf-8")
    tuned = tmp_path / "tuned"
    r = cli(["train", "--data", subset, "--out", tuned, "--init-from", base, "--max-iters", 2, "--batch-size", 4,
             "--seq-len", 16, "--eval-every", 1000])
    assert r.returncode == 0, r.stderr
    base_vocab = json.loads((base / "vocab.json").read_text())
    assert json.loads((tuned / "vocab.json").read_text()) == base_vocab and "added" not in r.stdout
    alien = tmp_path / "alien.txt"
    alien.write_text(text_file.read_text()[:3000] + "ZQ§", encoding="utf-8")
    grown = tmp_path / "grown"
    r = cli(["train", "--data", alien, "--out", grown, "--init-from", base, "--max-iters", 2, "--batch-size", 4,
             "--seq-len", 16])
    assert r.returncode == 0, r.stderr
    new = sorted(set("ZQ§") - set(base_vocab))
    assert json.loads((grown / "vocab.json").read_text()) == base_vocab + new
    assert f"{len(new)} characters the --init-from model never saw added to its vocabulary" in r.stdout


def test_naive_engine_rejects_options_it_cannot_honour(text_file, tmp_path, cli):
    r = cli(["train", "--impl", "naive", "--data", text_file, "--out", tmp_path / "r", "--compile"])
    assert r.returncode == 2 and "--compile" in r.stderr
    r = cli(["train", "--impl", "naive", "--data", text_file, "--out", tmp_path / "r", "--device", "cuda"])
    assert r.returncode == 2 and "naive" in r.stderr




@pytest.mark.parametrize("impl", ["naive", "library", "tf"])
def test_the_gradient_norm_is_measured_before_clipping_and_agrees_with_autograd(impl):
    """grad_norm (metrics.jsonl, TensorBoard's train/grad_norm) is the global L2 norm of the whole gradient
    before clipping, as torch autograd in float64 computes it for the same weights and window."""
    torch = pytest.importorskip("torch")
    if impl == "tf":
        pytest.importorskip("tensorflow")
    from charrnn.losses import cross_entropy_torch

    config = ModelConfig(vocab_size=9, cell="lstm", layers=2, hidden=12, embed=5)
    params = build_model("naive", config, seed=4).get_parameters()
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 9, (3, 7)), rng.integers(0, 9, (3, 7))
    reference = build_model("library", config, params=params, dtype="float64")
    state = reference.initial_state(3)
    cross_entropy_torch(reference(torch.as_tensor(x), state)[0], torch.as_tensor(y)).backward()
    expected = float(torch.sqrt(sum((p.grad ** 2).sum() for p in reference.parameters())))
    model = build_model(impl, config, params=params)
    if impl == "naive":
        from charrnn.train.learners import NumpyLearner

        learner = NumpyLearner(model, "adam", 1e-3, 0.0, 1e-3, seed=0)
    elif impl == "library":
        from charrnn.train.learners import TorchLearner

        learner = TorchLearner(model, "adam", 1e-3, 0.0, 1e-3, torch.device("cpu"))
    else:
        from charrnn.train.tf_step import TFLearner

        learner = TFLearner(model, "adam", 1e-3, 0.0, 1e-3)
    learner.train_step(x, y, learner.zero_state(3))
    # float32 against float64: each gradient entry sums ~B*T*H products (a few hundred), so its relative rounding
    # is ~ 1e-7 * 300; 1e-4 leaves room. The clip (1e-3) is far below the norm: the norm is taken before it.
    assert expected > 1e-2 and learner.grad_norm == pytest.approx(expected, rel=1e-4)


def test_metrics_rows_stay_strict_json_when_the_validation_loss_is_not_finite(tmp_path):
    """JSON has no NaN or Infinity: a validation loss that overflowed is written as null, not as a literal
    that strict readers (jq, JavaScript's JSON.parse, the playground's /metrics) refuse."""
    from charrnn.train.learners import NumpyLearner
    from charrnn.train.metrics import read_metrics

    data = np.random.default_rng(0).integers(0, 5, size=400).astype(np.uint8)
    model = build_model("naive", ModelConfig(vocab_size=5, cell="rnn", layers=1, hidden=8, embed=4))
    from conftest import ScriptedValidation

    learner = ScriptedValidation(NumpyLearner(model, "adagrad", 0.1, 0.0, 5.0, seed=0), [math.inf, math.nan])
    cfg = TrainConfig(impl="naive", max_iters=4, eval_every=2, log_every=1, out=str(tmp_path))
    Trainer(cfg, learner, make_streams(data, 2, 4), make_streams(data[:5], 1, 4), tmp_path, log=lambda m: None).run()

    def refuse(literal):
        raise ValueError(f"{literal} is not JSON")

    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line, parse_constant=refuse) for line in lines]
    assert rows == read_metrics(tmp_path / "metrics.jsonl")
    validation = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in validation] == [2, 4]
    assert all(r["val_loss"] is None and r["val_bpc"] is None for r in validation)
    assert all(isinstance(r["grad_norm"], float) for r in rows if "train_loss" in r)
    from charrnn.checkpoint import read_resume

    assert read_resume(tmp_path, model.config).progress["iteration"] == 4   # the run can still be resumed
